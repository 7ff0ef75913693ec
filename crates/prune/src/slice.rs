//! Apply a plan to HF-named weights: pure index selection, so a plan keeping everything returns
//! the weights bit for bit, and a pruned model equals the dense model with the dropped units
//! masked out (tests below).

use crate::plan::Plan;
use crate::PruneError;
use candle_core::{Device, Tensor};
use orlik_model::{Config, Weights};

fn idx(v: &[usize]) -> Result<Tensor, PruneError> {
    let v: Vec<u32> = v.iter().map(|&x| x as u32).collect();
    Ok(Tensor::new(v.as_slice(), &Device::Cpu)?)
}

/// Rows of whole heads: head h covers rows h*hd .. (h+1)*hd.
fn head_rows(heads: &[usize], hd: usize) -> Vec<usize> {
    heads.iter().flat_map(|&h| h * hd..(h + 1) * hd).collect()
}

/// Select `rows` along dim 0 and `cols` along dim 1 (either may be None = keep all).
fn select(t: &Tensor, rows: Option<&Tensor>, cols: Option<&Tensor>) -> Result<Tensor, PruneError> {
    let mut t = t.clone();
    if let Some(r) = rows {
        t = t.index_select(r, 0)?;
    }
    if let Some(c) = cols {
        t = t.index_select(c, 1)?;
    }
    Ok(t.contiguous()?)
}

/// Where one tensor of the pruned model comes from: source tensor and kept rows / columns.
#[derive(Debug, Clone, PartialEq)]
pub struct SliceSpec {
    pub name: String,
    pub shape: Vec<usize>,
    pub src: String,
    pub rows: Option<Vec<usize>>,
    pub cols: Option<Vec<usize>>,
}

/// Every tensor of the pruned model (HF order) with its source and indices.
pub fn slices(cfg: &Config, plan: &Plan) -> Result<Vec<SliceSpec>, PruneError> {
    plan.validate(cfg)?;
    let pcfg = plan.pruned_config(cfg);
    let hd = cfg.head_dim();
    let hidden = Some(plan.hidden.clone());
    let mut out = Vec::new();
    for (name, shape) in pcfg.expected_tensors() {
        let (src, rows, cols) = if let Some(rest) = name.strip_prefix("model.layers.") {
            let (new, leaf) =
                rest.split_once('.').ok_or_else(|| PruneError::Missing(name.clone()))?;
            let i: usize = new.parse().map_err(|_| PruneError::Missing(name.clone()))?;
            let q = Some(head_rows(&plan.heads[i], hd));
            let kv = Some(head_rows(&plan.kv_heads[i], hd));
            let n = Some(plan.mlp[i].clone());
            let (rows, cols) = match leaf {
                "input_layernorm.weight"
                | "post_attention_layernorm.weight"
                | "pre_feedforward_layernorm.weight"
                | "post_feedforward_layernorm.weight" => (hidden.clone(), None),
                // Gemma 3: per-head norms over head_dim, which pruning never changes
                "self_attn.q_norm.weight" | "self_attn.k_norm.weight" => (None, None),
                "self_attn.q_proj.weight" => (q, hidden.clone()),
                "self_attn.q_proj.bias" => (q, None),
                "self_attn.k_proj.weight" | "self_attn.v_proj.weight" => (kv, hidden.clone()),
                "self_attn.k_proj.bias" | "self_attn.v_proj.bias" => (kv, None),
                "self_attn.o_proj.weight" => (hidden.clone(), q),
                "self_attn.o_proj.bias" | "mlp.down_proj.bias" => (hidden.clone(), None),
                "mlp.gate_proj.weight" | "mlp.up_proj.weight" => (n, hidden.clone()),
                "mlp.gate_proj.bias" | "mlp.up_proj.bias" => (n, None),
                "mlp.down_proj.weight" => (hidden.clone(), n),
                _ => return Err(PruneError::Missing(name.clone())),
            };
            (format!("model.layers.{}.{leaf}", plan.layers[i]), rows, cols)
        } else if name == "model.norm.weight" {
            (name.clone(), hidden.clone(), None)
        } else {
            (name.clone(), None, hidden.clone()) // embeddings, lm_head
        };
        out.push(SliceSpec { name, shape, src, rows, cols });
    }
    Ok(out)
}

/// Cut one tensor as `spec` says.
pub fn cut(t: &Tensor, spec: &SliceSpec) -> Result<Tensor, PruneError> {
    let r = spec.rows.as_deref().map(idx).transpose()?;
    let c = spec.cols.as_deref().map(idx).transpose()?;
    select(t, r.as_ref(), c.as_ref())
}

/// Prune `weights` (source model `cfg`) with `plan`. Returns the pruned config and weights.
pub fn apply(
    cfg: &Config,
    weights: &Weights,
    plan: &Plan,
) -> Result<(Config, Weights), PruneError> {
    let mut out = Weights::new();
    for s in slices(cfg, plan)? {
        let t = weights.get(&s.src).ok_or_else(|| PruneError::Missing(s.src.clone()))?;
        out.insert(s.name.clone(), cut(t, &s)?);
    }
    Ok((plan.pruned_config(cfg), out))
}
