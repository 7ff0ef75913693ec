//! Every kernel module compiles with NVRTC (no GPU needed: NVRTC is a library). Ignored by
//! default because it needs libnvrtc from CUDA 13: `.ci/run` installs the `nvidia-cuda-nvrtc`
//! package and runs these with `ORLIK_NVRTC_LIB` pointing at its library and `--ignored`.

#![allow(clippy::unwrap_used)] // tests unwrap: a failure is the test failing

use orlik_cuda::kernels::{Module, MODULES};
use orlik_cuda::{nvrtc, CudaError};

/// The PTX targets compiled here: A100 (sm_80) and H100 / H200 (sm_90).
const ARCHS: [&str; 2] = ["compute_80", "compute_90"];

#[test]
#[ignore = "needs libnvrtc (CUDA 13): set ORLIK_NVRTC_LIB and pass --ignored, as .ci/run does"]
fn every_kernel_module_compiles_for_every_target() {
    let version = nvrtc::version().unwrap_or_else(|e| panic!("{e}"));
    for arch in ARCHS {
        for m in MODULES {
            let start = std::time::Instant::now();
            let ptx = nvrtc::compile(&m, arch).unwrap_or_else(|e| panic!("{e}"));
            for f in m.functions {
                assert!(
                    ptx.contains(&format!(".entry {f}(")),
                    "{}.cu for {arch}: no entry {f}",
                    m.name
                );
            }
            println!(
                "kernels/{}.cu: {arch}, NVRTC {version}, {} kernels, {} bytes of PTX, {:.2} s",
                m.name,
                m.functions.len(),
                ptx.len(),
                start.elapsed().as_secs_f64()
            );
        }
    }
}

#[test]
#[ignore = "needs libnvrtc (CUDA 13): set ORLIK_NVRTC_LIB and pass --ignored, as .ci/run does"]
fn a_compile_error_names_the_file_and_line() {
    let bad = Module {
        name: "broken",
        source: "extern \"C\" __global__ void k(float* x) {\n  x[0] = undefined_name;\n}\n",
        functions: &["k"],
    };
    match nvrtc::compile(&bad, "compute_90") {
        Err(e @ CudaError::Compile { .. }) => {
            let text = e.to_string();
            assert!(
                text.starts_with("kernels/broken.cu does not compile for compute_90"),
                "{text}"
            );
            assert!(
                text.contains("kernels/broken.cu(2)") && text.contains("undefined_name"),
                "{text}"
            );
        }
        other => panic!("expected a compile error, got {other:?}"),
    }
}

#[test]
#[ignore = "needs libnvrtc (CUDA 13): set ORLIK_NVRTC_LIB and pass --ignored, as .ci/run does"]
fn the_cache_returns_what_was_compiled() {
    let dir = std::env::temp_dir().join(format!("orlik-nvrtc-cache-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let m = MODULES[2];
    let first = nvrtc::compile_cached(&m, "compute_90", &dir).unwrap();
    let files: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(files.len(), 1, "{files:?}");
    assert!(files[0].file_name().unwrap().to_string_lossy().starts_with("rope-compute_90-"));
    // A cached file is what a second call returns, without compiling.
    std::fs::write(&files[0], "cached text").unwrap();
    assert_eq!(nvrtc::compile_cached(&m, "compute_90", &dir).unwrap(), "cached text");
    // Another architecture is another entry.
    let other = nvrtc::compile_cached(&m, "compute_80", &dir).unwrap();
    assert_ne!(other, first);
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 2);
    std::fs::remove_dir_all(&dir).unwrap();
}
