//! Distillation (KD) and language-model training (CE) as a [`Task`] of the training loop
//! (`runner.rs`). One micro-batch of `batch` packed windows:
//!
//! 1. the executor runs the student body to the final hidden states (`Executor::forward`);
//! 2. `Executor::lm_loss` takes the positions `loss_chunk` rows at a time: logits, the
//!    teacher's rows for the same positions, the loss and dL/dlogits per row (`losses.rs`),
//!    pushed back through lm_head and the body into the executor's gradient — the
//!    (positions × vocab) logits never exist whole.
//!
//! Everything is deterministic for a given thread count (the data order is a pure function of
//! (seed, cursor), reductions have a fixed order), so a resumed run is bit-identical to an
//! uninterrupted one.

use crate::checkpoint::State;
use crate::config::TrainConfig;
use crate::data::{Order, Packed};
use crate::exec::{self, cpu, Backend, Executor, LmLoss};
use crate::losses::{total, KdSpec, RowLoss, TeacherRow};
use crate::runner::{self, Micro, Options, Outcome, Task};
use crate::{file_err, TrainError};
use candle_core::Tensor;
use orlik_model::{Config, Weights};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    Train,
    Val,
}

/// The teacher's rows for consecutive positions (row = window index in batch · seq_len + position).
pub enum StepRows {
    /// Log-probabilities over the whole vocabulary, (rows, vocab).
    Full { vocab: usize, logp: Vec<f32> },
    /// Top-k ids and log-probabilities (rows, k), tail mass (rows).
    TopK { k: usize, ids: Vec<u32>, logp: Vec<f32>, tail: Vec<f32> },
}

impl StepRows {
    pub fn row(&self, i: usize) -> TeacherRow<'_> {
        match self {
            StepRows::Full { vocab, logp } => TeacherRow::Full(&logp[i * vocab..(i + 1) * vocab]),
            StepRows::TopK { k, ids, logp, tail } => TeacherRow::TopK {
                ids: &ids[i * k..(i + 1) * k],
                logp: &logp[i * k..(i + 1) * k],
                tail: tail[i],
            },
        }
    }
}

/// Where the teacher's distributions come from: a model run online, or a cache on disk.
pub trait TeacherSource {
    /// Called once per micro-batch with the windows (indices into the split's packed data) and
    /// their input ids (b · t, row-major). Returns false when this source has nothing for
    /// `split` (no KL).
    fn prepare(
        &mut self,
        split: Split,
        windows: &[usize],
        ids: &[u32],
        b: usize,
        t: usize,
    ) -> Result<bool, TrainError>;
    /// Rows [start, start + n) of the prepared micro-batch.
    fn rows(&mut self, start: usize, n: usize) -> Result<StepRows, TrainError>;
}

/// Summed loss terms of a micro-batch.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Sums {
    kd: f64,
    ce: f64,
    rows: usize,
    has_teacher: bool,
}

#[cfg(test)]
impl Sums {
    /// Summed cross-entropy over the micro-batch's rows (tests compare paths with it).
    pub(crate) fn ce(&self) -> f64 {
        self.ce
    }
}

/// KD / CE on packed windows: the task the loop runs for `orlik distill` and `orlik train`.
pub struct LmTask<'t> {
    cfg: TrainConfig,
    spec: KdSpec,
    train: Packed,
    val: Option<Packed>,
    teacher: Option<Box<dyn TeacherSource + 't>>,
}

impl LmTask<'_> {
    /// Loss sums of one micro-batch and, with `grad_scale`, the gradient of
    /// grad_scale · Σ_rows loss added to the executor's.
    pub(crate) fn micro_split(
        &mut self,
        e: &mut dyn Executor,
        split: Split,
        windows: &[usize],
        grad_scale: Option<f32>,
    ) -> Result<Sums, TrainError> {
        let data = match split {
            Split::Train => &self.train,
            Split::Val => {
                self.val.as_ref().ok_or_else(|| TrainError::Data("no validation data".into()))?
            }
        };
        let t = self.cfg.seq_len;
        let b = windows.len();
        let mut ids = Vec::with_capacity(b * t);
        let mut targets = Vec::with_capacity(b * t);
        for &w in windows {
            let win = data.window(w);
            ids.extend_from_slice(&win[..t]);
            targets.extend_from_slice(&win[1..]);
        }
        let has_teacher = match self.teacher.as_mut() {
            Some(tch) => crate::phase::time("teacher", || tch.prepare(split, windows, &ids, b, t))?,
            None => false,
        };
        let acts = crate::phase::time("forward", || e.forward(&ids, b, t, grad_scale.is_some()))?;
        let teacher = match self.teacher.as_mut() {
            Some(tch) if has_teacher => Some(tch.as_mut() as &mut dyn TeacherSource),
            _ => None,
        };
        let loss = LmLoss {
            targets: &targets,
            spec: self.spec,
            teacher,
            chunk: self.cfg.loss_chunk,
            grad_scale,
        };
        // lm_head, the loss and (training) the whole backward; with an online teacher, its
        // logits too (computed chunk by chunk beside the student's).
        let s = crate::phase::time("loss_backward", || e.lm_loss(acts, loss))?;
        Ok(Sums { kd: s.kd, ce: s.ce, rows: s.rows, has_teacher })
    }
}

impl Task for LmTask<'_> {
    type Error = TrainError;

    fn units(&self) -> usize {
        self.train.windows()
    }

    fn micro(
        &mut self,
        e: &mut dyn Executor,
        units: &[usize],
        _: u64,
        _: f32,
    ) -> Result<Micro, TrainError> {
        // Σ over the step's rows / rows per step, in one f32 factor (as PyTorch's mean).
        let scale = 1.0 / (self.cfg.batch * self.cfg.seq_len * self.cfg.grad_accum) as f32;
        let s = self.micro_split(e, Split::Train, units, Some(scale))?;
        let rows = s.rows.max(1) as f64;
        let mean = RowLoss { kd: s.kd / rows, ce: s.ce / rows };
        let mut metrics = Vec::with_capacity(2);
        if s.has_teacher {
            metrics.push(("kl", mean.kd));
        }
        metrics.push(("ce", mean.ce));
        let loss = total(&mean, &self.spec, s.has_teacher);
        Ok(Micro { loss, tokens: s.rows as u64, metrics })
    }

    /// Mean CE, mean KD (when the teacher covers the split) and bits per byte over the first
    /// `val_tokens` tokens of the validation windows.
    fn validate(&mut self, e: &mut dyn Executor, step: u64) -> Result<Option<Value>, TrainError> {
        let Some(val) = self.val.as_ref() else {
            return Ok(None);
        };
        let per = self.cfg.seq_len;
        let mut n = val.windows();
        if self.cfg.val_tokens > 0 {
            n = n.min(self.cfg.val_tokens.div_ceil(per)).max(1);
        }
        let bytes_per_token = val.bytes as f64 / val.stream_tokens.max(1) as f64;
        let mut total_s = Sums::default();
        let wins: Vec<usize> = (0..n).collect();
        let mut kd_rows = 0;
        for ch in wins.chunks(self.cfg.batch) {
            let s = self.micro_split(e, Split::Val, ch, None)?;
            total_s.ce += s.ce;
            total_s.rows += s.rows;
            if s.has_teacher {
                total_s.kd += s.kd;
                kd_rows += s.rows;
            }
        }
        let rows = total_s.rows.max(1) as f64;
        let mut row = json!({
            "step": step,
            "val_loss": total_s.ce / rows,
            "val_bits_per_byte": total_s.ce / std::f64::consts::LN_2 / (rows * bytes_per_token),
            "val_tokens": total_s.rows,
        });
        if kd_rows > 0 {
            row["val_kl"] = json!(total_s.kd / kd_rows as f64);
        }
        Ok(Some(row))
    }
}

/// A KD / CE run in a directory: the task, the parameters and the loop's state.
pub struct Trainer<'t> {
    cfg: TrainConfig,
    task: LmTask<'t>,
    pub(crate) exec: Box<dyn Executor>,
    out: PathBuf,
    state: State,
    quiet: bool,
    after_step: Option<Box<dyn Fn(u64) + Sync + 't>>,
}

impl<'t> Trainer<'t> {
    /// Set up a run in `out` (created, or continued with `resume`). `run` describes the inputs
    /// (model and data hashes, paths); with the config it must match on resume.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        cfg: TrainConfig,
        model_cfg: &Config,
        weights: Weights,
        train: Packed,
        val: Option<Packed>,
        teacher: Option<Box<dyn TeacherSource + 't>>,
        out: &Path,
        run: Value,
        resume: bool,
    ) -> Result<Trainer<'t>, TrainError> {
        cfg.validate()?;
        if train.seq_len != cfg.seq_len {
            return Err(TrainError::Config(format!(
                "data packed for seq_len {}, config says {}",
                train.seq_len, cfg.seq_len
            )));
        }
        if cfg.seq_len > model_cfg.max_position_embeddings {
            return Err(TrainError::Config(format!(
                "seq_len {} is above the model's max_position_embeddings {}",
                cfg.seq_len, model_cfg.max_position_embeddings
            )));
        }
        let mut exec = exec::open(model_cfg, weights, &cfg, Backend::of(&cfg)?)?;
        let spec = KdSpec {
            loss: cfg.loss,
            temperature: cfg.temperature,
            beta: cfg.jsd_beta,
            ce_weight: cfg.ce_weight,
        };
        let run_json =
            json!({"config": serde_json::to_value(&cfg).unwrap_or(Value::Null), "run": run});
        orlik_dist::on_root(|| crate::config::open_run(out, &run_json, resume))?;
        std::fs::create_dir_all(out).map_err(file_err(out))?;
        let mut task = LmTask { cfg: cfg.clone(), spec, train, val, teacher };
        let state = runner::start(&mut task, exec.as_mut(), &cfg, out, resume)?;
        Ok(Trainer {
            cfg,
            task,
            exec,
            out: out.to_path_buf(),
            state,
            quiet: false,
            after_step: None,
        })
    }

    /// The executor and how it runs the body (`Executor::describe`).
    pub fn executor(&self) -> String {
        self.exec.describe()
    }

    /// Force candle autograd through the body (tests compare it with the hand-written path):
    /// a CPU executor on the current weights, before any step.
    pub fn use_autograd(&mut self) -> Result<(), TrainError> {
        let weights: Weights = self.exec.weights()?.into_iter().collect();
        let opts = cpu::Options { checkpoint: self.cfg.checkpoint_layers, autograd: true };
        self.exec = Box::new(cpu::CpuExecutor::new(self.exec.config(), weights, opts)?);
        Ok(())
    }

    pub fn set_quiet(&mut self, quiet: bool) {
        self.quiet = quiet;
    }

    /// Called after each step with the step number (tests pause here to kill a run mid-way).
    pub fn set_after_step(&mut self, hook: impl Fn(u64) + Sync + 't) {
        self.after_step = Some(Box::new(hook));
    }

    pub fn state(&self) -> &State {
        &self.state
    }

    /// The validation row of the current weights (`val_loss`, `val_bits_per_byte`, and
    /// `val_kl` with a teacher), or None without validation text. Writes nothing.
    pub fn validate(&mut self) -> Result<Option<Value>, TrainError> {
        let step = self.state.step;
        self.task.validate(self.exec.as_mut(), step)
    }
    pub fn metrics_path(&self) -> PathBuf {
        self.out.join("metrics.jsonl")
    }
    pub fn config(&self) -> &TrainConfig {
        &self.cfg
    }

    /// The current weights by HF name (f32).
    pub fn named_weights(&self) -> Result<Vec<(String, Tensor)>, TrainError> {
        self.exec.weights()
    }

    /// See [`LmTask::micro_split`]; with `grad_scale`, the micro-batch's gradient (taken out
    /// of the executor, which is left with none).
    #[cfg(test)]
    pub(crate) fn micro(
        &mut self,
        split: Split,
        windows: &[usize],
        grad_scale: Option<f32>,
    ) -> Result<(Sums, Option<crate::params::Grads>), TrainError> {
        let s = self.task.micro_split(self.exec.as_mut(), split, windows, grad_scale)?;
        if grad_scale.is_none() {
            return Ok((s, None));
        }
        let g = self.exec.grads_to_host()?;
        self.exec.update(0.0, 1, &self.cfg, false)?; // zeroes the executor's gradient
        Ok((s, Some(g)))
    }

    /// HF names of the trainable tensors (the order of gradients).
    #[cfg(test)]
    pub(crate) fn names(&self) -> Vec<String> {
        self.exec.names().to_vec()
    }

    /// Time `n` optimizer steps from the current state without saving anything (benchmarks).
    /// Returns seconds per step.
    pub fn time_steps(&mut self, n: usize) -> Result<Vec<f64>, TrainError> {
        let mut order = Order::new(self.task.units(), self.cfg.seed);
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let t0 = Instant::now();
            runner::step(
                &mut self.task,
                self.exec.as_mut(),
                &self.cfg,
                &mut self.state,
                &mut order,
                &orlik_dist::Single,
                None,
                &|_| {},
            )?;
            out.push(t0.elapsed().as_secs_f64());
        }
        Ok(out)
    }

    /// Train to the configured number of steps (or until `stop` is raised: then a checkpoint is
    /// saved and `Outcome::Interrupted` returned).
    pub fn run(&mut self, stop: Option<&AtomicBool>) -> Result<Outcome, TrainError> {
        self.run_until(stop, None)
    }

    /// [`Trainer::run`], pausing at step `pause_at` when it comes before the last one (a
    /// checkpoint of it saved, `Outcome::Interrupted { step: pause_at }` returned; the same
    /// settings resume it to the same result as an uninterrupted run).
    pub fn run_until(
        &mut self,
        stop: Option<&AtomicBool>,
        pause_at: Option<u64>,
    ) -> Result<Outcome, TrainError> {
        let opts = Options {
            pause_at,
            quiet: self.quiet,
            stop,
            after_step: self.after_step.as_deref().map(|f| f as &(dyn Fn(u64) + Sync)),
            memory: crate::mem::Gate::Off, // the run's caller checked before loading anything
            reduce: None,
        };
        runner::run(&mut self.task, self.exec.as_mut(), &self.cfg, &self.out, &mut self.state, opts)
    }
}
