//! Llama-family decoder (Llama, Mistral, Qwen2, Gemma 3 text) in HF layout.
//!
//! Mirrors transformers' `modeling_llama.py`: pre-norm blocks, RMSNorm, half-split RoPE, GQA,
//! SwiGLU MLP. Differences carried by the config: Qwen2 has q/k/v bias; Mistral (and Qwen2 with
//! `use_sliding_window`) restrict attention to a sliding window; Llama may have attention/MLP bias.
//! Gemma 3 (`modeling_gemma3.py`): embeddings scaled by sqrt(hidden), RMSNorm weights applied as
//! (1 + w), RMSNorm of q and k per head before RoPE, norms after attention and around the MLP
//! (`post_attention_layernorm` normalises the attention *output*, `pre_feedforward_layernorm` is
//! the MLP's input norm), GeGLU with tanh-approximate GELU, scores scaled by
//! 1/sqrt(query_pre_attn_scalar), sliding-window layers interleaved with global ones, each kind
//! with its own RoPE base.
//!
//! Weights live in the compute dtype (f32 by default; f64 for gradient checks). When the model is
//! built for training (`differentiable`), only composed candle ops are used, so every parameter
//! receives a gradient; the fused candle-nn kernels used otherwise have no backward.

use crate::block::{self, Activation, BlockSpec, LayerSpec, Role};
use crate::masked_softmax::causal_attention;
use crate::ops;
use crate::{Config, ModelError, Weights};
use candle_core::{DType, Device, Tensor, D};
use std::collections::HashMap;

#[derive(Debug, Clone, Copy)]

pub struct ModelOptions {
    /// Compute dtype: F32 (default) or F64. Stored f16/bf16 weights are upcast, unless
    /// `half_weights` keeps the matrices 16-bit.
    pub dtype: DType,
    /// Use only ops with a backward (training). Slower; same numbers.
    pub differentiable: bool,
    /// Inference only (f32 compute): the 2-D weights (projections, embedding, lm_head) held in
    /// this 16-bit dtype (BF16 or F16) and multiplied by `ops::matmul_frozen_t` with f32
    /// accumulation; norms and biases stay in `dtype`. None: every weight in `dtype`.
    pub half_weights: Option<DType>,
}

impl Default for ModelOptions {
    fn default() -> Self {
        ModelOptions { dtype: DType::F32, differentiable: false, half_weights: None }
    }
}

impl ModelOptions {
    /// Frozen inference at f32 with the matrices in `half` (None: f32 everywhere).
    pub fn inference(half: Option<DType>) -> ModelOptions {
        ModelOptions { half_weights: half, ..ModelOptions::default() }
    }

    /// The dtype a weight of `shape` is held in.
    pub fn dtype_of(&self, shape: &[usize]) -> DType {
        match self.half_weights {
            Some(h) if shape.len() == 2 => h,
            _ => self.dtype,
        }
    }

    /// Refuse combinations the forward cannot run.
    pub fn check(&self) -> Result<(), ModelError> {
        match self.half_weights {
            None => Ok(()),
            Some(DType::BF16 | DType::F16) if self.dtype == DType::F32 && !self.differentiable => {
                Ok(())
            }
            Some(h) => Err(ModelError::Input(format!(
                "16-bit weights ({h:?}) need f32 compute without a backward (asked: {:?}, \
                 differentiable = {})",
                self.dtype, self.differentiable
            ))),
        }
    }
}

#[derive(Debug, Clone)]
struct Linear {
    w: Tensor,         // (out, in)
    b: Option<Tensor>, // (out)
}

impl Linear {
    /// x: (.., in) -> (.., out)
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let dims = x.dims().to_vec();
        let inn = dims[dims.len() - 1];
        let n: usize = dims[..dims.len() - 1].iter().product();
        let x = x.reshape((n, inn))?; // (n, in)
        let y = match self.w.dtype() {
            DType::BF16 | DType::F16 => ops::matmul_frozen_t(&x.contiguous()?, &self.w)?,
            // A frozen f32 model: at decode the dot-product kernel streams the weights faster
            // than the gemm library does at a few rows (`cpu::mixed::gemv_f32_t`); above, the
            // gemm writes into an output that is never zeroed first (`kernels::gemm_new`).
            DType::F32 if !x.track_op() && !self.w.track_op() => {
                ops::matmul_frozen_t(&x.contiguous()?, &self.w)?
            }
            _ => x.matmul(&self.w.t()?)?,
        }; // (n, out)
        let y = match &self.b {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        };
        let mut out = dims;
        let last = out.len() - 1;
        out[last] = self.w.dim(0)?;
        y.reshape(out)
    }
}

/// Activations reported by [`Model::forward_tapped`], with their shapes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tap {
    /// Residual stream entering the layer (b, t, hidden).
    LayerInput,
    /// Output of input_layernorm (b, t, hidden).
    InputNorm,
    /// Per-head attention output before o_proj (b, t, heads, head_dim).
    Heads,
    /// Output of post_attention_layernorm (b, t, hidden).
    PostAttnNorm,
    /// MLP activation at the down_proj input, after SwiGLU (b, t, intermediate).
    MlpAct,
    /// Residual stream leaving the layer (b, t, hidden).
    LayerOutput,
    /// Output of the final norm (b, t, hidden).
    FinalNorm,
}

#[derive(Clone, Copy)]
enum Input<'a> {
    Ids(&'a Tensor),
    Residual(&'a Tensor),
}

/// What a block needs to mask attention: either a precomputed additive mask (training path) or
/// the description the fused masked softmax computes it from.
struct Mask<'a> {
    offset: usize,
    key_valid: Option<&'a [Vec<bool>]>,
    tensor: Option<&'a Tensor>,
}

#[derive(Debug, Clone)]
struct Layer {
    input_norm: Tensor,
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    post_norm: Tensor,
    gate: Linear,
    up: Linear,
    down: Linear,
    spec: LayerSpec,
    /// Gemma 3 only: q/k norms (head_dim) and the norms around the MLP (hidden).
    q_norm: Option<Tensor>,
    k_norm: Option<Tensor>,
    pre_ffn_norm: Option<Tensor>,
    post_ffn_norm: Option<Tensor>,
    /// Inference only: q/k/v and gate/up weights concatenated along the output dim, so each is
    /// one gemm; the separate `Linear`s above are then views into these (no extra memory).
    qkv: Option<Linear>,
    gate_up: Option<Linear>,
}

impl Layer {
    /// The tensor playing `role`, if the block has one.
    fn tensor(&self, role: Role) -> Option<&Tensor> {
        match role {
            Role::InputNorm => Some(&self.input_norm),
            Role::Q => Some(&self.q.w),
            Role::K => Some(&self.k.w),
            Role::V => Some(&self.v.w),
            Role::QBias => self.q.b.as_ref(),
            Role::KBias => self.k.b.as_ref(),
            Role::VBias => self.v.b.as_ref(),
            Role::O => Some(&self.o.w),
            Role::OBias => self.o.b.as_ref(),
            Role::QNorm => self.q_norm.as_ref(),
            Role::KNorm => self.k_norm.as_ref(),
            Role::PreFfnNorm => self.pre_ffn_norm.as_ref(),
            Role::PostFfnNorm => self.post_ffn_norm.as_ref(),
            Role::PostAttnNorm => Some(&self.post_norm),
            Role::Gate => Some(&self.gate.w),
            Role::Up => Some(&self.up.w),
            Role::Down => Some(&self.down.w),
            Role::GateBias => self.gate.b.as_ref(),
            Role::UpBias => self.up.b.as_ref(),
            Role::DownBias => self.down.b.as_ref(),
        }
    }
}

/// Concatenate linears along the output dim and turn the parts into views of the result.
fn fuse(parts: &mut [&mut Linear]) -> candle_core::Result<Linear> {
    let w = Tensor::cat(&parts.iter().map(|l| &l.w).collect::<Vec<_>>(), 0)?;
    let b = if parts.iter().all(|l| l.b.is_some()) {
        Some(Tensor::cat(&parts.iter().filter_map(|l| l.b.as_ref()).collect::<Vec<_>>(), 0)?)
    } else {
        None
    };
    let mut off = 0;
    for l in parts.iter_mut() {
        let n = l.w.dim(0)?;
        l.w = w.narrow(0, off, n)?;
        if let (Some(fb), Some(_)) = (&b, &l.b) {
            l.b = Some(fb.narrow(0, off, n)?);
        }
        off += n;
    }
    Ok(Linear { w, b })
}

/// Per-layer keys and values after RoPE, (b, kv, t, hd), grown by each incremental forward.
#[derive(Debug, Clone, Default)]
pub struct KvCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
    len: usize,
}

impl KvCache {
    pub fn new() -> KvCache {
        KvCache::default()
    }
    /// Number of positions already cached.
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// A cache of batch 1 repeated `n` times along the batch: a prompt prefilled once, then
    /// continued by `n` samples (GRPO's groups).
    pub fn repeat_batch(&self, n: usize) -> candle_core::Result<KvCache> {
        let rep = |t: &Tensor| -> candle_core::Result<Tensor> {
            let (b, kv, len, hd) = t.dims4()?;
            if b != 1 {
                candle_core::bail!("repeat_batch needs a cache of batch 1, got {b}");
            }
            t.broadcast_as((n, kv, len, hd))?.contiguous() // (n, kv, t, hd)
        };
        let layers = self
            .layers
            .iter()
            .map(|l| {
                l.as_ref().map(|(k, v)| Ok::<_, candle_core::Error>((rep(k)?, rep(v)?))).transpose()
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(KvCache { layers, len: self.len })
    }
}

/// A caller's look at a layer's activations: (layer, which one, the tensor).
pub type LayerTap<'a> = &'a mut dyn FnMut(usize, Tap, &Tensor) -> candle_core::Result<()>;
/// The same inside one block (the layer is known).
type BlockTap<'a> = &'a mut dyn FnMut(Tap, &Tensor) -> candle_core::Result<()>;

#[derive(Debug, Clone)]
pub struct Model {
    cfg: Config,
    spec: BlockSpec,
    opts: ModelOptions,
    embed: Tensor, // (vocab, hidden)
    layers: Vec<Layer>,
    norm: Tensor,
    lm_head: Option<Tensor>, // None when tied to `embed`
    inv_freq: Vec<Vec<f64>>, // per RoPE kind: (hd/2)
}

/// Check a set of (name, shape) against what `cfg` implies: missing, extra and mis-shaped tensors.
pub fn validate_shapes<'a>(
    cfg: &Config,
    found: impl IntoIterator<Item = (&'a str, &'a [usize])>,
) -> Result<(), ModelError> {
    let found: Vec<(&str, &[usize])> = found.into_iter().collect();
    // Each layer has several tensors: a config declaring more layers than the checkpoint has
    // tensors is refused before the expected-tensor map (one entry per declared tensor) is built.
    if cfg.num_hidden_layers > found.len() {
        return Err(ModelError::Config {
            origin: "config.json".into(),
            msg: format!(
                "num_hidden_layers = {} but the checkpoint holds only {} tensors",
                cfg.num_hidden_layers,
                found.len()
            ),
        });
    }
    let expected: HashMap<String, Vec<usize>> = cfg.expected_tensors().into_iter().collect();
    let mut seen = std::collections::HashSet::new();
    for (name, shape) in found {
        match expected.get(name) {
            None => return Err(ModelError::ExtraTensor { name: name.to_string() }),
            Some(e) if e.as_slice() != shape => {
                return Err(ModelError::Shape {
                    name: name.to_string(),
                    expected: e.clone(),
                    actual: shape.to_vec(),
                })
            }
            Some(_) => {
                seen.insert(name.to_string());
            }
        }
    }
    for (name, shape) in cfg.expected_tensors() {
        if !seen.contains(&name) {
            return Err(ModelError::MissingTensor { name, expected: shape });
        }
    }
    Ok(())
}

/// RoPE inverse frequencies per kind: Gemma 3 has [global, local]; the others one table.
fn inv_freqs(cfg: &Config) -> Result<Vec<Vec<f64>>, ModelError> {
    if cfg.arch() != crate::config::Arch::Gemma3 {
        return Ok(vec![inv_freq(cfg)?]);
    }
    let d = cfg.head_dim();
    let mut out = Vec::new();
    for kind in ["full_attention", "sliding_attention"] {
        let (base, factor) = cfg
            .rope_for(kind)
            .map_err(|msg| ModelError::Config { origin: "config".into(), msg })?;
        out.push(
            (0..d / 2)
                .map(|i| (1.0 / base.powf((2 * i) as f64 / d as f64) / factor) as f32 as f64)
                .collect(),
        );
    }
    Ok(out)
}

/// RoPE cos/sin for positions 0..t, flat (t, hd/2), one pair per RoPE kind (`LayerSpec::rope`
/// indexes them), computed as an f32 [`Model`] computes its tables: for executors that hold no
/// candle model (the CUDA one, `orlik_cuda::infer`).
pub fn rope_tables_f32(cfg: &Config, t: usize) -> Result<Vec<RopeTable>, ModelError> {
    Ok(inv_freqs(cfg)?
        .iter()
        .map(|inv| {
            let (mut c, mut s) =
                (Vec::with_capacity(t * inv.len()), Vec::with_capacity(t * inv.len()));
            for p in 0..t {
                for &f in inv {
                    // f32 like transformers' f32 `inv_freq @ position_ids` (as `rope_tables`).
                    let a = (p as f32 * f as f32) as f64;
                    c.push(a.cos() as f32);
                    s.push(a.sin() as f32);
                }
            }
            (c, s)
        })
        .collect())
}

fn inv_freq(cfg: &Config) -> Result<Vec<f64>, ModelError> {
    let d = cfg.head_dim();
    let base = cfg.rope_theta();
    // transformers computes inv_freq in f32; round the same way so long positions agree.
    let mut f: Vec<f64> =
        (0..d / 2).map(|i| (1.0 / base.powf((2 * i) as f64 / d as f64)) as f32 as f64).collect();
    let scaling =
        cfg.llama3_scaling().map_err(|msg| ModelError::Config { origin: "config".into(), msg })?;
    if let Some(s) = scaling {
        // transformers' `_compute_llama3_parameters` (Llama 3.1 report, §A): long wavelengths
        // divided by `factor`, short ones kept, a linear blend between.
        let low_wl = s.original_max_position_embeddings / s.low_freq_factor;
        let high_wl = s.original_max_position_embeddings / s.high_freq_factor;
        for x in f.iter_mut() {
            let wl = 2.0 * std::f64::consts::PI / *x;
            if wl > low_wl {
                *x /= s.factor;
            } else if wl >= high_wl {
                let smooth = (s.original_max_position_embeddings / wl - s.low_freq_factor)
                    / (s.high_freq_factor - s.low_freq_factor);
                *x = (1.0 - smooth) * *x / s.factor + smooth * *x;
            }
        }
    }
    Ok(f)
}

// The pieces around the blocks, shared by `Model` and the streaming scorer (which holds one
// layer at a time and so no `Model` of the whole network).

/// cos and sin of one RoPE kind, flat (t, hd/2) each.
pub type RopeTable = (Vec<f32>, Vec<f32>);

/// RMSNorm with the block's weight convention: w, or (1 + w) computed on every call so a
/// trained `w` is always current (Gemma).
pub fn norm(
    spec: &BlockSpec,
    x: &Tensor,
    w: &Tensor,
    differentiable: bool,
) -> candle_core::Result<Tensor> {
    let eps = spec.norm.eps;
    if spec.norm.offset {
        ops::rms_norm(x, &(w + 1.0)?, eps, differentiable)
    } else {
        ops::rms_norm(x, w, eps, differentiable)
    }
}

/// Token embeddings: ids (b, t) of `table` (vocab, hidden) -> (b, t, hidden), times the
/// block's `embed_scale` (Gemma).
pub fn embed(spec: &BlockSpec, table: &Tensor, ids: &Tensor) -> candle_core::Result<Tensor> {
    let (b, t) = ids.dims2()?;
    let x = table.index_select(&ids.flatten_all()?, 0)?.reshape((b, t, spec.hidden))?;
    // A 16-bit table (frozen inference): the gathered rows are widened; compute stays f32.
    let x = match x.dtype() {
        DType::BF16 | DType::F16 => x.to_dtype(DType::F32)?,
        _ => x,
    };
    match spec.embed_scale {
        Some(s) => x * s,
        None => Ok(x),
    }
}

/// Logits (.., vocab) of hidden states (.., hidden) through the head `w` (vocab, hidden):
/// lm_head, or the embedding when tied.
pub fn logits(w: &Tensor, hidden: &Tensor) -> candle_core::Result<Tensor> {
    Linear { w: w.clone(), b: None }.forward(hidden)
}

impl Model {
    /// Build from tensors keyed by HF name. Validates names and shapes against `cfg`.
    pub fn new(cfg: &Config, weights: &Weights, opts: ModelOptions) -> Result<Model, ModelError> {
        validate_shapes(cfg, weights.iter().map(|(k, v)| (k.as_str(), v.dims())))?;
        opts.check()?;
        let get = |name: &str| -> Result<Tensor, ModelError> {
            let t = weights.get(name).ok_or_else(|| ModelError::MissingTensor {
                name: name.to_string(),
                expected: vec![],
            })?;
            let want = opts.dtype_of(t.dims());
            Ok(if t.dtype() == want { t.clone() } else { t.to_dtype(want)? })
        };
        let spec = BlockSpec::of(cfg)?;
        let roles: Vec<Role> = block::layer_tensors(cfg).into_iter().map(|(r, _)| r).collect();
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for (l, ls) in spec.layers.iter().enumerate() {
            let opt = |r: Role| -> Result<Option<Tensor>, ModelError> {
                roles.contains(&r).then(|| get(&r.name(l))).transpose()
            };
            let lin = |w: Role, b: Role| -> Result<Linear, ModelError> {
                Ok(Linear { w: get(&w.name(l))?, b: opt(b)? })
            };
            layers.push(Layer {
                input_norm: get(&Role::InputNorm.name(l))?,
                q: lin(Role::Q, Role::QBias)?,
                k: lin(Role::K, Role::KBias)?,
                v: lin(Role::V, Role::VBias)?,
                o: lin(Role::O, Role::OBias)?,
                post_norm: get(&Role::PostAttnNorm.name(l))?,
                gate: lin(Role::Gate, Role::GateBias)?,
                up: lin(Role::Up, Role::UpBias)?,
                down: lin(Role::Down, Role::DownBias)?,
                spec: *ls,
                q_norm: opt(Role::QNorm)?,
                k_norm: opt(Role::KNorm)?,
                pre_ffn_norm: opt(Role::PreFfnNorm)?,
                post_ffn_norm: opt(Role::PostFfnNorm)?,
                qkv: None,
                gate_up: None,
            });
            if !opts.differentiable {
                let layer =
                    layers.last_mut().ok_or_else(|| ModelError::Input("no layer".into()))?;
                layer.qkv = Some(fuse(&mut [&mut layer.q, &mut layer.k, &mut layer.v])?);
                layer.gate_up = Some(fuse(&mut [&mut layer.gate, &mut layer.up])?);
            }
        }
        Ok(Model {
            cfg: cfg.clone(),
            spec,
            opts,
            embed: get("model.embed_tokens.weight")?,
            layers,
            norm: get("model.norm.weight")?,
            lm_head: if cfg.tie_word_embeddings { None } else { Some(get("lm_head.weight")?) },
            inv_freq: inv_freqs(cfg)?,
        })
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }
    /// The block description this model runs (`block.rs`).
    pub fn spec(&self) -> &BlockSpec {
        &self.spec
    }
    pub fn options(&self) -> ModelOptions {
        self.opts
    }
    pub fn device(&self) -> &Device {
        self.embed.device()
    }

    /// Every parameter by HF name (tied lm_head appears once, as the embedding).
    pub fn named_parameters(&self) -> Vec<(String, Tensor)> {
        let mut out = vec![("model.embed_tokens.weight".to_string(), self.embed.clone())];
        let roles = block::layer_tensors(&self.cfg);
        for (i, l) in self.layers.iter().enumerate() {
            for (role, _) in &roles {
                if let Some(t) = l.tensor(*role) {
                    out.push((role.name(i), t.clone()));
                }
            }
        }
        out.push(("model.norm.weight".to_string(), self.norm.clone()));
        if let Some(h) = &self.lm_head {
            out.push(("lm_head.weight".to_string(), h.clone()));
        }
        out
    }

    /// cos/sin tables for the given positions, one pair per RoPE kind: each (b, t, hd/2).
    fn rope_tables(&self, positions: &[Vec<u32>]) -> candle_core::Result<Vec<(Tensor, Tensor)>> {
        let b = positions.len();
        let t = positions.first().map_or(0, Vec::len);
        let f32_math = self.opts.dtype != DType::F64;
        let dev = self.device();
        let mut out = Vec::with_capacity(self.inv_freq.len());
        for inv in &self.inv_freq {
            let half = inv.len();
            let (mut c, mut s) =
                (Vec::with_capacity(b * t * half), Vec::with_capacity(b * t * half));
            for row in positions {
                for &p in row {
                    for &f in inv {
                        // f32 like transformers' f32 `inv_freq @ position_ids`.
                        let a = if f32_math { (p as f32 * f as f32) as f64 } else { p as f64 * f };
                        c.push(a.cos());
                        s.push(a.sin());
                    }
                }
            }
            let c = Tensor::from_vec(c, (b, t, half), dev)?.to_dtype(self.opts.dtype)?;
            let s = Tensor::from_vec(s, (b, t, half), dev)?.to_dtype(self.opts.dtype)?;
            out.push((c, s));
        }
        Ok(out)
    }

    /// RoPE cos/sin for positions 0..t, flat (t, hd/2) f32, one pair per RoPE kind (the CPU
    /// flat-buffer executor, `cpu/train.rs`; `LayerSpec::rope` indexes them).
    pub fn rope_tables_flat(&self, t: usize) -> Result<Vec<RopeTable>, ModelError> {
        let flat = |x: &Tensor| -> Result<Vec<f32>, ModelError> {
            Ok(x.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?)
        };
        let tables = self.rope_tables(&[(0..t as u32).collect()])?;
        tables.iter().map(|(c, s)| Ok((flat(c)?, flat(s)?))).collect()
    }

    /// RMSNorm with this model's weight convention (`norm`).
    fn norm(&self, x: &Tensor, w: &Tensor) -> candle_core::Result<Tensor> {
        norm(&self.spec, x, w, self.opts.differentiable)
    }

    fn embed_ids(&self, ids: &Tensor) -> candle_core::Result<Tensor> {
        embed(&self.spec, &self.embed, ids)
    }

    /// Final hidden states after the last norm: ids (b, t) u32 -> (b, t, hidden).
    ///
    /// `key_valid[b][j]` marks real (non-padding) keys over the cached + new positions;
    /// `positions` default to `cache.len() ..` for every row.
    pub fn forward_hidden(
        &self,
        ids: &Tensor,
        key_valid: Option<&[Vec<bool>]>,
        positions: Option<&[Vec<u32>]>,
        cache: Option<&mut KvCache>,
    ) -> Result<Tensor, ModelError> {
        self.run(Input::Ids(ids), key_valid, positions, cache, &[], None)
    }

    /// Forward that reports intermediate activations to `tap(layer, what, tensor)` (importance
    /// scoring) and can skip whole layers (`skip`: leave-one-out depth scoring). Returns the final
    /// hidden states (b, t, hidden). For `Tap::FinalNorm` the layer index is `num_hidden_layers`.
    pub fn forward_tapped(
        &self,
        ids: &Tensor,
        key_valid: Option<&[Vec<bool>]>,
        skip: &[usize],
        tap: &mut dyn FnMut(usize, Tap, &Tensor) -> candle_core::Result<()>,
    ) -> Result<Tensor, ModelError> {
        self.run(Input::Ids(ids), key_valid, None, None, skip, Some(tap))
    }

    /// Run every layer on a residual stream `x` (b, t, hidden) at positions 0..t and return the
    /// residual stream after the last layer, without the final norm (layer-by-layer scoring).
    pub fn forward_layers(
        &self,
        x: &Tensor,
        key_valid: Option<&[Vec<bool>]>,
        tap: &mut dyn FnMut(usize, Tap, &Tensor) -> candle_core::Result<()>,
    ) -> Result<Tensor, ModelError> {
        self.run(Input::Residual(x), key_valid, None, None, &[], Some(tap))
    }

    fn run(
        &self,
        input: Input,
        key_valid: Option<&[Vec<bool>]>,
        positions: Option<&[Vec<u32>]>,
        mut cache: Option<&mut KvCache>,
        skip: &[usize],
        mut tap: Option<LayerTap>,
    ) -> Result<Tensor, ModelError> {
        let (b, t) = match input {
            Input::Ids(ids) => ids.dims2()?,
            Input::Residual(x) => (x.dim(0)?, x.dim(1)?),
        };
        let offset = cache.as_ref().map_or(0, |c| c.len);
        if let Some(kv) = key_valid {
            if kv.len() != b || kv.iter().any(|r| r.len() != offset + t) {
                return Err(ModelError::Input(format!(
                    "key mask must be ({b}, {}) for input ({b}, {t}) with {offset} cached positions",
                    offset + t
                )));
            }
        }
        let default_pos: Vec<Vec<u32>>;
        let positions = match positions {
            Some(p) => {
                if p.len() != b || p.iter().any(|r| r.len() != t) {
                    return Err(ModelError::Input(format!("positions must be ({b}, {t})")));
                }
                p
            }
            None => {
                default_pos = vec![(offset as u32..(offset + t) as u32).collect(); b];
                &default_pos
            }
        };
        let tables = self.rope_tables(positions)?;
        // The fused masked softmax (inference, f32) builds no mask tensor at all.
        let fused = !self.opts.differentiable && self.opts.dtype == DType::F32;
        let mut masks: HashMap<Option<usize>, Tensor> = HashMap::new();
        for l in self.layers.iter().filter(|_| !fused) {
            if let std::collections::hash_map::Entry::Vacant(e) = masks.entry(l.spec.window) {
                let m = ops::attention_mask(
                    b,
                    t,
                    offset,
                    l.spec.window,
                    key_valid,
                    self.opts.dtype,
                    self.device(),
                )?;
                e.insert(m.unsqueeze(1)?); // (b, 1, 1, t, tk)
            }
        }
        if let Some(c) = cache.as_deref_mut() {
            if c.layers.len() != self.layers.len() {
                c.layers = vec![None; self.layers.len()];
            }
        }
        let mut x = match input {
            Input::Ids(ids) => self.embed_ids(ids)?,
            Input::Residual(x) => x.clone(),
        };
        for (li, layer) in self.layers.iter().enumerate() {
            if skip.contains(&li) {
                continue;
            }
            let slot = cache.as_deref_mut().map(|c| &mut c.layers[li]);
            let mask = Mask { offset, key_valid, tensor: masks.get(&layer.spec.window) };
            let mut layer_tap =
                tap.as_deref_mut().map(|f| move |what: Tap, t: &Tensor| f(li, what, t));
            let lt = layer_tap
                .as_mut()
                .map(|f| f as &mut dyn FnMut(Tap, &Tensor) -> candle_core::Result<()>);
            let (cos, sin) = &tables[layer.spec.rope];
            x = self.block(layer, &x, cos, sin, &mask, slot, lt)?;
        }
        if let Some(c) = cache {
            c.len += t;
        }
        if matches!(input, Input::Residual(_)) {
            return Ok(x);
        }
        let out = self.norm(&x, &self.norm)?;
        if let Some(f) = tap {
            f(self.layers.len(), Tap::FinalNorm, &out)?;
        }
        Ok(out)
    }

    // The pieces of `forward_hidden` one at a time, for training with activation checkpointing
    // (the trainer stores each layer's input and re-runs one layer at a time under autograd).
    // Positions are 0..t and attention is causal without padding, as in packed training windows.

    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    /// Token embeddings: ids (b, t) -> (b, t, hidden).
    pub fn embed(&self, ids: &Tensor) -> Result<Tensor, ModelError> {
        Ok(self.embed_ids(ids)?)
    }

    /// Layer `li` on a residual stream x (b, t, hidden) -> (b, t, hidden).
    pub fn layer(&self, li: usize, x: &Tensor) -> Result<Tensor, ModelError> {
        let layer =
            self.layers.get(li).ok_or_else(|| ModelError::Input(format!("no layer {li}")))?;
        let (b, t, _) = x.dims3()?;
        let tables = self.rope_tables(&vec![(0..t as u32).collect(); b])?;
        let (cos, sin) = &tables[layer.spec.rope];
        let fused = !self.opts.differentiable && self.opts.dtype == DType::F32;
        let m = if fused {
            None
        } else {
            Some(
                ops::attention_mask(
                    b,
                    t,
                    0,
                    layer.spec.window,
                    None,
                    self.opts.dtype,
                    self.device(),
                )?
                .unsqueeze(1)?,
            ) // (b, 1, 1, t, t)
        };
        let mask = Mask { offset: 0, key_valid: None, tensor: m.as_ref() };
        Ok(self.block(layer, x, cos, sin, &mask, None, None)?)
    }

    /// The final RMSNorm: (b, t, hidden) -> (b, t, hidden).
    pub fn final_norm(&self, x: &Tensor) -> Result<Tensor, ModelError> {
        Ok(self.norm(x, &self.norm)?)
    }

    /// The output projection's weight (vocab, hidden): lm_head, or the embedding when tied.
    pub fn head_weight(&self) -> &Tensor {
        self.lm_head.as_ref().unwrap_or(&self.embed)
    }

    /// Logits (b, t, vocab) for hidden states (b, t, hidden).
    pub fn lm_head(&self, hidden: &Tensor) -> Result<Tensor, ModelError> {
        Ok(logits(self.lm_head_weight(), hidden)?)
    }

    /// The head's matrix (vocab, hidden): lm_head, or the embedding when tied.
    pub fn lm_head_weight(&self) -> &Tensor {
        self.lm_head.as_ref().unwrap_or(&self.embed)
    }

    /// Logits (b, t, vocab). See [`Model::forward_hidden`] for the arguments.
    pub fn forward(
        &self,
        ids: &Tensor,
        key_valid: Option<&[Vec<bool>]>,
        positions: Option<&[Vec<u32>]>,
        cache: Option<&mut KvCache>,
    ) -> Result<Tensor, ModelError> {
        let h = self.forward_hidden(ids, key_valid, positions, cache)?;
        self.lm_head(&h)
    }

    #[allow(clippy::too_many_arguments)] // the block's inputs, each a different tensor
    fn block(
        &self,
        l: &Layer,
        x: &Tensor, // (b, t, h)
        cos: &Tensor,
        sin: &Tensor,
        mask: &Mask,
        slot: Option<&mut Option<(Tensor, Tensor)>>,
        mut tap: Option<BlockTap>,
    ) -> candle_core::Result<Tensor> {
        let mut emit = |what: Tap, t: &Tensor| match tap.as_deref_mut() {
            Some(f) => f(what, t),
            None => Ok(()),
        };
        emit(Tap::LayerInput, x)?;
        let diff = self.opts.differentiable;
        let (b, t, _) = x.dims3()?;
        let (nh, nkv, hd) = (self.spec.heads, self.spec.kv_heads, self.spec.head_dim);
        let rep = nh / nkv;

        let h = self.norm(x, &l.input_norm)?;
        emit(Tap::InputNorm, &h)?;
        let (q, k, v) = match &l.qkv {
            Some(f) => {
                let y = f.forward(&h)?; // (b, t, (nh + 2 kv) hd)
                (
                    y.narrow(2, 0, nh * hd)?,
                    y.narrow(2, nh * hd, nkv * hd)?,
                    y.narrow(2, (nh + nkv) * hd, nkv * hd)?,
                )
            }
            None => (l.q.forward(&h)?, l.k.forward(&h)?, l.v.forward(&h)?),
        };
        let q = q.reshape((b, t, nh, hd))?.transpose(1, 2)?; // (b, nh, t, hd)
        let k = k.reshape((b, t, nkv, hd))?.transpose(1, 2)?; // (b, kv, t, hd)
        let v = v.reshape((b, t, nkv, hd))?.transpose(1, 2)?.contiguous()?;
        // Gemma 3: RMSNorm over head_dim of every query and key head, before RoPE.
        let q = match &l.q_norm {
            Some(w) => self.norm(&q.contiguous()?, w)?,
            None => q,
        };
        let k = match &l.k_norm {
            Some(w) => self.norm(&k.contiguous()?, w)?,
            None => k,
        };
        let q = ops::rope(&q.contiguous()?, cos, sin, diff)?;
        let k = ops::rope(&k.contiguous()?, cos, sin, diff)?;
        let (k, v) = match slot {
            Some(slot) => {
                let (k, v) = match slot.take() {
                    Some((pk, pv)) => (Tensor::cat(&[&pk, &k], 2)?, Tensor::cat(&[&pv, &v], 2)?),
                    None => (k, v),
                };
                *slot = Some((k.clone(), v.clone()));
                (k, v)
            }
            None => (k, v),
        };
        let tk = k.dim(2)?;
        // GQA without copying K/V: query heads g*rep..(g+1)*rep share kv head g (HF repeat_kv).
        let scale = self.spec.attn_scale;
        let attn = match mask.tensor {
            Some(m) => {
                let q = (q.contiguous()?.reshape((b, nkv, rep * t, hd))? * scale)?; // (b, kv, rep*t, hd)
                let scores = q.matmul(&k.contiguous()?.t()?)?; // (b, kv, rep*t, tk)
                let scores = scores.reshape((b, nkv, rep, t, tk))?.broadcast_add(m)?; // m: (b, 1, 1, t, tk)
                let probs = ops::softmax_last(&scores, diff)?.reshape((b, nkv, rep * t, tk))?;
                probs.matmul(&v.contiguous()?)? // (b, kv, rep*t, hd)
            }
            None => {
                let q = (q.reshape((b, nkv, rep, t, hd))? * scale)?; // (b, kv, rep, t, hd)
                causal_attention(&q, &k, &v, mask.offset, l.spec.window, mask.key_valid)?
            }
        };
        let attn = attn.reshape((b, nh, t, hd))?.transpose(1, 2)?; // (b, t, nh, hd)
        emit(Tap::Heads, &attn)?;
        let attn = attn.reshape((b, t, nh * hd))?;
        let o = l.o.forward(&attn)?;
        let (x, h) = match &l.pre_ffn_norm {
            // Gemma 3: post_attention_layernorm normalises the attention output; the MLP's input
            // norm is pre_feedforward_layernorm.
            Some(pre) => {
                let x = (x + self.norm(&o, &l.post_norm)?)?;
                let h = self.norm(&x, pre)?;
                (x, h)
            }
            None => {
                let x = (x + o)?;
                let h = self.norm(&x, &l.post_norm)?;
                (x, h)
            }
        };
        emit(Tap::PostAttnNorm, &h)?;
        let gelu = self.spec.act == Activation::GeluTanh; // GeGLU, else SwiGLU
        let m = match (&l.gate_up, gelu) {
            // (b, t, 2 ffn) -> (b, t, ffn)
            (Some(f), _) => crate::masked_softmax::glu(self.spec.act, &f.forward(&h)?)?,
            (None, false) => (l.gate.forward(&h)?.silu()? * l.up.forward(&h)?)?, // (b, t, ffn)
            (None, true) => (ops::gelu_tanh(&l.gate.forward(&h)?, diff)? * l.up.forward(&h)?)?,
        };
        emit(Tap::MlpAct, &m)?;
        let d = l.down.forward(&m)?;
        let out = match &l.post_ffn_norm {
            Some(w) => (x + self.norm(&d, w)?)?,
            None => (x + d)?,
        };
        emit(Tap::LayerOutput, &out)?;
        Ok(out)
    }
}

/// Mean next-token cross-entropy of logits (b, t, v) against targets (b, t) u32, over positions
/// where `weights` (b, t) is 1 (differentiable; used by tests and training).
pub fn cross_entropy(
    logits: &Tensor,
    targets: &Tensor,
    weights: &Tensor,
) -> candle_core::Result<Tensor> {
    let logp = ops::log_softmax_last(logits)?; // (b, t, v)
    let picked =
        logp.gather(&targets.contiguous()?.unsqueeze(D::Minus1)?, D::Minus1)?.squeeze(D::Minus1)?; // (b, t)
    let w = weights.to_dtype(picked.dtype())?;
    let total = (picked * &w)?.sum_all()?.neg()?;
    let n = w.sum_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()?;
    total / n.max(1.0)
}
