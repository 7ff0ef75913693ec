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

/// [`cut`] straight from a tensor's stored bytes (`shape`, `dtype`: little-endian, row-major,
/// as a safetensors file holds them): the kept rows and columns are copied once into the output,
/// the rows in parallel. The same values as [`cut`] of the loaded tensor (tested below); what a
/// streaming prune runs, where reading the whole tensor into memory and selecting from it took
/// three copies and candle's element-wise `index_select`.
pub fn cut_stored(
    bytes: &[u8],
    shape: &[usize],
    dtype: candle_core::DType,
    spec: &SliceSpec,
) -> Result<Tensor, PruneError> {
    use candle_core::DType as D;
    match dtype {
        D::F32 => gather::<f32>(bytes, shape, spec),
        D::F16 => gather::<half::f16>(bytes, shape, spec),
        D::BF16 => gather::<half::bf16>(bytes, shape, spec),
        D::F64 => gather::<f64>(bytes, shape, spec),
        other => Err(PruneError::Input(format!("{}: cannot cut dtype {other:?}", spec.src))),
    }
}

/// Rows `spec.rows` and columns `spec.cols` (all where None) of a 1-D or 2-D tensor stored as
/// `bytes`, into a new tensor of element type `T`.
fn gather<T>(bytes: &[u8], shape: &[usize], spec: &SliceSpec) -> Result<Tensor, PruneError>
where
    T: bytemuck::Pod + candle_core::WithDType,
{
    use rayon::prelude::*;
    let es = std::mem::size_of::<T>();
    let (r, c) = match *shape {
        [n] => (n, 1),
        [r, c] => (r, c),
        _ => {
            return Err(PruneError::Input(format!(
                "{}: shape {shape:?} is not 1-D or 2-D",
                spec.src
            )))
        }
    };
    if bytes.len() != r * c * es {
        return Err(PruneError::Input(format!(
            "{}: {} bytes for shape {shape:?} of {es}-byte values",
            spec.src,
            bytes.len()
        )));
    }
    let all_rows: Vec<usize>;
    let rows = match &spec.rows {
        Some(v) => v.as_slice(),
        None => {
            all_rows = (0..r).collect();
            &all_rows
        }
    };
    let cols = spec.cols.as_deref();
    if rows.iter().any(|&i| i >= r) || cols.is_some_and(|v| v.iter().any(|&j| j >= c)) {
        return Err(PruneError::Input(format!("{}: an index is outside {shape:?}", spec.src)));
    }
    let oc = cols.map_or(c, <[usize]>::len);
    let mut out = vec![T::zeroed(); rows.len() * oc];
    // one output row per task group; a row's kept columns copied in runs of consecutive ones
    out.par_chunks_mut(oc.max(1)).zip(rows.par_iter()).for_each(|(dst, &i)| {
        let src = &bytes[i * c * es..(i + 1) * c * es];
        let dst: &mut [u8] = bytemuck::cast_slice_mut(dst);
        match cols {
            None => dst.copy_from_slice(src),
            Some(cols) => {
                let mut k = 0;
                while k < cols.len() {
                    let mut e = k + 1;
                    while e < cols.len() && cols[e] == cols[e - 1] + 1 {
                        e += 1;
                    }
                    let (a, n) = (cols[k] * es, (e - k) * es);
                    dst[k * es..k * es + n].copy_from_slice(&src[a..a + n]);
                    k = e;
                }
            }
        }
    });
    let oshape: Vec<usize> = if shape.len() == 1 { vec![rows.len()] } else { vec![rows.len(), oc] };
    Ok(Tensor::from_vec(out, oshape, &Device::Cpu)?)
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
