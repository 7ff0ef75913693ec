//! Architecture search for a parameter budget (Minitron §3): enumerate pruned shapes whose
//! parameter count is within a tolerance of the budget, on hardware-friendly multiples, shortlist
//! across the depth/width trade-off, and rank the shortlist by a cheap proxy: KL(teacher ‖ pruned)
//! on held-out calibration batches, without any retraining.

use crate::select::{build, DepthMethod, Importance, Target};
use crate::{apply, Plan, PruneError};
use candle_core::{Device, Tensor};
use orlik_model::{ops, Config, Model, ModelOptions, Weights};

/// Why a parameter budget (`--params`, `prune.params`) is unusable, if it is: a fraction of the
/// model in (0, 1] or a whole parameter count above 1.
pub fn budget_error(params: f64) -> Option<String> {
    if !params.is_finite() || params <= 0.0 {
        Some(format!("{params}: must be a fraction of the model in (0, 1] (e.g. 0.67) or a parameter count (e.g. 90000000)"))
    } else if params > 1.0 && params.fract() != 0.0 {
        Some(format!("{params}: above 1 it is a parameter count and must be a whole number (a fraction is at most 1, e.g. 0.67)"))
    } else {
        None
    }
}

fn with_target(cfg: &Config, t: &Target) -> Config {
    let mut c = cfg.clone();
    c.num_hidden_layers = t.layers.unwrap_or(c.num_hidden_layers);
    c.hidden_size = t.hidden.unwrap_or(c.hidden_size);
    c.intermediate_size = t.ffn.unwrap_or(c.intermediate_size);
    c.head_dim = Some(cfg.head_dim());
    c.num_key_value_heads = Some(t.kv_heads.unwrap_or(cfg.num_kv_heads()));
    c.num_attention_heads = t.heads.unwrap_or(c.num_attention_heads);
    c
}

/// Which axes the search may shrink.
#[derive(Debug, Clone, Copy)]
pub struct Axes {
    pub depth: bool,
    pub hidden: bool,
    pub heads: bool,
    pub mlp: bool,
}

#[derive(Debug, Clone)]
pub struct Candidate {
    pub target: Target,
    pub params: usize,
    /// KL(teacher ‖ candidate) per token, once evaluated.
    pub kl: Option<f64>,
}

fn sizes(full: usize, multiple: usize, vary: bool) -> Vec<usize> {
    if !vary {
        return vec![full];
    }
    let mut v: Vec<usize> = (1..=full / multiple.max(1)).map(|k| k * multiple).collect();
    if !v.contains(&full) {
        v.push(full);
    }
    v
}

/// Every shape within `tol` (relative) of `budget` parameters.
pub fn enumerate(
    cfg: &Config,
    budget: usize,
    tol: f64,
    multiple: usize,
    axes: Axes,
) -> Vec<Candidate> {
    let (nkv, rep) = (cfg.num_kv_heads(), cfg.num_attention_heads / cfg.num_kv_heads());
    let layers: Vec<usize> = if axes.depth {
        (1..=cfg.num_hidden_layers).collect()
    } else {
        vec![cfg.num_hidden_layers]
    };
    let mut heads: Vec<(usize, usize)> = vec![(nkv, nkv * rep)];
    if axes.heads {
        heads = (1..=nkv).flat_map(|k| (1..=rep).map(move |r| (k, k * r))).collect();
    }
    let mut out = Vec::new();
    for &l in &layers {
        for &f in &sizes(cfg.intermediate_size, multiple, axes.mlp) {
            for &h in &sizes(cfg.hidden_size, multiple, axes.hidden) {
                for &(kv, nh) in &heads {
                    if h % nh != 0 {
                        continue; // transformers refuses such configs
                    }
                    let t = Target {
                        layers: Some(l),
                        hidden: Some(h),
                        heads: Some(nh),
                        kv_heads: Some(kv),
                        ffn: Some(f),
                    };
                    let p = with_target(cfg, &t).param_count();
                    if (p as f64 - budget as f64).abs() <= tol * budget as f64 {
                        out.push(Candidate { target: t, params: p, kl: None });
                    }
                }
            }
        }
    }
    out
}

/// At most `k` candidates spread over the depth/width trade-off: for each layer count the shape
/// keeping the most attention heads, then hidden, then MLP; then evenly spaced over layer counts.
pub fn shortlist(mut c: Vec<Candidate>, k: usize) -> Vec<Candidate> {
    let key = |x: &Candidate| (x.target.heads, x.target.hidden, x.target.ffn);
    c.sort_by(|a, b| b.target.layers.cmp(&a.target.layers).then(key(b).cmp(&key(a))));
    c.dedup_by(|a, b| a.target.layers == b.target.layers);
    if c.len() <= k || k == 0 {
        return c;
    }
    (0..k).map(|i| c[i * (c.len() - 1) / (k - 1).max(1)].clone()).collect()
}

/// Teacher log-probabilities for the proxy batches (each (b, t, vocab)).
pub fn teacher_logprobs(
    model: &Model,
    batches: &[Vec<Vec<u32>>],
) -> Result<Vec<Tensor>, PruneError> {
    batches.iter().map(|b| logprobs(model, b)).collect()
}

fn logprobs(model: &Model, rows: &[Vec<u32>]) -> Result<Tensor, PruneError> {
    let t = rows.first().map_or(0, Vec::len);
    let x = Tensor::from_vec(
        rows.iter().flatten().copied().collect::<Vec<u32>>(),
        (rows.len(), t),
        &Device::Cpu,
    )?;
    let logits =
        model.forward(&x, None, None, None).map_err(|e| PruneError::Plan(e.to_string()))?;
    Ok(ops::log_softmax_last(&logits)?)
}

/// Prune with `imp` to the candidate's shape and measure KL(teacher ‖ pruned) per token.
#[allow(clippy::too_many_arguments)]
pub fn evaluate(
    cfg: &Config,
    weights: &Weights,
    imp: &Importance,
    depth: DepthMethod,
    cand: &Candidate,
    batches: &[Vec<Vec<u32>>],
    teacher: &[Tensor],
) -> Result<(f64, Plan), PruneError> {
    let plan = build(cfg, imp, &cand.target, depth)?;
    let (pc, pw) = apply(cfg, weights, &plan)?;
    let m = Model::new(&pc, &pw, ModelOptions::default())
        .map_err(|e| PruneError::Plan(e.to_string()))?;
    let (mut kl, mut n) = (0.0, 0.0);
    for (rows, p) in batches.iter().zip(teacher) {
        let q = logprobs(&m, rows)?;
        let per_tok = orlik_model::prob::kl_last(p, &q)?; // (b, t)
        kl += per_tok.sum_all()?.to_scalar::<f32>()? as f64;
        n += per_tok.elem_count() as f64;
    }
    Ok((kl / n.max(1.0), plan))
}
