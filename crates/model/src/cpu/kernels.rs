//! CPU kernels on flat f32 buffers for the flat-buffer executor (`train.rs`): strided gemm with
//! in-place accumulation, RMSNorm, RoPE, the gated MLP activations (SwiGLU, GeGLU) and causal
//! softmax, each with its backward. Row-parallel with rayon; every reduction runs in a fixed order, so results depend
//! only on the inputs and the thread count (the trainer's bit-identical resume relies on it).

use crate::block::Activation;
use rayon::prelude::*;

/// A read-only matrix view: element (i, j) is `data[i * rs + j * cs]`.
#[derive(Clone, Copy)]
pub struct View<'a> {
    pub data: &'a [f32],
    pub rs: usize,
    pub cs: usize,
}

impl<'a> View<'a> {
    /// Row-major (rows, cols) starting at `data[0]`.
    pub fn rows(data: &'a [f32], cols: usize) -> View<'a> {
        View { data, rs: cols, cs: 1 }
    }
    /// The transpose of row-major (rows, cols): a (cols, rows) view.
    pub fn t(data: &'a [f32], cols: usize) -> View<'a> {
        View { data, rs: 1, cs: cols }
    }
}

/// How many threads gemm may use: all of rayon's, or one (inside an already parallel loop).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Par {
    All,
    One,
}

/// c (m, n; row stride `c_rs`) = [c +] scale · a (m, k) · b (k, n).
///
/// Panics (a bug, not an input error) when a view is too short for its shape.
#[allow(clippy::too_many_arguments)]
pub fn gemm(
    c: &mut [f32],
    c_rs: usize,
    m: usize,
    n: usize,
    k: usize,
    a: View,
    b: View,
    accumulate: bool,
    scale: f32,
    par: Par,
) {
    if m == 0 || n == 0 {
        return;
    }
    let last = |v: &View, r: usize, s: usize| (r - 1) * v.rs + (s - 1) * v.cs;
    assert!(c.len() > (m - 1) * c_rs + n - 1, "gemm: c too short");
    if k == 0 {
        if !accumulate {
            (0..m).for_each(|i| c[i * c_rs..i * c_rs + n].fill(0.0));
        }
        return;
    }
    assert!(
        a.data.len() > last(&a, m, k) && b.data.len() > last(&b, k, n),
        "gemm: operand too short"
    );
    // SAFETY: the asserts above bound every index the strides reach; `c` is borrowed mutably,
    // so it does not alias `a` or `b`.
    unsafe { raw(c.as_mut_ptr(), c_rs, (m, n, k), a, b, accumulate, scale, par) }
}

/// gemm's call: c (row stride `c_rs`) = [c +] scale · a · b, reading c only with `accumulate`.
///
/// # Safety
/// Every index the shapes and strides reach is inside `a`, `b` and the m × n of `c`, and `c`
/// aliases neither operand.
#[allow(clippy::too_many_arguments)]
unsafe fn raw(
    c: *mut f32,
    c_rs: usize,
    (m, n, k): (usize, usize, usize),
    a: View,
    b: View,
    accumulate: bool,
    scale: f32,
    par: Par,
) {
    let parallelism = match par {
        Par::All if m * n * k >= 1 << 15 => gemm::Parallelism::Rayon(rayon::current_num_threads()),
        _ => gemm::Parallelism::None,
    };
    // SAFETY: the caller's contract.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c,
            1,
            c_rs as isize,
            accumulate,
            a.data.as_ptr(),
            a.cs as isize,
            a.rs as isize,
            b.data.as_ptr(),
            b.cs as isize,
            b.rs as isize,
            if accumulate { 1.0 } else { 0.0 },
            scale,
            false,
            false,
            false,
            parallelism,
        );
    }
}

/// a (m, k) · b (k, n) into a new row-major (m, n) buffer that is never zeroed first: the
/// product writes every element without reading it (a zeroed output, as candle's matmul makes,
/// cost a memset over every product: 6% of `eval ppl` under `perf`).
///
/// Panics (a bug, not an input error) when a view is too short for its shape.
pub fn gemm_new(m: usize, n: usize, k: usize, a: View, b: View, par: Par) -> Vec<f32> {
    if m == 0 || n == 0 || k == 0 {
        return vec![0f32; m * n];
    }
    let last = |v: &View, r: usize, s: usize| (r - 1) * v.rs + (s - 1) * v.cs;
    assert!(
        a.data.len() > last(&a, m, k) && b.data.len() > last(&b, k, n),
        "gemm_new: operand too short"
    );
    let mut c: Vec<f32> = Vec::with_capacity(m * n);
    // SAFETY: the asserts above bound every index the strides of a and b reach; c has room for
    // m · n values at row stride n, and without `accumulate` gemm writes each of them and reads
    // none, so every element is initialised before `set_len` exposes it.
    unsafe {
        raw(c.as_mut_ptr(), n, (m, n, k), a, b, false, 1.0, par);
        c.set_len(m * n);
    }
    c
}

/// Rows of a fixed-size block, for reductions over rows that must not depend on scheduling.
const ROW_BLOCK: usize = 64;

/// out (d) += Σ_r f(r) over rows 0..rows, where `f(r, acc)` adds row r's d values into acc.
/// Blocks of ROW_BLOCK rows run in parallel and their partial sums are added in block order,
/// so the result does not depend on scheduling.
fn add_row_sums(rows: usize, d: usize, out: &mut [f32], f: impl Fn(usize, &mut [f32]) + Sync) {
    let parts: Vec<Vec<f32>> = (0..rows.div_ceil(ROW_BLOCK))
        .into_par_iter()
        .map(|blk| {
            let mut acc = vec![0f32; d];
            for r in blk * ROW_BLOCK..((blk + 1) * ROW_BLOCK).min(rows) {
                f(r, &mut acc);
            }
            acc
        })
        .collect();
    for p in parts {
        out.iter_mut().zip(p).for_each(|(a, b)| *a += b);
    }
}

/// Column sums of x (rows, cols) added into `out` (cols), in a fixed order.
pub fn add_col_sums(x: &[f32], cols: usize, out: &mut [f32]) {
    add_row_sums(x.len() / cols, cols, out, |r, acc| {
        acc.iter_mut().zip(&x[r * cols..(r + 1) * cols]).for_each(|(a, b)| *a += b);
    });
}

/// RMSNorm (Zhang & Sennrich 2019): y = x · inv · w with inv = 1/sqrt(mean(x²) + eps).
/// x (rows, d) -> (y (rows, d), inv (rows)).
pub fn rms_forward(x: &[f32], w: &[f32], eps: f64) -> (Vec<f32>, Vec<f32>) {
    let d = w.len();
    let mut y = vec![0f32; x.len()];
    let mut inv = vec![0f32; x.len() / d];
    y.par_chunks_mut(d).zip(x.par_chunks(d)).zip(inv.par_iter_mut()).for_each(|((yr, xr), iv)| {
        let ms = xr.iter().map(|&v| v as f64 * v as f64).sum::<f64>() / d as f64;
        *iv = (1.0 / (ms + eps).sqrt()) as f32;
        yr.iter_mut().zip(xr).zip(w).for_each(|((o, &xv), &wv)| *o = xv * *iv * wv);
    });
    (y, inv)
}

/// y = x · inv · w again from the saved `inv` (the backward recomputes instead of storing y).
pub fn rms_apply(x: &[f32], inv: &[f32], w: &[f32]) -> Vec<f32> {
    let d = w.len();
    let mut y = vec![0f32; x.len()];
    y.par_chunks_mut(d).zip(x.par_chunks(d)).zip(inv.par_iter()).for_each(|((yr, xr), &iv)| {
        yr.iter_mut().zip(xr).zip(w).for_each(|((o, &xv), &wv)| *o = xv * iv * wv);
    });
    y
}

/// RMSNorm backward. With x̂ = x · inv and g = dy · w:
/// dx += inv · (g − x̂ · mean(g · x̂)),  dw += Σ_rows dy · x̂.
pub fn rms_backward(x: &[f32], inv: &[f32], w: &[f32], dy: &[f32], dx: &mut [f32], dw: &mut [f32]) {
    let d = w.len();
    dx.par_chunks_mut(d).zip(x.par_chunks(d)).zip(dy.par_chunks(d)).zip(inv.par_iter()).for_each(
        |(((dxr, xr), dyr), &iv)| {
            let dot = xr
                .iter()
                .zip(dyr)
                .zip(w)
                .map(|((&xv, &g), &wv)| (g * wv) as f64 * (xv * iv) as f64)
                .sum::<f64>()
                / d as f64;
            let dot = dot as f32;
            for (((o, &xv), &g), &wv) in dxr.iter_mut().zip(xr).zip(dyr).zip(w) {
                *o += iv * (g * wv - xv * iv * dot);
            }
        },
    );
    add_row_sums(inv.len(), d, dw, |r, acc| {
        let (xr, dyr, iv) = (&x[r * d..(r + 1) * d], &dy[r * d..(r + 1) * d], inv[r]);
        acc.iter_mut().zip(xr).zip(dyr).for_each(|((a, &xv), &g)| *a += g * xv * iv);
    });
}

/// Half-split RoPE in place (HF `rotate_half`) on x (b·t rows, heads · hd): row r is position
/// r mod t. cos/sin (t, hd/2). `inverse` rotates by −θ: the backward of the forward rotation.
pub fn rope(
    x: &mut [f32],
    t: usize,
    heads: usize,
    hd: usize,
    cos: &[f32],
    sin: &[f32],
    inverse: bool,
) {
    let half = hd / 2;
    let sign = if inverse { -1.0 } else { 1.0 };
    x.par_chunks_mut(heads * hd).enumerate().for_each(|(r, row)| {
        let p = r % t;
        let (c, s) = (&cos[p * half..(p + 1) * half], &sin[p * half..(p + 1) * half]);
        for h in row.chunks_mut(hd) {
            let (x1, x2) = h.split_at_mut(half);
            for i in 0..half {
                let (a, b, si) = (x1[i], x2[i], sign * s[i]);
                x1[i] = a * c[i] - b * si;
                x2[i] = b * c[i] + a * si;
            }
        }
    });
}

/// Gated MLP activation: act(g) · u elementwise (SwiGLU for silu, GeGLU for tanh GELU).
pub fn glu(act: Activation, g: &[f32], u: &[f32]) -> Vec<f32> {
    let mut a = vec![0f32; g.len()];
    a.par_chunks_mut(1 << 12)
        .zip(g.par_chunks(1 << 12))
        .zip(u.par_chunks(1 << 12))
        .for_each(|((a, g), u)| super::act::glu_into(act, g, u, a));
    a
}

/// `glu` backward, overwriting `g` with dg and `u` with du (the inputs are not needed after):
/// dg = da · u · act'(g); du = da · act(g).
pub fn glu_backward(act: Activation, da: &[f32], g: &mut [f32], u: &mut [f32]) {
    g.par_chunks_mut(1 << 12)
        .zip(u.par_chunks_mut(1 << 12))
        .zip(da.par_chunks(1 << 12))
        .for_each(|((g, u), da)| super::act::glu_backward_into(act, da, g, u));
}

/// Add a bias (d) to every row of y (rows, d).
pub fn add_bias(y: &mut [f32], bias: &[f32]) {
    y.par_chunks_mut(bias.len())
        .for_each(|row| row.iter_mut().zip(bias).for_each(|(a, b)| *a += b));
}

/// The keys query i may see under causal attention with an optional sliding window
/// (key j allowed when j ≤ i and i − j < window, as transformers' masks): [lo, i].
pub fn visible(i: usize, window: Option<usize>) -> (usize, usize) {
    (window.map_or(0, |w| (i + 1).saturating_sub(w)), i + 1)
}

/// e^x in f32 for SIMD lanes: 2^n · e^r with n = round(x log2 e), r = x − n ln 2 (ln 2 in two
/// parts), e^r by Cephes' expf polynomial (Moshier; within 2 ulp on [−87, 88]). Branch-free,
/// so loops over it vectorise. Below −87.3 it returns 0 (e^x < 2^−126), above 88 +inf (e^88 is
/// within 2× of f32::MAX; a softmax only sees x ≤ 0); NaN stays NaN.
#[inline(always)]
pub(crate) fn exp_lane(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const ROUND: f32 = 12_582_912.0; // 1.5 · 2^23: x + ROUND − ROUND rounds x to an integer
    let c = x.clamp(-87.3, 88.0);
    let n = (c * LOG2E + ROUND) - ROUND;
    let r = c - n * 0.693_359_4 - n * -2.121_944_4e-4;
    let mut p = 1.987_569_2e-4;
    p = p * r + 1.398_2e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 0.166_666_65;
    p = p * r + 0.5;
    let e = (p * r * r + r + 1.0) * f32::from_bits(((n as i32 + 127) as u32) << 23);
    if x < -87.3 {
        0.0
    } else if x > 88.0 {
        f32::INFINITY
    } else if x.is_nan() {
        x
    } else {
        e
    }
}

#[inline(always)]
fn exp_shifted_lanes(x: &mut [f32], shift: f32) -> f32 {
    const LANES: usize = 16;
    let mut acc = [0f32; LANES];
    let mut chunks = x.chunks_exact_mut(LANES);
    for c in &mut chunks {
        for (v, a) in c.iter_mut().zip(acc.iter_mut()) {
            *v = exp_lane(*v - shift);
            *a += *v;
        }
    }
    for (v, a) in chunks.into_remainder().iter_mut().zip(acc.iter_mut()) {
        *v = exp_lane(*v - shift);
        *a += *v;
    }
    // The lanes' partial sums in a fixed order: the result does not depend on the SIMD width.
    acc.iter().sum()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn exp_shifted_avx2(x: &mut [f32], shift: f32) -> f32 {
    exp_shifted_lanes(x, shift)
}

#[inline(always)]
fn exp_shifted_into_lanes(x: &[f32], out: &mut [f32], shift: f32) -> f32 {
    const LANES: usize = 16;
    let mut acc = [0f32; LANES];
    let n = x.len() - x.len() % LANES;
    for (c, o) in x[..n].chunks_exact(LANES).zip(out[..n].chunks_exact_mut(LANES)) {
        for ((v, o), a) in c.iter().zip(o.iter_mut()).zip(acc.iter_mut()) {
            *o = exp_lane(*v - shift);
            *a += *o;
        }
    }
    for ((v, o), a) in x[n..].iter().zip(out[n..].iter_mut()).zip(acc.iter_mut()) {
        *o = exp_lane(*v - shift);
        *a += *o;
    }
    acc.iter().sum()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn exp_shifted_into_avx2(x: &[f32], out: &mut [f32], shift: f32) -> f32 {
    exp_shifted_into_lanes(x, out, shift)
}

/// out_i ← e^(x_i − shift), returning Σ_i of the results: `exp_shifted` from one buffer into
/// another (the same bits), which saves a copy where the scores must stay.
pub fn exp_shifted_into(x: &[f32], out: &mut [f32], shift: f32) -> f32 {
    assert_eq!(x.len(), out.len(), "exp_shifted_into: lengths");
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2 (checked just above).
        return unsafe { exp_shifted_into_avx2(x, out, shift) };
    }
    exp_shifted_into_lanes(x, out, shift)
}

/// x_i ← e^(x_i − shift) in place, returning Σ_i of the results: the body of every softmax here
/// (attention, the losses, perplexity). Vectorised (AVX2 where the CPU has it, SSE2 otherwise;
/// the same arithmetic and summation order either way, so the same bits); libm's scalar expf
/// made the causal softmax about a third of the training attention's time.
pub fn exp_shifted(x: &mut [f32], shift: f32) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2 (checked just above).
        return unsafe { exp_shifted_avx2(x, shift) };
    }
    exp_shifted_lanes(x, shift)
}

/// Causal softmax of each row of s (t, t) in place; masked entries become 0. Returns each row's
/// log-sum-exp (the backward rebuilds the probabilities from it).
pub fn causal_softmax(s: &mut [f32], t: usize, window: Option<usize>, lse: &mut [f32]) {
    for (i, (row, l)) in s.chunks_mut(t).zip(lse.iter_mut()).enumerate() {
        let (lo, hi) = visible(i, window);
        let max = row[lo..hi].iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
        let sum = exp_shifted(&mut row[lo..hi], max);
        let inv = 1.0 / sum;
        row[lo..hi].iter_mut().for_each(|v| *v *= inv);
        row[..lo].fill(0.0);
        row[hi..].fill(0.0);
        *l = max + sum.ln();
    }
}

/// Probabilities from raw scores s (t, t) and the forward's log-sum-exp, in place.
pub fn causal_probs(s: &mut [f32], t: usize, window: Option<usize>, lse: &[f32]) {
    for (i, (row, &l)) in s.chunks_mut(t).zip(lse).enumerate() {
        let (lo, hi) = visible(i, window);
        exp_shifted(&mut row[lo..hi], l);
        row[..lo].fill(0.0);
        row[hi..].fill(0.0);
    }
}

/// Causal softmax backward in place: dp (t, t) becomes ds = p ⊙ (dp − Σ_j dp·p) row by row,
/// over each row's visible keys only (ds is 0 elsewhere, and dp there is never read: the
/// attention kernels compute it for the visible blocks only).
pub fn softmax_backward(p: &[f32], dp: &mut [f32], t: usize, window: Option<usize>) {
    for (i, (pr, dr)) in p.chunks(t).zip(dp.chunks_mut(t)).enumerate() {
        let (lo, hi) = visible(i, window);
        let dot: f32 = pr[lo..hi].iter().zip(&dr[lo..hi]).map(|(a, b)| a * b).sum();
        dr[lo..hi].iter_mut().zip(&pr[lo..hi]).for_each(|(d, &pv)| *d = pv * (*d - dot));
        dr[..lo].fill(0.0);
        dr[hi..].fill(0.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(a: &[f32], b: &[f32], m: usize, n: usize, k: usize) -> Vec<f32> {
        let mut c = vec![0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                c[i * n + j] = (0..k).map(|p| a[i * k + p] * b[p * n + j]).sum();
            }
        }
        c
    }

    #[test]
    fn gemm_strides_and_accumulation() {
        let (m, n, k) = (5, 7, 3);
        let a: Vec<f32> = (0..m * k).map(|i| i as f32 * 0.5 - 3.0).collect();
        let b: Vec<f32> = (0..k * n).map(|i| (i as f32).sin()).collect();
        let want = naive(&a, &b, m, n, k);
        let mut c = vec![1f32; m * n];
        gemm(&mut c, n, m, n, k, View::rows(&a, k), View::rows(&b, n), true, 2.0, Par::All);
        for (x, y) in c.iter().zip(&want) {
            assert!((x - (1.0 + 2.0 * y)).abs() < 1e-5);
        }
        // aᵀ given as the transpose of a (k, m) buffer.
        let at: Vec<f32> = (0..k * m).map(|i| a[(i % m) * k + i / m]).collect();
        let mut c2 = vec![9f32; m * n];
        gemm(&mut c2, n, m, n, k, View::t(&at, m), View::rows(&b, n), false, 1.0, Par::One);
        for (x, y) in c2.iter().zip(&want) {
            assert!((x - y).abs() < 1e-5);
        }
    }

    #[test]
    fn gemm_new_writes_every_element() {
        for (m, n, k) in [(5, 7, 3), (1, 1, 1), (33, 17, 64), (64, 300, 9)] {
            let a: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.37).sin()).collect();
            let b: Vec<f32> = (0..k * n).map(|i| (i as f32 * 0.11).cos()).collect();
            let want = naive(&a, &b, m, n, k);
            // bᵀ given as a (n, k) buffer, as a frozen linear layer's weight is
            let bt: Vec<f32> = (0..n * k).map(|i| b[(i % k) * n + i / k]).collect();
            for par in [Par::All, Par::One] {
                let c = gemm_new(m, n, k, View::rows(&a, k), View::t(&bt, k), par);
                assert_eq!(c.len(), m * n);
                for (x, y) in c.iter().zip(&want) {
                    assert!((x - y).abs() < 1e-4, "{m}x{n}x{k}: {x} vs {y}");
                }
            }
        }
        assert_eq!(
            gemm_new(2, 3, 0, View::rows(&[], 0), View::rows(&[], 3), Par::All),
            vec![0.0; 6]
        );
    }

    #[test]
    fn column_sums_over_several_row_blocks() {
        let (rows, cols) = (3 * ROW_BLOCK + 5, 3);
        let x: Vec<f32> = (0..rows * cols).map(|i| (i % 7) as f32 - 3.0).collect();
        let mut out = vec![1f32; cols];
        add_col_sums(&x, cols, &mut out);
        for (j, o) in out.iter().enumerate() {
            let want: f32 = 1.0 + (0..rows).map(|r| x[r * cols + j]).sum::<f32>();
            assert_eq!(*o, want);
        }
    }

    #[test]
    fn softmax_rows_sum_to_one_and_mask() {
        let t = 4;
        let mut s: Vec<f32> = (0..t * t).map(|i| (i as f32 * 0.7).cos()).collect();
        let raw = s.clone();
        let mut lse = vec![0f32; t];
        causal_softmax(&mut s, t, Some(2), &mut lse);
        for i in 0..t {
            let row = &s[i * t..(i + 1) * t];
            assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-6);
            let (lo, hi) = visible(i, Some(2));
            assert!(row.iter().enumerate().all(|(j, &v)| (j >= lo && j < hi) || v == 0.0));
        }
        let mut again = raw;
        causal_probs(&mut again, t, Some(2), &lse);
        assert!(again.iter().zip(&s).all(|(a, b)| (a - b).abs() < 1e-6));
    }

    /// The vectorised exponential against f64 over the whole range a softmax sees, the edges,
    /// and every tail length; the sum it returns is the sum of what it wrote.
    #[test]
    fn exp_shifted_is_within_two_ulp_of_f64() {
        for n in [0, 1, 15, 16, 17, 100, 1003] {
            let x: Vec<f32> = (0..n).map(|i| ((i as f32) * 0.731).sin() * 80.0).collect();
            let mut y = x.clone();
            let sum = exp_shifted(&mut y, 1.5);
            for (&a, &b) in x.iter().zip(&y) {
                let want = ((a - 1.5) as f64).exp(); // the shift is applied in f32
                if (a - 1.5) > 88.0 {
                    assert_eq!(b, f32::INFINITY);
                } else if want < 1.2e-38 {
                    assert!(b == 0.0 || (b as f64 - want).abs() < 1e-38, "e^{a}: {b}");
                } else {
                    assert!(
                        ((b as f64 - want) / want).abs() < 2.5e-7,
                        "e^({a} - 1.5): {b} vs {want}"
                    );
                }
            }
            // (e^(80 − 1.5) · 1003 terms: the f32 sum stays finite)
            let direct: f64 = y.iter().map(|&v| v as f64).sum();
            assert!((sum as f64 - direct).abs() <= 1e-6 * direct.max(1.0), "{sum} vs {direct}");
            // from one buffer into another: the same bits
            let mut z = vec![7f32; n];
            let sum2 = exp_shifted_into(&x, &mut z, 1.5);
            assert_eq!(sum2.to_bits(), sum.to_bits());
            assert!(z.iter().zip(&y).all(|(a, b)| a.to_bits() == b.to_bits()));
            // every instruction set the dispatch may pick: the same bits
            let same = |w: &[f32], s: f32| {
                s.to_bits() == sum.to_bits()
                    && w.iter().zip(&y).all(|(a, b)| a.to_bits() == b.to_bits())
            };
            let mut w = x.clone();
            let s = exp_shifted_lanes(&mut w, 1.5);
            assert!(same(&w, s), "the portable path differs at n = {n}");
            #[cfg(target_arch = "x86_64")]
            if is_x86_feature_detected!("avx2") {
                let (mut w, mut o) = (x.clone(), vec![0f32; n]);
                // SAFETY: the CPU has AVX2 (checked above).
                let (s, s2) = unsafe {
                    (exp_shifted_avx2(&mut w, 1.5), exp_shifted_into_avx2(&x, &mut o, 1.5))
                };
                assert!(same(&w, s) && same(&o, s2), "the AVX2 path differs at n = {n}");
            }
        }
        let mut edge =
            [0.0f32, -87.0, -88.0, 87.9, 88.1, f32::NEG_INFINITY, f32::INFINITY, f32::NAN];
        exp_shifted(&mut edge, 0.0);
        assert_eq!(edge[0], 1.0);
        assert!((edge[1] as f64 / (-87f64).exp() - 1.0).abs() < 2.5e-7);
        assert_eq!(edge[2], 0.0);
        assert!((edge[3] as f64 / (87.9f32 as f64).exp() - 1.0).abs() < 2.5e-7);
        assert_eq!(&edge[4..7], &[f32::INFINITY, 0.0, f32::INFINITY]);
        assert!(edge[7].is_nan());
    }

    #[test]
    fn rope_inverse_undoes_forward() {
        let (t, heads, hd) = (3, 2, 4);
        let x: Vec<f32> = (0..2 * t * heads * hd).map(|i| i as f32 * 0.1).collect();
        let cos: Vec<f32> = (0..t * 2).map(|i| (i as f32).cos()).collect();
        let sin: Vec<f32> = (0..t * 2).map(|i| (i as f32).sin()).collect();
        let mut y = x.clone();
        rope(&mut y, t, heads, hd, &cos, &sin, false);
        assert!(y.iter().zip(&x).any(|(a, b)| (a - b).abs() > 1e-3));
        rope(&mut y, t, heads, hd, &cos, &sin, true);
        assert!(y.iter().zip(&x).all(|(a, b)| (a - b).abs() < 1e-5));
    }
}
