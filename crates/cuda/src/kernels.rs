//! The kernel modules: CUDA C sources in `kernels/`, embedded in the binary, each compiled by
//! NVRTC with `kernels/prelude.cuh` in front (bf16 bits, fixed-order block reductions).

/// One `.cu` file and the `extern "C"` kernels it defines (the names `Gpu` loads).
#[derive(Debug, Clone, Copy)]
pub struct Module {
    pub name: &'static str,
    pub source: &'static str,
    pub functions: &'static [&'static str],
}

pub const PRELUDE: &str = include_str!("../kernels/prelude.cuh");

pub const MODULES: [Module; 6] = [
    Module {
        name: "elementwise",
        source: include_str!("../kernels/elementwise.cu"),
        functions: &[
            "embed_gather",
            "embed_scatter_add",
            "glu_forward",
            "glu_backward",
            "add_bias",
            "col_sums",
            "axpy",
            "scale",
            "bf16_to_f32_kernel",
            "f32_to_bf16_kernel",
        ],
    },
    Module {
        name: "norm",
        source: include_str!("../kernels/norm.cu"),
        functions: &["rms_forward", "rms_backward_dx", "rms_backward_dw"],
    },
    Module { name: "rope", source: include_str!("../kernels/rope.cu"), functions: &["rope"] },
    Module {
        name: "attention",
        source: include_str!("../kernels/attention.cu"),
        functions: &["attn_forward", "attn_delta", "attn_backward_dq", "attn_backward_dkv"],
    },
    Module {
        name: "optim",
        source: include_str!("../kernels/optim.cu"),
        functions: &["adamw", "sum_squares"],
    },
    Module {
        name: "loss",
        source: include_str!("../kernels/loss.cu"),
        functions: &["row_logsumexp", "logp_grad"],
    },
];

impl Module {
    /// What NVRTC compiles: the prelude, then the module with its own file name and line
    /// numbers (`#line`), so a compile error points into `kernels/NAME.cu`.
    pub fn full_source(&self) -> String {
        format!("{PRELUDE}\n#line 1 \"kernels/{}.cu\"\n{}", self.name, self.source)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The kernels a source defines: every `extern "C" __global__ void NAME(`.
    fn defined(src: &str) -> Vec<String> {
        let key = "extern \"C\" __global__ void ";
        src.match_indices(key)
            .map(|(at, _)| {
                let rest = &src[at + key.len()..];
                rest[..rest.find('(').unwrap_or(0)].trim().to_string()
            })
            .collect()
    }

    #[test]
    fn every_kernel_is_listed_and_every_listed_one_defined() {
        for m in MODULES {
            let mut found = defined(m.source);
            let mut listed: Vec<String> = m.functions.iter().map(|s| s.to_string()).collect();
            found.sort();
            listed.sort();
            assert_eq!(found, listed, "kernels/{}.cu", m.name);
        }
        assert!(defined(PRELUDE).is_empty(), "the prelude defines no kernel");
        let src = MODULES[0].full_source();
        assert!(src.starts_with(PRELUDE) && src.contains("#line 1 \"kernels/elementwise.cu\""));
    }
}
