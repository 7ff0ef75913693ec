//! The CUDA executor: f32 master weights, AdamW moments and gradients in GPU memory, the body
//! forward and backward on the GPU (`orlik_cuda::block`: the layer described in
//! `orlik_model::block`, kernels in `crates/cuda/kernels`), lm_head chunk by chunk on the GPU.
//!
//! The loss terms of each chunk of logits are computed on the host by `losses.rs`, the code the
//! CPU executor runs (the logits chunk goes down, dL/dz comes back up): every KD divergence, a
//! teacher cache's top-k rows and the vocabulary map are the CPU path's by construction. The
//! log-probability objectives (SFT, DPO, GRPO) stay on the GPU (row log-sum-exp and the log-p
//! gradient kernels). Every kernel reduces in a fixed order and cuBLAS is deterministic on one
//! GPU, so `--resume` on the same GPU continues bit for bit. Data parallel sums the gradients
//! through host buffers (the MPI path); the sharded optimizer is the CPU executor's only.

use super::{Acts, Executor, GradReduce, LmLoss, LossSums, ShardSaving};
use crate::checkpoint::{self, State};
use crate::config::TrainConfig;
use crate::optim::Slot;
use crate::TrainError;
use candle_core::{DType, Device, Tensor};
use orlik_cuda::block::{self, LayerGrads, LayerRows, LayerWeights, Saved};
use orlik_cuda::{CudaError, CudaModel, CudaSlice, Gpu, GpuInfo};
use orlik_model::block::{layer_tensors, BlockSpec, Role};
use orlik_model::{Config, Infer, ModelError, Weights};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

type Buf = CudaSlice<f32>;

pub struct CudaExecutor {
    cfg: Config,
    spec: BlockSpec,
    gpu: Arc<Gpu>,
    /// HF names in layer order (as the CPU executor's `Params`); every list below follows it.
    names: Vec<String>,
    shapes: Vec<Vec<usize>>,
    /// Weight decay applies (matrices, not norms and biases).
    decay: Vec<bool>,
    w: Vec<Buf>,
    m: Vec<Buf>,
    v: Vec<Buf>,
    /// Σ of the micro-batches' gradients since the last update (zeroed by `update`).
    g: Vec<Buf>,
    /// Per layer: each role's index in `names`.
    layers: Vec<HashMap<Role, usize>>,
    embed: usize,
    norm: usize,
    head: usize,
    /// RoPE tables for positions 0..rope_len, per kind.
    rope: Vec<(Buf, Buf)>,
    rope_len: usize,
    checkpoint: bool,
}

/// What the forward leaves for the loss and the backward.
struct CudaActs {
    ids: CudaSlice<u32>,
    pos: CudaSlice<u32>,
    b: usize,
    t: usize,
    /// Per layer: the saved activations (grad, no checkpointing), or the layer's input
    /// (checkpointing: the layer is re-run in the backward); empty without grad.
    layers: Vec<Kept>,
    /// The final norm's input and inv (grad only).
    top: Option<(Buf, Buf)>,
    /// Final hidden states (n, hidden).
    h: Buf,
}

enum Kept {
    Saved(Box<Saved>),
    Input(Buf),
}

struct Weights_<'a> {
    w: &'a [Buf],
    idx: &'a HashMap<Role, usize>,
}

impl LayerWeights for Weights_<'_> {
    fn w(&self, role: Role) -> Result<&Buf, ModelError> {
        let i = self.idx.get(&role).ok_or_else(|| missing(role))?;
        Ok(&self.w[*i])
    }
}

struct Grads_<'a> {
    g: &'a mut [Buf],
    idx: &'a HashMap<Role, usize>,
}

impl LayerGrads for Grads_<'_> {
    fn g(&mut self, role: Role) -> Result<&mut Buf, ModelError> {
        let i = self.idx.get(&role).ok_or_else(|| missing(role))?;
        Ok(&mut self.g[*i])
    }
}

fn missing(role: Role) -> ModelError {
    ModelError::Backend(format!("internal: the layer has no {}", role.suffix()))
}

impl CudaExecutor {
    /// Upload `weights` (f32 master copies) to the GPU `info`, with zero moments.
    pub fn new(
        model: &Config,
        weights: Weights,
        info: &GpuInfo,
        checkpoint: bool,
    ) -> Result<CudaExecutor, TrainError> {
        let gpu = Arc::new(Gpu::open(info)?);
        let spec = BlockSpec::of(model)?;
        let mut names: Vec<String> = weights.keys().cloned().collect();
        names.sort_by_key(|n| orlik_model::config::layer_order(n));
        let index: HashMap<&str, usize> =
            names.iter().enumerate().map(|(i, n)| (n.as_str(), i)).collect();
        let find =
            |n: &str| index.get(n).copied().ok_or_else(|| TrainError::Config(format!("no {n}")));
        let (mut shapes, mut decay) = (vec![], vec![]);
        let (mut w, mut m, mut v, mut g) = (vec![], vec![], vec![], vec![]);
        for n in &names {
            let t = weights[n].to_dtype(DType::F32)?;
            let host = t.flatten_all()?.to_vec1::<f32>()?;
            shapes.push(t.dims().to_vec());
            decay.push(t.rank() >= 2);
            w.push(gpu.upload(&host)?);
            m.push(gpu.zeros::<f32>(host.len())?);
            v.push(gpu.zeros::<f32>(host.len())?);
            g.push(gpu.zeros::<f32>(host.len())?);
        }
        drop(weights);
        let roles = layer_tensors(model);
        let mut layers = Vec::with_capacity(spec.layers.len());
        for li in 0..spec.layers.len() {
            let mut idx = HashMap::new();
            for (role, _) in &roles {
                idx.insert(*role, find(&role.name(li))?);
            }
            layers.push(idx);
        }
        let embed = find("model.embed_tokens.weight")?;
        let head = if model.tie_word_embeddings { embed } else { find("lm_head.weight")? };
        let norm = find("model.norm.weight")?;
        Ok(CudaExecutor {
            cfg: model.clone(),
            spec,
            gpu,
            names,
            shapes,
            decay,
            w,
            m,
            v,
            g,
            layers,
            embed,
            norm,
            head,
            rope: Vec::new(),
            rope_len: 0,
            checkpoint,
        })
    }

    /// RoPE tables covering positions 0..t.
    fn cover(&mut self, t: usize) -> Result<(), TrainError> {
        if self.rope_len >= t {
            return Ok(());
        }
        let tables = orlik_model::llama::rope_tables_f32(&self.cfg, t)?;
        self.rope = tables
            .iter()
            .map(|(c, s)| Ok((self.gpu.upload(c)?, self.gpu.upload(s)?)))
            .collect::<Result<_, CudaError>>()?;
        self.rope_len = t;
        Ok(())
    }

    /// One layer forward on `x` in place; `keep`: return what its backward needs.
    fn layer_forward(
        &self,
        li: usize,
        x: &mut Buf,
        pos: &CudaSlice<u32>,
        (b, t): (usize, usize),
        keep: bool,
    ) -> Result<Option<Saved>, TrainError> {
        let s = &self.spec;
        let ls = &s.layers[li];
        let shape = block::own_keys(s, ls, b, t);
        let mut attend = |g: &Gpu, q: &Buf, k: &Buf, v: &Buf| {
            let mut o = g.zeros(b * t * s.heads * s.head_dim)?;
            let mut lse = g.zeros(b * s.heads * t)?;
            g.attn_forward(&shape, (q, k, v), &mut o, &mut lse, None)?;
            Ok((o, lse))
        };
        let (cos, sin) = &self.rope[ls.rope];
        let w = Weights_ { w: &self.w, idx: &self.layers[li] };
        let rows = LayerRows { pos, b, t };
        Ok(block::forward(&self.gpu, s, &w, x, rows, (cos, sin), &mut attend, keep, None)?)
    }

    /// Rows [start, start + c) of `h` (n, hidden) as their own buffer.
    fn rows_of(&self, h: &Buf, start: usize, c: usize) -> Result<Buf, TrainError> {
        let hid = self.spec.hidden;
        let mut out = self.gpu.zeros(c * hid)?;
        self.gpu.copy((h, start * hid), (&mut out, 0), c * hid)?;
        Ok(out)
    }

    /// Logits (c, vocab) of hidden rows hc (c, hidden).
    fn logits(&self, hc: &Buf, c: usize) -> Result<Buf, TrainError> {
        let (hid, vocab) = (self.spec.hidden, self.spec.vocab);
        let mut z = self.gpu.zeros(c * vocab)?;
        self.gpu.linear(hc, &self.w[self.head], &mut z, (c, hid, vocab), 0.0)?;
        Ok(z)
    }

    /// The head's backward for one chunk: dh[start..] = gz W, dW_head += gzᵀ hc.
    fn head_back(
        &mut self,
        gz: &Buf,
        hc: &Buf,
        dh: &mut Buf,
        start: usize,
        c: usize,
    ) -> Result<(), TrainError> {
        let (hid, vocab, head) = (self.spec.hidden, self.spec.vocab, self.head);
        let mut dhc = self.gpu.zeros(c * hid)?;
        self.gpu.linear_dx(gz, &self.w[head], &mut dhc, (c, hid, vocab), 0.0)?;
        self.gpu.copy((&dhc, 0), (dh, start * hid), c * hid)?;
        Ok(self.gpu.linear_dw(hc, gz, &mut self.g[head], (c, hid, vocab), 1.0)?)
    }

    /// dL/dh (n, hidden) through the final norm, every layer (re-run first when checkpointed)
    /// and the embedding, into the gradient buffers.
    fn backward(&mut self, acts: CudaActs, dh: Buf) -> Result<(), TrainError> {
        let CudaActs { ids, pos, b, t, layers, top, .. } = acts;
        let (n, hid) = (b * t, self.spec.hidden);
        let (x_top, inv_top) = top
            .ok_or_else(|| TrainError::Data("internal: backward without a kept forward".into()))?;
        let gpu = self.gpu.clone();
        let mut dx = gpu.zeros(n * hid)?;
        {
            let g = &mut self.g;
            gpu.rms_backward(
                &x_top,
                &inv_top,
                &self.w[self.norm],
                &dh,
                &mut dx,
                &mut g[self.norm],
                n,
                self.spec.norm.offset,
            )?;
        }
        for (li, kept) in layers.into_iter().enumerate().rev() {
            let saved = match kept {
                Kept::Saved(s) => *s,
                Kept::Input(mut x) => {
                    self.layer_forward(li, &mut x, &pos, (b, t), true)?.ok_or_else(|| {
                        TrainError::Data("internal: a re-run layer kept nothing".into())
                    })?
                }
            };
            let (cos, sin) = &self.rope[self.spec.layers[li].rope];
            let w = Weights_ { w: &self.w, idx: &self.layers[li] };
            let mut gr = Grads_ { g: &mut self.g, idx: &self.layers[li] };
            let rows = LayerRows { pos: &pos, b, t };
            block::backward(
                &gpu,
                &self.spec,
                &self.spec.layers[li],
                &w,
                &mut gr,
                saved,
                &mut dx,
                rows,
                (cos, sin),
            )?;
        }
        let scale = self.spec.embed_scale.unwrap_or(1.0) as f32;
        Ok(gpu.embed_scatter_add(&ids, &dx, &mut self.g[self.embed], hid, scale)?)
    }

    fn host(&self, x: &Buf) -> Result<Vec<f32>, TrainError> {
        self.gpu.download(x).map_err(TrainError::from)
    }
}

impl Executor for CudaExecutor {
    fn config(&self) -> &Config {
        &self.cfg
    }

    fn names(&self) -> &[String] {
        &self.names
    }

    fn describe(&self) -> String {
        let ck = if self.checkpoint { ", layers checkpointed" } else { "" };
        format!("cuda: {}, f32 master weights, hand-written body{ck}", self.gpu.info)
    }

    fn forward(&mut self, ids: &[u32], b: usize, t: usize, grad: bool) -> Result<Acts, TrainError> {
        if ids.len() != b * t {
            return Err(TrainError::Data(format!("{} ids for {b} rows of {t}", ids.len())));
        }
        if let Some(&bad) = ids.iter().find(|&&i| i as usize >= self.spec.vocab) {
            return Err(TrainError::Data(format!(
                "token id {bad} is outside the vocabulary ({})",
                self.spec.vocab
            )));
        }
        self.cover(t)?;
        let (n, hid) = (b * t, self.spec.hidden);
        let g = self.gpu.clone();
        let ids_d = g.upload(ids)?;
        let pos: Vec<u32> = (0..b).flat_map(|_| 0..t as u32).collect();
        let pos_d = g.upload(&pos)?;
        let mut x = g.zeros(n * hid)?;
        let scale = self.spec.embed_scale.unwrap_or(1.0) as f32;
        g.embed_gather(&ids_d, &self.w[self.embed], &mut x, hid, scale)?;
        let mut layers = Vec::new();
        for li in 0..self.spec.layers.len() {
            if grad && self.checkpoint {
                layers.push(Kept::Input(g.dup(&x)?));
            }
            let keep = grad && !self.checkpoint;
            if let Some(s) = self.layer_forward(li, &mut x, &pos_d, (b, t), keep)? {
                layers.push(Kept::Saved(Box::new(s)));
            }
        }
        let (h, inv) = block::rms(&g, &self.spec, &x, &self.w[self.norm], n)?;
        let top = if grad { Some((x, inv)) } else { None };
        Ok(Acts::new(Box::new(CudaActs { ids: ids_d, pos: pos_d, b, t, layers, top, h })))
    }

    fn lm_loss(&mut self, acts: Acts, loss: LmLoss) -> Result<LossSums, TrainError> {
        let acts: CudaActs = acts.into_inner()?;
        let LmLoss { targets, spec, mut teacher, chunk, grad_scale } = loss;
        let (n, hid, vocab) = (acts.b * acts.t, self.spec.hidden, self.spec.vocab);
        let (grad, scale) = (grad_scale.is_some(), grad_scale.unwrap_or(0.0));
        let mut dh = if grad { Some(self.gpu.zeros(n * hid)?) } else { None };
        let mut sums = LossSums::default();
        for start in (0..n).step_by(chunk.max(1)) {
            let c = chunk.max(1).min(n - start);
            let hc = self.rows_of(&acts.h, start, c)?;
            let z = self.host(&self.logits(&hc, c)?)?;
            let rows = match teacher.as_mut() {
                Some(tch) => Some(tch.rows(start, c)?),
                None => None,
            };
            let mut gz = vec![0f32; c * vocab];
            super::chunk_loss(
                &z,
                &mut gz,
                vocab,
                rows.as_ref(),
                &targets[start..start + c],
                spec,
                scale,
                &mut sums,
            );
            if let Some(dh) = dh.as_mut() {
                let gz = self.gpu.upload(&gz)?;
                self.head_back(&gz, &hc, dh, start, c)?;
            }
        }
        if let Some(dh) = dh {
            self.backward(acts, dh)?;
        }
        Ok(sums)
    }

    fn token_logp(
        &mut self,
        acts: &Acts,
        targets: &[u32],
        chunk: usize,
    ) -> Result<Vec<f64>, TrainError> {
        let a = acts.inner::<CudaActs>()?;
        let (n, vocab) = (a.b * a.t, self.spec.vocab);
        let mut out = vec![0f64; n];
        for start in (0..n).step_by(chunk.max(1)) {
            let c = chunk.max(1).min(n - start);
            let z = self.host(&self.logits(&self.rows_of(&a.h, start, c)?, c)?)?;
            crate::body::target_logp(
                &mut out[start..start + c],
                &z,
                vocab,
                &targets[start..start + c],
            );
        }
        Ok(out)
    }

    fn token_logp_backward(
        &mut self,
        acts: Acts,
        targets: &[u32],
        coeff: &[f32],
        chunk: usize,
    ) -> Result<(), TrainError> {
        let acts: CudaActs = acts.into_inner()?;
        let (n, hid, vocab) = (acts.b * acts.t, self.spec.hidden, self.spec.vocab);
        let g = self.gpu.clone();
        let mut dh = g.zeros(n * hid)?;
        for start in (0..n).step_by(chunk.max(1)) {
            let c = chunk.max(1).min(n - start);
            let hc = self.rows_of(&acts.h, start, c)?;
            let mut z = self.logits(&hc, c)?;
            let mut lse = g.zeros(c)?;
            g.row_logsumexp(&z, &mut lse, vocab)?;
            let tg = g.upload(&targets[start..start + c])?;
            let cf = g.upload(&coeff[start..start + c])?;
            // In place: the logits become dL/dz = coeff · (onehot − softmax).
            let zc = g.dup(&z)?;
            g.logp_grad(&zc, &lse, &tg, &cf, &mut z, vocab)?;
            self.head_back(&z, &hc, &mut dh, start, c)?;
        }
        self.backward(acts, dh)
    }

    fn reduce_grads(&mut self, r: &dyn GradReduce) -> Result<(), TrainError> {
        // Through host buffers: the MPI path (NCCL is issue 18's GPU half).
        for (name, buf) in self.names.iter().zip(self.g.iter_mut()) {
            let mut host = self.gpu.download(buf)?;
            r.sum(name, &mut host)?;
            self.gpu.write(buf, &host)?;
        }
        Ok(())
    }

    fn update(
        &mut self,
        lr: f64,
        t: u64,
        cfg: &TrainConfig,
        apply: bool,
    ) -> Result<f64, TrainError> {
        let (gpu, g) = (&self.gpu, &mut self.g);
        // Σ over tensors in `names` order, each tensor's sum of squares in f64 (as global_norm).
        let mut sq = 0f64;
        for x in g.iter() {
            sq += gpu.sum_squares(x)?;
        }
        let norm = sq.sqrt();
        if apply && norm.is_finite() {
            if cfg.clip > 0.0 && norm > cfg.clip {
                let f = (cfg.clip / (norm + 1e-6)) as f32;
                for x in g.iter_mut() {
                    gpu.scale(x, f)?;
                }
            }
            let (bc1, bc2) = (1.0 - cfg.beta1.powi(t as i32), 1.0 - cfg.beta2.powi(t as i32));
            for (i, gi) in g.iter().enumerate() {
                let a = orlik_cuda::gpu::AdamStep {
                    beta1: cfg.beta1 as f32,
                    beta2: cfg.beta2 as f32,
                    step: (lr / bc1) as f32,
                    bc2_sqrt: bc2.sqrt() as f32,
                    eps: cfg.eps as f32,
                    shrink: if self.decay[i] { (1.0 - lr * cfg.weight_decay) as f32 } else { 1.0 },
                };
                gpu.adamw(&mut self.w[i], &mut self.m[i], &mut self.v[i], gi, &a)?;
            }
        }
        // The gradient is zeroed either way; its buffers are kept for the next step.
        for x in g.iter_mut() {
            gpu.clear(x)?;
        }
        Ok(norm)
    }

    fn shard_optimizer(
        &mut self,
        _comm: &'static dyn orlik_dist::Comm,
    ) -> Result<ShardSaving, TrainError> {
        Err(TrainError::Config(
            "the sharded optimizer (ZeRO-1) runs on the CPU executor only so far: with --device cuda \
             under a launcher pass --no-shard-optimizer"
                .into(),
        ))
    }

    fn save(&self, root: &Path, state: &State) -> Result<PathBuf, TrainError> {
        let mut slots = Vec::with_capacity(self.names.len());
        for i in 0..self.names.len() {
            slots.push(Slot {
                w: self.host(&self.w[i])?,
                m: self.host(&self.m[i])?,
                v: self.host(&self.v[i])?,
                decay: self.decay[i],
            });
        }
        checkpoint::save(root, state, &self.names, &slots)
    }

    fn load_latest(&mut self, root: &Path) -> Result<Option<State>, TrainError> {
        let Some((_, dir)) = checkpoint::list(root)?.pop() else { return Ok(None) };
        let mut slots: Vec<Slot> = self
            .w
            .iter()
            .zip(&self.decay)
            .map(|(w, &decay)| Slot {
                w: vec![0.0; w.len()],
                m: vec![0.0; w.len()],
                v: vec![0.0; w.len()],
                decay,
            })
            .collect();
        let st = checkpoint::load(&dir, &self.names, &mut slots)?;
        for (i, s) in slots.iter().enumerate() {
            self.gpu.write(&mut self.w[i], &s.w)?;
            self.gpu.write(&mut self.m[i], &s.m)?;
            self.gpu.write(&mut self.v[i], &s.v)?;
        }
        Ok(Some(st))
    }

    fn weights(&self) -> Result<Vec<(String, Tensor)>, TrainError> {
        let mut out = Vec::with_capacity(self.names.len());
        for (i, name) in self.names.iter().enumerate() {
            out.push((
                name.clone(),
                Tensor::from_vec(self.host(&self.w[i])?, self.shapes[i].as_slice(), &Device::Cpu)?,
            ));
        }
        Ok(out)
    }

    fn infer(&self) -> Result<Box<dyn Infer>, TrainError> {
        Ok(Box::new(CudaModel::new(&self.cfg, self.weights()?, self.gpu.clone())?))
    }

    fn grads_to_host(&self) -> Result<Vec<Vec<f32>>, TrainError> {
        self.g.iter().map(|x| self.host(x)).collect()
    }
}
