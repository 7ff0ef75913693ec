//! From importance to a plan at exact target dimensions. Importance comes from activation scores
//! (Minitron), or from the baselines: weight magnitude, or seeded random — same dims, for honest
//! comparison.

use crate::plan::{Plan, SourceDims, FORMAT_VERSION};
use crate::PruneError;
use orlik_model::init::SplitMix64;
use orlik_model::{Config, Weights};
use orlik_score::Scores;

/// Target dimensions; `None` keeps the source's.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct Target {
    pub layers: Option<usize>,
    pub hidden: Option<usize>,
    pub heads: Option<usize>,
    pub kv_heads: Option<usize>,
    pub ffn: Option<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum DepthMethod {
    /// Drop the layers with the lowest Block Influence.
    Bi,
    /// Drop the contiguous block with the smallest angular distance.
    Block,
    /// Drop the layers whose removal changes the output least (leave-one-out KL).
    Loo,
}

/// Per-unit importance on every axis (larger = keep).
#[derive(Debug, Clone)]
pub struct Importance {
    pub layers: Vec<f32>,
    /// For `DepthMethod::Block`: angular[n-1][start].
    pub angular: Vec<Vec<f32>>,
    pub mlp: Vec<Vec<f32>>,
    pub heads: Vec<Vec<f32>>,
    pub hidden: Vec<f32>,
}

impl Importance {
    pub fn from_scores(s: &Scores, depth: DepthMethod) -> Importance {
        Importance {
            layers: match depth {
                DepthMethod::Loo => s.loo_kl.clone(),
                _ => s.bi.clone(),
            },
            angular: s.angular.clone(),
            mlp: s.mlp.clone(),
            heads: s.heads.clone(),
            hidden: s.hidden.clone(),
        }
    }

    /// Weight-norm baseline: neuron = ‖down_proj[:, i]‖, head = ‖o_proj[:, head]‖,
    /// hidden channel = ‖embed[:, j]‖, layer = ‖o_proj‖ + ‖down_proj‖.
    pub fn magnitude(cfg: &Config, w: &Weights) -> Result<Importance, PruneError> {
        let get = |n: &str| w.get(n).ok_or_else(|| PruneError::Missing(n.to_string()));
        let col_norms = |n: &str| -> Result<Vec<f32>, PruneError> {
            let t = get(n)?.to_dtype(candle_core::DType::F32)?;
            Ok(t.sqr()?.sum(0)?.sqrt()?.to_vec1()?)
        };
        let hd = cfg.head_dim();
        let (mut layers, mut mlp, mut heads) = (vec![], vec![], vec![]);
        for l in 0..cfg.num_hidden_layers {
            let o = col_norms(&format!("model.layers.{l}.self_attn.o_proj.weight"))?;
            let d = col_norms(&format!("model.layers.{l}.mlp.down_proj.weight"))?;
            let h: Vec<f32> =
                o.chunks(hd).map(|c| c.iter().map(|x| x * x).sum::<f32>().sqrt()).collect();
            let frob = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
            layers.push(frob(&o) + frob(&d));
            heads.push(h);
            mlp.push(d);
        }
        Ok(Importance {
            layers,
            angular: vec![],
            mlp,
            heads,
            hidden: col_norms("model.embed_tokens.weight")?,
        })
    }

    /// Seeded random baseline.
    pub fn random(cfg: &Config, seed: u64) -> Importance {
        let mut r = SplitMix64(seed);
        let mut v = |n: usize| (0..n).map(|_| r.next_f64() as f32).collect::<Vec<_>>();
        let nl = cfg.num_hidden_layers;
        Importance {
            layers: v(nl),
            angular: vec![],
            mlp: (0..nl).map(|_| v(cfg.intermediate_size)).collect(),
            heads: (0..nl).map(|_| v(cfg.num_attention_heads)).collect(),
            hidden: v(cfg.hidden_size),
        }
    }
}

/// Indices of the `k` largest values (ties: lower index first), ascending.
pub fn top_k(v: &[f32], k: usize) -> Vec<usize> {
    let mut i: Vec<usize> = (0..v.len()).collect();
    i.sort_by(|&a, &b| {
        v[b].partial_cmp(&v[a]).unwrap_or(std::cmp::Ordering::Equal).then(a.cmp(&b))
    });
    i.truncate(k);
    i.sort();
    i
}

pub fn build(
    cfg: &Config,
    imp: &Importance,
    target: &Target,
    depth: DepthMethod,
) -> Result<Plan, PruneError> {
    let s = SourceDims::of(cfg);
    let bad = |m: String| Err(PruneError::Plan(m));
    let nl = target.layers.unwrap_or(s.num_hidden_layers);
    let ffn = target.ffn.unwrap_or(s.intermediate_size);
    let hid = target.hidden.unwrap_or(s.hidden_size);
    let kv = target.kv_heads.unwrap_or(s.num_key_value_heads);
    let rep = s.num_attention_heads / s.num_key_value_heads;
    let nh = target.heads.unwrap_or(kv * rep);
    for (what, want, have) in [
        ("layers", nl, s.num_hidden_layers),
        ("ffn", ffn, s.intermediate_size),
        ("hidden", hid, s.hidden_size),
        ("kv-heads", kv, s.num_key_value_heads),
        ("heads", nh, s.num_attention_heads),
    ] {
        if want == 0 || want > have {
            return bad(format!("--{what} {want}: must be between 1 and the model's {have}"));
        }
    }
    if !nh.is_multiple_of(kv) || nh / kv > rep {
        return bad(format!(
            "--heads {nh} must be a multiple of --kv-heads {kv} with at most {rep} query heads per KV group"
        ));
    }
    let layers = if nl == s.num_hidden_layers {
        (0..nl).collect()
    } else if depth == DepthMethod::Block && !imp.angular.is_empty() {
        let n = s.num_hidden_layers - nl;
        let a = imp.angular.get(n - 1).ok_or_else(|| {
            PruneError::Plan(format!(
                "scores hold angular distances for blocks up to {} layers, need {n}",
                imp.angular.len()
            ))
        })?;
        let start = top_k(&a.iter().map(|x| -x).collect::<Vec<_>>(), 1)[0];
        (0..s.num_hidden_layers).filter(|l| *l < start || *l >= start + n).collect()
    } else {
        top_k(&imp.layers, nl)
    };
    let mut plan = Plan {
        format_version: FORMAT_VERSION,
        source: s.clone(),
        hidden: top_k(&imp.hidden, hid),
        mlp: vec![],
        kv_heads: vec![],
        heads: vec![],
        layers,
    };
    for &l in &plan.layers {
        plan.mlp.push(top_k(&imp.mlp[l], ffn));
        let hs = &imp.heads[l];
        let group: Vec<f32> =
            (0..s.num_key_value_heads).map(|g| hs[g * rep..(g + 1) * rep].iter().sum()).collect();
        let groups = top_k(&group, kv);
        let mut heads = vec![];
        for &g in &groups {
            heads.extend(
                top_k(&hs[g * rep..(g + 1) * rep], nh / kv).into_iter().map(|i| g * rep + i),
            );
        }
        plan.kv_heads.push(groups);
        plan.heads.push(heads);
    }
    plan.validate(cfg)?;
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_keeps_largest_in_order() {
        assert_eq!(top_k(&[0.1, 0.9, 0.5, 0.9], 2), vec![1, 3]);
        assert_eq!(top_k(&[3.0, 1.0, 2.0], 3), vec![0, 1, 2]);
    }
}
