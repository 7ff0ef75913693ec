//! The CPU executor: f32 master weights and AdamW moments in host vectors (`params.rs`); the body
//! on the hand-written flat-buffer path of `orlik_model::cpu` (every block `block.rs` describes),
//! or under candle autograd when forced (tests compare the two); lm_head and the losses chunk by
//! chunk (`body.rs`, `losses.rs`). Gradients accumulate over micro-batches in one buffer per
//! tensor until `update`.

use super::{Acts, Executor, GradReduce, LmLoss, LossSums, ShardSaving};
use crate::body::{self, Hidden, Path as BodyPath};
use crate::checkpoint::State;
use crate::config::TrainConfig;
use crate::optim::global_norm;
use crate::params::{Grads, Params};
use crate::shard::Shard;
use crate::TrainError;
use candle_core::{DType, Tensor};
use orlik_dist::Comm;
use orlik_model::{Config, GradModel, Infer, Model, ModelOptions, Weights};
use std::path::{Path, PathBuf};

/// How the CPU executor runs the body.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Options {
    /// Keep only each layer's input and re-run the layer in the backward
    /// (`--checkpoint-layers`: the same gradients, bit for bit, in less memory).
    pub checkpoint: bool,
    /// candle autograd even where the hand-written path covers the block (tests).
    pub autograd: bool,
}

pub struct CpuExecutor {
    p: Params,
    opts: Options,
    /// The hand-written body, built for the longest rows seen so far (its RoPE tables).
    fast: Option<GradModel>,
    /// Σ of the micro-batches' gradients since the last update (None: nothing yet).
    grads: Option<Grads>,
    /// The sharded optimizer's layout under data parallel (`shard.rs`).
    shard: Option<Shard>,
}

impl CpuExecutor {
    pub fn new(model: &Config, weights: Weights, opts: Options) -> Result<CpuExecutor, TrainError> {
        let p = Params::new(model, weights)?;
        Ok(CpuExecutor { p, opts, fast: None, grads: None, shard: None })
    }

    /// Whether the body runs the hand-written forward/backward (else candle autograd).
    pub fn hand_written(&self) -> bool {
        !self.opts.autograd && GradModel::unsupported(self.p.model.config()).is_none()
    }

    fn path(&self) -> BodyPath<'_> {
        match &self.fast {
            Some(model) => BodyPath::Fast { model, checkpoint: self.opts.checkpoint },
            None => BodyPath::Autograd { checkpoint: self.opts.checkpoint },
        }
    }

    /// The hand-written body covering rows of `t` positions (RoPE tables are per position, so
    /// a model built for longer rows gives the same numbers).
    fn cover(&mut self, t: usize) -> Result<(), TrainError> {
        if self.hand_written() && self.fast.as_ref().is_none_or(|f| f.max_t() < t) {
            self.fast = self.p.grad_model(t)?;
        }
        Ok(())
    }

    fn accumulate(&mut self, g: Grads) {
        match self.grads.as_mut() {
            None => self.grads = Some(g),
            Some(acc) => {
                for (a, g) in acc.iter_mut().zip(g) {
                    a.iter_mut().zip(g).for_each(|(x, y)| *x += y);
                }
            }
        }
    }

    fn hidden(acts: &Acts) -> Result<&Hidden, TrainError> {
        acts.inner::<Hidden>()
    }
}

impl Executor for CpuExecutor {
    fn config(&self) -> &Config {
        self.p.model.config()
    }

    fn names(&self) -> &[String] {
        &self.p.names
    }

    fn describe(&self) -> String {
        let body = if self.hand_written() { "hand-written body" } else { "candle autograd body" };
        let ck = if self.opts.checkpoint { ", layers checkpointed" } else { "" };
        format!("cpu: {body}{ck}")
    }

    fn forward(&mut self, ids: &[u32], b: usize, t: usize, grad: bool) -> Result<Acts, TrainError> {
        self.cover(t)?;
        let h = body::forward(&self.p, self.path(), ids.to_vec(), b, t, grad)?;
        Ok(Acts::new(Box::new(h)))
    }

    fn lm_loss(&mut self, acts: Acts, loss: LmLoss) -> Result<LossSums, TrainError> {
        let hidden: Hidden = acts.into_inner()?;
        let LmLoss { targets, spec, mut teacher, chunk, grad_scale } = loss;
        let w = self.p.head_weight(); // (vocab, hidden)
        let vocab = w.dim(0)?;
        let (grad, scale) = (grad_scale.is_some(), grad_scale.unwrap_or(0.0));
        let mut sums = LossSums::default();
        let hg = body::head_chunks(&hidden.hd, &w, chunk, grad, |start, z, g| {
            let c = z.len() / vocab;
            let rows = match teacher.as_mut() {
                Some(tch) => Some(tch.rows(start, c)?),
                None => None,
            };
            let mut scratch = Vec::new();
            let g = match g {
                Some(g) => g,
                None => {
                    scratch.resize(c * vocab, 0f32);
                    &mut scratch
                }
            };
            let tg = &targets[start..start + c];
            super::chunk_loss(z, g, vocab, rows.as_ref(), tg, spec, scale, &mut sums);
            Ok(())
        })?;
        if grad {
            let g = body::backward(&self.p, self.path(), hidden, hg)?;
            self.accumulate(g);
        }
        Ok(sums)
    }

    fn token_logp(
        &mut self,
        acts: &Acts,
        targets: &[u32],
        chunk: usize,
    ) -> Result<Vec<f64>, TrainError> {
        body::token_logp(&Self::hidden(acts)?.hd, &self.p.head_weight(), targets, chunk)
    }

    fn token_logp_backward(
        &mut self,
        acts: Acts,
        targets: &[u32],
        coeff: &[f32],
        chunk: usize,
    ) -> Result<(), TrainError> {
        let hidden: Hidden = acts.into_inner()?;
        let w = self.p.head_weight();
        let hg = body::token_logp_head_backward(&hidden.hd, &w, targets, coeff, chunk)?;
        let g = body::backward(&self.p, self.path(), hidden, hg)?;
        self.accumulate(g);
        Ok(())
    }

    fn reduce_grads(&mut self, r: &dyn GradReduce) -> Result<(), TrainError> {
        // A rank with nothing accumulated still takes part, with zeros.
        let grads = self.grads.get_or_insert_with(|| self.p.zero_grads());
        for (name, g) in self.p.names.iter().zip(grads.iter_mut()) {
            r.sum(name, g)?;
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
        let mut grads = self.grads.take().unwrap_or_else(|| self.p.zero_grads());
        if !apply {
            return Ok(global_norm(&grads));
        }
        self.p.update(&mut grads, lr, t, cfg, self.shard.as_ref())
    }

    fn shard_optimizer(&mut self, comm: &'static dyn Comm) -> Result<ShardSaving, TrainError> {
        let sizes: Vec<usize> = self.p.slots.iter().map(|s| s.w.len()).collect();
        let sh = Shard::new(comm, &sizes);
        let (kept, dropped) = sh.drop_others(&mut self.p.slots);
        self.shard = Some(sh);
        Ok(ShardSaving { kept_bytes: 4 * kept as u64, dropped_bytes: 4 * dropped as u64 })
    }

    fn save(&self, root: &Path, state: &State) -> Result<PathBuf, TrainError> {
        self.p.save(root, state, self.shard.as_ref())
    }

    fn load_latest(&mut self, root: &Path) -> Result<Option<State>, TrainError> {
        self.p.load_latest(root)
    }

    fn weights(&self) -> Result<Vec<(String, Tensor)>, TrainError> {
        Ok(self.p.named_weights())
    }

    fn infer(&self) -> Result<Box<dyn Infer>, TrainError> {
        let w: Weights = self.p.named_weights().into_iter().collect();
        let opts = ModelOptions { dtype: DType::F32, differentiable: false, half_weights: None };
        Ok(Box::new(Model::new(self.config(), &w, opts)?))
    }

    fn grads_to_host(&self) -> Result<Vec<Vec<f32>>, TrainError> {
        Ok(self.grads.clone().unwrap_or_else(|| self.p.zero_grads()))
    }
}
