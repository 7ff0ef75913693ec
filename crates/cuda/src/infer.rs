//! The CUDA inference executor: [`orlik_model::Infer`] on one GPU, the block of
//! `orlik_model::block` run with the kernels of [`crate::gpu`] (f32 weights and activations,
//! cuBLAS products without TF32), a KV cache in device memory that grows by doubling. Token ids
//! go up and final hidden states / logits come back as host tensors, as the interface says.
//!
//! One layer, as `block.rs` describes it, with the buffers used here (n = b · t rows):
//!
//! ```text
//! x (n, h) = embed[ids] · embed_scale
//!   a = rms(x; input_layernorm)                                  (n, h)
//!   q = a Wqᵀ [+bq] (n, heads·hd)   k, v = a Wkᵀ, a Wvᵀ [+b] (n, kv·hd)
//!   [qk_norm] q, k = rms over each head's hd rows                (n·heads, hd), (n·kv, hd)
//!   q, k = rope(q, k; positions, the layer's table)
//!   [cache]   k, v appended to the cache: (b, cap, kv·hd), rows off .. off + t of each batch row
//!   o = attention(q, keys 0 .. off + t)                          (n, heads·hd)
//!   y = o Woᵀ [+bo]                                              (n, h)
//!   [sandwich] x += rms(y; post_attention_layernorm); a = rms(x; pre_feedforward_layernorm)
//!   [else]     x += y;                                a = rms(x; post_attention_layernorm)
//!   m = act(a Wgᵀ [+bg]) · (a Wuᵀ [+bu])                         (n, ffn)
//!   y = m Wdᵀ [+bd]                                              (n, h)
//!   [sandwich] x += rms(y; post_feedforward_layernorm)  [else] x += y
//! hidden = rms(x; model.norm)
//! ```

use crate::{CudaError, Gpu};
use candle_core::{DType, Device, Tensor};
use cudarc::driver::CudaSlice;
use orlik_model::block::{layer_tensors, BlockSpec, LayerSpec, Role};
use orlik_model::infer::{Cache, LayerTap, Rows, SubHead, Tap};
use orlik_model::{Config, Infer, ModelError};
use std::collections::HashMap;
use std::sync::Arc;

/// Positions the RoPE tables cover at most (more is refused, naming the limit).
const MAX_ROPE_POSITIONS: usize = 1 << 15;

struct Layer {
    w: HashMap<Role, CudaSlice<f32>>,
    spec: LayerSpec,
}

/// A model's weights on one GPU.
pub struct CudaModel {
    cfg: Config,
    spec: BlockSpec,
    gpu: Arc<Gpu>,
    embed: CudaSlice<f32>, // (vocab, h)
    layers: Vec<Layer>,
    norm: CudaSlice<f32>,
    head: Option<CudaSlice<f32>>, // (vocab, h); None: tied to the embedding
    rope: Vec<(CudaSlice<f32>, CudaSlice<f32>)>, // per RoPE kind: (positions, hd / 2)
    positions: usize,
}

/// The KV cache on the GPU: per layer k and v of (b, cap, kv · hd), `len` positions filled.
pub struct CudaKv {
    layers: Vec<Option<(CudaSlice<f32>, CudaSlice<f32>)>>,
    b: usize,
    len: usize,
    cap: usize,
}

use crate::block::backend;

/// Device rows to a host tensor of `shape`.
fn to_host(gpu: &Gpu, x: &CudaSlice<f32>, shape: &[usize]) -> Result<Tensor, ModelError> {
    let mut v = gpu.download(x).map_err(backend)?;
    v.truncate(shape.iter().product());
    Ok(Tensor::from_vec(v, shape, &Device::Cpu)?)
}

/// Logits (…, rows) of host hidden states (…, h) through the head matrix `w` (rows, h) on the
/// device.
fn head_of(
    gpu: &Gpu,
    w: &CudaSlice<f32>,
    (rows, h): (usize, usize),
    hidden: &Tensor,
) -> Result<Tensor, ModelError> {
    let dims = hidden.dims().to_vec();
    if dims.last() != Some(&h) {
        return Err(ModelError::Input(format!("hidden states {dims:?} do not end in {h}")));
    }
    let n = hidden.elem_count() / h;
    let x = gpu.upload(&host_f32(hidden)?).map_err(backend)?;
    let mut y = gpu.zeros(n * rows).map_err(backend)?;
    gpu.linear(&x, w, &mut y, (n, h, rows), 0.0).map_err(backend)?;
    let mut out = dims;
    let last = out.len() - 1;
    out[last] = rows;
    to_host(gpu, &y, &out)
}

fn host_f32(t: &Tensor) -> Result<Vec<f32>, ModelError> {
    Ok(t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?)
}

impl CudaModel {
    /// Upload `params` (HF names, as `Model::named_parameters` gives them; any float dtype,
    /// held as f32) for `cfg` to `gpu`.
    pub fn new(
        cfg: &Config,
        params: Vec<(String, Tensor)>,
        gpu: Arc<Gpu>,
    ) -> Result<CudaModel, ModelError> {
        orlik_model::llama::validate_shapes(
            cfg,
            params.iter().map(|(k, v)| (k.as_str(), v.dims())),
        )?;
        let spec = BlockSpec::of(cfg)?;
        let mut by_name: HashMap<String, Tensor> = params.into_iter().collect();
        let mut take = |name: &str| -> Result<CudaSlice<f32>, ModelError> {
            let t = by_name.remove(name).ok_or_else(|| ModelError::MissingTensor {
                name: name.to_string(),
                expected: vec![],
            })?;
            gpu.upload(&host_f32(&t)?).map_err(backend)
        };
        let embed = take("model.embed_tokens.weight")?;
        let norm = take("model.norm.weight")?;
        let head = if cfg.tie_word_embeddings { None } else { Some(take("lm_head.weight")?) };
        let roles = layer_tensors(cfg);
        let mut layers = Vec::with_capacity(spec.layers.len());
        for (li, ls) in spec.layers.iter().enumerate() {
            let mut w = HashMap::new();
            for (role, _) in &roles {
                w.insert(*role, take(&role.name(li))?);
            }
            layers.push(Layer { w, spec: *ls });
        }
        let positions = cfg.max_position_embeddings.clamp(1, MAX_ROPE_POSITIONS);
        let rope = orlik_model::llama::rope_tables_f32(cfg, positions)?
            .iter()
            .map(|(c, s)| Ok((gpu.upload(c)?, gpu.upload(s)?)))
            .collect::<Result<Vec<_>, CudaError>>()
            .map_err(backend)?;
        Ok(CudaModel { cfg: cfg.clone(), spec, gpu, embed, layers, norm, head, rope, positions })
    }

    /// The same weights as a candle model (a frozen model loaded on the host), on `gpu`.
    pub fn from_model(m: &orlik_model::Model, gpu: Arc<Gpu>) -> Result<CudaModel, ModelError> {
        CudaModel::new(m.config(), m.named_parameters(), gpu)
    }

    pub fn gpu(&self) -> &Gpu {
        &self.gpu
    }

    /// Device rows to a host tensor of `shape` (for taps and the final hidden states).
    fn to_host(&self, x: &CudaSlice<f32>, shape: &[usize]) -> Result<Tensor, ModelError> {
        to_host(&self.gpu, x, shape)
    }

    /// Each row's positions, flat (b · t), and the key mask (b · (off + t) bytes), checked as
    /// the candle model checks them.
    fn positions_and_mask(
        &self,
        rows: &Rows,
        off: usize,
    ) -> Result<(Vec<u32>, Option<Vec<u8>>), ModelError> {
        let (b, t) = (rows.b, rows.t);
        if rows.ids.len() != b * t {
            return Err(ModelError::Input(format!("{} ids for {b} rows of {t}", rows.ids.len())));
        }
        if let Some(&bad) = rows.ids.iter().find(|&&i| i as usize >= self.spec.vocab) {
            return Err(ModelError::Input(format!(
                "token id {bad} is outside the vocabulary ({})",
                self.spec.vocab
            )));
        }
        let pos: Vec<u32> = match rows.positions {
            Some(p) => {
                if p.len() != b || p.iter().any(|r| r.len() != t) {
                    return Err(ModelError::Input(format!("positions must be ({b}, {t})")));
                }
                p.concat()
            }
            None => (0..b).flat_map(|_| off as u32..(off + t) as u32).collect(),
        };
        if let Some(&p) = pos.iter().find(|&&p| p as usize >= self.positions) {
            return Err(ModelError::Input(format!(
                "position {p} is past the {} positions the GPU's RoPE tables hold",
                self.positions
            )));
        }
        let mask = match rows.key_valid {
            None => None,
            Some(kv) => {
                if kv.len() != b || kv.iter().any(|r| r.len() != off + t) {
                    return Err(ModelError::Input(format!(
                        "key mask must be ({b}, {}) for input ({b}, {t}) with {off} cached positions",
                        off + t
                    )));
                }
                Some(kv.iter().flat_map(|r| r.iter().map(|&v| u8::from(v))).collect())
            }
        };
        Ok((pos, mask))
    }

    /// Room for `need` positions of `b` rows in every layer of `c` (doubling, old rows kept).
    fn reserve(&self, c: &mut CudaKv, b: usize, need: usize) -> Result<(), CudaError> {
        if c.len == 0 && c.b != b {
            // An empty cache taken up by another batch size: its buffers (if any) are dropped.
            c.layers.clear();
            c.cap = 0;
            c.b = b;
        }
        if c.layers.len() != self.layers.len() {
            c.layers = (0..self.layers.len()).map(|_| None).collect();
        }
        if need <= c.cap && c.layers.iter().all(Option::is_some) {
            return Ok(());
        }
        let cap = need.max(2 * c.cap).max(16);
        let kvd = self.spec.kv_heads * self.spec.head_dim;
        for slot in c.layers.iter_mut() {
            let (mut k, mut v) = (self.gpu.zeros(b * cap * kvd)?, self.gpu.zeros(b * cap * kvd)?);
            if let Some((ok, ov)) = slot.as_ref() {
                for bi in 0..b {
                    self.gpu.copy((ok, bi * c.cap * kvd), (&mut k, bi * cap * kvd), c.len * kvd)?;
                    self.gpu.copy((ov, bi * c.cap * kvd), (&mut v, bi * cap * kvd), c.len * kvd)?;
                }
            }
            *slot = Some((k, v));
        }
        c.cap = cap;
        Ok(())
    }

    /// The forward: final hidden states (b, t, h) with the layers in `skip` left out; `tap`
    /// sees every layer's activations (downloaded to the host); the cache grows by t.
    fn run(
        &self,
        rows: Rows,
        mut cache: Option<&mut CudaKv>,
        skip: &[usize],
        mut tap: Option<LayerTap>,
    ) -> Result<Tensor, ModelError> {
        let (b, t) = (rows.b, rows.t);
        let off = cache.as_ref().map_or(0, |c| c.len);
        if let Some(c) = cache.as_ref() {
            if c.len > 0 && c.b != b {
                return Err(ModelError::Input(format!(
                    "a cache of {} rows continued with {b}",
                    c.b
                )));
            }
        }
        let (pos, mask) = self.positions_and_mask(&rows, off)?;
        let g = &self.gpu;
        let s = &self.spec;
        let (n, h) = (b * t, s.hidden);
        let kvd = s.kv_heads * s.head_dim;
        let ids = g.upload(rows.ids).map_err(backend)?;
        let pos_d = g.upload(&pos).map_err(backend)?;
        let mask_d = mask.as_ref().map(|m| g.upload(m)).transpose().map_err(backend)?;
        if let Some(c) = cache.as_deref_mut() {
            self.reserve(c, b, off + t).map_err(backend)?;
        }
        let mut x = g.zeros(n * h).map_err(backend)?;
        let scale = s.embed_scale.unwrap_or(1.0) as f32;
        g.embed_gather(&ids, &self.embed, &mut x, h, scale).map_err(backend)?;
        for li in (0..self.layers.len()).filter(|l| !skip.contains(l)) {
            let layer = &self.layers[li];
            let mut shape = crate::block::own_keys(s, &layer.spec, b, t);
            // Attention over this call's keys, or over the cache after appending them to it.
            let mut slot = match cache.as_deref_mut() {
                Some(c) => {
                    shape.tk = off + t;
                    shape.kcap = c.cap;
                    Some(c.layers[li].as_mut().ok_or_else(|| {
                        ModelError::Backend("internal: cache layer not reserved".into())
                    })?)
                }
                None => None,
            };
            let mut attend = |g: &Gpu,
                              q: &CudaSlice<f32>,
                              k: &CudaSlice<f32>,
                              v: &CudaSlice<f32>| {
                let mut o = g.zeros(n * s.heads * s.head_dim)?;
                let mut lse = g.zeros(b * s.heads * t)?;
                match slot.as_mut() {
                    Some((kc, vc)) => {
                        for bi in 0..b {
                            let (from, to) = (bi * t * kvd, (bi * shape.kcap + off) * kvd);
                            g.copy((k, from), (kc, to), t * kvd)?;
                            g.copy((v, from), (vc, to), t * kvd)?;
                        }
                        g.attn_forward(&shape, (q, kc, vc), &mut o, &mut lse, mask_d.as_ref())?;
                    }
                    None => g.attn_forward(&shape, (q, k, v), &mut o, &mut lse, mask_d.as_ref())?,
                }
                Ok((o, lse))
            };
            let mut layer_tap = tap.as_deref_mut().map(|f| {
                move |what: Tap, buf: &CudaSlice<f32>, dims: &[usize]| -> Result<(), ModelError> {
                    Ok(f(li, what, &self.to_host(buf, dims)?)?)
                }
            });
            let lt = layer_tap.as_mut().map(|f| f as crate::block::BlockTap);
            let (cos, sin) = &self.rope[layer.spec.rope];
            let rows = crate::block::LayerRows { pos: &pos_d, b, t };
            crate::block::forward(g, s, layer, &mut x, rows, (cos, sin), &mut attend, false, lt)?;
        }
        if let Some(c) = cache {
            c.len += t;
        }
        let (out, _) = crate::block::rms(g, s, &x, &self.norm, n).map_err(backend)?;
        if let Some(f) = tap {
            f(self.layers.len(), Tap::FinalNorm, &self.to_host(&out, &[b, t, h])?)?;
        }
        self.to_host(&out, &[b, t, h])
    }
}

impl crate::block::LayerWeights for Layer {
    fn w(&self, role: Role) -> Result<&CudaSlice<f32>, ModelError> {
        self.w
            .get(&role)
            .ok_or_else(|| ModelError::Backend(format!("internal: no {}", role.suffix())))
    }
}

impl Infer for CudaModel {
    fn config(&self) -> &Config {
        &self.cfg
    }

    fn new_cache(&self) -> Cache {
        Cache::new(CudaKv { layers: Vec::new(), b: 0, len: 0, cap: 0 })
    }

    fn repeat_cache(&self, c: &Cache, n: usize) -> Result<Cache, ModelError> {
        let c = c.get::<CudaKv>()?;
        if c.len > 0 && c.b != 1 {
            return Err(ModelError::Input(format!(
                "repeat_cache needs a cache of batch 1, got {}",
                c.b
            )));
        }
        let kvd = self.spec.kv_heads * self.spec.head_dim;
        let mut layers = Vec::with_capacity(c.layers.len());
        for slot in &c.layers {
            layers.push(match slot {
                None => None,
                Some((k, v)) => {
                    let g = &self.gpu;
                    let (mut nk, mut nv) = (
                        g.zeros(n * c.cap * kvd).map_err(backend)?,
                        g.zeros(n * c.cap * kvd).map_err(backend)?,
                    );
                    for r in 0..n {
                        g.copy((k, 0), (&mut nk, r * c.cap * kvd), c.len * kvd).map_err(backend)?;
                        g.copy((v, 0), (&mut nv, r * c.cap * kvd), c.len * kvd).map_err(backend)?;
                    }
                    Some((nk, nv))
                }
            });
        }
        Ok(Cache::new(CudaKv { layers, b: n, len: c.len, cap: c.cap }))
    }

    fn hidden(&self, rows: Rows, cache: Option<&mut Cache>) -> Result<Tensor, ModelError> {
        let kv = match cache {
            Some(c) => Some(c.get_mut::<CudaKv>()?),
            None => None,
        };
        self.run(rows, kv, &[], None)
    }

    fn head(&self, hidden: &Tensor) -> Result<Tensor, ModelError> {
        let w = self.head.as_ref().unwrap_or(&self.embed);
        head_of(&self.gpu, w, (self.spec.vocab, self.spec.hidden), hidden)
    }

    /// The head's rows of `ids` gathered once into a (ids, hidden) matrix of its own on the
    /// device: each call then multiplies by that alone, as the host model's subset head does.
    fn head_subset(&self, ids: &[u32]) -> Result<Option<SubHead>, ModelError> {
        let (vocab, h) = (self.spec.vocab, self.spec.hidden);
        if let Some(&bad) = ids.iter().find(|&&i| i as usize >= vocab) {
            return Err(ModelError::Input(format!("head subset: id {bad} >= vocab_size {vocab}")));
        }
        let g = self.gpu.clone();
        let all = g.download(self.head.as_ref().unwrap_or(&self.embed)).map_err(backend)?;
        let rows: Vec<f32> =
            ids.iter().flat_map(|&i| all[i as usize * h..(i as usize + 1) * h].to_vec()).collect();
        let w = g.upload(&rows).map_err(backend)?; // (ids, hidden)
        let n = ids.len();
        Ok(Some(Box::new(move |hidden: &Tensor| head_of(&g, &w, (n, h), hidden))))
    }

    fn hidden_tapped(
        &self,
        rows: Rows,
        skip: &[usize],
        tap: LayerTap,
    ) -> Result<Tensor, ModelError> {
        if rows.positions.is_some() {
            return Err(ModelError::Input("a tapped forward takes no positions".into()));
        }
        self.run(rows, None, skip, Some(tap))
    }
}
