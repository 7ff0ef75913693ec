//! The training path of Llama-family decoders (Llama, Mistral, Qwen2: pre-norm RMSNorm blocks,
//! half-split RoPE, GQA, SwiGLU) with a hand-written backward on flat f32 buffers.
//!
//! Why not autograd: candle's backprop allocates a zero tensor and adds into it for every
//! gradient of every node, materialises transposes before adding, and runs RMSNorm, RoPE,
//! softmax and SiLU as chains of small ops; on 2 cores that made the body's backward take twice
//! its gemm time. Here every weight gradient is one gemm accumulating straight into the caller's
//! buffer, elementwise steps are fused, and attention keeps only each row's log-sum-exp,
//! rebuilding the probabilities in the backward (as FlashAttention does; Dao et al. 2022).
//!
//! Input: training windows (b, t) at positions 0..t, causal attention (plus the layer's sliding
//! window), no padding. Weights are read from the caller's f32 buffers in the order of `names`
//! given to `GradModel::new`; gradients are added into buffers of the same order. The result is
//! the final hidden state after the last norm; the caller owns lm_head and the loss. Gemma 3 and
//! models with o_proj / MLP biases are not covered (`GradModel::unsupported`): callers use the
//! autograd path of `llama.rs` for them. Tests: `crates/train/src/tests.rs` checks every
//! gradient against autograd through `Model`.

use crate::kernels::{self, gemm, Par, View};
use crate::{Config, Model, ModelError};
use rayon::prelude::*;

/// Positions of one layer's tensors in the parameter list.
struct LayerIdx {
    input_norm: usize,
    q: usize,
    k: usize,
    v: usize,
    /// q/k/v biases (Qwen2).
    bias: Option<[usize; 3]>,
    o: usize,
    post_norm: usize,
    gate: usize,
    up: usize,
    down: usize,
    window: Option<usize>,
}

pub struct GradModel {
    hidden: usize,
    heads: usize,
    kv: usize,
    hd: usize,
    ffn: usize,
    eps: f64,
    scale: f32,
    embed: usize,
    norm: usize,
    layers: Vec<LayerIdx>,
    /// RoPE tables for positions 0..max_t: (max_t, hd/2).
    max_t: usize,
    cos: Vec<f32>,
    sin: Vec<f32>,
}

/// What one layer's backward needs; the rest (both norms' outputs, the SwiGLU product) is
/// recomputed from these.
struct LayerSaved {
    x: Vec<f32>,    // (n, hidden) layer input
    inv1: Vec<f32>, // (n)
    q: Vec<f32>,    // (n, heads · hd) after RoPE
    k: Vec<f32>,    // (n, kv · hd) after RoPE
    v: Vec<f32>,    // (n, kv · hd)
    lse: Vec<f32>,  // (b, heads, t) softmax log-sum-exp
    attn: Vec<f32>, // (n, heads · hd) attention output before o_proj
    x2: Vec<f32>,   // (n, hidden) after the attention residual
    inv2: Vec<f32>, // (n)
    g: Vec<f32>,    // (n, ffn) gate projection
    u: Vec<f32>,    // (n, ffn) up projection
}

/// Activations kept by `forward` for `backward`.
pub struct Saved {
    b: usize,
    t: usize,
    ids: Vec<u32>,
    layers: Vec<LayerSaved>,
    top: Vec<f32>, // (n, hidden) before the final norm
    top_inv: Vec<f32>,
}

fn find(names: &[String], name: &str) -> Result<usize, ModelError> {
    names
        .iter()
        .position(|n| n == name)
        .ok_or_else(|| ModelError::MissingTensor { name: name.into(), expected: vec![] })
}

impl GradModel {
    /// Why this config needs the autograd path, or None when `GradModel` covers it.
    pub fn unsupported(cfg: &Config) -> Option<String> {
        if cfg.arch() == crate::Arch::Gemma3 {
            return Some("Gemma 3 blocks (q/k norms, sandwich norms, GeGLU)".into());
        }
        if cfg.activation() != "silu" {
            return Some(format!("activation {:?}", cfg.activation()));
        }
        if cfg.o_bias() || cfg.mlp_bias() {
            return Some("o_proj / MLP biases".into());
        }
        if cfg.embed_scale().is_some() || cfg.norm_offset() {
            return Some("scaled embeddings or offset norms".into());
        }
        if !cfg.head_dim().is_multiple_of(2) {
            return Some("odd head_dim".into());
        }
        None
    }

    /// `names`: the parameter list whose order the weight and gradient buffers follow.
    /// `model` supplies the RoPE tables (with the config's scaling) for positions 0..max_t.
    pub fn new(
        cfg: &Config,
        names: &[String],
        model: &Model,
        max_t: usize,
    ) -> Result<GradModel, ModelError> {
        if let Some(why) = Self::unsupported(cfg) {
            return Err(ModelError::Config {
                origin: "training path".into(),
                msg: format!("not supported: {why}"),
            });
        }
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for l in 0..cfg.num_hidden_layers {
            let p = |s: &str| find(names, &format!("model.layers.{l}.{s}"));
            let bias = if cfg.qkv_bias() {
                Some([
                    p("self_attn.q_proj.bias")?,
                    p("self_attn.k_proj.bias")?,
                    p("self_attn.v_proj.bias")?,
                ])
            } else {
                None
            };
            layers.push(LayerIdx {
                input_norm: p("input_layernorm.weight")?,
                q: p("self_attn.q_proj.weight")?,
                k: p("self_attn.k_proj.weight")?,
                v: p("self_attn.v_proj.weight")?,
                bias,
                o: p("self_attn.o_proj.weight")?,
                post_norm: p("post_attention_layernorm.weight")?,
                gate: p("mlp.gate_proj.weight")?,
                up: p("mlp.up_proj.weight")?,
                down: p("mlp.down_proj.weight")?,
                window: cfg.layer_window(l),
            });
        }
        let (cos, sin) = model.rope_table(max_t)?;
        Ok(GradModel {
            hidden: cfg.hidden_size,
            heads: cfg.num_attention_heads,
            kv: cfg.num_kv_heads(),
            hd: cfg.head_dim(),
            ffn: cfg.intermediate_size,
            eps: cfg.rms_norm_eps,
            scale: cfg.attn_scale() as f32,
            embed: find(names, "model.embed_tokens.weight")?,
            norm: find(names, "model.norm.weight")?,
            layers,
            max_t,
            cos,
            sin,
        })
    }

    /// Final hidden states (b·t, hidden) after the last norm for ids (b, t), and with `keep` the
    /// activations `backward` needs.
    pub fn forward(
        &self,
        w: &[&[f32]],
        ids: &[u32],
        b: usize,
        t: usize,
        keep: bool,
    ) -> Result<(Vec<f32>, Option<Saved>), ModelError> {
        let (hid, n) = (self.hidden, b * t);
        if ids.len() != n || t > self.max_t {
            return Err(ModelError::Input(format!(
                "ids must be (b {b}, t {t}) with t ≤ {}, got {} ids",
                self.max_t,
                ids.len()
            )));
        }
        let vocab = w[self.embed].len() / hid;
        let mut x = vec![0f32; n * hid]; // (n, hidden)
        for (r, &id) in ids.iter().enumerate() {
            let id = id as usize;
            if id >= vocab {
                return Err(ModelError::Input(format!("token id {id} ≥ vocab {vocab}")));
            }
            x[r * hid..(r + 1) * hid].copy_from_slice(&w[self.embed][id * hid..(id + 1) * hid]);
        }
        let mut saved = Vec::with_capacity(if keep { self.layers.len() } else { 0 });
        for l in &self.layers {
            let s = self.layer_forward(w, l, x, b, t);
            x = self.layer_output(w, l, &s);
            if keep {
                saved.push(s);
            }
        }
        let (h, inv) = kernels::rms_forward(&x, w[self.norm], self.eps);
        let saved =
            keep.then(|| Saved { b, t, ids: ids.to_vec(), layers: saved, top: x, top_inv: inv });
        Ok((h, saved))
    }

    /// A linear layer: y (n, out) = x (n, in) · Wᵀ with W (out, in).
    fn linear(x: &[f32], w: &[f32], n: usize, inn: usize, out: usize) -> Vec<f32> {
        let mut y = vec![0f32; n * out];
        gemm(&mut y, out, n, out, inn, View::rows(x, inn), View::t(w, inn), false, 1.0, Par::All);
        y
    }

    /// Attention half of a block, up to x2 = x + o_proj(attn); the MLP half is `layer_output`.
    fn layer_forward(
        &self,
        w: &[&[f32]],
        l: &LayerIdx,
        x: Vec<f32>,
        b: usize,
        t: usize,
    ) -> LayerSaved {
        let (hid, hd, n) = (self.hidden, self.hd, b * t);
        let (qd, kd) = (self.heads * hd, self.kv * hd);
        let (h1, inv1) = kernels::rms_forward(&x, w[l.input_norm], self.eps);
        let mut q = Self::linear(&h1, w[l.q], n, hid, qd); // (n, heads · hd)
        let mut k = Self::linear(&h1, w[l.k], n, hid, kd); // (n, kv · hd)
        let mut v = Self::linear(&h1, w[l.v], n, hid, kd);
        if let Some([bq, bk, bv]) = l.bias {
            for (y, bias, d) in [(&mut q, bq, qd), (&mut k, bk, kd), (&mut v, bv, kd)] {
                y.par_chunks_mut(d)
                    .for_each(|row| row.iter_mut().zip(w[bias]).for_each(|(a, b)| *a += b));
            }
        }
        kernels::rope(&mut q, t, self.heads, hd, &self.cos, &self.sin, false);
        kernels::rope(&mut k, t, self.kv, hd, &self.cos, &self.sin, false);
        let rep = self.heads / self.kv;
        // One task per (window, head): S = scale · q_h k_gᵀ (t, t), causal softmax, o_h = P v_g.
        let outs: Vec<(Vec<f32>, Vec<f32>)> = (0..b * self.heads)
            .into_par_iter()
            .map(|task| {
                let (bi, h) = (task / self.heads, task % self.heads);
                let g = h / rep;
                let qh = View { data: &q[bi * t * qd + h * hd..], rs: qd, cs: 1 }; // (t, hd)
                let kt = View { data: &k[bi * t * kd + g * hd..], rs: 1, cs: kd }; // (hd, t)
                let vg = View { data: &v[bi * t * kd + g * hd..], rs: kd, cs: 1 }; // (t, hd)
                let mut s = vec![0f32; t * t];
                gemm(&mut s, t, t, t, hd, qh, kt, false, self.scale, Par::One);
                let mut lse = vec![0f32; t];
                kernels::causal_softmax(&mut s, t, l.window, &mut lse);
                let mut o = vec![0f32; t * hd];
                gemm(&mut o, hd, t, hd, t, View::rows(&s, t), vg, false, 1.0, Par::One);
                (o, lse)
            })
            .collect();
        let mut attn = vec![0f32; n * qd]; // (b, t, heads, hd)
        let mut lse = vec![0f32; b * self.heads * t]; // (b, heads, t)
        for (task, (o, ls)) in outs.into_iter().enumerate() {
            let (bi, h) = (task / self.heads, task % self.heads);
            for (i, row) in o.chunks(hd).enumerate() {
                let at = (bi * t + i) * qd + h * hd;
                attn[at..at + hd].copy_from_slice(row);
            }
            lse[task * t..(task + 1) * t].copy_from_slice(&ls);
        }
        let mut x2 = x.clone(); // x2 = x + attn · Woᵀ
        gemm(
            &mut x2,
            hid,
            n,
            hid,
            qd,
            View::rows(&attn, qd),
            View::t(w[l.o], qd),
            true,
            1.0,
            Par::All,
        );
        let (h2, inv2) = kernels::rms_forward(&x2, w[l.post_norm], self.eps);
        let g = Self::linear(&h2, w[l.gate], n, hid, self.ffn); // (n, ffn)
        let u = Self::linear(&h2, w[l.up], n, hid, self.ffn);
        LayerSaved { x, inv1, q, k, v, lse, attn, x2, inv2, g, u }
    }

    /// out = x2 + down(silu(g) · u).
    fn layer_output(&self, w: &[&[f32]], l: &LayerIdx, s: &LayerSaved) -> Vec<f32> {
        let n = s.x2.len() / self.hidden;
        let a = kernels::swiglu(&s.g, &s.u);
        let mut out = s.x2.clone();
        gemm(
            &mut out,
            self.hidden,
            n,
            self.hidden,
            self.ffn,
            View::rows(&a, self.ffn),
            View::t(w[l.down], self.ffn),
            true,
            1.0,
            Par::All,
        );
        out
    }

    /// Add the gradient of Σ dh ⊙ forward(ids) into `grads` (same order and sizes as the weights).
    pub fn backward(
        &self,
        w: &[&[f32]],
        saved: Saved,
        dh: &[f32],
        grads: &mut [Vec<f32>],
    ) -> Result<(), ModelError> {
        let Saved { b, t, ids, layers, top, top_inv } = saved;
        let (hid, n) = (self.hidden, b * t);
        if dh.len() != n * hid
            || grads.len() != w.len()
            || grads.iter().zip(w).any(|(g, w)| g.len() != w.len())
        {
            return Err(ModelError::Input(format!(
                "backward: dh must be ({n}, {hid}) and grads shaped like the weights"
            )));
        }
        let mut dx = vec![0f32; n * hid]; // d(loss)/d(residual stream), walked down the layers
        kernels::rms_backward(&top, &top_inv, w[self.norm], dh, &mut dx, &mut grads[self.norm]);
        for (l, s) in self.layers.iter().zip(layers).rev() {
            self.layer_backward(w, l, s, b, t, &mut dx, grads);
        }
        let ge = &mut grads[self.embed];
        for (r, &id) in ids.iter().enumerate() {
            let id = id as usize;
            ge[id * hid..(id + 1) * hid]
                .iter_mut()
                .zip(&dx[r * hid..(r + 1) * hid])
                .for_each(|(a, b)| *a += b);
        }
        Ok(())
    }

    /// dx: d(layer output) in, d(layer input) out.
    #[allow(clippy::too_many_arguments)]
    fn layer_backward(
        &self,
        w: &[&[f32]],
        l: &LayerIdx,
        s: LayerSaved,
        b: usize,
        t: usize,
        dx: &mut [f32],
        grads: &mut [Vec<f32>],
    ) {
        let (hid, hd, ffn, n) = (self.hidden, self.hd, self.ffn, b * t);
        let (qd, kd) = (self.heads * hd, self.kv * hd);
        let LayerSaved { x, inv1, q, k, v, lse, attn, x2, inv2, mut g, mut u } = s;
        // MLP: out = x2 + a · Wdᵀ, a = silu(g) · u.
        let a = kernels::swiglu(&g, &u);
        gemm(
            &mut grads[l.down],
            ffn,
            hid,
            ffn,
            n,
            View::t(dx, hid),
            View::rows(&a, ffn),
            true,
            1.0,
            Par::All,
        );
        drop(a);
        let mut da = vec![0f32; n * ffn]; // (n, ffn)
        gemm(
            &mut da,
            ffn,
            n,
            ffn,
            hid,
            View::rows(dx, hid),
            View::rows(w[l.down], ffn),
            false,
            1.0,
            Par::All,
        );
        kernels::swiglu_backward(&da, &mut g, &mut u); // g, u now hold dg, du
        drop(da);
        let h2 = kernels::rms_apply(&x2, &inv2, w[l.post_norm]);
        gemm(
            &mut grads[l.gate],
            hid,
            ffn,
            hid,
            n,
            View::t(&g, ffn),
            View::rows(&h2, hid),
            true,
            1.0,
            Par::All,
        );
        gemm(
            &mut grads[l.up],
            hid,
            ffn,
            hid,
            n,
            View::t(&u, ffn),
            View::rows(&h2, hid),
            true,
            1.0,
            Par::All,
        );
        drop(h2);
        let mut dh2 = vec![0f32; n * hid];
        gemm(
            &mut dh2,
            hid,
            n,
            hid,
            ffn,
            View::rows(&g, ffn),
            View::rows(w[l.gate], hid),
            false,
            1.0,
            Par::All,
        );
        gemm(
            &mut dh2,
            hid,
            n,
            hid,
            ffn,
            View::rows(&u, ffn),
            View::rows(w[l.up], hid),
            true,
            1.0,
            Par::All,
        );
        drop((g, u));
        kernels::rms_backward(&x2, &inv2, w[l.post_norm], &dh2, dx, &mut grads[l.post_norm]); // dx = d(x2)
        drop((dh2, x2));
        // x2 = x + attn · Woᵀ.
        gemm(
            &mut grads[l.o],
            qd,
            hid,
            qd,
            n,
            View::t(dx, hid),
            View::rows(&attn, qd),
            true,
            1.0,
            Par::All,
        );
        drop(attn);
        let mut dattn = vec![0f32; n * qd]; // (n, heads · hd)
        gemm(
            &mut dattn,
            qd,
            n,
            qd,
            hid,
            View::rows(dx, hid),
            View::rows(w[l.o], qd),
            false,
            1.0,
            Par::All,
        );
        // Attention, one task per (window, kv head) so the rep query heads sharing it add their
        // dk, dv in a fixed order. P is rebuilt from the saved log-sum-exp.
        let rep = self.heads / self.kv;
        let parts: Vec<(Vec<f32>, Vec<f32>, Vec<f32>)> = (0..b * self.kv)
            .into_par_iter()
            .map(|task| {
                let (bi, g) = (task / self.kv, task % self.kv);
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
                    let doh = View { data: &dattn[bi * t * qd + h * hd..], rs: qd, cs: 1 }; // (t, hd)
                    gemm(&mut p, t, t, t, hd, qh, kt, false, self.scale, Par::One);
                    kernels::causal_probs(
                        &mut p,
                        t,
                        l.window,
                        &lse[(bi * self.heads + h) * t..(bi * self.heads + h + 1) * t],
                    );
                    gemm(&mut dp, t, t, t, hd, doh, vt, false, 1.0, Par::One); // dP = dO vᵀ
                    gemm(&mut dv, hd, t, hd, t, View::t(&p, t), doh, true, 1.0, Par::One); // dv += Pᵀ dO
                    kernels::softmax_backward(&p, &mut dp, t); // dp = dS
                    gemm(
                        &mut dq[r * t * hd..(r + 1) * t * hd],
                        hd,
                        t,
                        hd,
                        t,
                        View::rows(&dp, t),
                        kg,
                        false,
                        self.scale,
                        Par::One,
                    );
                    gemm(&mut dk, hd, t, hd, t, View::t(&dp, t), qh, true, self.scale, Par::One);
                    // dk += scale dSᵀ q
                }
                (dq, dk, dv)
            })
            .collect();
        drop(dattn);
        let mut dq = vec![0f32; n * qd];
        let mut dk = vec![0f32; n * kd];
        let mut dv = vec![0f32; n * kd];
        for (task, (pq, pk, pv)) in parts.into_iter().enumerate() {
            let (bi, g) = (task / self.kv, task % self.kv);
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
        drop((q, k, v));
        kernels::rope(&mut dq, t, self.heads, hd, &self.cos, &self.sin, true);
        kernels::rope(&mut dk, t, self.kv, hd, &self.cos, &self.sin, true);
        if let Some([bq, bk, bv]) = l.bias {
            kernels::add_col_sums(&dq, qd, &mut grads[bq]);
            kernels::add_col_sums(&dk, kd, &mut grads[bk]);
            kernels::add_col_sums(&dv, kd, &mut grads[bv]);
        }
        let h1 = kernels::rms_apply(&x, &inv1, w[l.input_norm]);
        let mut dh1 = vec![0f32; n * hid];
        for (d, wi, dim, first) in
            [(&dq, l.q, qd, true), (&dk, l.k, kd, false), (&dv, l.v, kd, false)]
        {
            gemm(
                &mut grads[wi],
                hid,
                dim,
                hid,
                n,
                View::t(d, dim),
                View::rows(&h1, hid),
                true,
                1.0,
                Par::All,
            );
            gemm(
                &mut dh1,
                hid,
                n,
                hid,
                dim,
                View::rows(d, dim),
                View::rows(w[wi], hid),
                !first,
                1.0,
                Par::All,
            );
        }
        kernels::rms_backward(&x, &inv1, w[l.input_norm], &dh1, dx, &mut grads[l.input_norm]);
        // dx = d(x)
    }
}
