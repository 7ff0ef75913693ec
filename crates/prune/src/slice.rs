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

/// Prune `weights` (source model `cfg`) with `plan`. Returns the pruned config and weights.
pub fn apply(cfg: &Config, weights: &Weights, plan: &Plan) -> Result<(Config, Weights), PruneError> {
    plan.validate(cfg)?;
    let get = |name: &str| weights.get(name).ok_or_else(|| PruneError::Missing(name.to_string()));
    let hd = cfg.head_dim();
    let hidden = idx(&plan.hidden)?;
    let h = Some(&hidden);
    let mut out = Weights::new();
    out.insert("model.embed_tokens.weight".into(), select(get("model.embed_tokens.weight")?, None, h)?);
    out.insert("model.norm.weight".into(), select(get("model.norm.weight")?, h, None)?);
    if !cfg.tie_word_embeddings {
        out.insert("lm_head.weight".into(), select(get("lm_head.weight")?, None, h)?);
    }
    for (new, &src) in plan.layers.iter().enumerate() {
        let (p, q) = (format!("model.layers.{src}"), format!("model.layers.{new}"));
        let neurons = idx(&plan.mlp[new])?;
        let qrows = idx(&head_rows(&plan.heads[new], hd))?;
        let kvrows = idx(&head_rows(&plan.kv_heads[new], hd))?;
        // (suffix, rows, cols) for each weight; biases follow their weight's rows.
        let parts: [(&str, Option<&Tensor>, Option<&Tensor>); 9] = [
            ("input_layernorm", h, None),
            ("post_attention_layernorm", h, None),
            ("self_attn.q_proj", Some(&qrows), h),
            ("self_attn.k_proj", Some(&kvrows), h),
            ("self_attn.v_proj", Some(&kvrows), h),
            ("self_attn.o_proj", h, Some(&qrows)),
            ("mlp.gate_proj", Some(&neurons), h),
            ("mlp.up_proj", Some(&neurons), h),
            ("mlp.down_proj", h, Some(&neurons)),
        ];
        for (leaf, rows, cols) in parts {
            let w = format!("{p}.{leaf}.weight");
            out.insert(format!("{q}.{leaf}.weight"), select(get(&w)?, rows, cols)?);
            let b = format!("{p}.{leaf}.bias");
            if let Some(bias) = weights.get(&b) {
                out.insert(format!("{q}.{leaf}.bias"), select(bias, rows, None)?);
            }
        }
    }
    Ok((plan.pruned_config(cfg), out))
}
