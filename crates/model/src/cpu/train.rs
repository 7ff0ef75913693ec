//! The flat-buffer executor's training path: the block of `block.rs` (every option: GQA,
//! sliding windows, q/k/v, o_proj and MLP biases, q/k norms, sandwich norms, SwiGLU or GeGLU,
//! (1 + w) norms, scaled embeddings, per-layer RoPE tables) with a hand-written backward on flat
//! f32 buffers. It covers Llama, Mistral, Qwen2 and Gemma 3.
//!
//! Why not autograd: candle's backprop allocates a zero tensor and adds into it for every
//! gradient of every node, materialises transposes before adding, and runs RMSNorm, RoPE,
//! softmax and the activations as chains of small ops; on 2 cores that made the body's backward
//! take twice its gemm time. Here every weight gradient is one gemm accumulating straight into
//! the caller's buffer, elementwise steps are fused, and attention keeps only each row's
//! log-sum-exp (`attention.rs`).
//!
//! Input: training windows (b, t) at positions 0..t, causal attention (plus the layer's sliding
//! window), no padding. Weights are read from the caller's f32 buffers in the order of `names`
//! given to `GradModel::new`; gradients are added into buffers of the same order. The result is
//! the final hidden state after the last norm; the caller owns lm_head and the loss. Tests:
//! `crates/train/src/tests_matrix.rs` checks loss and every gradient against autograd through
//! `Model` for all four architectures.

use super::attention::{self, Shape};
use super::kernels::{self, gemm, Par, View};
use crate::block::{self, BlockSpec, LayerSpec, Role};
use crate::{Config, Model, ModelError};
use std::borrow::Cow;
use std::collections::HashMap;

/// A projection y (n, out) = x (n, inn) · Wᵀ [+ b]: positions of W (out, inn) and b (out).
#[derive(Clone, Copy)]
struct Lin {
    w: usize,
    b: Option<usize>,
    inn: usize,
    out: usize,
}

impl Lin {
    fn forward(self, w: &[&[f32]], x: &[f32]) -> Vec<f32> {
        let (n, inn, out) = (x.len() / self.inn, self.inn, self.out);
        // written once, never zeroed first (`gemm_new`)
        let mut y =
            kernels::gemm_new(n, out, inn, View::rows(x, inn), View::t(w[self.w], inn), Par::All);
        if let Some(b) = self.b {
            kernels::add_bias(&mut y, w[b]);
        }
        y
    }

    /// y (=, or += with `acc`) x Wᵀ + b.
    fn forward_into(self, w: &[&[f32]], x: &[f32], y: &mut [f32], acc: bool) {
        let (n, inn, out) = (x.len() / self.inn, self.inn, self.out);
        gemm(y, out, n, out, inn, View::rows(x, inn), View::t(w[self.w], inn), acc, 1.0, Par::All);
        if let Some(b) = self.b {
            kernels::add_bias(y, w[b]);
        }
    }

    /// dW += dyᵀ x, db += Σ_rows dy, and dx (=, or += with `acc`) dy W.
    fn backward(
        self,
        w: &[&[f32]],
        grads: &mut [Vec<f32>],
        x: &[f32],
        dy: &[f32],
        dx: &mut [f32],
        acc: bool,
    ) {
        let (n, inn, out) = (x.len() / self.inn, self.inn, self.out);
        let (dyt, xr) = (View::t(dy, out), View::rows(x, inn));
        gemm(&mut grads[self.w], inn, out, inn, n, dyt, xr, true, 1.0, Par::All);
        if let Some(b) = self.b {
            kernels::add_col_sums(dy, out, &mut grads[b]);
        }
        let (dyr, wr) = (View::rows(dy, out), View::rows(w[self.w], inn));
        gemm(dx, inn, n, inn, out, dyr, wr, acc, 1.0, Par::All);
    }
}

/// Positions of one layer's tensors in the parameter list.
struct LayerIdx {
    input_norm: usize,
    q: Lin,
    k: Lin,
    v: Lin,
    o: Lin,
    /// q_norm, k_norm (qk_norm).
    qk_norm: Option<(usize, usize)>,
    post_norm: usize,
    /// pre_feedforward_layernorm, post_feedforward_layernorm (sandwich).
    ffn_norms: Option<(usize, usize)>,
    gate: Lin,
    up: Lin,
    down: Lin,
    spec: LayerSpec,
}

pub struct GradModel {
    spec: BlockSpec,
    embed: usize,
    norm: usize,
    layers: Vec<LayerIdx>,
    /// RoPE tables per kind for positions 0..max_t: (max_t, hd/2) each.
    max_t: usize,
    rope: Vec<crate::llama::RopeTable>,
}

/// A normalised tensor's input and per-row 1/rms (the output is recomputed from them).
struct Normed {
    x: Vec<f32>,
    inv: Vec<f32>,
}

/// What one layer's backward needs; the rest (the norms' outputs, the MLP product) is
/// recomputed from these.
struct LayerSaved {
    x: Vec<f32>,    // (n, hidden) layer input
    inv1: Vec<f32>, // (n)
    /// qk_norm: q (n, heads · hd) and k (n, kv · hd) before their norms, rows of hd.
    qk_pre: Option<(Normed, Normed)>,
    q: Vec<f32>,    // (n, heads · hd) after RoPE
    k: Vec<f32>,    // (n, kv · hd) after RoPE
    v: Vec<f32>,    // (n, kv · hd)
    lse: Vec<f32>,  // (b, heads, t) softmax log-sum-exp
    attn: Vec<f32>, // (n, heads · hd) attention output before o_proj
    /// sandwich: o_proj's output (n, hidden), normalised before the residual add.
    o: Option<Normed>,
    x2: Vec<f32>,   // (n, hidden) after the attention residual
    inv2: Vec<f32>, // (n)
    g: Vec<f32>,    // (n, ffn) gate projection
    u: Vec<f32>,    // (n, ffn) up projection
    /// sandwich: down_proj's output (n, hidden), normalised before the residual add.
    y: Option<Normed>,
}

/// What `forward` keeps for `backward`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keep {
    /// Nothing: no backward follows (validation, a frozen model).
    Nothing,
    /// Every layer's activations (`LayerSaved`).
    All,
    /// Only each layer's input; the backward re-runs one layer's forward at a time (activation
    /// checkpointing, `--checkpoint-layers`: the same numbers, bit for bit, in less memory).
    Inputs,
}

enum Kept {
    All(Box<LayerSaved>),
    Input(Vec<f32>),
}

/// Activations kept by `forward` for `backward`.
pub struct Saved {
    b: usize,
    t: usize,
    ids: Vec<u32>,
    layers: Vec<Kept>,
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
    /// Why this config cannot run here, or None when `GradModel` covers it (every config whose
    /// block `block.rs` can describe).
    pub fn unsupported(cfg: &Config) -> Option<String> {
        BlockSpec::of(cfg).err().map(|e| e.to_string())
    }

    /// `names`: the parameter list whose order the weight and gradient buffers follow.
    /// `model` supplies the RoPE tables (with the config's scaling) for positions 0..max_t.
    pub fn new(
        cfg: &Config,
        names: &[String],
        model: &Model,
        max_t: usize,
    ) -> Result<GradModel, ModelError> {
        let spec = BlockSpec::of(cfg)?;
        let shapes: HashMap<Role, Vec<usize>> = block::layer_tensors(cfg).into_iter().collect();
        let mut layers = Vec::with_capacity(spec.layers.len());
        for (l, ls) in spec.layers.iter().enumerate() {
            let idx = |r: Role| find(names, &r.name(l));
            let opt = |r: Role| shapes.contains_key(&r).then(|| idx(r)).transpose();
            let lin = |wr: Role, br: Role| -> Result<Lin, ModelError> {
                let s = &shapes[&wr]; // (out, inn)
                Ok(Lin { w: idx(wr)?, b: opt(br)?, inn: s[1], out: s[0] })
            };
            let pair = |a: Role, b: Role| -> Result<Option<(usize, usize)>, ModelError> {
                Ok(opt(a)?.zip(opt(b)?))
            };
            layers.push(LayerIdx {
                input_norm: idx(Role::InputNorm)?,
                q: lin(Role::Q, Role::QBias)?,
                k: lin(Role::K, Role::KBias)?,
                v: lin(Role::V, Role::VBias)?,
                o: lin(Role::O, Role::OBias)?,
                qk_norm: pair(Role::QNorm, Role::KNorm)?,
                post_norm: idx(Role::PostAttnNorm)?,
                ffn_norms: pair(Role::PreFfnNorm, Role::PostFfnNorm)?,
                gate: lin(Role::Gate, Role::GateBias)?,
                up: lin(Role::Up, Role::UpBias)?,
                down: lin(Role::Down, Role::DownBias)?,
                spec: *ls,
            });
        }
        Ok(GradModel {
            embed: find(names, "model.embed_tokens.weight")?,
            norm: find(names, "model.norm.weight")?,
            layers,
            max_t,
            rope: model.rope_tables_flat(max_t)?,
            spec,
        })
    }

    /// The longest rows this model's RoPE tables cover.
    pub fn max_t(&self) -> usize {
        self.max_t
    }

    /// A norm's weight as applied: w, or (1 + w) when stored zero-centred. d(1 + w)/dw = 1, so
    /// the kernels' weight gradient is w's.
    fn nw<'a>(&self, w: &'a [f32]) -> Cow<'a, [f32]> {
        if self.spec.norm.offset {
            Cow::Owned(w.iter().map(|v| v + 1.0).collect())
        } else {
            Cow::Borrowed(w)
        }
    }

    fn rms(&self, x: &[f32], w: &[f32]) -> (Vec<f32>, Vec<f32>) {
        kernels::rms_forward(x, &self.nw(w), self.spec.norm.eps)
    }

    fn attn_shape(&self, b: usize, t: usize, l: &LayerIdx) -> Shape {
        let s = &self.spec;
        let (heads, kv, hd) = (s.heads, s.kv_heads, s.head_dim);
        Shape { b, t, heads, kv, hd, scale: s.attn_scale as f32, window: l.spec.window }
    }

    /// Final hidden states (b·t, hidden) after the last norm for ids (b, t), and unless `keep`
    /// is `Nothing`, what `backward` needs.
    pub fn forward(
        &self,
        w: &[&[f32]],
        ids: &[u32],
        b: usize,
        t: usize,
        keep: Keep,
    ) -> Result<(Vec<f32>, Option<Saved>), ModelError> {
        let (hid, n) = (self.spec.hidden, b * t);
        if ids.len() != n || t > self.max_t {
            return Err(ModelError::Input(format!(
                "ids must be (b {b}, t {t}) with t ≤ {}, got {} ids",
                self.max_t,
                ids.len()
            )));
        }
        let vocab = w[self.embed].len() / hid;
        let scale = self.spec.embed_scale.map_or(1.0, |s| s as f32);
        let mut x = vec![0f32; n * hid]; // (n, hidden)
        for (r, &id) in ids.iter().enumerate() {
            let id = id as usize;
            if id >= vocab {
                return Err(ModelError::Input(format!("token id {id} ≥ vocab {vocab}")));
            }
            let e = &w[self.embed][id * hid..(id + 1) * hid];
            x[r * hid..(r + 1) * hid].iter_mut().zip(e).for_each(|(o, v)| *o = v * scale);
        }
        let mut saved = Vec::with_capacity(self.layers.len());
        for l in &self.layers {
            let input = (keep == Keep::Inputs).then(|| x.clone());
            let (out, s) = self.layer_forward(w, l, x, b, t);
            x = out;
            match (keep, input) {
                (Keep::All, _) => saved.push(Kept::All(Box::new(s))),
                (_, Some(x)) => saved.push(Kept::Input(x)),
                _ => {}
            }
        }
        let (h, inv) = self.rms(&x, w[self.norm]);
        let saved = (keep != Keep::Nothing).then(|| Saved {
            b,
            t,
            ids: ids.to_vec(),
            layers: saved,
            top: x,
            top_inv: inv,
        });
        Ok((h, saved))
    }

    /// One block (the diagram in `block.rs`): the layer's output and what its backward needs.
    fn layer_forward(
        &self,
        w: &[&[f32]],
        l: &LayerIdx,
        x: Vec<f32>,
        b: usize,
        t: usize,
    ) -> (Vec<f32>, LayerSaved) {
        let (hd, heads, kvh) = (self.spec.head_dim, self.spec.heads, self.spec.kv_heads);
        let (h1, inv1) = self.rms(&x, w[l.input_norm]);
        let mut q = l.q.forward(w, &h1); // (n, heads · hd)
        let mut k = l.k.forward(w, &h1); // (n, kv · hd)
        let v = l.v.forward(w, &h1);
        drop(h1);
        let qk_pre = l.qk_norm.map(|(qn, kn)| {
            // RMSNorm over each head's hd values: rows of hd.
            let (qo, qinv) = self.rms(&q, w[qn]);
            let (ko, kinv) = self.rms(&k, w[kn]);
            let pre = (Normed { x: q.clone(), inv: qinv }, Normed { x: k.clone(), inv: kinv });
            (q, k) = (qo, ko);
            pre
        });
        let (cos, sin) = &self.rope[l.spec.rope];
        kernels::rope(&mut q, t, heads, hd, cos, sin, false);
        kernels::rope(&mut k, t, kvh, hd, cos, sin, false);
        let (attn, lse) = attention::forward(&self.attn_shape(b, t, l), &q, &k, &v);
        let (x2, o) = match l.ffn_norms {
            Some(_) => {
                let o = l.o.forward(w, &attn);
                let (on, inv) = self.rms(&o, w[l.post_norm]);
                let x2: Vec<f32> = x.iter().zip(&on).map(|(a, b)| a + b).collect();
                (x2, Some(Normed { x: o, inv }))
            }
            None => {
                let mut x2 = x.clone(); // x2 = x + o_proj(attn)
                l.o.forward_into(w, &attn, &mut x2, true);
                (x2, None)
            }
        };
        let (h2, inv2) = self.rms(&x2, w[l.ffn_norms.map_or(l.post_norm, |(pre, _)| pre)]);
        let g = l.gate.forward(w, &h2); // (n, ffn)
        let u = l.up.forward(w, &h2);
        drop(h2);
        let a = kernels::glu(self.spec.act, &g, &u);
        let mut out = x2.clone();
        let y = match l.ffn_norms {
            Some((_, post)) => {
                let y = l.down.forward(w, &a);
                let (yn, inv) = self.rms(&y, w[post]);
                out.iter_mut().zip(&yn).for_each(|(o, v)| *o += v);
                Some(Normed { x: y, inv })
            }
            None => {
                l.down.forward_into(w, &a, &mut out, true);
                None
            }
        };
        (out, LayerSaved { x, inv1, qk_pre, q, k, v, lse, attn, o, x2, inv2, g, u, y })
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
        let (hid, n) = (self.spec.hidden, b * t);
        if dh.len() != n * hid
            || grads.len() != w.len()
            || grads.iter().zip(w).any(|(g, w)| g.len() != w.len())
        {
            return Err(ModelError::Input(format!(
                "backward: dh must be ({n}, {hid}) and grads shaped like the weights"
            )));
        }
        let mut dx = vec![0f32; n * hid]; // d(loss)/d(residual stream), walked down the layers
        let norm = self.nw(w[self.norm]);
        kernels::rms_backward(&top, &top_inv, &norm, dh, &mut dx, &mut grads[self.norm]);
        for (l, kept) in self.layers.iter().zip(layers).rev() {
            let s = match kept {
                Kept::All(s) => *s,
                Kept::Input(x) => self.layer_forward(w, l, x, b, t).1,
            };
            self.layer_backward(w, l, s, b, t, &mut dx, grads);
        }
        let scale = self.spec.embed_scale.map_or(1.0, |s| s as f32);
        let ge = &mut grads[self.embed];
        for (r, &id) in ids.iter().enumerate() {
            let id = id as usize;
            ge[id * hid..(id + 1) * hid]
                .iter_mut()
                .zip(&dx[r * hid..(r + 1) * hid])
                .for_each(|(a, b)| *a += b * scale);
        }
        Ok(())
    }

    /// The gradient of a norm's input given its output's `dy`, in a new buffer; the weight's
    /// gradient goes to `grads[wi]`.
    fn norm_back(
        &self,
        w: &[&[f32]],
        wi: usize,
        s: &Normed,
        dy: &[f32],
        grads: &mut [Vec<f32>],
    ) -> Vec<f32> {
        let mut dx = vec![0f32; s.x.len()];
        kernels::rms_backward(&s.x, &s.inv, &self.nw(w[wi]), dy, &mut dx, &mut grads[wi]);
        dx
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
        let (hd, heads, kvh) = (self.spec.head_dim, self.spec.heads, self.spec.kv_heads);
        let LayerSaved { x, inv1, qk_pre, q, k, v, lse, attn, o, x2, inv2, mut g, mut u, y } = s;
        // MLP: out = x2 + [norm](y), y = a Wdᵀ + bd, a = act(g) · u.
        let dy: Cow<[f32]> = match (&y, l.ffn_norms) {
            (Some(y), Some((_, post))) => Cow::Owned(self.norm_back(w, post, y, dx, grads)),
            _ => Cow::Borrowed(&*dx),
        };
        drop(y);
        let a = kernels::glu(self.spec.act, &g, &u);
        let mut da = vec![0f32; a.len()]; // (n, ffn)
        l.down.backward(w, grads, &a, &dy, &mut da, false);
        drop((a, dy));
        kernels::glu_backward(self.spec.act, &da, &mut g, &mut u); // g, u now hold dg, du
        drop(da);
        let norm2 = l.ffn_norms.map_or(l.post_norm, |(pre, _)| pre);
        let h2 = kernels::rms_apply(&x2, &inv2, &self.nw(w[norm2]));
        let mut dh2 = vec![0f32; x2.len()];
        l.gate.backward(w, grads, &h2, &g, &mut dh2, false);
        l.up.backward(w, grads, &h2, &u, &mut dh2, true);
        drop((g, u, h2));
        let n2 = self.nw(w[norm2]);
        kernels::rms_backward(&x2, &inv2, &n2, &dh2, dx, &mut grads[norm2]); // dx = d(x2)
        drop((dh2, x2));
        // Attention: x2 = x + [norm](o), o = attn Woᵀ + bo.
        let dout: Cow<[f32]> = match &o {
            Some(o) => Cow::Owned(self.norm_back(w, l.post_norm, o, dx, grads)),
            None => Cow::Borrowed(&*dx),
        };
        drop(o);
        let mut dattn = vec![0f32; attn.len()]; // (n, heads · hd)
        l.o.backward(w, grads, &attn, &dout, &mut dattn, false);
        drop((attn, dout));
        let shape = self.attn_shape(b, t, l);
        let (mut dq, mut dk, dv) = attention::backward(&shape, &q, &k, &v, &lse, &dattn);
        drop((dattn, q, k, v));
        let (cos, sin) = &self.rope[l.spec.rope];
        kernels::rope(&mut dq, t, heads, hd, cos, sin, true);
        kernels::rope(&mut dk, t, kvh, hd, cos, sin, true);
        if let (Some((qn, kn)), Some((qs, ks))) = (l.qk_norm, &qk_pre) {
            dq = self.norm_back(w, qn, qs, &dq, grads);
            dk = self.norm_back(w, kn, ks, &dk, grads);
        }
        drop(qk_pre);
        let h1 = kernels::rms_apply(&x, &inv1, &self.nw(w[l.input_norm]));
        let mut dh1 = vec![0f32; x.len()];
        l.q.backward(w, grads, &h1, &dq, &mut dh1, false);
        l.k.backward(w, grads, &h1, &dk, &mut dh1, true);
        l.v.backward(w, grads, &h1, &dv, &mut dh1, true);
        drop(h1);
        let n1 = self.nw(w[l.input_norm]);
        kernels::rms_backward(&x, &inv1, &n1, &dh1, dx, &mut grads[l.input_norm]);
        // dx = d(x)
    }
}
