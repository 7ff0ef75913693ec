//! The training loop. One optimizer step = `grad_accum` micro-batches of `batch` packed windows:
//!
//! 1. the student body runs with autograd to the final hidden states h (b, t, hidden);
//! 2. outside autograd, positions are taken `loss_chunk` rows at a time: logits = h_c Wᵀ, the
//!    teacher's rows for the same positions, the loss and dL/dlogits per row (`losses.rs`), then
//!    dL/dh_c = dL/dlogits · W and dL/dW += dL/dlogitsᵀ · h_c — so the (positions × vocab) logits
//!    never exist whole and never enter the autograd graph;
//! 3. the body's backward from dL/dh: for Llama-family blocks the hand-written one of
//!    `orlik_model::llama_grad` (weights and gradients as flat f32 buffers, no autograd graph);
//!    otherwise (Gemma 3, or with `checkpoint_layers`) autograd once through the body from
//!    Σ h ⊙ dL/dh. dL/dW joins lm_head's gradient (the embedding's when tied);
//! 4. global-norm clipping and AdamW on f32 master weights, copied into the model's `Var`s.
//!
//! Everything is deterministic for a given thread count (the data order is a pure function of
//! (seed, cursor), reductions have a fixed order), so a resumed run is bit-identical to an
//! uninterrupted one.

use crate::checkpoint::{self, State};
use crate::config::TrainConfig;
use crate::curves;
use crate::data::{Order, Packed};
use crate::losses::{row_loss, total, KdSpec, RowLoss, TeacherRow};
use crate::optim::{global_norm, lr_at};
use crate::params::Params;
use crate::{file_err, TrainError};
use candle_core::{Device, Tensor, Var};
use orlik_model::{Config, GradModel, Weights};
use rayon::prelude::*;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
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
    /// their input ids (b, t). Returns false when this source has nothing for `split` (no KL).
    fn prepare(
        &mut self,
        split: Split,
        windows: &[usize],
        inputs: &Tensor,
    ) -> Result<bool, TrainError>;
    /// Rows [start, start + n) of the prepared micro-batch.
    fn rows(&mut self, start: usize, n: usize) -> Result<StepRows, TrainError>;
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Finished,
    /// Interrupted by a signal; a checkpoint of this step was saved.
    Interrupted {
        step: u64,
    },
}

/// The body's forward result: hidden states (n, hidden) plus what its backward needs.
enum Body {
    Fast(Tensor, Option<orlik_model::llama_grad::Saved>),
    /// (b, t, hidden) in the autograd graph; with checkpointing, the layer inputs and the top.
    Autograd(Tensor, Option<(Vec<Tensor>, Var)>),
}

/// Summed loss terms of a micro-batch.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Sums {
    kd: f64,
    ce: f64,
    rows: usize,
    has_teacher: bool,
}

pub struct Trainer<'t> {
    cfg: TrainConfig,
    spec: KdSpec,
    pub(crate) params: Params,
    /// The hand-written body forward/backward, when the architecture has one.
    fast: Option<GradModel>,
    train: Packed,
    val: Option<Packed>,
    teacher: Option<Box<dyn TeacherSource + 't>>,
    out: PathBuf,
    state: State,
    quiet: bool,
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
        let params = Params::new(model_cfg, weights)?;
        let fast = if cfg.checkpoint_layers { None } else { params.grad_model(cfg.seq_len)? };
        let spec = KdSpec {
            loss: cfg.loss,
            temperature: cfg.temperature,
            beta: cfg.jsd_beta,
            ce_weight: cfg.ce_weight,
        };
        let state = State::fresh(cfg.seed);
        let run_json =
            json!({"config": serde_json::to_value(&cfg).unwrap_or(Value::Null), "run": run});
        crate::config::open_run(out, &run_json, resume)?;
        std::fs::create_dir_all(out).map_err(file_err(out))?;
        let mut t = Trainer {
            cfg,
            spec,
            params,
            fast,
            train,
            val,
            teacher,
            out: out.to_path_buf(),
            state,
            quiet: false,
        };
        if resume {
            if let Some(st) = t.params.load_latest(&t.out.join("checkpoints"))? {
                t.state = st;
            }
            curves::truncate(&t.metrics_path(), t.state.step)?;
        }
        Ok(t)
    }

    /// Whether the body runs the hand-written backward (else autograd).
    pub fn hand_written_backward(&self) -> bool {
        self.fast.is_some()
    }

    /// Force the autograd path (tests compare the two).
    pub fn use_autograd(&mut self) {
        self.fast = None;
    }

    pub fn set_quiet(&mut self, quiet: bool) {
        self.quiet = quiet;
    }
    pub fn state(&self) -> &State {
        &self.state
    }
    pub fn metrics_path(&self) -> PathBuf {
        self.out.join("metrics.jsonl")
    }
    pub fn config(&self) -> &TrainConfig {
        &self.cfg
    }

    /// The current weights by HF name (f32).
    pub fn named_weights(&self) -> Result<Vec<(String, Tensor)>, TrainError> {
        Ok(self.params.named_weights())
    }

    fn save(&self) -> Result<PathBuf, TrainError> {
        self.params.save(&self.out.join("checkpoints"), &self.state)
    }

    /// Inputs and targets of `windows` from `data`: (b, t) tensor and flat targets.
    fn batch(&self, data: &Packed, windows: &[usize]) -> Result<(Tensor, Vec<u32>), TrainError> {
        let t = self.cfg.seq_len;
        let mut inp = Vec::with_capacity(windows.len() * t);
        let mut tgt = Vec::with_capacity(windows.len() * t);
        for &w in windows {
            let ids = data.window(w);
            inp.extend_from_slice(&ids[..t]);
            tgt.extend_from_slice(&ids[1..]);
        }
        Ok((Tensor::from_vec(inp, (windows.len(), t), &Device::Cpu)?, tgt))
    }

    /// Loss sums of one micro-batch and, with `grad_scale`, the gradient of
    /// grad_scale · Σ_rows loss for every parameter (in `names` order).
    pub(crate) fn micro(
        &mut self,
        split: Split,
        windows: &[usize],
        grad_scale: Option<f32>,
    ) -> Result<(Sums, Option<Vec<Vec<f32>>>), TrainError> {
        let data = match split {
            Split::Train => &self.train,
            Split::Val => {
                self.val.as_ref().ok_or_else(|| TrainError::Data("no validation data".into()))?
            }
        };
        let (inputs, targets) = self.batch(data, windows)?;
        let has_teacher = match self.teacher.as_mut() {
            Some(t) => t.prepare(split, windows, &inputs)?,
            None => false,
        };
        let (b, t) = inputs.dims2()?;
        let hid = self.params.model.config().hidden_size;
        let n = b * t;
        let body = if let Some(fast) = &self.fast {
            let ids = inputs.flatten_all()?.to_vec1::<u32>()?;
            let (h, saved) =
                fast.forward(&self.params.weight_slices(), &ids, b, t, grad_scale.is_some())?;
            Body::Fast(Tensor::from_vec(h, (n, hid), &Device::Cpu)?, saved)
        } else if self.cfg.checkpoint_layers && grad_scale.is_some() {
            // With activation checkpointing only each layer's input is kept (no autograd graph);
            // the layers are re-run one at a time under autograd in the backward below.
            let mut x = self.params.model.embed(&inputs)?.detach();
            let mut ins = Vec::with_capacity(self.params.model.num_layers());
            for l in 0..self.params.model.num_layers() {
                ins.push(x.clone());
                x = self.params.model.layer(l, &x)?.detach();
            }
            let top = Var::from_tensor(&x)?;
            Body::Autograd(self.params.model.final_norm(top.as_tensor())?, Some((ins, top)))
        } else {
            Body::Autograd(self.params.model.forward_hidden(&inputs, None, None, None)?, None)
            // (b, t, hidden)
        };
        let hd = match &body {
            Body::Fast(h, _) => h.clone(),
            Body::Autograd(h, _) => h.detach().reshape((n, hid))?, // (n, hidden)
        };
        let w = self.params.head_weight(); // (vocab, hidden)
        let vocab = w.dim(0)?;
        let mut sums = Sums { has_teacher, ..Default::default() };
        let mut hg = crate::seqlogp::HeadGrad::default();
        let chunk = self.cfg.loss_chunk;
        let spec = self.spec;
        for start in (0..n).step_by(chunk) {
            let c = chunk.min(n - start);
            let hc = hd.narrow(0, start, c)?;
            let z = hc.matmul(&w.t()?)?.flatten_all()?.to_vec1::<f32>()?; // (c, vocab)
            let rows = if has_teacher {
                match self.teacher.as_mut() {
                    Some(tch) => Some(tch.rows(start, c)?),
                    None => None,
                }
            } else {
                None
            };
            let mut g = vec![0f32; c * vocab];
            let scale = grad_scale.unwrap_or(0.0);
            let tg = &targets[start..start + c];
            let losses: Vec<RowLoss> = g
                .par_chunks_mut(vocab)
                .zip(z.par_chunks(vocab))
                .enumerate()
                .map(|(i, (gi, zi))| {
                    let trow = rows.as_ref().map(|r| r.row(i));
                    let mut sp = spec;
                    if trow.is_none() {
                        sp.ce_weight = 1.0; // plain language modelling
                    }
                    row_loss(zi, trow, Some(tg[i]), &sp, scale, gi)
                })
                .collect();
            for l in &losses {
                sums.kd += l.kd;
                sums.ce += l.ce;
            }
            sums.rows += c;
            if grad_scale.is_some() {
                hg.add(Tensor::from_vec(g, (c, vocab), &Device::Cpu)?, &w, &hc)?;
            }
        }
        if grad_scale.is_none() {
            return Ok((sums, None));
        }
        let gh = hg.hidden(b, t, hid)?;
        let mut grads = match body {
            Body::Fast(_, saved) => {
                let saved = saved.ok_or_else(|| TrainError::Data("no saved activations".into()))?;
                let fast = self
                    .fast
                    .as_ref()
                    .ok_or_else(|| TrainError::Data("no training path".into()))?;
                self.params.hand_backward(fast, saved, &gh)?
            }
            Body::Autograd(h, saved) => self.autograd_backward(h, saved, gh, &inputs)?,
        };
        if let Some(hw) = &hg.w {
            crate::params::add_into(&mut grads[self.params.head], hw)?;
        }
        Ok((sums, Some(grads)))
    }

    /// The body's gradients under autograd from Σ h ⊙ gh; with checkpointing (`saved`), layer by
    /// layer from the stored inputs. Each GradStore also holds the gradient of every
    /// intermediate tensor of its graph, so the weights' gradients are taken out and the store
    /// dropped at once (one layer's store at a time is alive, not all of them).
    fn autograd_backward(
        &self,
        h: Tensor,
        saved: Option<(Vec<Tensor>, Var)>,
        gh: Tensor,
        inputs: &Tensor,
    ) -> Result<Vec<Vec<f32>>, TrainError> {
        let mut grads = self.params.zero_grads();
        let store = (h * gh)?.sum_all()?.backward()?;
        self.params.add_store(&mut grads, &store)?;
        if let Some((ins, top)) = saved {
            let mut g = store
                .get(top.as_tensor())
                .cloned()
                .ok_or_else(|| TrainError::Data("no gradient at the top layer".into()))?;
            drop(store);
            for (l, xin) in ins.iter().enumerate().rev() {
                let xin = Var::from_tensor(xin)?;
                let st =
                    (self.params.model.layer(l, xin.as_tensor())? * &g)?.sum_all()?.backward()?;
                g = st
                    .get(xin.as_tensor())
                    .cloned()
                    .ok_or_else(|| TrainError::Data(format!("no gradient into layer {l}")))?;
                self.params.add_store(&mut grads, &st)?;
            }
            let st = (self.params.model.embed(inputs)? * &g)?.sum_all()?.backward()?;
            self.params.add_store(&mut grads, &st)?;
        }
        Ok(grads)
    }

    /// Validation: mean CE, mean KD (when the teacher covers the split) and bits per byte over
    /// the first `val_tokens` tokens of the validation windows.
    pub fn validate(&mut self) -> Result<Option<Value>, TrainError> {
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
            let (s, _) = self.micro(Split::Val, ch, None)?;
            total_s.ce += s.ce;
            total_s.rows += s.rows;
            if s.has_teacher {
                total_s.kd += s.kd;
                kd_rows += s.rows;
            }
        }
        let rows = total_s.rows.max(1) as f64;
        let mut row = json!({
            "step": self.state.step,
            "val_loss": total_s.ce / rows,
            "val_bits_per_byte": total_s.ce / std::f64::consts::LN_2 / (rows * bytes_per_token),
            "val_tokens": total_s.rows,
        });
        if kd_rows > 0 {
            row["val_kl"] = json!(total_s.kd / kd_rows as f64);
        }
        curves::append(&self.metrics_path(), &row)?;
        Ok(Some(row))
    }

    /// One optimizer step (all micro-batches, clip, AdamW); returns the metrics row (not yet
    /// written), the loss, the learning rate and tokens per second.
    fn one_step(
        &mut self,
        order: &mut Order,
        pb: &indicatif::ProgressBar,
    ) -> Result<(Value, f64, f64, f64), TrainError> {
        let total_steps = self.cfg.total_steps()?;
        let warmup = self.cfg.warmup_steps()?;
        let per_micro = self.cfg.batch;
        let accum = self.cfg.grad_accum;
        let t0 = Instant::now();
        let lr = lr_at(
            self.cfg.schedule,
            self.state.step,
            total_steps,
            warmup,
            self.cfg.lr,
            self.cfg.min_lr(),
            self.cfg.wsd_decay,
        );
        let scale = 1.0 / (per_micro * self.cfg.seq_len * accum) as f32;
        let mut grads: Option<Vec<Vec<f32>>> = None;
        let mut sums = Sums::default();
        for _ in 0..accum {
            let wins: Vec<usize> =
                (0..per_micro as u64).map(|i| order.window(self.state.cursor + i)).collect();
            self.state.cursor += per_micro as u64;
            let (s, g) = self.micro(Split::Train, &wins, Some(scale))?;
            sums.kd += s.kd;
            sums.ce += s.ce;
            sums.rows += s.rows;
            sums.has_teacher = s.has_teacher;
            let g = g.ok_or_else(|| TrainError::Data("no gradients".into()))?;
            grads = Some(match grads {
                None => g,
                Some(mut acc) => {
                    for (a, b) in acc.iter_mut().zip(g) {
                        a.iter_mut().zip(b).for_each(|(x, y)| *x += y);
                    }
                    acc
                }
            });
        }
        let mut grads = grads.ok_or_else(|| TrainError::Data("no micro-batches".into()))?;
        let rows = sums.rows.max(1) as f64;
        let row = RowLoss { kd: sums.kd / rows, ce: sums.ce / rows };
        let loss = total(&row, &self.spec, sums.has_teacher);
        let t = self.state.step + 1 - self.state.skipped_steps;
        let gnorm = if loss.is_finite() {
            self.params.update(&mut grads, lr, t, &self.cfg)?
        } else {
            global_norm(&grads)
        };
        let finite = loss.is_finite() && gnorm.is_finite();
        if finite {
            self.state.bad_in_a_row = 0;
        } else {
            self.state.bad_in_a_row += 1;
            self.state.skipped_steps += 1;
            pb.println(format!(
        "warning: step {}: non-finite loss {loss} or gradient norm {gnorm}; step skipped ({} in a row)",
        self.state.step, self.state.bad_in_a_row
        ));
        }
        drop(grads);
        self.state.step += 1;
        let tokens = (sums.rows) as u64;
        self.state.tokens_seen += tokens;
        let dt = t0.elapsed().as_secs_f64();
        let mut m = json!({
        "step": self.state.step,
        "loss": loss,
        "lr": lr,
        "grad_norm": gnorm,
        "tokens": self.state.tokens_seen,
        "tokens_per_s": tokens as f64 / dt,
        });
        if sums.has_teacher {
            m["kl"] = json!(row.kd);
        }
        m["ce"] = json!(row.ce);
        if !finite {
            m["skipped"] = json!(true);
        }
        Ok((m, loss, lr, tokens as f64 / dt))
    }

    /// Time `n` optimizer steps from the current state without saving anything (benchmarks).
    /// Returns seconds per step.
    pub fn time_steps(&mut self, n: usize) -> Result<Vec<f64>, TrainError> {
        let mut order = Order::new(self.train.windows(), self.cfg.seed);
        let pb = indicatif::ProgressBar::hidden();
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let t0 = Instant::now();
            self.one_step(&mut order, &pb)?;
            out.push(t0.elapsed().as_secs_f64());
        }
        Ok(out)
    }

    /// Train to the configured number of steps (or until `stop` is raised: then a checkpoint is
    /// saved and `Outcome::Interrupted` returned).
    pub fn run(&mut self, stop: Option<&AtomicBool>) -> Result<Outcome, TrainError> {
        let total_steps = self.cfg.total_steps()?;
        let mut order = Order::new(self.train.windows(), self.cfg.seed);
        let pb = if self.quiet {
            indicatif::ProgressBar::hidden()
        } else {
            indicatif::ProgressBar::new(total_steps)
        };
        pb.set_style(
            indicatif::ProgressStyle::with_template(
                "{bar:30} {pos}/{len} steps  {msg}  [{elapsed_precise}<{eta_precise}]",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        pb.set_position(self.state.step);
        let started = Instant::now();
        let base_seconds = self.state.train_seconds;
        let mut last_saved = self.state.step;
        // Testing aid: a pause after each step so interruption tests can kill the process
        // mid-run reliably on any machine. Not used otherwise.
        let delay = std::env::var("ORLIK_STEP_DELAY_MS").ok().and_then(|v| v.parse::<u64>().ok());
        while self.state.step < total_steps {
            if stop.is_some_and(|s| s.load(Ordering::SeqCst)) {
                self.state.train_seconds = base_seconds + started.elapsed().as_secs_f64();
                self.save()?;
                pb.abandon_with_message(format!(
                    "interrupted: checkpoint at step {}",
                    self.state.step
                ));
                return Ok(Outcome::Interrupted { step: self.state.step });
            }
            let (m, loss, lr, tps) = self.one_step(&mut order, &pb)?;
            curves::append(&self.metrics_path(), &m)?;
            if let Some(ms) = delay {
                std::thread::sleep(std::time::Duration::from_millis(ms));
            }
            pb.set_position(self.state.step);
            pb.set_message(format!("loss {loss:.4}  lr {lr:.2e}  {tps:.0} tok/s"));
            if self.state.bad_in_a_row >= self.cfg.max_bad_steps {
                self.state.train_seconds = base_seconds + started.elapsed().as_secs_f64();
                self.save()?;
                pb.abandon();
                return Err(TrainError::NonFinite(format!(
                    "{} non-finite steps in a row at step {} (lower --lr or check the data); last finite weights saved",
                    self.state.bad_in_a_row, self.state.step
                )));
            }
            if self.cfg.eval_every > 0
                && self.state.step % self.cfg.eval_every == 0
                && self.state.step < total_steps
            {
                if let Some(v) = self.validate()? {
                    pb.println(format!("step {}: {v}", self.state.step));
                }
            }
            if self.cfg.save_every > 0 && self.state.step % self.cfg.save_every == 0 {
                self.state.train_seconds = base_seconds + started.elapsed().as_secs_f64();
                self.save()?;
                last_saved = self.state.step;
            }
        }
        pb.finish_and_clear();
        self.state.train_seconds = base_seconds + started.elapsed().as_secs_f64();
        if last_saved != self.state.step
            || checkpoint::list(&self.out.join("checkpoints"))?.is_empty()
        {
            self.save()?;
        }
        if self.val.is_some() {
            let have = curves::read(&self.metrics_path())?.iter().any(|r| {
                r.get("val_loss").is_some()
                    && r.get("step").and_then(Value::as_u64) == Some(self.state.step)
            });
            if !have {
                self.validate()?;
            }
        }
        curves::draw(&self.metrics_path(), &self.out)?;
        Ok(Outcome::Finished)
    }
}
