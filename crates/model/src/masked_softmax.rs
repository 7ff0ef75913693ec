//! Inference-only fused attention softmax with the mask computed on the fly: causal, optional
//! sliding window, optional key padding. Masked entries are never exponentiated (half of a causal
//! score matrix), no mask tensor is built, and glibc's slow underflow path for exp(-huge) is
//! avoided. No backward: the training path uses `ops::attention_mask` + `ops::softmax_last`.
//!
//! Scores are (b, g, rows, tk) contiguous f32, where every `t` consecutive rows are queries at
//! absolute positions offset..offset+t (g * rows/t heads share the same mask).
//!
//! Also the inference path's fused gated activation (`glu`: SwiGLU, GeGLU) on the fused gate/up
//! projection.

use crate::block::Activation;
use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

pub struct MaskedSoftmax<'a> {
    pub t: usize,
    pub offset: usize,
    /// Absolute position of the first key column (query blocks see a slice of the keys).
    pub key_start: usize,
    pub window: Option<usize>,
    pub key_valid: Option<&'a [Vec<bool>]>,
}

impl MaskedSoftmax<'_> {
    fn row(&self, b: usize, i: usize, x: &[f32], out: &mut [f32]) {
        // Column j is the key at absolute position key_start + j.
        let q = self.offset + i;
        let ks = self.key_start;
        let hi = (q + 1).saturating_sub(ks).min(x.len());
        let lo = self.window.map_or(0, |w| (q + 1).saturating_sub(w)).saturating_sub(ks).min(hi);
        let valid =
            |j: usize| self.key_valid.is_none_or(|kv| kv[b].get(ks + j).copied().unwrap_or(true));
        let mut max = f32::NEG_INFINITY;
        let mut nan = false;
        for (j, &v) in x.iter().enumerate().take(hi).skip(lo) {
            if valid(j) {
                nan |= v.is_nan();
                if v > max {
                    max = v;
                }
            }
        }
        out.iter_mut().for_each(|o| *o = 0.0);
        if nan {
            // A NaN score (corrupt weights) must reach the output, never read as "no visible key".
            out[lo..hi].iter_mut().for_each(|o| *o = f32::NAN);
            return;
        }
        if max == f32::NEG_INFINITY {
            return; // no visible key (a padding query): output zeros
        }
        let mut sum = 0f32;
        for j in lo..hi {
            if valid(j) {
                let e = (x[j] - max).exp();
                out[j] = e;
                sum += e;
            }
        }
        let inv = 1.0 / sum;
        out[lo..hi].iter_mut().for_each(|o| *o *= inv);
    }
}

impl CustomOp1 for MaskedSoftmax<'_> {
    fn name(&self) -> &'static str {
        "orlik-masked-softmax"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(data) = storage else {
            candle_core::bail!("masked softmax: f32 only");
        };
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("masked softmax: contiguous input only");
        };
        let x = &data[start..end];
        let dims = layout.dims();
        let tk = dims[dims.len() - 1];
        let b = dims[0];
        let per_batch = x.len() / b.max(1);
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(tk).zip(x.par_chunks(tk)).enumerate().for_each(|(r, (o, xr))| {
            let bi = r * tk / per_batch;
            let i = r % self.t;
            self.row(bi, i, xr, o);
        });
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }
}

/// scores (b, g, n*t, tk) -> probabilities, masked as described above.
pub fn masked_softmax(scores: &Tensor, op: &MaskedSoftmax) -> Result<Tensor> {
    scores.contiguous()?.apply_op1_no_bwd(op)
}

/// Query rows per block in `causal_attention`.
const BLOCK: usize = 128;

/// Inference attention that skips key blocks the causal (and window) mask hides entirely.
/// q: (b, kv, rep, t, hd) already scaled; k, v: (b, kv, tk, hd) with tk = offset + t.
/// Returns (b, kv, rep, t, hd).
pub fn causal_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    offset: usize,
    window: Option<usize>,
    key_valid: Option<&[Vec<bool>]>,
) -> Result<Tensor> {
    let (b, kv, rep, t, hd) = q.dims5()?;
    let mut outs = Vec::with_capacity(t.div_ceil(BLOCK));
    let mut s = 0;
    while s < t {
        let n = BLOCK.min(t - s);
        let end = offset + s + n; // keys [0, end) can be visible to this block
        let start = window.map_or(0, |w| (offset + s + 1).saturating_sub(w));
        let qb = q.narrow(3, s, n)?.contiguous()?.reshape((b, kv, rep * n, hd))?; // (b, kv, rep*n, hd)
        let kb = k.narrow(2, start, end - start)?.contiguous()?; // (b, kv, nk, hd)
        let vb = v.narrow(2, start, end - start)?.contiguous()?;
        let scores = qb.matmul(&kb.t()?)?; // (b, kv, rep*n, nk)
        let op = MaskedSoftmax { t: n, offset: offset + s, key_start: start, window, key_valid };
        let probs = masked_softmax(&scores, &op)?;
        outs.push(probs.matmul(&vb)?.reshape((b, kv, rep, n, hd))?);
        s += n;
    }
    Tensor::cat(&outs, 3)
}

/// Inference-only gated activation on a fused gate/up projection: (.., 2f) -> act(gate) * up,
/// (.., f): SwiGLU or GeGLU, through the vectorised kernels of `cpu::act`.
struct Glu(Activation);

impl CustomOp1 for Glu {
    fn name(&self) -> &'static str {
        "orlik-glu"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(data) = storage else {
            candle_core::bail!("glu: f32 only");
        };
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("glu: contiguous input only");
        };
        let dims = layout.dims();
        let two_f = dims[dims.len() - 1];
        let f = two_f / 2;
        let x = &data[start..end];
        let mut out = vec![0f32; x.len() / 2];
        out.par_chunks_mut(f).zip(x.par_chunks(two_f)).for_each(|(o, row)| {
            let (g, u) = row.split_at(f);
            crate::cpu::act::glu_into(self.0, g, u, o);
        });
        let mut shape = dims.to_vec();
        let last = shape.len() - 1;
        shape[last] = f;
        Ok((CpuStorage::F32(out), Shape::from(shape)))
    }
}

/// act(x[.., :f]) * x[.., f:] for x (.., 2f), inference only (silu: SwiGLU, tanh GELU: GeGLU).
pub fn glu(act: Activation, x: &Tensor) -> Result<Tensor> {
    if x.dtype() != candle_core::DType::F32 {
        let f = x.dim(candle_core::D::Minus1)? / 2;
        let g = x.narrow(candle_core::D::Minus1, 0, f)?;
        let g = match act {
            Activation::Silu => g.silu()?,
            Activation::GeluTanh => g.gelu()?,
        };
        return g * x.narrow(candle_core::D::Minus1, f, f)?;
    }
    x.contiguous()?.apply_op1_no_bwd(&Glu(act))
}
