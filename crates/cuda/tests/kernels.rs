//! Every GPU kernel against its CPU twin (the CPU executor's kernels in `orlik_model::cpu`,
//! AdamW in `orlik_train::optim`, or an f64 loop where the CPU path has no separate kernel), on
//! random inputs of odd sizes. These need an NVIDIA GPU: they are ignored by default and
//! `scripts/gpu-check.sh` runs them with `--ignored` on a GPU machine. Run without a GPU they
//! fail with the reason (never pass).

#![allow(clippy::unwrap_used)] // tests unwrap: a failure is the test failing

use orlik_cuda::device::probe;
use orlik_cuda::gpu::{AdamStep, AttnShape};
use orlik_cuda::Gpu;
use orlik_model::block::Activation;
use orlik_model::cpu::{attention, kernels};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn gpu() -> Gpu {
    let found = probe().unwrap_or_else(|why| panic!("no usable GPU: {why}"));
    Gpu::open(&found[0]).unwrap_or_else(|e| panic!("{e}"))
}

fn rand_vec(rng: &mut StdRng, n: usize, scale: f32) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-1.0f32..1.0) * scale).collect()
}

/// max |a − b| / (1 + |b|) ≤ tol.
fn close(what: &str, got: &[f32], want: &[f32], tol: f32) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    let (mut worst, mut at) = (0f32, 0);
    for (i, (a, b)) in got.iter().zip(want).enumerate() {
        let e = (a - b).abs() / (1.0 + b.abs());
        if e > worst || e.is_nan() {
            (worst, at) = (e, i);
        }
    }
    assert!(
        worst <= tol,
        "{what}: element {at}: {} vs {} (error {worst:e} > {tol:e})",
        got[at],
        want[at]
    );
    println!("{what}: max relative error {worst:.2e} over {} elements", got.len());
}

#[test]
#[ignore = "needs an NVIDIA GPU: scripts/gpu-check.sh runs these with --ignored"]
fn rms_norm_forward_and_backward_match_the_cpu() {
    let g = gpu();
    let mut rng = StdRng::seed_from_u64(1);
    for (rows, d, offset) in [(7, 576, false), (5, 1000, true), (1, 64, false)] {
        let x = rand_vec(&mut rng, rows * d, 2.0);
        let w = rand_vec(&mut rng, d, 1.0);
        let dy = rand_vec(&mut rng, rows * d, 1.0);
        let w_eff: Vec<f32> = w.iter().map(|v| v + if offset { 1.0 } else { 0.0 }).collect();
        let (y_cpu, inv_cpu) = kernels::rms_forward(&x, &w_eff, 1e-6);
        let (mut dx_cpu, mut dw_cpu) = (vec![0.1f32; rows * d], vec![0.2f32; d]);
        kernels::rms_backward(&x, &inv_cpu, &w_eff, &dy, &mut dx_cpu, &mut dw_cpu);

        let (xd, wd, dyd) = (g.upload(&x).unwrap(), g.upload(&w).unwrap(), g.upload(&dy).unwrap());
        let (mut y, mut inv) = (g.zeros(rows * d).unwrap(), g.zeros(rows).unwrap());
        g.rms_forward(&xd, &wd, &mut y, &mut inv, rows, 1e-6, offset).unwrap();
        let (mut dx, mut dw) =
            (g.upload(&vec![0.1f32; rows * d]).unwrap(), g.upload(&vec![0.2f32; d]).unwrap());
        g.rms_backward(&xd, &inv, &wd, &dyd, &mut dx, &mut dw, rows, offset).unwrap();
        close("rms y", &g.download(&y).unwrap(), &y_cpu, 1e-6);
        close("rms inv", &g.download(&inv).unwrap(), &inv_cpu, 1e-6);
        close("rms dx", &g.download(&dx).unwrap(), &dx_cpu, 1e-5);
        close("rms dw", &g.download(&dw).unwrap(), &dw_cpu, 1e-5);
    }
}

#[test]
#[ignore = "needs an NVIDIA GPU: scripts/gpu-check.sh runs these with --ignored"]
fn rope_and_its_inverse_match_the_cpu() {
    let g = gpu();
    let mut rng = StdRng::seed_from_u64(2);
    let (b, t, heads, hd) = (2, 9, 3, 16);
    let half = hd / 2;
    let cos: Vec<f32> = (0..t * half).map(|i| ((i as f32) * 0.37).cos()).collect();
    let sin: Vec<f32> = (0..t * half).map(|i| ((i as f32) * 0.37).sin()).collect();
    let x = rand_vec(&mut rng, b * t * heads * hd, 1.0);
    let pos: Vec<u32> = (0..b * t).map(|r| (r % t) as u32).collect();
    let (cd, sd, pd) = (g.upload(&cos).unwrap(), g.upload(&sin).unwrap(), g.upload(&pos).unwrap());
    for inverse in [false, true] {
        let mut want = x.clone();
        kernels::rope(&mut want, t, heads, hd, &cos, &sin, inverse);
        let mut xd = g.upload(&x).unwrap();
        g.rope(&mut xd, &pd, &cd, &sd, heads, hd, inverse).unwrap();
        close(
            if inverse { "rope inverse" } else { "rope" },
            &g.download(&xd).unwrap(),
            &want,
            1e-6,
        );
    }
}

#[test]
#[ignore = "needs an NVIDIA GPU: scripts/gpu-check.sh runs these with --ignored"]
fn gated_activations_and_their_backward_match_the_cpu() {
    let g = gpu();
    let mut rng = StdRng::seed_from_u64(3);
    let n = 10_007;
    let (gate, up, da) =
        (rand_vec(&mut rng, n, 4.0), rand_vec(&mut rng, n, 2.0), rand_vec(&mut rng, n, 1.0));
    for act in [Activation::Silu, Activation::GeluTanh] {
        let want = kernels::glu(act, &gate, &up);
        let (mut dg_cpu, mut du_cpu) = (gate.clone(), up.clone());
        kernels::glu_backward(act, &da, &mut dg_cpu, &mut du_cpu);
        let (gd, ud, dad) =
            (g.upload(&gate).unwrap(), g.upload(&up).unwrap(), g.upload(&da).unwrap());
        let mut a = g.zeros(n).unwrap();
        g.glu_forward(act, &gd, &ud, &mut a).unwrap();
        let (mut gm, mut um) = (gd.clone(), ud.clone());
        g.glu_backward(act, &dad, &mut gm, &mut um).unwrap();
        close(&format!("{act:?} forward"), &g.download(&a).unwrap(), &want, 1e-6);
        close(&format!("{act:?} dgate"), &g.download(&gm).unwrap(), &dg_cpu, 1e-5);
        close(&format!("{act:?} dup"), &g.download(&um).unwrap(), &du_cpu, 1e-6);
    }
}

#[test]
#[ignore = "needs an NVIDIA GPU: scripts/gpu-check.sh runs these with --ignored"]
fn embedding_bias_and_elementwise_kernels_are_exact() {
    let g = gpu();
    let mut rng = StdRng::seed_from_u64(4);
    let (vocab, d) = (50, 33);
    let table = rand_vec(&mut rng, vocab * d, 1.0);
    let ids: Vec<u32> = vec![3, 49, 0, 3, 17, 3];
    let n = ids.len();
    let idd = g.upload(&ids).unwrap();
    let mut out = g.zeros(n * d).unwrap();
    g.embed_gather(&idd, &g.upload(&table).unwrap(), &mut out, d, 2.5).unwrap();
    let want: Vec<f32> =
        ids.iter().flat_map(|&i| table[i as usize * d..][..d].iter().map(|v| v * 2.5)).collect();
    assert_eq!(g.download(&out).unwrap(), want, "gather");
    // Scatter-add: repeated ids add in row order, exactly as a sequential loop.
    let dy = rand_vec(&mut rng, n * d, 1.0);
    let mut grad_cpu = vec![0f32; vocab * d];
    for (r, &i) in ids.iter().enumerate() {
        for c in 0..d {
            grad_cpu[i as usize * d + c] += dy[r * d + c] * 2.5;
        }
    }
    let mut grad = g.zeros(vocab * d).unwrap();
    g.embed_scatter_add(&idd, &g.upload(&dy).unwrap(), &mut grad, d, 2.5).unwrap();
    assert_eq!(g.download(&grad).unwrap(), grad_cpu, "scatter-add");
    // bias add, column sums, axpy, scale, bf16 round trip
    let bias = rand_vec(&mut rng, d, 1.0);
    let mut y_cpu = dy.clone();
    kernels::add_bias(&mut y_cpu, &bias);
    let mut y = g.upload(&dy).unwrap();
    g.add_bias(&mut y, &g.upload(&bias).unwrap()).unwrap();
    assert_eq!(g.download(&y).unwrap(), y_cpu, "add_bias");
    let mut sums = g.zeros(d).unwrap();
    g.col_sums(&g.upload(&dy).unwrap(), &mut sums, n).unwrap();
    let want: Vec<f32> = (0..d).map(|c| (0..n).fold(0f32, |a, r| a + dy[r * d + c])).collect();
    assert_eq!(g.download(&sums).unwrap(), want, "col_sums");
    let mut z = g.upload(&dy).unwrap();
    g.axpy(&mut z, -0.5, &g.upload(&table[..n * d]).unwrap()).unwrap();
    g.scale(&mut z, 3.0).unwrap();
    let want: Vec<f32> = dy.iter().zip(&table).map(|(a, b)| (a + -0.5 * b) * 3.0).collect();
    assert_eq!(g.download(&z).unwrap(), want, "axpy + scale");
    let special = vec![1.0f32, -2.5, 1e-40, f32::INFINITY, f32::NAN, 3.140_625_4, 65504.0, -0.0];
    let mut bits = g.zeros::<u16>(special.len()).unwrap();
    g.f32_to_bf16(&g.upload(&special).unwrap(), &mut bits).unwrap();
    let got = g.download(&bits).unwrap();
    let want: Vec<u16> = special.iter().map(|&v| half::bf16::from_f32(v).to_bits()).collect();
    for (i, (a, b)) in got.iter().zip(&want).enumerate() {
        let nan = special[i].is_nan();
        assert!(
            a == b || (nan && (a & 0x7fc0) == 0x7fc0),
            "bf16 of {}: {a:#x} vs {b:#x}",
            special[i]
        );
    }
    let mut back = g.zeros::<f32>(special.len()).unwrap();
    g.bf16_to_f32(&bits, &mut back).unwrap();
    let back = g.download(&back).unwrap();
    for (i, &v) in back.iter().enumerate() {
        let w = half::bf16::from_bits(got[i]).to_f32();
        assert!(v == w || (v.is_nan() && w.is_nan()), "bf16 -> f32 of {:#x}", got[i]);
    }
}

/// Causal GQA attention in f64 with a cache offset and padding: the reference for the cached
/// and padded cases (the CPU executor's training kernel covers tk = t only).
#[allow(clippy::too_many_arguments)]
fn naive_attention(
    s: &AttnShape,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    valid: Option<&[u8]>,
) -> (Vec<f32>, Vec<f32>) {
    let (qd, kd, rep, off) = (s.heads * s.hd, s.kv * s.hd, s.heads / s.kv, s.tk - s.t);
    let mut o = vec![0f32; s.b * s.t * qd];
    let mut lse = vec![0f32; s.b * s.heads * s.t];
    for bi in 0..s.b {
        for h in 0..s.heads {
            let g = h / rep;
            for i in 0..s.t {
                let p = off + i;
                let lo = s.window.map_or(0, |w| (p + 1).saturating_sub(w));
                let keys: Vec<usize> =
                    (lo..=p).filter(|&j| valid.is_none_or(|m| m[bi * s.tk + j] != 0)).collect();
                let sc: Vec<f64> = keys
                    .iter()
                    .map(|&j| {
                        (0..s.hd)
                            .map(|d| {
                                q[(bi * s.t + i) * qd + h * s.hd + d] as f64
                                    * k[(bi * s.tk + j) * kd + g * s.hd + d] as f64
                            })
                            .sum::<f64>()
                            * s.scale as f64
                    })
                    .collect();
                let row = (bi * s.heads + h) * s.t + i;
                if keys.is_empty() {
                    lse[row] = f32::NEG_INFINITY;
                    continue;
                }
                let m = sc.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let l: f64 = sc.iter().map(|x| (x - m).exp()).sum();
                lse[row] = (m + l.ln()) as f32;
                for d in 0..s.hd {
                    let acc: f64 = keys
                        .iter()
                        .zip(&sc)
                        .map(|(&j, x)| {
                            (x - m).exp() / l * v[(bi * s.tk + j) * kd + g * s.hd + d] as f64
                        })
                        .sum();
                    o[(bi * s.t + i) * qd + h * s.hd + d] = acc as f32;
                }
            }
        }
    }
    (o, lse)
}

fn run_forward(
    g: &Gpu,
    s: &AttnShape,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    valid: Option<&[u8]>,
) -> (Vec<f32>, Vec<f32>) {
    let (qd, kd, vd) = (g.upload(q).unwrap(), g.upload(k).unwrap(), g.upload(v).unwrap());
    let mut o = g.zeros(q.len()).unwrap();
    let mut lse = g.zeros(s.b * s.heads * s.t).unwrap();
    let valid_d = valid.map(|m| g.upload(m).unwrap());
    g.attn_forward(s, (&qd, &kd, &vd), &mut o, &mut lse, valid_d.as_ref()).unwrap();
    (g.download(&o).unwrap(), g.download(&lse).unwrap())
}

#[test]
#[ignore = "needs an NVIDIA GPU: scripts/gpu-check.sh runs these with --ignored"]
fn attention_forward_and_backward_match_the_cpu_executor() {
    let g = gpu();
    let mut rng = StdRng::seed_from_u64(5);
    // Over one key tile and under it, GQA and MHA, with and without a sliding window, and a
    // head_dim over the block's thread count (each thread owns two dims).
    for (b, t, heads, kv, hd, window) in [
        (2, 37, 6, 2, 64, None),
        (1, 300, 4, 4, 32, Some(50)),
        (2, 130, 2, 1, 256, None),
        (1, 1, 3, 1, 8, None),
    ] {
        let s = AttnShape {
            b,
            t,
            tk: t,
            kcap: t,
            heads,
            kv,
            hd,
            scale: 1.0 / (hd as f32).sqrt(),
            window,
        };
        let q = rand_vec(&mut rng, b * t * heads * hd, 1.0);
        let k = rand_vec(&mut rng, b * t * kv * hd, 1.0);
        let v = rand_vec(&mut rng, b * t * kv * hd, 1.0);
        let dout = rand_vec(&mut rng, b * t * heads * hd, 1.0);
        let cpu_shape = attention::Shape { b, t, heads, kv, hd, scale: s.scale, window };
        let (o_cpu, lse_cpu) = attention::forward(&cpu_shape, &q, &k, &v);
        let (dq_cpu, dk_cpu, dv_cpu) = attention::backward(&cpu_shape, &q, &k, &v, &lse_cpu, &dout);
        let (o, lse) = run_forward(&g, &s, &q, &k, &v, None);
        let tag = format!("b{b} t{t} h{heads}/{kv} d{hd} w{window:?}");
        close(&format!("attention o, {tag}"), &o, &o_cpu, 2e-5);
        close(&format!("attention lse, {tag}"), &lse, &lse_cpu, 2e-5);
        let up = |x: &[f32]| g.upload(x).unwrap();
        let (qd, kd, vd, od, lsed, dod) = (up(&q), up(&k), up(&v), up(&o), up(&lse), up(&dout));
        let (mut dq, mut dk, mut dv) =
            (g.zeros(q.len()).unwrap(), g.zeros(k.len()).unwrap(), g.zeros(v.len()).unwrap());
        g.attn_backward(&s, (&qd, &kd, &vd), &od, &lsed, &dod, (&mut dq, &mut dk, &mut dv))
            .unwrap();
        close(&format!("attention dq, {tag}"), &g.download(&dq).unwrap(), &dq_cpu, 1e-4);
        close(&format!("attention dk, {tag}"), &g.download(&dk).unwrap(), &dk_cpu, 1e-4);
        close(&format!("attention dv, {tag}"), &g.download(&dv).unwrap(), &dv_cpu, 1e-4);
    }
}

#[test]
#[ignore = "needs an NVIDIA GPU: scripts/gpu-check.sh runs these with --ignored"]
fn cached_and_padded_attention_match_an_f64_reference_and_decode_equals_prefill() {
    let g = gpu();
    let mut rng = StdRng::seed_from_u64(6);
    let (b, tk, heads, kv, hd) = (2, 200, 4, 2, 64);
    let k = rand_vec(&mut rng, b * tk * kv * hd, 1.0);
    let v = rand_vec(&mut rng, b * tk * kv * hd, 1.0);
    let q_all = rand_vec(&mut rng, b * tk * heads * hd, 1.0);
    // Row 1 is left-padded by 7 keys (a shorter prompt in a batch).
    let valid: Vec<u8> = (0..b * tk).map(|i| u8::from(i / tk == 0 || i % tk >= 7)).collect();
    for window in [None, Some(64)] {
        let full = AttnShape { b, t: tk, tk, kcap: tk, heads, kv, hd, scale: 0.125, window };
        let (o_full, _) = run_forward(&g, &full, &q_all, &k, &v, Some(&valid));
        let (o_ref, _) = naive_attention(&full, &q_all, &k, &v, Some(&valid));
        close(&format!("padded prefill w{window:?}"), &o_full, &o_ref, 2e-5);
        // The last 3 queries against all 200 keys (a cache of 197): the prefill's last rows.
        let t = 3;
        let q_last: Vec<f32> = (0..b)
            .flat_map(|bi| {
                q_all[(bi * tk + tk - t) * heads * hd..(bi * tk + tk) * heads * hd].to_vec()
            })
            .collect();
        let s = AttnShape { t, ..full };
        let (o, _) = run_forward(&g, &s, &q_last, &k, &v, Some(&valid));
        let want: Vec<f32> = (0..b)
            .flat_map(|bi| {
                o_full[(bi * tk + tk - t) * heads * hd..(bi * tk + tk) * heads * hd].to_vec()
            })
            .collect();
        close(&format!("cached decode = prefill rows, w{window:?}"), &o, &want, 1e-6);
        // The same keys in a cache with room for 5 more per row (NaN there: never read).
        let kcap = tk + 5;
        let widen = |x: &[f32]| -> Vec<f32> {
            (0..b)
                .flat_map(|bi| {
                    let mut row = x[bi * tk * kv * hd..(bi + 1) * tk * kv * hd].to_vec();
                    row.extend(std::iter::repeat_n(f32::NAN, 5 * kv * hd));
                    row
                })
                .collect()
        };
        let s = AttnShape { kcap, ..s };
        let (o, _) = run_forward(&g, &s, &q_last, &widen(&k), &widen(&v), Some(&valid));
        close(&format!("decode from a cache with spare rows, w{window:?}"), &o, &want, 0.0);
    }
}

#[test]
#[ignore = "needs an NVIDIA GPU: scripts/gpu-check.sh runs these with --ignored"]
fn adamw_and_the_global_norm_match_the_cpu_trainer() {
    use orlik_train::optim::{adamw_step, sum_squares, AdamWConfig, Slot};
    let g = gpu();
    let mut rng = StdRng::seed_from_u64(7);
    let n = 100_003;
    let c = AdamWConfig { beta1: 0.9, beta2: 0.95, eps: 1e-8, weight_decay: 0.1 };
    let mut slot =
        vec![Slot { w: rand_vec(&mut rng, n, 1.0), m: vec![0.0; n], v: vec![0.0; n], decay: true }];
    let (mut w, mut m, mut v) =
        (g.upload(&slot[0].w).unwrap(), g.zeros::<f32>(n).unwrap(), g.zeros::<f32>(n).unwrap());
    for t in 1..=3u64 {
        let grad = rand_vec(&mut rng, n, 0.01);
        let lr = 1e-3;
        adamw_step(&mut slot, std::slice::from_ref(&grad), lr, t, &c);
        let a = AdamStep {
            beta1: c.beta1 as f32,
            beta2: c.beta2 as f32,
            step: (lr / (1.0 - c.beta1.powi(t as i32))) as f32,
            bc2_sqrt: (1.0 - c.beta2.powi(t as i32)).sqrt() as f32,
            eps: c.eps as f32,
            shrink: (1.0 - lr * c.weight_decay) as f32,
        };
        let gd = g.upload(&grad).unwrap();
        g.adamw(&mut w, &mut m, &mut v, &gd, &a).unwrap();
        let norm = g.sum_squares(&gd).unwrap();
        let want = sum_squares(&grad);
        assert!((norm - want).abs() <= 1e-12 * want, "sum of squares {norm} vs {want}");
    }
    // Elementwise f32 arithmetic in the same order: the same bits, unless the GPU contracts
    // differently into FMAs; within an ulp or two then.
    close("adamw w", &g.download(&w).unwrap(), &slot[0].w, 1e-6);
    close("adamw m", &g.download(&m).unwrap(), &slot[0].m, 1e-6);
    close("adamw v", &g.download(&v).unwrap(), &slot[0].v, 1e-6);
}

#[test]
#[ignore = "needs an NVIDIA GPU: scripts/gpu-check.sh runs these with --ignored"]
fn logsumexp_and_the_log_p_gradient_match_f64() {
    let g = gpu();
    let mut rng = StdRng::seed_from_u64(8);
    let (rows, vocab) = (5, 49_157);
    let logits = rand_vec(&mut rng, rows * vocab, 8.0);
    let target: Vec<u32> = vec![0, 49_156, 17, u32::MAX, 1000];
    let coeff = vec![-0.5f32, 1.0, 2.0, 1.0, -1.0];
    let mut lse_want = vec![0f32; rows];
    let mut grad_want = vec![0f32; rows * vocab];
    for r in 0..rows {
        let x = &logits[r * vocab..(r + 1) * vocab];
        let m = x.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
        let l = m + x.iter().map(|&v| (v as f64 - m).exp()).sum::<f64>().ln();
        lse_want[r] = l as f32;
        let c = if (target[r] as usize) < vocab { coeff[r] as f64 } else { 0.0 };
        for (vi, &xv) in x.iter().enumerate() {
            let onehot = if vi as u32 == target[r] { 1.0 } else { 0.0 };
            grad_want[r * vocab + vi] = (c * (onehot - (xv as f64 - l).exp())) as f32;
        }
    }
    let ld = g.upload(&logits).unwrap();
    let mut lse = g.zeros(rows).unwrap();
    g.row_logsumexp(&ld, &mut lse, vocab).unwrap();
    close("row log-sum-exp", &g.download(&lse).unwrap(), &lse_want, 1e-6);
    let mut dl = g.zeros(rows * vocab).unwrap();
    g.logp_grad(&ld, &lse, &g.upload(&target).unwrap(), &g.upload(&coeff).unwrap(), &mut dl, vocab)
        .unwrap();
    close("log p gradient", &g.download(&dl).unwrap(), &grad_want, 1e-6);
}

#[test]
#[ignore = "needs an NVIDIA GPU: scripts/gpu-check.sh runs these with --ignored"]
fn linear_products_match_f64_in_hf_layout() {
    let g = gpu();
    let mut rng = StdRng::seed_from_u64(9);
    let (n, k, m) = (13, 70, 33);
    let x = rand_vec(&mut rng, n * k, 1.0);
    let w = rand_vec(&mut rng, m * k, 1.0); // (out, in): HF's nn.Linear layout
    let dy = rand_vec(&mut rng, n * m, 1.0);
    let dot = |f: &dyn Fn(usize) -> f64, len: usize| (0..len).map(f).sum::<f64>() as f32;
    let y_want: Vec<f32> = (0..n * m)
        .map(|i| dot(&|j| x[(i / m) * k + j] as f64 * w[(i % m) * k + j] as f64, k))
        .collect();
    let dx_want: Vec<f32> = (0..n * k)
        .map(|i| 1.0 + dot(&|j| dy[(i / k) * m + j] as f64 * w[j * k + i % k] as f64, m))
        .collect();
    let dw_want: Vec<f32> = (0..m * k)
        .map(|i| dot(&|r| dy[r * m + i / k] as f64 * x[r * k + i % k] as f64, n))
        .collect();
    let (xd, wd, dyd) = (g.upload(&x).unwrap(), g.upload(&w).unwrap(), g.upload(&dy).unwrap());
    let mut y = g.zeros(n * m).unwrap();
    g.linear(&xd, &wd, &mut y, (n, k, m), 0.0).unwrap();
    close("linear y = x Wᵀ", &g.download(&y).unwrap(), &y_want, 1e-5);
    let mut dx = g.upload(&vec![1.0f32; n * k]).unwrap();
    g.linear_dx(&dyd, &wd, &mut dx, (n, k, m), 1.0).unwrap();
    close("linear dx += dy W", &g.download(&dx).unwrap(), &dx_want, 1e-5);
    let mut dw = g.zeros(m * k).unwrap();
    g.linear_dw(&xd, &dyd, &mut dw, (n, k, m), 0.0).unwrap();
    close("linear dW = dyᵀ x", &g.download(&dw).unwrap(), &dw_want, 1e-5);
}
