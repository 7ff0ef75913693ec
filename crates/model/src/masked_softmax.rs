//! Inference-only fused attention (`causal_attention`) with the mask computed on the fly:
//! causal, optional sliding window, optional key padding. Masked entries are never
//! exponentiated (half of a causal score matrix), blocks of keys no query of a block may see are
//! never multiplied, no mask tensor is built, and glibc's slow underflow path for exp(-huge) is
//! avoided. No backward: the training path uses `ops::attention_mask` + `ops::softmax_last`.
//!
//! Also the inference path's fused gated activation (`glu`: SwiGLU, GeGLU) on the fused gate/up
//! projection.

use crate::block::Activation;
use candle_core::{CpuStorage, CustomOp1, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// The mask of one block of attention scores: rows are queries at absolute positions offset +
/// i, columns keys at key_start + j.
struct MaskedSoftmax<'a> {
    offset: usize,
    /// Absolute position of the first key column (query blocks see a slice of the keys).
    key_start: usize,
    window: Option<usize>,
    key_valid: Option<&'a [Vec<bool>]>,
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

/// Query rows per block of [`causal_attention`]: a block multiplies only against the keys its
/// rows may see, so the masked upper triangle is skipped, and its scores (64 × keys) stay in
/// the L2 cache between the two products.
const QUERY_BLOCK: usize = 64;

/// Multiply-adds of q·kᵀ below which [`causal_attention`] runs on the calling thread.
const SERIAL_BELOW: usize = 1 << 20;

/// Inference attention that skips the keys the causal (and window) mask hides, in one pass
/// over flat buffers: for each (window, head, block of query rows), the visible keys' scores,
/// the masked softmax of [`MaskedSoftmax::row`], and P·V. Composed of candle ops instead (a
/// copy of every block, zeroed products, a concatenation), the same attention was 29% of
/// `eval ppl` at context 1024 under `perf`.
///
/// q: (b, kv, rep, t, hd) already scaled; k, v: (b, kv, tk, hd) with tk = offset + t; the
/// queries are at absolute positions offset..offset + t. Returns (b, kv, rep, t, hd).
pub fn causal_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    offset: usize,
    window: Option<usize>,
    key_valid: Option<&[Vec<bool>]>,
) -> Result<Tensor> {
    let op = CausalAttention { offset, window, key_valid };
    q.contiguous()?.apply_op3_no_bwd(&k.contiguous()?, &v.contiguous()?, &op)
}

struct CausalAttention<'a> {
    offset: usize,
    window: Option<usize>,
    key_valid: Option<&'a [Vec<bool>]>,
}

/// The contiguous f32 data of one operand of [`CausalAttention`].
fn f32_data<'s>(s: &'s CpuStorage, l: &Layout, what: &str) -> Result<&'s [f32]> {
    match (s, l.contiguous_offsets()) {
        (CpuStorage::F32(d), Some((a, b))) => Ok(&d[a..b]),
        _ => candle_core::bail!("causal attention: {what} must be contiguous f32"),
    }
}

impl CustomOp3 for CausalAttention<'_> {
    fn name(&self) -> &'static str {
        "orlik-causal-attention"
    }

    fn cpu_fwd(
        &self,
        qs: &CpuStorage,
        ql: &Layout,
        ks: &CpuStorage,
        kl: &Layout,
        vs: &CpuStorage,
        vl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (q, k, v) = (f32_data(qs, ql, "q")?, f32_data(ks, kl, "k")?, f32_data(vs, vl, "v")?);
        let (b, kv, rep, t, hd) = ql.shape().dims5()?;
        let (kb, kkv, tk, khd) = kl.shape().dims4()?;
        if (kb, kkv, khd) != (b, kv, hd) || vl.shape() != kl.shape() || tk < self.offset + t {
            candle_core::bail!(
                "causal attention: q {:?}, k {:?}, v {:?} with {} cached positions",
                ql.shape(),
                kl.shape(),
                vl.shape(),
                self.offset
            );
        }
        // (b, kv, rep, t, hd)
        let mut out = vec![0f32; b * kv * rep * t * hd];
        // One task per (head, block of query rows). Head `task` = (bi · kv + g) · rep + r
        // reads its own q rows (t, hd) and the keys and values (tk, hd) of kv head bi · kv + g.
        let head = |(task, oh): (usize, &mut [f32])| {
            let (bi, g) = (task / (kv * rep), task / rep);
            let qh = &q[task * t * hd..(task + 1) * t * hd];
            let kh = &k[g * tk * hd..(g + 1) * tk * hd];
            let vh = &v[g * tk * hd..(g + 1) * tk * hd];
            let block = |(blk, ob): (usize, &mut [f32])| {
                self.block(bi, blk * QUERY_BLOCK, (qh, kh, vh), hd, ob)
            };
            match t > QUERY_BLOCK {
                true => oh.par_chunks_mut(QUERY_BLOCK * hd).enumerate().for_each(block),
                false => oh.chunks_mut(QUERY_BLOCK * hd).enumerate().for_each(block),
            }
        };
        // A decoding step (one query row per head) is microseconds of work: not worth waking
        // the pool's threads for.
        match b * kv * rep * t * tk * hd >= SERIAL_BELOW {
            true => out.par_chunks_mut(t * hd).enumerate().for_each(head),
            false => out.chunks_mut(t * hd).enumerate().for_each(head),
        }
        Ok((CpuStorage::F32(out), ql.shape().clone()))
    }
}

impl CausalAttention<'_> {
    /// Rows r0..r0 + n of one head's output `o` (n, hd) for window `bi`: keys [lo, hi) cover
    /// every key these rows may see (the first row's window start to the last row's position).
    fn block(
        &self,
        bi: usize,
        r0: usize,
        (q, k, v): (&[f32], &[f32], &[f32]),
        hd: usize,
        o: &mut [f32],
    ) {
        use crate::cpu::kernels::{gemm, gemm_new, Par, View};
        let (n, tk) = (o.len() / hd, k.len() / hd);
        let hi = (self.offset + r0 + n).min(tk);
        let lo = self.window.map_or(0, |w| (self.offset + r0 + 1).saturating_sub(w)).min(hi);
        let nk = hi - lo;
        if nk == 0 {
            return; // no key visible to any row (cannot happen with tk ≥ offset + t): zeros
        }
        // s (n, nk) = q[r0..r0 + n] (n, hd) · k[lo..hi]ᵀ (hd, nk)
        let kt = View { data: &k[lo * hd..], rs: 1, cs: hd };
        let s = gemm_new(n, nk, hd, View::rows(&q[r0 * hd..], hd), kt, Par::One);
        let sm = MaskedSoftmax {
            offset: self.offset,
            key_start: lo,
            window: self.window,
            key_valid: self.key_valid,
        };
        let mut p = vec![0f32; n * nk]; // (n, nk)
        for (i, (x, pr)) in s.chunks_exact(nk).zip(p.chunks_exact_mut(nk)).enumerate() {
            sm.row(bi, r0 + i, x, pr);
        }
        // o (n, hd) = p (n, nk) · v[lo..hi] (nk, hd)
        let vb = View::rows(&v[lo * hd..], hd);
        gemm(o, hd, n, hd, nk, View::rows(&p, nk), vb, false, 1.0, Par::One);
    }
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

    /// `op` over rows of tk scores, t query rows per window (window r / t, query r % t).
    fn rows(op: &MaskedSoftmax, x: &[f32], t: usize, tk: usize) -> Vec<f32> {
        let mut out = vec![f32::INFINITY; x.len()];
        for (r, (xr, o)) in x.chunks(tk).zip(out.chunks_mut(tk)).enumerate() {
            op.row(r / t, r % t, xr, o);
        }
        out
    }

    #[test]
    fn rows_match_f64_with_window_padding_and_offset() {
        let (t, tk, offset, ks) = (5usize, 23usize, 20usize, 2usize);
        let valid = vec![vec![true; 30], (0..30).map(|j| j % 4 != 1).collect::<Vec<bool>>()];
        let x: Vec<f32> = (0..2 * t * tk).map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.31).collect();
        for window in [None, Some(6)] {
            let op = MaskedSoftmax { offset, key_start: ks, window, key_valid: Some(&valid) };
            let got = rows(&op, &x, t, tk);
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
            let op =
                MaskedSoftmax { offset: 3, key_start: 0, window: None, key_valid: Some(&valid) };
            rows(&op, &x, 1, 4)
        };
        assert!(row(vec![0.5, 1.0, f32::NAN, 2.0]).iter().all(|v| v.is_nan()));
        let p = row(vec![0.5, f32::NAN, 1.0, 2.0]);
        assert_eq!(p[1], 0.0);
        assert!((p.iter().sum::<f32>() - 1.0).abs() < 1e-6, "{p:?}");
        // a query that sees no key (all padding) gets zeros
        let none = vec![vec![false; 4]];
        let op = MaskedSoftmax { offset: 3, key_start: 0, window: None, key_valid: Some(&none) };
        assert_eq!(rows(&op, &[1f32; 4], 1, 4), vec![0.0; 4]);
        // every visible score NaN, with no padding mask: NaN, not "no visible key"
        let op = MaskedSoftmax { offset: 1, key_start: 0, window: None, key_valid: None };
        let p = rows(&op, &[f32::NAN, f32::NAN, 3.0], 1, 3);
        assert!(p[0].is_nan() && p[1].is_nan() && p[2] == 0.0, "{p:?}");
    }

    /// The fused attention equals softmax(q kᵀ + mask) v in f64 for grouped heads, several
    /// blocks of query rows (t not a multiple of the block), cached positions, a sliding window
    /// and padding keys (window 1's first keys; a query seeing only padding gets zeros).
    #[test]
    fn causal_attention_matches_f64_over_blocks_offsets_windows_and_padding() {
        let (b, kv, rep, hd) = (2usize, 2usize, 3usize, 8usize);
        let dev = candle_core::Device::Cpu;
        for (t, offset) in [(1usize, 0usize), (1, 9), (5, 0), (130, 0), (70, 7)] {
            let tk = offset + t;
            let valid = vec![vec![true; tk], (0..tk).map(|j| j >= 2).collect::<Vec<bool>>()];
            let gen =
                |n: usize, f: f32| -> Vec<f32> { (0..n).map(|i| (i as f32 * f).sin()).collect() };
            let q = gen(b * kv * rep * t * hd, 0.37);
            let (k, v) = (gen(b * kv * tk * hd, 0.91), gen(b * kv * tk * hd, 1.3));
            for window in [None, Some(20)] {
                let qt = Tensor::from_vec(q.clone(), (b, kv, rep, t, hd), &dev).unwrap();
                let kt = Tensor::from_vec(k.clone(), (b, kv, tk, hd), &dev).unwrap();
                let vt = Tensor::from_vec(v.clone(), (b, kv, tk, hd), &dev).unwrap();
                let got = causal_attention(&qt, &kt, &vt, offset, window, Some(&valid)).unwrap();
                let got = got.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                for head in 0..b * kv * rep {
                    let (bi, g) = (head / (kv * rep), head / rep);
                    for i in 0..t {
                        let p = offset + i;
                        let seen =
                            |j: usize| j <= p && window.is_none_or(|w| p - j < w) && valid[bi][j];
                        let qi = &q[(head * t + i) * hd..][..hd];
                        let dot = |j: usize| -> f64 {
                            let kj = &k[(g * tk + j) * hd..][..hd];
                            qi.iter().zip(kj).map(|(&a, &c)| a as f64 * c as f64).sum()
                        };
                        let max = (0..tk).filter(|&j| seen(j)).map(dot).fold(f64::MIN, f64::max);
                        let w: Vec<f64> = (0..tk)
                            .map(|j| if seen(j) { (dot(j) - max).exp() } else { 0.0 })
                            .collect();
                        let z: f64 = w.iter().sum();
                        for d in 0..hd {
                            let want: f64 = if z == 0.0 {
                                0.0
                            } else {
                                (0..tk).map(|j| w[j] * v[(g * tk + j) * hd + d] as f64).sum::<f64>()
                                    / z
                            };
                            let g = got[(head * t + i) * hd + d] as f64;
                            assert!(
                                (g - want).abs() < 1e-5,
                                "t {t} offset {offset} window {window:?} head {head} query {i} dim {d}: {g} vs {want}"
                            );
                        }
                    }
                }
            }
        }
    }
}
