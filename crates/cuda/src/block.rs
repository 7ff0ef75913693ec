//! One decoder layer on the GPU, forward and backward: the block of `orlik_model::block` once,
//! for the inference executor (`infer.rs`, attention over a KV cache) and the training executor
//! (`orlik_train::exec::cuda`, activations kept for the backward). Buffers are row-major with
//! n = b · t rows; the residual stream is updated in place.
//!
//! ```text
//! forward                                         backward (dx: dL/dx2 in, dL/dx0 out)
//! a1 = rms(x0; input_layernorm)                   dd = dx | rms'(d; post_ffn)ᵀ dx          [sandwich]
//! q, k, v = a1 Wᵀ [+ b]                           dm = dd Wd;  glu'(gt, up) -> dgt, dup
//! [qk_norm] q, k = rms(q; q_norm), rms(k; k_norm) da2 = dgt Wg + dup Wu;  dx += rms'(x1)ᵀ da2
//! qr, kr = rope(q, k)                             dy = dx | rms'(y; post_attn)ᵀ dx         [sandwich]
//! o, lse = attention(qr, kr, v)                   do = dy Wo;  attention' -> dqr, dkr, dv
//! y = o Woᵀ [+ bo]                                dq, dk = rope⁻¹(dqr, dkr) [, rms'(q, k)]
//! x1 = x0 + y | x0 + rms(y; post_attn)            da1 = dq Wq + dk Wk + dv Wv
//! a2 = rms(x1; post_attn | pre_ffn)               dx += rms'(x0)ᵀ da1
//! gt, up = a2 Wg,uᵀ [+ b];  m = act(gt) · up      and every weight's gradient on the way
//! d = m Wdᵀ [+ bd]
//! x2 = x1 + d | x1 + rms(d; post_ffn)
//! ```

use crate::gpu::AttnShape;
use crate::{CudaError, Gpu};
use cudarc::driver::CudaSlice;
use orlik_model::block::{BlockSpec, LayerSpec, Role};
use orlik_model::infer::Tap;
use orlik_model::ModelError;

pub(crate) fn backend(e: CudaError) -> ModelError {
    ModelError::Backend(e.to_string())
}

type Buf = CudaSlice<f32>;

/// A layer's weights by role.
pub trait LayerWeights {
    fn w(&self, role: Role) -> Result<&Buf, ModelError>;
}

/// A layer's gradient buffers by role (added into).
pub trait LayerGrads {
    fn g(&mut self, role: Role) -> Result<&mut Buf, ModelError>;
}

/// The rows a layer runs on: positions (device, b · t), and the shape.
#[derive(Clone, Copy)]
pub struct LayerRows<'a> {
    pub pos: &'a CudaSlice<u32>,
    pub b: usize,
    pub t: usize,
}

/// How attention gets its keys: `attend(q, k, v)` with q (n, heads · hd) and this call's k, v
/// (n, kv · hd) after RoPE returns (o, lse); the inference executor appends k, v to its cache
/// first, the training one attends to exactly these.
pub type Attend<'a> = &'a mut dyn FnMut(&Gpu, &Buf, &Buf, &Buf) -> Result<(Buf, Buf), CudaError>;

/// A layer's activations at one tap point: (what, buffer, shape).
pub type BlockTap<'a> = &'a mut dyn FnMut(Tap, &Buf, &[usize]) -> Result<(), ModelError>;

/// What the backward needs from a layer's forward (None where the block has no such step).
pub struct Saved {
    x0: Buf,
    a1: Buf,
    inv1: Buf,
    q_pre: Option<(Buf, Buf)>, // qk_norm: q before its norm and the norm's inv
    k_pre: Option<(Buf, Buf)>,
    qr: Buf,
    kr: Buf,
    v: Buf,
    o: Buf,
    lse: Buf,
    y: Option<(Buf, Buf)>, // sandwich: o_proj's output and post_attention_layernorm's inv
    x1: Buf,
    a2: Buf,
    inv2: Buf,
    gt: Buf,
    up: Buf,
    m: Buf,
    d: Option<(Buf, Buf)>, // sandwich: down_proj's output and post_feedforward_layernorm's inv
}

/// RMSNorm of `rows` rows with the block's weight convention into new buffers (y, inv).
pub fn rms(g: &Gpu, s: &BlockSpec, x: &Buf, w: &Buf, rows: usize) -> Result<(Buf, Buf), CudaError> {
    let (mut y, mut inv) = (g.zeros(rows * w.len())?, g.zeros(rows)?);
    g.rms_forward(x, w, &mut y, &mut inv, rows, s.norm.eps, s.norm.offset)?;
    Ok((y, inv))
}

/// x (n, k) Wᵀ [+ bias] with W (m, k).
fn lin(
    g: &Gpu,
    x: &Buf,
    w: &Buf,
    bias: Option<&Buf>,
    (n, k, m): (usize, usize, usize),
) -> Result<Buf, CudaError> {
    let mut y = g.zeros(n * m)?;
    g.linear(x, w, &mut y, (n, k, m), 0.0)?;
    if let Some(b) = bias {
        g.add_bias(&mut y, b)?;
    }
    Ok(y)
}

/// The bias of `role` when the block has one.
fn bias(w: &dyn LayerWeights, on: bool, role: Role) -> Result<Option<&Buf>, ModelError> {
    if on {
        Ok(Some(w.w(role)?))
    } else {
        Ok(None)
    }
}

/// The shape of one layer's attention over exactly its own keys (training, or no cache).
pub fn own_keys(s: &BlockSpec, ls: &LayerSpec, b: usize, t: usize) -> AttnShape {
    AttnShape {
        b,
        t,
        tk: t,
        kcap: t,
        heads: s.heads,
        kv: s.kv_heads,
        hd: s.head_dim,
        scale: s.attn_scale as f32,
        window: ls.window,
    }
}

/// Run one layer on the residual stream `x` (n, hidden), in place. With `keep`, returns what
/// the backward needs; `tap` sees the layer's activations.
#[allow(clippy::too_many_arguments)]
pub fn forward(
    g: &Gpu,
    s: &BlockSpec,
    w: &dyn LayerWeights,
    x: &mut Buf,
    rows: LayerRows,
    rope: (&Buf, &Buf),
    attend: Attend,
    keep: bool,
    tap: Option<BlockTap>,
) -> Result<Option<Saved>, ModelError> {
    let LayerRows { pos, b, t } = rows;
    let (n, h, hd, f) = (b * t, s.hidden, s.head_dim, s.ffn);
    let (qd, kvd) = (s.heads * hd, s.kv_heads * hd);
    let mut tap = tap;
    let mut emit = |what: Tap, buf: &Buf, shape: &[usize]| match tap.as_deref_mut() {
        Some(f) => f(what, buf, shape),
        None => Ok(()),
    };
    let be = backend;
    emit(Tap::LayerInput, x, &[b, t, h])?;
    let x0 = if keep { Some(g.dup(x).map_err(be)?) } else { None };
    let (a1, inv1) = rms(g, s, x, w.w(Role::InputNorm)?, n).map_err(be)?;
    emit(Tap::InputNorm, &a1, &[b, t, h])?;
    let mut q =
        lin(g, &a1, w.w(Role::Q)?, bias(w, s.qkv_bias, Role::QBias)?, (n, h, qd)).map_err(be)?;
    let mut k =
        lin(g, &a1, w.w(Role::K)?, bias(w, s.qkv_bias, Role::KBias)?, (n, h, kvd)).map_err(be)?;
    let v =
        lin(g, &a1, w.w(Role::V)?, bias(w, s.qkv_bias, Role::VBias)?, (n, h, kvd)).map_err(be)?;
    let (mut q_pre, mut k_pre) = (None, None);
    if s.qk_norm {
        // Every head's hd values are one row: (n · heads, hd) and (n · kv, hd).
        let (qn, invq) = rms(g, s, &q, w.w(Role::QNorm)?, n * s.heads).map_err(be)?;
        let (kn, invk) = rms(g, s, &k, w.w(Role::KNorm)?, n * s.kv_heads).map_err(be)?;
        q_pre = Some((std::mem::replace(&mut q, qn), invq));
        k_pre = Some((std::mem::replace(&mut k, kn), invk));
    }
    g.rope(&mut q, pos, rope.0, rope.1, s.heads, hd, false).map_err(be)?;
    g.rope(&mut k, pos, rope.0, rope.1, s.kv_heads, hd, false).map_err(be)?;
    let (o, lse) = attend(g, &q, &k, &v).map_err(be)?;
    emit(Tap::Heads, &o, &[b, t, s.heads, hd])?;
    let y = lin(g, &o, w.w(Role::O)?, bias(w, s.o_bias, Role::OBias)?, (n, qd, h)).map_err(be)?;
    let (a2, inv2, y_saved) = if s.sandwich {
        let (ny, inv_p) = rms(g, s, &y, w.w(Role::PostAttnNorm)?, n).map_err(be)?;
        g.axpy(x, 1.0, &ny).map_err(be)?;
        let (a2, inv2) = rms(g, s, x, w.w(Role::PreFfnNorm)?, n).map_err(be)?;
        (a2, inv2, Some((y, inv_p)))
    } else {
        g.axpy(x, 1.0, &y).map_err(be)?;
        let (a2, inv2) = rms(g, s, x, w.w(Role::PostAttnNorm)?, n).map_err(be)?;
        (a2, inv2, None)
    };
    let x1 = if keep { Some(g.dup(x).map_err(be)?) } else { None };
    emit(Tap::PostAttnNorm, &a2, &[b, t, h])?;
    let gt = lin(g, &a2, w.w(Role::Gate)?, bias(w, s.mlp_bias, Role::GateBias)?, (n, h, f))
        .map_err(be)?;
    let up =
        lin(g, &a2, w.w(Role::Up)?, bias(w, s.mlp_bias, Role::UpBias)?, (n, h, f)).map_err(be)?;
    let mut m = g.zeros(n * f).map_err(be)?;
    g.glu_forward(s.act, &gt, &up, &mut m).map_err(be)?;
    emit(Tap::MlpAct, &m, &[b, t, f])?;
    let d = lin(g, &m, w.w(Role::Down)?, bias(w, s.mlp_bias, Role::DownBias)?, (n, f, h))
        .map_err(be)?;
    let d_saved = if s.sandwich {
        let (nd, inv_f) = rms(g, s, &d, w.w(Role::PostFfnNorm)?, n).map_err(be)?;
        g.axpy(x, 1.0, &nd).map_err(be)?;
        Some((d, inv_f))
    } else {
        g.axpy(x, 1.0, &d).map_err(be)?;
        None
    };
    emit(Tap::LayerOutput, x, &[b, t, h])?;
    Ok(match (x0, x1) {
        (Some(x0), Some(x1)) => Some(Saved {
            x0,
            a1,
            inv1,
            q_pre,
            k_pre,
            qr: q,
            kr: k,
            v,
            o,
            lse,
            y: y_saved,
            x1,
            a2,
            inv2,
            gt,
            up,
            m,
            d: d_saved,
        }),
        _ => None,
    })
}

/// dL/dx (n, hidden) of `x`'s input from the layer's output gradient, in place, adding every
/// weight's gradient to `grads`. `sv` is what [`forward`] kept; attention is over the layer's
/// own keys (training: no cache, no padding).
#[allow(clippy::too_many_arguments)]
pub fn backward(
    g: &Gpu,
    s: &BlockSpec,
    ls: &LayerSpec,
    w: &dyn LayerWeights,
    grads: &mut dyn LayerGrads,
    sv: Saved,
    dx: &mut Buf,
    rows: LayerRows,
    rope: (&Buf, &Buf),
) -> Result<(), ModelError> {
    let LayerRows { pos, b, t } = rows;
    let (n, h, hd, f) = (b * t, s.hidden, s.head_dim, s.ffn);
    let (qd, kvd) = (s.heads * hd, s.kv_heads * hd);
    let be = backend;
    // Through the MLP: dd, then down_proj, the activation, gate and up.
    let dd = match &sv.d {
        Some((d, inv_f)) => norm_back(
            g,
            (d, inv_f, w.w(Role::PostFfnNorm)?),
            dx,
            grads.g(Role::PostFfnNorm)?,
            n,
            s,
        )?,
        None => g.dup(dx).map_err(be)?,
    };
    let mut dm = g.zeros(n * f).map_err(be)?;
    lin_back(
        g,
        (&sv.m, w.w(Role::Down)?, &dd),
        &mut dm,
        grads,
        (Role::Down, s.mlp_bias.then_some(Role::DownBias)),
        (n, f, h),
    )?;
    let (mut dgt, mut dup) = (sv.gt, sv.up);
    g.glu_backward(s.act, &dm, &mut dgt, &mut dup).map_err(be)?;
    let mut da2 = g.zeros(n * h).map_err(be)?;
    lin_back(
        g,
        (&sv.a2, w.w(Role::Gate)?, &dgt),
        &mut da2,
        grads,
        (Role::Gate, s.mlp_bias.then_some(Role::GateBias)),
        (n, h, f),
    )?;
    lin_back(
        g,
        (&sv.a2, w.w(Role::Up)?, &dup),
        &mut da2,
        grads,
        (Role::Up, s.mlp_bias.then_some(Role::UpBias)),
        (n, h, f),
    )?;
    let mlp_norm = if s.sandwich { Role::PreFfnNorm } else { Role::PostAttnNorm };
    g.rms_backward(
        &sv.x1,
        &sv.inv2,
        w.w(mlp_norm)?,
        &da2,
        dx,
        grads.g(mlp_norm)?,
        n,
        s.norm.offset,
    )
    .map_err(be)?;
    // Through attention: dy, o_proj, the attention, RoPE, the q/k norms, q/k/v.
    let dy = match &sv.y {
        Some((y, inv_p)) => norm_back(
            g,
            (y, inv_p, w.w(Role::PostAttnNorm)?),
            dx,
            grads.g(Role::PostAttnNorm)?,
            n,
            s,
        )?,
        None => g.dup(dx).map_err(be)?,
    };
    let mut d_o = g.zeros(n * qd).map_err(be)?;
    lin_back(
        g,
        (&sv.o, w.w(Role::O)?, &dy),
        &mut d_o,
        grads,
        (Role::O, s.o_bias.then_some(Role::OBias)),
        (n, qd, h),
    )?;
    let shape = own_keys(s, ls, b, t);
    let (mut dq, mut dk, mut dv) = (
        g.zeros(n * qd).map_err(be)?,
        g.zeros(n * kvd).map_err(be)?,
        g.zeros(n * kvd).map_err(be)?,
    );
    g.attn_backward(
        &shape,
        (&sv.qr, &sv.kr, &sv.v),
        &sv.o,
        &sv.lse,
        &d_o,
        (&mut dq, &mut dk, &mut dv),
    )
    .map_err(be)?;
    g.rope(&mut dq, pos, rope.0, rope.1, s.heads, hd, true).map_err(be)?;
    g.rope(&mut dk, pos, rope.0, rope.1, s.kv_heads, hd, true).map_err(be)?;
    if let Some((q, invq)) = &sv.q_pre {
        dq =
            norm_back(g, (q, invq, w.w(Role::QNorm)?), &dq, grads.g(Role::QNorm)?, n * s.heads, s)?;
    }
    if let Some((k, invk)) = &sv.k_pre {
        dk = norm_back(
            g,
            (k, invk, w.w(Role::KNorm)?),
            &dk,
            grads.g(Role::KNorm)?,
            n * s.kv_heads,
            s,
        )?;
    }
    let mut da1 = g.zeros(n * h).map_err(be)?;
    let qkv_bias = |r: Role| s.qkv_bias.then_some(r);
    lin_back(
        g,
        (&sv.a1, w.w(Role::Q)?, &dq),
        &mut da1,
        grads,
        (Role::Q, qkv_bias(Role::QBias)),
        (n, h, qd),
    )?;
    lin_back(
        g,
        (&sv.a1, w.w(Role::K)?, &dk),
        &mut da1,
        grads,
        (Role::K, qkv_bias(Role::KBias)),
        (n, h, kvd),
    )?;
    lin_back(
        g,
        (&sv.a1, w.w(Role::V)?, &dv),
        &mut da1,
        grads,
        (Role::V, qkv_bias(Role::VBias)),
        (n, h, kvd),
    )?;
    g.rms_backward(
        &sv.x0,
        &sv.inv1,
        w.w(Role::InputNorm)?,
        &da1,
        dx,
        grads.g(Role::InputNorm)?,
        n,
        s.norm.offset,
    )
    .map_err(be)
}

/// RMSNorm's backward into a new buffer: dL/dx of y = rms(x) · w from dy, dw added into `dw`.
fn norm_back(
    g: &Gpu,
    (x, inv, w): (&Buf, &Buf, &Buf),
    dy: &Buf,
    dw: &mut Buf,
    rows: usize,
    s: &BlockSpec,
) -> Result<Buf, ModelError> {
    let mut dx = g.zeros(rows * w.len()).map_err(backend)?;
    g.rms_backward(x, inv, w, dy, &mut dx, dw, rows, s.norm.offset).map_err(backend)?;
    Ok(dx)
}

/// y = x Wᵀ [+ b]'s backward: dx += dy W, dW += dyᵀ x, db += Σ_rows dy.
fn lin_back(
    g: &Gpu,
    (x, w, dy): (&Buf, &Buf, &Buf),
    dx: &mut Buf,
    grads: &mut dyn LayerGrads,
    (role, bias): (Role, Option<Role>),
    (n, k, m): (usize, usize, usize),
) -> Result<(), ModelError> {
    g.linear_dx(dy, w, dx, (n, k, m), 1.0).map_err(backend)?;
    g.linear_dw(x, dy, grads.g(role)?, (n, k, m), 1.0).map_err(backend)?;
    if let Some(b) = bias {
        g.col_sums(dy, grads.g(b)?, n).map_err(backend)?;
    }
    Ok(())
}
