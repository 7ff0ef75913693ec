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

/// q (n, heads · hd), k and v (n, kv · hd) with n = b · t -> (output (n, heads · hd) before
/// o_proj, log-sum-exp (b, heads, t)).
pub fn forward(s: &Shape, q: &[f32], k: &[f32], v: &[f32]) -> (Vec<f32>, Vec<f32>) {
    let Shape { b, t, heads, kv, hd, scale, window } = *s;
    let (qd, kd, rep) = (heads * hd, kv * hd, heads / kv);
    // One task per (window, head): S = scale · q_h k_gᵀ (t, t), causal softmax, o_h = P v_g.
    let outs: Vec<(Vec<f32>, Vec<f32>)> = (0..b * heads)
        .into_par_iter()
        .map(|task| {
            let (bi, h) = (task / heads, task % heads);
            let g = h / rep;
            let qh = View { data: &q[bi * t * qd + h * hd..], rs: qd, cs: 1 }; // (t, hd)
            let kt = View { data: &k[bi * t * kd + g * hd..], rs: 1, cs: kd }; // (hd, t)
            let vg = View { data: &v[bi * t * kd + g * hd..], rs: kd, cs: 1 }; // (t, hd)
            let mut sc = vec![0f32; t * t];
            gemm(&mut sc, t, t, t, hd, qh, kt, false, scale, Par::One);
            let mut lse = vec![0f32; t];
            kernels::causal_softmax(&mut sc, t, window, &mut lse);
            let mut o = vec![0f32; t * hd];
            gemm(&mut o, hd, t, hd, t, View::rows(&sc, t), vg, false, 1.0, Par::One);
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
    let Shape { b, t, heads, kv, hd, scale, window } = *s;
    let (qd, kd, rep) = (heads * hd, kv * hd, heads / kv);
    // One task per (window, kv head) so the rep query heads sharing it add their dk, dv in a
    // fixed order.
    let parts: Vec<(Vec<f32>, Vec<f32>, Vec<f32>)> = (0..b * kv)
        .into_par_iter()
        .map(|task| {
            let (bi, g) = (task / kv, task % kv);
            let kt = View { data: &k[bi * t * kd + g * hd..], rs: 1, cs: kd }; // (hd, t)
            let kg = View { data: &k[bi * t * kd + g * hd..], rs: kd, cs: 1 }; // (t, hd)
            let vt = View { data: &v[bi * t * kd + g * hd..], rs: 1, cs: kd }; // (hd, t)
            let mut dq = vec![0f32; rep * t * hd]; // (rep, t, hd)
            let mut dk = vec![0f32; t * hd];
            let mut dv = vec![0f32; t * hd];
            let mut p = vec![0f32; t * t];
            let mut dp = vec![0f32; t * t];
            for r in 0..rep {
                let h = g * rep + r;
                let qh = View { data: &q[bi * t * qd + h * hd..], rs: qd, cs: 1 }; // (t, hd)
                let doh = View { data: &dout[bi * t * qd + h * hd..], rs: qd, cs: 1 }; // (t, hd)
                gemm(&mut p, t, t, t, hd, qh, kt, false, scale, Par::One);
                let at = (bi * heads + h) * t;
                kernels::causal_probs(&mut p, t, window, &lse[at..at + t]);
                gemm(&mut dp, t, t, t, hd, doh, vt, false, 1.0, Par::One); // dP = dO vᵀ
                gemm(&mut dv, hd, t, hd, t, View::t(&p, t), doh, true, 1.0, Par::One); // dv += Pᵀ dO
                kernels::softmax_backward(&p, &mut dp, t); // dp = dS
                let dqr = &mut dq[r * t * hd..(r + 1) * t * hd];
                gemm(dqr, hd, t, hd, t, View::rows(&dp, t), kg, false, scale, Par::One);
                // dk += scale dSᵀ q
                gemm(&mut dk, hd, t, hd, t, View::t(&dp, t), qh, true, scale, Par::One);
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
