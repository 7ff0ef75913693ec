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
    /// One query row: the max of the visible keys' scores, then the vectorised exponentials
    /// (`exp_shifted_into`; libm's scalar expf was 7% of `eval ppl` under `perf`), then the scale.
    /// Padding keys are set to −inf first (e^−inf = 0, and a NaN there is dropped).
    fn row(&self, b: usize, i: usize, x: &[f32], out: &mut [f32]) {
        use crate::cpu::kernels::{exp_shifted, exp_shifted_into};
        // Column j is the key at absolute position key_start + j.
        let q = self.offset + i;
        let ks = self.key_start;
        let hi = (q + 1).saturating_sub(ks).min(x.len());
        let lo = self.window.map_or(0, |w| (q + 1).saturating_sub(w)).saturating_sub(ks).min(hi);
        out[..lo].fill(0.0);
        out[hi..].fill(0.0);
        let o = &mut out[lo..hi];
        // The max skips NaN. No visible key (a padding query): zeros; but a NaN score (corrupt
        // weights) must reach the output, never read as "no visible key".
        let max_of = |v: &[f32]| v.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
        let nothing = |nan: bool, o: &mut [f32]| o.fill(if nan { f32::NAN } else { 0.0 });
        let sum = match self.key_valid {
            None => {
                let max = max_of(&x[lo..hi]);
                if max == f32::NEG_INFINITY {
                    return nothing(x[lo..hi].iter().any(|v| v.is_nan()), o);
                }
                exp_shifted_into(&x[lo..hi], o, max)
            }
            Some(kv) => {
                o.copy_from_slice(&x[lo..hi]);
                for (j, v) in o.iter_mut().enumerate() {
                    if !kv[b].get(ks + lo + j).copied().unwrap_or(true) {
                        *v = f32::NEG_INFINITY;
                    }
                }
                let max = max_of(o);
                if max == f32::NEG_INFINITY {
                    let nan = o.iter().any(|v| v.is_nan());
                    return nothing(nan, o);
                }
                exp_shifted(o, max)
            }
        };
        if sum.is_nan() {
            o.fill(f32::NAN); // a NaN among the visible scores
            return;
        }
        let inv = 1.0 / sum;
        o.iter_mut().for_each(|v| *v *= inv);
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // tests unwrap: a failure is the test failing
    use super::*;

    /// The masked softmax of one row in f64: key j (absolute ks + j) visible to query q when
    /// j ≤ q, inside the window and not padding.
    fn reference(
        x: &[f32],
        q: usize,
        ks: usize,
        window: Option<usize>,
        valid: &[bool],
    ) -> Vec<f64> {
        let seen: Vec<bool> = (0..x.len())
            .map(|j| {
                let k = ks + j;
                k <= q && window.is_none_or(|w| q - k < w) && valid.get(k).copied().unwrap_or(true)
            })
            .collect();
        let max = x
            .iter()
            .zip(&seen)
            .filter(|(_, &s)| s)
            .fold(f64::NEG_INFINITY, |m, (&v, _)| m.max(v as f64));
        let e: Vec<f64> = x
            .iter()
            .zip(&seen)
            .map(|(&v, &s)| if s { (v as f64 - max).exp() } else { 0.0 })
            .collect();
        let sum: f64 = e.iter().sum();
        e.iter().map(|v| if sum > 0.0 { v / sum } else { 0.0 }).collect()
    }

    #[test]
    fn rows_match_f64_with_window_padding_and_offset() {
        let (t, tk, offset, ks) = (5usize, 23usize, 20usize, 2usize);
        let valid = vec![vec![true; 30], (0..30).map(|j| j % 4 != 1).collect::<Vec<bool>>()];
        let x: Vec<f32> = (0..2 * t * tk).map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.31).collect();
        for window in [None, Some(6)] {
            let op = MaskedSoftmax { t, offset, key_start: ks, window, key_valid: Some(&valid) };
            let s = Tensor::from_vec(x.clone(), (2, 1, t, tk), &candle_core::Device::Cpu).unwrap();
            let got =
                masked_softmax(&s, &op).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            for (b, kv) in valid.iter().enumerate() {
                for i in 0..t {
                    let r = (b * t + i) * tk;
                    let want = reference(&x[r..r + tk], offset + i, ks, window, kv);
                    for (j, (&g, &w)) in got[r..r + tk].iter().zip(&want).enumerate() {
                        assert!((g as f64 - w).abs() < 1e-6, "b {b} query {i} key {j}: {g} vs {w}");
                    }
                }
            }
        }
    }

    #[test]
    fn a_nan_score_reaches_the_output_unless_its_key_is_padding() {
        let valid = vec![vec![true, false, true, true]];
        let row = |x: Vec<f32>| {
            let op = MaskedSoftmax {
                t: 1,
                offset: 3,
                key_start: 0,
                window: None,
                key_valid: Some(&valid),
            };
            let s = Tensor::from_vec(x, (1, 1, 1, 4), &candle_core::Device::Cpu).unwrap();
            masked_softmax(&s, &op).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap()
        };
        assert!(row(vec![0.5, 1.0, f32::NAN, 2.0]).iter().all(|v| v.is_nan()));
        let p = row(vec![0.5, f32::NAN, 1.0, 2.0]);
        assert_eq!(p[1], 0.0);
        assert!((p.iter().sum::<f32>() - 1.0).abs() < 1e-6, "{p:?}");
        // a query that sees no key (all padding) gets zeros
        let none = vec![vec![false; 4]];
        let op =
            MaskedSoftmax { t: 1, offset: 3, key_start: 0, window: None, key_valid: Some(&none) };
        let s = Tensor::from_vec(vec![1f32; 4], (1, 1, 1, 4), &candle_core::Device::Cpu).unwrap();
        let z = masked_softmax(&s, &op).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(z, vec![0.0; 4]);
        // every visible score NaN, with no padding mask: NaN, not "no visible key"
        let op = MaskedSoftmax { t: 1, offset: 1, key_start: 0, window: None, key_valid: None };
        let s = Tensor::from_vec(
            vec![f32::NAN, f32::NAN, 3.0],
            (1, 1, 1, 3),
            &candle_core::Device::Cpu,
        );
        let p = masked_softmax(&s.unwrap(), &op).unwrap().flatten_all().unwrap().to_vec1::<f32>();
        let p = p.unwrap();
        assert!(p[0].is_nan() && p[1].is_nan() && p[2] == 0.0, "{p:?}");
    }
}
