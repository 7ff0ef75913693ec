//! The executor interface: where a trainable model's weights, gradients, AdamW moments and
//! activations live, and the operations every training objective is made of. The training loop
//! (`runner.rs`), KD / CE (`trainer.rs`), the log-probability objectives of SFT, DPO and GRPO
//! (`seqlogp.rs`, `orlik_align`) and the final save see only this trait; no host slice of a
//! weight or a gradient and no `Device` is named above it. A backend (the CPU executor in
//! `cpu.rs` today, a CUDA one next) provides:
//!
//! | operation | what it does |
//! | --- | --- |
//! | [`Executor::forward`] | the body on `b` rows of `t` token ids to the final hidden states, keeping what the backward needs when asked (the activations, or each layer's input with `checkpoint_layers`) |
//! | [`Executor::lm_loss`] | lm_head + KD / CE loss over the rows, `loss_chunk` positions at a time (`losses.rs` is the reference math); with a gradient scale, dL/dlogits back through lm_head and the body, added to the gradient |
//! | [`Executor::token_logp`] | lm_head + log p(target) per position, chunked |
//! | [`Executor::token_logp_backward`] | Σ c · log p(target) back through lm_head and the body, added to the gradient |
//! | [`Executor::reduce_grads`] | hand each accumulated gradient to a [`GradReduce`] (data parallel sums them across ranks) |
//! | [`Executor::shard_optimizer`] | keep the AdamW moments of this rank's share of the tensors only (ZeRO-1, `shard.rs`): updates and checkpoints are then collective |
//! | [`Executor::update`] | the global gradient norm, the non-finite check, clipping and AdamW on the f32 master weights; the gradient is zeroed |
//! | [`Executor::save`] / [`Executor::load_latest`] | a checkpoint: master weights, both moments and the loop's state, written atomically; resume is bit-identical |
//! | [`Executor::weights`] | the current weights by HF name as host tensors (the final save) |
//! | [`Executor::infer`] | an inference executor (`orlik_model::Infer`) on the current weights (GRPO's sampler) |
//! | [`Executor::grads_to_host`] | the accumulated gradient copied out (tests compare executors with it) |
//!
//! The teacher's rows and the task's targets and coefficients come from the host; everything
//! with a model dimension stays in the executor.

pub mod cpu;
pub mod cuda;

use crate::checkpoint::State;
use crate::config::TrainConfig;
use crate::losses::KdSpec;
use crate::trainer::TeacherSource;
use crate::TrainError;
use candle_core::Tensor;
use orlik_model::{Config, Infer, Weights};
use std::any::Any;
use std::path::{Path, PathBuf};

/// The body's output, held by the executor that made it (its final hidden states and, when a
/// gradient was asked for, what the backward needs). Only that executor can read it.
pub struct Acts {
    inner: Box<dyn Any>,
}

impl Acts {
    pub fn new(inner: Box<dyn Any>) -> Acts {
        Acts { inner }
    }

    /// The executor's own type inside (an internal invariant when it is another's).
    pub fn into_inner<T: 'static>(self) -> Result<T, TrainError> {
        self.inner.downcast::<T>().map(|b| *b).map_err(|_| foreign())
    }

    pub fn inner<T: 'static>(&self) -> Result<&T, TrainError> {
        self.inner.downcast_ref::<T>().ok_or_else(foreign)
    }
}

fn foreign() -> TrainError {
    TrainError::Data("internal: activations handed to an executor that did not make them".into())
}

/// Summed loss terms over a batch's rows.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LossSums {
    /// Σ KD term (0 without a teacher).
    pub kd: f64,
    /// Σ cross-entropy against the targets.
    pub ce: f64,
    pub rows: usize,
}

/// What [`Executor::lm_loss`] computes over a batch.
pub struct LmLoss<'a> {
    /// The next token of every row (b · t).
    pub targets: &'a [u32],
    pub spec: KdSpec,
    /// The teacher's rows for the same positions (prepared for this batch); None: plain CE.
    pub teacher: Option<&'a mut dyn TeacherSource>,
    /// Positions per lm_head chunk.
    pub chunk: usize,
    /// Some(s): add the gradient of s · Σ_rows loss; None: the loss only.
    pub grad_scale: Option<f32>,
}

/// The KD / CE terms of one chunk of logits z (c · vocab, row-major) against the teacher's
/// `rows` (None: plain language modelling, CE weight 1) and the next tokens `targets` (c),
/// added into `sums`; `g` (c · vocab) receives dL/dz at gradient scale `scale` (every
/// executor computes the losses on the host with `losses.rs`, so they agree by construction).
#[allow(clippy::too_many_arguments)]
pub(crate) fn chunk_loss(
    z: &[f32],
    g: &mut [f32],
    vocab: usize,
    rows: Option<&crate::trainer::StepRows>,
    targets: &[u32],
    spec: KdSpec,
    scale: f32,
    sums: &mut LossSums,
) {
    use rayon::prelude::*;
    let losses: Vec<crate::losses::RowLoss> = g
        .par_chunks_mut(vocab)
        .zip(z.par_chunks(vocab))
        .enumerate()
        .map(|(i, (gi, zi))| {
            let trow = rows.map(|r| r.row(i));
            let mut sp = spec;
            if trow.is_none() {
                sp.ce_weight = 1.0; // plain language modelling
            }
            crate::losses::row_loss(zi, trow, Some(targets[i]), &sp, scale, gi)
        })
        .collect();
    for l in &losses {
        sums.kd += l.kd;
        sums.ce += l.ce;
    }
    sums.rows += targets.len();
}

/// A data-parallel reduction over ranks (MPI, NCCL): called once per gradient tensor, in
/// [`Executor::names`] order, with the executor's host copy of it.
pub trait GradReduce {
    fn sum(&self, name: &str, grad: &mut [f32]) -> Result<(), TrainError>;
}

/// What sharding the optimizer state saves on this rank.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ShardSaving {
    /// Bytes of AdamW moments this rank keeps.
    pub kept_bytes: u64,
    /// Bytes of moments other ranks keep instead.
    pub dropped_bytes: u64,
}

/// A backend that holds a trainable model and runs the operations of every training objective.
pub trait Executor {
    fn config(&self) -> &Config;
    /// HF names of the trainable tensors, in the order of checkpoints and gradient reductions.
    fn names(&self) -> &[String];
    /// One line for logs and tests: the backend and how the body runs.
    fn describe(&self) -> String;

    /// The body on `ids` (b · t, row-major); `grad` keeps what a backward needs.
    fn forward(&mut self, ids: &[u32], b: usize, t: usize, grad: bool) -> Result<Acts, TrainError>;
    /// KD / CE over every row of `acts` (see [`LmLoss`]).
    fn lm_loss(&mut self, acts: Acts, loss: LmLoss) -> Result<LossSums, TrainError>;
    /// log p(targets[r] | prefix) for every row r of `acts` (b · t).
    fn token_logp(
        &mut self,
        acts: &Acts,
        targets: &[u32],
        chunk: usize,
    ) -> Result<Vec<f64>, TrainError>;
    /// Add the gradient of Σ_r coeff[r] · log p(targets[r]) (b · t each).
    fn token_logp_backward(
        &mut self,
        acts: Acts,
        targets: &[u32],
        coeff: &[f32],
        chunk: usize,
    ) -> Result<(), TrainError>;

    /// Pass every accumulated gradient through `r` (before [`Executor::update`]). With a
    /// sharded optimizer the world's sum is not done here but in `update` (reduce-scatter).
    fn reduce_grads(&mut self, r: &dyn GradReduce) -> Result<(), TrainError>;
    /// The accumulated gradient's global norm; when `apply` and it is finite, clip to
    /// `cfg.clip` and take AdamW step `t` (1-based) at `lr`. The gradient is zeroed either way.
    fn update(
        &mut self,
        lr: f64,
        t: u64,
        cfg: &TrainConfig,
        apply: bool,
    ) -> Result<f64, TrainError>;

    /// From now on keep the moments of this rank's tensors of `comm`'s world only; updates
    /// reduce-scatter the gradients and all-gather the new weights and [`Executor::save`] is called on every rank (after a load:
    /// the checkpoint's moments are read whole, then dropped).
    fn shard_optimizer(
        &mut self,
        comm: &'static dyn orlik_dist::Comm,
    ) -> Result<ShardSaving, TrainError>;
    /// Write a checkpoint of the weights, moments and `state` under `root`.
    fn save(&self, root: &Path, state: &State) -> Result<PathBuf, TrainError>;
    /// Load the newest checkpoint under `root` (None when there is none).
    fn load_latest(&mut self, root: &Path) -> Result<Option<State>, TrainError>;
    /// The current weights by HF name, f32 host tensors.
    fn weights(&self) -> Result<Vec<(String, Tensor)>, TrainError>;
    /// An inference executor on a copy of the current weights (no gradient, fused kernels).
    fn infer(&self) -> Result<Box<dyn Infer>, TrainError>;
    /// The accumulated gradient, one host buffer per tensor in `names` order.
    fn grads_to_host(&self) -> Result<Vec<Vec<f32>>, TrainError>;
}

/// Which executor a run uses.
#[derive(Debug, Clone, Default, PartialEq)]
pub enum Backend {
    /// The hand-written flat-buffer body (`orlik_model::cpu`), candle autograd where forced.
    #[default]
    Cpu,
    /// One NVIDIA GPU (`cuda.rs`).
    Cuda(orlik_cuda::GpuInfo),
}

impl Backend {
    /// The backend `cfg.device` names on this machine (`auto`: the GPU of this process's local
    /// rank when there is one, else the CPU).
    pub fn of(cfg: &TrainConfig) -> Result<Backend, TrainError> {
        let choice = orlik_cuda::DeviceChoice::parse(&cfg.device)
            .map_err(|e| TrainError::Config(e.to_string()))?;
        let local = orlik_dist::world().local_rank();
        match orlik_cuda::device::resolve(choice, local)
            .map_err(|e| TrainError::Config(e.to_string()))?
        {
            orlik_cuda::Resolved::Cpu { .. } => Ok(Backend::Cpu),
            orlik_cuda::Resolved::Cuda(info) => Ok(Backend::Cuda(info)),
        }
    }
}

/// The executor for `cfg`'s training settings, holding `weights` (converted to f32).
pub fn open(
    model: &Config,
    weights: Weights,
    cfg: &TrainConfig,
    backend: Backend,
) -> Result<Box<dyn Executor>, TrainError> {
    match backend {
        Backend::Cpu => {
            let opts = cpu::Options { checkpoint: cfg.checkpoint_layers, autograd: false };
            Ok(Box::new(cpu::CpuExecutor::new(model, weights, opts)?))
        }
        Backend::Cuda(info) => {
            Ok(Box::new(cuda::CudaExecutor::new(model, weights, &info, cfg.checkpoint_layers)?))
        }
    }
}
