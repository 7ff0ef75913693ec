//! Causal grouped-query attention on flat buffers, forward and backward, for training windows
//! at positions 0..t without padding. The forward keeps only each row's log-sum-exp; the
//! backward rebuilds the probabilities from it (as FlashAttention does; Dao et al. 2022).

use super::kernels::{self, gemm, Par, View};
use rayon::prelude::*;

/// The attention's shape: b windows of t positions, `heads` query heads over `kv` key heads of
/// width `hd`; scores are multiplied by `scale`; keys i − window < j ≤ i are visible.
#[derive(Clone, Copy)]
pub struct Shape {
    pub b: usize,
    pub t: usize,
    pub heads: usize,
    pub kv: usize,
    pub hd: usize,
    pub scale: f32,
    pub window: Option<usize>,
}

/// Query rows per block of the causal kernels: block [r0, r0 + n) multiplies only against keys
/// [lo(r0), r0 + n), so the fully masked upper triangle of blocks is never computed (about
/// half the score and P·V work at long windows; FlashAttention skips masked tiles the same way).
/// Measured by `examples/attention_speed.rs`.
pub const QUERY_BLOCK: usize = 64;

/// Row blocks of a (t, t) causal attention with their key ranges: (r0, n, lo, nk), keys
/// [lo, lo + nk) cover every key a row r0..r0 + n may see (`kernels::visible` grows with i).
/// One block of t rows is dense attention: every (query, key) pair computed.
fn blocks(
    t: usize,
    window: Option<usize>,
    qb: usize,
) -> impl Iterator<Item = (usize, usize, usize, usize)> {
    (0..t).step_by(qb).map(move |r0| {
        let n = qb.min(t - r0);
        let lo = kernels::visible(r0, window).0;
        (r0, n, lo, r0 + n - lo)
    })
}

/// One block's scores: c[r0..r0 + n, lo..lo + nk] (c is (t, t)) = scale · a[r0..r0 + n] ·
/// b[lo..lo + nk]ᵀ, with a and b (t, hd) given with their row strides (q against k in the
/// forward; q against k and dO against v in the backward).
fn block_scores(
    c: &mut [f32],
    t: usize,
    (r0, n, lo, nk): (usize, usize, usize, usize),
    hd: usize,
    (a, ars): (&[f32], usize),
    (b, brs): (&[f32], usize),
    scale: f32,
) {
    let bt = View { data: &b[lo * brs..], rs: 1, cs: brs }; // (hd, nk)
    gemm(&mut c[r0 * t + lo..], t, n, nk, hd, at(a, ars, r0, 0), bt, false, scale, Par::One);
}

/// A row-major view starting at element (i, j) of a matrix with row stride `rs`.
fn at(data: &[f32], rs: usize, i: usize, j: usize) -> View<'_> {
    View { data: &data[i * rs + j..], rs, cs: 1 }
}

/// q (n, heads · hd), k and v (n, kv · hd) with n = b · t -> (output (n, heads · hd) before
/// o_proj, log-sum-exp (b, heads, t)).
pub fn forward(s: &Shape, q: &[f32], k: &[f32], v: &[f32]) -> (Vec<f32>, Vec<f32>) {
    forward_blocked(s, q, k, v, QUERY_BLOCK)
}

/// [`forward`] with `qb` query rows per block (`qb` ≥ t: dense).
pub fn forward_blocked(
    s: &Shape,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    qb: usize,
) -> (Vec<f32>, Vec<f32>) {
    let Shape { b, t, heads, kv, hd, scale, window } = *s;
    let (qd, kd, rep) = (heads * hd, kv * hd, heads / kv);
    // One task per (window, head): S = scale · q_h k_gᵀ (t, t), causal softmax, o_h = P v_g,
    // each product over the visible key range of a block of query rows only.
    let outs: Vec<(Vec<f32>, Vec<f32>)> = (0..b * heads)
        .into_par_iter()
        .map(|task| {
            let (bi, h) = (task / heads, task % heads);
            let g = h / rep;
            let qh = &q[bi * t * qd + h * hd..]; // (t, hd), row stride qd
            let kg = &k[bi * t * kd + g * hd..]; // (t, hd), row stride kd
            let vg = &v[bi * t * kd + g * hd..]; // (t, hd), row stride kd
                                                 // Entries of sc outside each block's key range stay 0 and are never read:
                                                 // causal_softmax reads only the visible [lo, i] of row i and zeroes the rest.
            let mut sc = vec![0f32; t * t];
            for blk in blocks(t, window, qb) {
                block_scores(&mut sc, t, blk, hd, (qh, qd), (kg, kd), scale);
            }
            let mut lse = vec![0f32; t];
            kernels::causal_softmax(&mut sc, t, window, &mut lse);
            let mut o = vec![0f32; t * hd];
            for (r0, n, lo, nk) in blocks(t, window, qb) {
                let (p, vb) = (at(&sc, t, r0, lo), at(vg, kd, lo, 0)); // (n, nk), (nk, hd)
                gemm(&mut o[r0 * hd..], hd, n, hd, nk, p, vb, false, 1.0, Par::One);
            }
            (o, lse)
        })
        .collect();
    let mut attn = vec![0f32; b * t * qd]; // (b, t, heads, hd)
    let mut lse = vec![0f32; b * heads * t]; // (b, heads, t)
    for (task, (o, ls)) in outs.into_iter().enumerate() {
        let (bi, h) = (task / heads, task % heads);
        for (i, row) in o.chunks(hd).enumerate() {
            let at = (bi * t + i) * qd + h * hd;
            attn[at..at + hd].copy_from_slice(row);
        }
        lse[task * t..(task + 1) * t].copy_from_slice(&ls);
    }
    (attn, lse)
}

/// Gradients (dq, dk, dv), shaped like q, k, v, from the output's gradient `dout`.
pub fn backward(
    s: &Shape,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    lse: &[f32],
    dout: &[f32],
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    backward_blocked(s, q, k, v, lse, dout, QUERY_BLOCK)
}

/// [`backward`] with `qb` query rows per block (`qb` ≥ t: dense).
pub fn backward_blocked(
    s: &Shape,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    lse: &[f32],
    dout: &[f32],
    qb: usize,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let Shape { b, t, heads, kv, hd, scale, window } = *s;
    let (qd, kd, rep) = (heads * hd, kv * hd, heads / kv);
    // One task per (window, kv head) so the rep query heads sharing it add their dk, dv in a
    // fixed order.
    let parts: Vec<(Vec<f32>, Vec<f32>, Vec<f32>)> = (0..b * kv)
        .into_par_iter()
        .map(|task| {
            let (bi, g) = (task / kv, task % kv);
            let kg = &k[bi * t * kd + g * hd..]; // (t, hd), row stride kd
            let vg = &v[bi * t * kd + g * hd..]; // (t, hd), row stride kd
            let mut dq = vec![0f32; rep * t * hd]; // (rep, t, hd)
            let mut dk = vec![0f32; t * hd];
            let mut dv = vec![0f32; t * hd];
            // As in the forward, only each query block's key range is computed; the softmax
            // kernels read the visible entries of each row only and zero the rest.
            let mut p = vec![0f32; t * t];
            let mut dp = vec![0f32; t * t];
            for r in 0..rep {
                let h = g * rep + r;
                let qh = &q[bi * t * qd + h * hd..]; // (t, hd), row stride qd
                let doh = &dout[bi * t * qd + h * hd..]; // (t, hd), row stride qd
                for blk in blocks(t, window, qb) {
                    // the scores again, and dP = dO vᵀ
                    block_scores(&mut p, t, blk, hd, (qh, qd), (kg, kd), scale);
                    block_scores(&mut dp, t, blk, hd, (doh, qd), (vg, kd), 1.0);
                }
                let at_lse = (bi * heads + h) * t;
                kernels::causal_probs(&mut p, t, window, &lse[at_lse..at_lse + t]);
                kernels::softmax_backward(&p, &mut dp, t, window); // dp = dS
                let dqr = &mut dq[r * t * hd..(r + 1) * t * hd];
                for (r0, n, lo, nk) in blocks(t, window, qb) {
                    // dv += Pᵀ dO, dq = scale dS k, dk += scale dSᵀ q
                    let pt = View { data: &p[r0 * t + lo..], rs: 1, cs: t }; // Pᵀ (nk, n)
                    let dst = View { data: &dp[r0 * t + lo..], rs: 1, cs: t }; // dSᵀ (nk, n)
                    gemm(
                        &mut dv[lo * hd..],
                        hd,
                        nk,
                        hd,
                        n,
                        pt,
                        at(doh, qd, r0, 0),
                        true,
                        1.0,
                        Par::One,
                    );
                    let ds = at(&dp, t, r0, lo); // (n, nk)
                    gemm(
                        &mut dqr[r0 * hd..],
                        hd,
                        n,
                        hd,
                        nk,
                        ds,
                        at(kg, kd, lo, 0),
                        false,
                        scale,
                        Par::One,
                    );
                    gemm(
                        &mut dk[lo * hd..],
                        hd,
                        nk,
                        hd,
                        n,
                        dst,
                        at(qh, qd, r0, 0),
                        true,
                        scale,
                        Par::One,
                    );
                }
            }
            (dq, dk, dv)
        })
        .collect();
    let n = b * t;
    let (mut dq, mut dk, mut dv) = (vec![0f32; n * qd], vec![0f32; n * kd], vec![0f32; n * kd]);
    for (task, (pq, pk, pv)) in parts.into_iter().enumerate() {
        let (bi, g) = (task / kv, task % kv);
        for i in 0..t {
            let row = bi * t + i;
            let at = row * kd + g * hd;
            dk[at..at + hd].copy_from_slice(&pk[i * hd..(i + 1) * hd]);
            dv[at..at + hd].copy_from_slice(&pv[i * hd..(i + 1) * hd]);
            for r in 0..rep {
                let at = row * qd + (g * rep + r) * hd;
                dq[at..at + hd].copy_from_slice(&pq[(r * t + i) * hd..(r * t + i + 1) * hd]);
            }
        }
    }
    (dq, dk, dv)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Attention of one window and head in f64, straight from the definition: (output (t, hd),
    /// lse (t), dq, dk, dv) for the loss Σ dout · output.
    #[allow(clippy::type_complexity)]
    fn reference(
        t: usize,
        hd: usize,
        scale: f64,
        window: Option<usize>,
        [q, k, v, dout]: [&dyn Fn(usize, usize) -> f64; 4],
    ) -> [Vec<f64>; 5] {
        let (mut o, mut lse, mut dq) = (vec![0.0; t * hd], vec![0.0; t], vec![0.0; t * hd]);
        let (mut dk, mut dv) = (vec![0.0; t * hd], vec![0.0; t * hd]);
        for i in 0..t {
            let (lo, hi) = kernels::visible(i, window);
            let s: Vec<f64> =
                (lo..hi).map(|j| scale * (0..hd).map(|d| q(i, d) * k(j, d)).sum::<f64>()).collect();
            let max = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let z: f64 = s.iter().map(|x| (x - max).exp()).sum();
            lse[i] = max + z.ln();
            let p: Vec<f64> = s.iter().map(|x| (x - lse[i]).exp()).collect();
            let dp: Vec<f64> =
                (lo..hi).map(|j| (0..hd).map(|d| dout(i, d) * v(j, d)).sum()).collect();
            let dot: f64 = p.iter().zip(&dp).map(|(a, b)| a * b).sum();
            for (jj, j) in (lo..hi).enumerate() {
                let ds = p[jj] * (dp[jj] - dot);
                for d in 0..hd {
                    o[i * hd + d] += p[jj] * v(j, d);
                    dv[j * hd + d] += p[jj] * dout(i, d);
                    dq[i * hd + d] += scale * ds * k(j, d);
                    dk[j * hd + d] += scale * ds * q(i, d);
                }
            }
        }
        [o, lse, dq, dk, dv]
    }

    fn close(got: f32, want: f64, what: &str) {
        assert!((got as f64 - want).abs() <= 1e-4 * (1.0 + want.abs()), "{what}: {got} vs {want}");
    }

    /// The block-causal kernels equal dense causal attention in f64 for every window shape:
    /// shorter than a query block, exactly one, several with a ragged last block, with and
    /// without a sliding window, GQA with two query heads per key head.
    #[test]
    fn block_causal_attention_matches_the_definition() {
        for (t, window) in [(5, None), (QUERY_BLOCK, Some(9)), (150, None), (150, Some(70))] {
            let (b, heads, kv, hd) = (2, 4, 2, 8);
            let s = Shape { b, t, heads, kv, hd, scale: 0.35, window };
            let (qd, kd) = (heads * hd, kv * hd);
            let gen =
                |n: usize, f: f32| -> Vec<f32> { (0..n).map(|i| ((i as f32) * f).sin()).collect() };
            let (q, k, v) = (gen(b * t * qd, 0.37), gen(b * t * kd, 0.91), gen(b * t * kd, 1.3));
            let dout = gen(b * t * qd, 0.53);
            let (o, lse) = forward(&s, &q, &k, &v);
            let (dq, dk, dv) = backward(&s, &q, &k, &v, &lse, &dout);
            for bi in 0..b {
                for h in 0..heads {
                    let g = h / (heads / kv);
                    let qa = |i: usize, d: usize| q[(bi * t + i) * qd + h * hd + d] as f64;
                    let ka = |j: usize, d: usize| k[(bi * t + j) * kd + g * hd + d] as f64;
                    let va = |j: usize, d: usize| v[(bi * t + j) * kd + g * hd + d] as f64;
                    let da = |i: usize, d: usize| dout[(bi * t + i) * qd + h * hd + d] as f64;
                    let [ro, rl, rq, ..] = reference(t, hd, 0.35, window, [&qa, &ka, &va, &da]);
                    for i in 0..t {
                        close(lse[(bi * heads + h) * t + i], rl[i], "lse");
                        for d in 0..hd {
                            close(o[(bi * t + i) * qd + h * hd + d], ro[i * hd + d], "output");
                            close(dq[(bi * t + i) * qd + h * hd + d], rq[i * hd + d], "dq");
                        }
                    }
                }
                // dk, dv: the sum over the query heads sharing each key head.
                for g in 0..kv {
                    let (mut rk, mut rv) = (vec![0.0; t * hd], vec![0.0; t * hd]);
                    for h in g * (heads / kv)..(g + 1) * (heads / kv) {
                        let qa = |i: usize, d: usize| q[(bi * t + i) * qd + h * hd + d] as f64;
                        let ka = |j: usize, d: usize| k[(bi * t + j) * kd + g * hd + d] as f64;
                        let va = |j: usize, d: usize| v[(bi * t + j) * kd + g * hd + d] as f64;
                        let da = |i: usize, d: usize| dout[(bi * t + i) * qd + h * hd + d] as f64;
                        let [.., hk, hv] = reference(t, hd, 0.35, window, [&qa, &ka, &va, &da]);
                        rk.iter_mut().zip(hk).for_each(|(a, b)| *a += b);
                        rv.iter_mut().zip(hv).for_each(|(a, b)| *a += b);
                    }
                    for j in 0..t {
                        for d in 0..hd {
                            close(dk[(bi * t + j) * kd + g * hd + d], rk[j * hd + d], "dk");
                            close(dv[(bi * t + j) * kd + g * hd + d], rv[j * hd + d], "dv");
                        }
                    }
                }
            }
        }
    }
}
