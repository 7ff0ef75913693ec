//! The training loop, one for every objective: KD and CE (`trainer.rs`), SFT, DPO and GRPO
//! (`orlik_align`) are [`Task`]s plugged into it. The loop owns what they share: the data order,
//! gradient accumulation (in the executor), the data-parallel reduction hook, the learning-rate
//! schedule, the update (`Executor::update`: clipping, the non-finite check, AdamW), the
//! non-finite-step guard, periodic validation, checkpoints and resume,
//! interruption by SIGINT / SIGTERM (the caller's `stop` flag), metrics.jsonl, the progress bar,
//! the final save and the curves.
//!
//! The order of the units (packed windows, conversations, pairs, prompts) is a pure function of
//! (seed, cursor), and a task's own randomness is seeded from (seed, step), so a resumed run
//! repeats the uninterrupted one bit for bit.
//!
//! Data parallel (`mpirun -np N`, `orlik_dist`): a step's `grad_accum` micro-batches are the
//! global batch; rank r takes micro-batches r·k .. (r+1)·k of them (k = grad_accum / N), so the
//! windows of every step and their order do not depend on N, and neither does a checkpoint's
//! state (resume on another world size continues the same run). The gradients and the step's
//! loss and metrics are summed over ranks before the update, so the clip sees the global norm
//! and the non-finite guard decides the same on every rank. Rank 0 alone writes (metrics,
//! checkpoints, curves); every save ends in a barrier, so no rank exits while one is written.

use crate::checkpoint::{self, State};
use crate::config::TrainConfig;
use crate::curves;
use crate::data::Order;
use crate::exec::{Executor, GradReduce};
use crate::optim::lr_at;
use crate::TrainError;
use orlik_dist::Comm;
use serde_json::{json, Map, Value};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

/// One micro-batch's result (its gradient, already scaled for averaging over the step's
/// micro-batches, was added to the executor's): the loss, tokens trained on, and metrics to
/// average.
pub struct Micro {
    pub loss: f64,
    pub tokens: u64,
    pub metrics: Vec<(&'static str, f64)>,
}

/// What one objective computes; the loop does the rest.
pub trait Task {
    type Error: From<TrainError>;
    /// Number of units the data order permutes.
    fn units(&self) -> usize;
    /// Loss of the micro-batch `units` (indices) at optimizer step `step`, its gradient
    /// (times `scale` = 1 / micro-batches per step) added to `e`'s.
    fn micro(
        &mut self,
        e: &mut dyn Executor,
        units: &[usize],
        step: u64,
        scale: f32,
    ) -> Result<Micro, Self::Error>;
    /// Called on `--resume` with the step of the checkpoint the run continues from (tasks that
    /// write their own logs cut them back to it).
    fn on_resume(&mut self, _step: u64) -> Result<(), Self::Error> {
        Ok(())
    }
    /// A validation row for metrics.jsonl (keys starting with `val_`), or None when the task
    /// has no held-out data. Called every `eval_every` steps and after the last one.
    fn validate(
        &mut self,
        _e: &mut dyn Executor,
        _step: u64,
    ) -> Result<Option<Value>, Self::Error> {
        Ok(None)
    }
    /// Metrics drawn as `OUT/<key>.png` at the end (besides loss.png).
    fn curves(&self) -> &'static [&'static str] {
        &[]
    }
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Finished,
    /// Interrupted by the stop flag; a checkpoint of this step was saved.
    Interrupted {
        step: u64,
    },
}

/// What the caller controls besides the settings.
#[derive(Default, Clone, Copy)]
pub struct Options<'a> {
    /// No progress bar.
    pub quiet: bool,
    /// Raised by a signal handler: save a checkpoint and return `Outcome::Interrupted`.
    pub stop: Option<&'a AtomicBool>,
    /// Called after each step's metrics are written, with the step (the interruption tests
    /// pause here so that a kill lands mid-run on any machine).
    pub after_step: Option<&'a (dyn Fn(u64) + Sync)>,
    /// What the run's estimated peak memory is compared with before it starts (`mem.rs`).
    pub memory: crate::mem::Gate,
    /// A reduction applied to every step's gradients before the update, besides the world's
    /// (tests stand for ranks with it).
    pub reduce: Option<&'a dyn GradReduce>,
    /// Stop once this step is reached (before the configured last one): a checkpoint of it is
    /// saved and `Outcome::Interrupted` returned, as for the stop flag, so that the run can be
    /// continued later with the same settings (successive-halving ranking trains candidates a
    /// round at a time this way).
    pub pause_at: Option<u64>,
}

/// The world's gradient sum as a [`GradReduce`].
struct WorldSum<'a>(&'a dyn Comm);

impl GradReduce for WorldSum<'_> {
    fn sum(&self, _: &str, grad: &mut [f32]) -> Result<(), TrainError> {
        Ok(self.0.sum_f32(grad)?)
    }
}

/// The state a run starts from in `out`: fresh, or on `resume` the newest checkpoint's (its
/// weights loaded into `e`, metrics.jsonl cut back to its step, the task told).
pub fn start<T: Task + ?Sized>(
    task: &mut T,
    e: &mut dyn Executor,
    cfg: &TrainConfig,
    out: &Path,
    resume: bool,
) -> Result<State, T::Error> {
    let mut st = State::fresh(cfg.seed);
    if resume {
        if let Some(s) = e.load_latest(&out.join("checkpoints"))? {
            st = s;
        }
        if orlik_dist::world().rank() == 0 {
            curves::truncate(&out.join("metrics.jsonl"), st.step)?;
        }
        task.on_resume(st.step)?;
    }
    Ok(st)
}

/// One step's figures besides the metrics row.
pub struct Stepped {
    pub row: Map<String, Value>,
    pub loss: f64,
    pub lr: f64,
    pub tokens_per_s: f64,
    /// The task's first few metrics, for the progress bar.
    pub shown: String,
}

/// One optimizer step: this rank's share of the `grad_accum` micro-batches of `batch` units,
/// the sum over `comm`'s ranks (and `reduce`), then the update (skipped, with a warning through
/// `warn`, when the loss or the gradient norm is not finite).
#[allow(clippy::too_many_arguments)]
pub fn step<T: Task + ?Sized>(
    task: &mut T,
    e: &mut dyn Executor,
    cfg: &TrainConfig,
    st: &mut State,
    order: &mut Order,
    comm: &dyn Comm,
    reduce: Option<&dyn GradReduce>,
    warn: &dyn Fn(String),
) -> Result<Stepped, T::Error> {
    if cfg.grad_accum == 0 {
        return Err(TrainError::Config("grad_accum is 0".into()).into());
    }
    let (rank, world) = (comm.rank(), comm.size());
    if !cfg.grad_accum.is_multiple_of(world) {
        return Err(TrainError::Config(format!(
            "--grad-accum {} is not a multiple of the {world} ranks: the global batch (batch × \
             grad-accum) is split into grad-accum / ranks micro-batches per rank",
            cfg.grad_accum
        ))
        .into());
    }
    let mine = cfg.grad_accum / world;
    let total = cfg.total_steps()?;
    let warmup = cfg.warmup_steps()?;
    let t0 = Instant::now();
    let _ = crate::phase::take(); // what validation or setup timed is not this step's
    let lr = lr_at(cfg.schedule, st.step, total, warmup, cfg.lr, cfg.min_lr(), cfg.wsd_decay);
    let per = 1.0 / cfg.grad_accum as f64;
    let (mut loss, mut tokens) = (0.0, 0u64);
    let mut sums: Vec<(&'static str, f64)> = Vec::new();
    for k in rank * mine..(rank + 1) * mine {
        let first = st.cursor + (k * cfg.batch) as u64;
        let units: Vec<usize> = (0..cfg.batch as u64).map(|i| order.window(first + i)).collect();
        let m = task.micro(e, &units, st.step, per as f32)?;
        loss += m.loss * per;
        tokens += m.tokens;
        for (k, v) in m.metrics {
            match sums.iter_mut().find(|x| x.0 == k) {
                Some(x) => x.1 += v * per,
                None => sums.push((k, v * per)),
            }
        }
    }
    st.cursor += (cfg.batch * cfg.grad_accum) as u64;
    let t_comm = Instant::now();
    if world > 1 {
        // One sum for the scalars: loss, tokens, then the metrics in the task's order (the
        // same task on every rank gives the same keys).
        let mut v: Vec<f64> =
            [loss, tokens as f64].into_iter().chain(sums.iter().map(|x| x.1)).collect();
        comm.sum_f64(&mut v).map_err(TrainError::from)?;
        (loss, tokens) = (v[0], v[1] as u64);
        sums.iter_mut().zip(&v[2..]).for_each(|(x, y)| x.1 = *y);
        // A sharded optimizer reduce-scatters the gradients in its update instead.
        if !cfg.shard_optimizer {
            e.reduce_grads(&WorldSum(comm))?;
        }
    }
    let comm_seconds = t_comm.elapsed().as_secs_f64();
    if let Some(r) = reduce {
        e.reduce_grads(r)?;
    }
    let t = st.step + 1 - st.skipped_steps;
    let gnorm = crate::phase::time("update", || e.update(lr, t, cfg, loss.is_finite()))?;
    let finite = loss.is_finite() && gnorm.is_finite();
    if finite {
        st.bad_in_a_row = 0;
    } else {
        st.bad_in_a_row += 1;
        st.skipped_steps += 1;
        warn(format!(
            "warning: step {}: non-finite loss {loss} or gradient norm {gnorm}; step skipped \
             ({} in a row)",
            st.step, st.bad_in_a_row
        ));
    }
    st.step += 1;
    st.tokens_seen += tokens;
    let dt = t0.elapsed().as_secs_f64();
    let mut row = Map::new();
    row.insert("step".into(), json!(st.step));
    row.insert("loss".into(), json!(loss));
    for (k, v) in &sums {
        row.insert(k.to_string(), json!(v));
    }
    row.insert("lr".into(), json!(lr));
    row.insert("grad_norm".into(), json!(gnorm));
    row.insert("tokens".into(), json!(st.tokens_seen));
    row.insert("tokens_per_s".into(), json!(tokens as f64 / dt));
    row.insert("seconds".into(), json!(dt));
    let mut spent = crate::phase::take();
    // The sharded update's collectives (timed inside "update") count as comm, not update.
    let inner: f64 = spent.iter().filter(|x| x.0 == "comm").map(|x| x.1).sum();
    spent.retain(|x| x.0 != "comm");
    spent.iter_mut().filter(|x| x.0 == "update").for_each(|x| x.1 -= inner);
    let comm_seconds = comm_seconds + inner;
    let mut phases: Map<String, Value> =
        spent.into_iter().map(|(k, v)| (k.to_string(), json!(v))).collect();
    if world > 1 {
        phases.insert("comm".into(), json!(comm_seconds));
    }
    row.insert("phase_seconds".into(), Value::Object(phases));
    if world > 1 {
        // The sums over ranks (waiting for the slowest rank included).
        row.insert("comm_seconds".into(), json!(comm_seconds));
    }
    if !finite {
        row.insert("skipped".into(), json!(true));
    }
    let shown: Vec<String> = sums.iter().take(3).map(|(k, v)| format!("{k} {v:.3}")).collect();
    Ok(Stepped { row, loss, lr, tokens_per_s: tokens as f64 / dt, shown: shown.join("  ") })
}

fn progress_bar(quiet: bool, total: u64, at: u64) -> indicatif::ProgressBar {
    let pb =
        if quiet { indicatif::ProgressBar::hidden() } else { indicatif::ProgressBar::new(total) };
    pb.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:30} {pos}/{len} steps  {msg}  [{elapsed_precise}<{eta_precise}]",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    pb.set_position(at);
    pb
}

/// Train `e` with `task` from `st` (see [`start`]) to `cfg`'s number of steps, into `out`
/// (checkpoints/, metrics.jsonl, curves).
pub fn run<T: Task + ?Sized>(
    task: &mut T,
    e: &mut dyn Executor,
    cfg: &TrainConfig,
    out: &Path,
    st: &mut State,
    opts: Options,
) -> Result<Outcome, T::Error> {
    let total = cfg.total_steps()?;
    let ck = out.join("checkpoints");
    let metrics = out.join("metrics.jsonl");
    let comm = orlik_dist::world();
    let root = comm.rank() == 0;
    let sharded = comm.size() > 1 && cfg.shard_optimizer;
    if comm.size() > 1 {
        // Every rank loaded its checkpoint itself: they must have found the same one.
        let mut v = [st.step as f64, st.cursor as f64];
        comm.max_f64(&mut v).map_err(TrainError::from)?;
        let differs = (v[0], v[1]) != (st.step as f64, st.cursor as f64);
        if orlik_dist::any(comm, differs).map_err(TrainError::from)? {
            return Err(TrainError::Resume(format!(
                "the ranks start from different checkpoints (this rank from step {}, another \
                 from step {}): {} must be one directory every rank sees",
                st.step,
                v[0],
                ck.display()
            ))
            .into());
        }
    }
    let append = |row: &Value| if root { curves::append(&metrics, row) } else { Ok(()) };
    let mut order = Order::new(task.units(), cfg.seed);
    let pb = progress_bar(opts.quiet || !root, total, st.step);
    let started = Instant::now();
    let base = st.train_seconds;
    let mut last_saved = st.step;
    if sharded {
        let s = e.shard_optimizer(comm)?;
        let all = s.kept_bytes + s.dropped_bytes;
        // Not pb.println: a bar that is not drawn (no terminal) drops its lines.
        let said = format!(
            "optimizer state sharded over {} ranks (ZeRO-1): rank 0 keeps {} of the {} of AdamW \
             moments ({} less per rank)",
            comm.size(),
            orlik_io::text::format_size(s.kept_bytes),
            orlik_io::text::format_size(all),
            orlik_io::text::format_size(s.dropped_bytes)
        );
        if root {
            pb.suspend(|| eprintln!("{said}"));
        }
    }
    // Every rank calls it at the same steps (the decisions are global); rank 0 writes, and with
    // a sharded optimizer every rank writes its moments into the same checkpoint.
    let save = |e: &dyn Executor, st: &mut State| -> Result<(), TrainError> {
        st.train_seconds = base + started.elapsed().as_secs_f64();
        if root || sharded {
            e.save(&ck, st)?;
        }
        Ok(comm.barrier()?)
    };
    while st.step < total {
        let paused = opts.pause_at.is_some_and(|p| st.step >= p);
        let asked = paused || opts.stop.is_some_and(|s| s.load(Ordering::SeqCst));
        // A signal reaches the ranks at different moments: they agree before each step.
        if orlik_dist::any(comm, asked).map_err(TrainError::from)? {
            if !(paused && last_saved == st.step) {
                save(e, st)?;
            }
            if paused {
                pb.finish_and_clear();
            } else {
                pb.abandon_with_message(format!("interrupted: checkpoint at step {}", st.step));
            }
            return Ok(Outcome::Interrupted { step: st.step });
        }
        // Not pb.println: a bar that is not drawn (no terminal) drops its lines.
        let warn = |m: String| {
            if root {
                pb.suspend(|| eprintln!("{m}"));
            }
        };
        let s = step(task, e, cfg, st, &mut order, comm, opts.reduce, &warn)?;
        append(&Value::Object(s.row))?;
        if let Some(hook) = opts.after_step {
            hook(st.step);
        }
        pb.set_position(st.step);
        pb.set_message(format!(
            "loss {:.4}  {}  lr {:.2e}  {:.0} tok/s",
            s.loss, s.shown, s.lr, s.tokens_per_s
        ));
        if st.bad_in_a_row >= cfg.max_bad_steps {
            save(e, st)?;
            pb.abandon();
            return Err(TrainError::NonFinite(format!(
                "{} non-finite steps in a row at step {} (lower --lr or check the data); last \
                 finite weights saved",
                st.bad_in_a_row, st.step
            ))
            .into());
        }
        if root && cfg.eval_every > 0 && st.step.is_multiple_of(cfg.eval_every) && st.step < total {
            if let Some(v) = task.validate(e, st.step)? {
                append(&v)?;
                pb.println(format!("step {}: {v}", st.step));
            }
        }
        if cfg.save_every > 0 && st.step.is_multiple_of(cfg.save_every) {
            save(e, st)?;
            last_saved = st.step;
        }
    }
    pb.finish_and_clear();
    // Rank 0's directory decides (other machines may not share it).
    let none = root && checkpoint::list(&ck)?.is_empty();
    if last_saved != st.step || orlik_dist::any(comm, none).map_err(TrainError::from)? {
        save(e, st)?;
    }
    st.train_seconds = base + started.elapsed().as_secs_f64();
    if !root {
        return Ok(Outcome::Finished);
    }
    // A finished run needs one checkpoint (to train on from its last step); the one before it is
    // three model sizes of disk (weights + AdamW moments) for nothing.
    checkpoint::keep_newest(&ck, 1)?;
    let validated = curves::read(&metrics)?.iter().any(|r| {
        r.get("step").and_then(Value::as_u64) == Some(st.step)
            && r.as_object().is_some_and(|o| o.keys().any(|k| k.starts_with("val_")))
    });
    if !validated {
        if let Some(v) = task.validate(e, st.step)? {
            append(&v)?;
        }
    }
    curves::draw(&metrics, out)?;
    for key in task.curves() {
        curves::draw_key(&metrics, key, &out.join(format!("{key}.png")))?;
    }
    Ok(Outcome::Finished)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exec::cpu::{CpuExecutor, Options as CpuOptions};
    use crate::seqlogp::{self, Rows};
    use orlik_model::init::random_weights;

    fn tiny() -> orlik_model::Config {
        orlik_model::testing::tiny(
            "LlamaForCausalLM",
            serde_json::json!({"vocab_size": 11, "num_hidden_layers": 1, "num_attention_heads": 2,
                "num_key_value_heads": 1, "head_dim": 4, "max_position_embeddings": 32,
                "tie_word_embeddings": true}),
        )
    }

    fn exec(seed: u64) -> CpuExecutor {
        let cfg = tiny();
        CpuExecutor::new(&cfg, random_weights(&cfg, seed, 0.3).unwrap(), CpuOptions::default())
            .unwrap()
    }

    fn host(e: &dyn Executor) -> Vec<Vec<f32>> {
        let w = e.weights().unwrap();
        w.iter().map(|(_, t)| t.flatten_all().unwrap().to_vec1::<f32>().unwrap()).collect()
    }

    /// Σ c · log p over two fixed rows, through the executor; the coefficient is `coeff` until
    /// step `from`, NaN from then on (a poisoned loss: NaN gradients everywhere).
    struct LogpTask {
        from: u64,
        coeff: f32,
    }

    impl Task for LogpTask {
        type Error = TrainError;
        fn units(&self) -> usize {
            3
        }
        fn micro(
            &mut self,
            e: &mut dyn Executor,
            _: &[usize],
            step: u64,
            scale: f32,
        ) -> Result<Micro, TrainError> {
            let bad = step >= self.from;
            let rows = Rows {
                inputs: vec![vec![1, 4, 7], vec![3, 2]],
                targets: vec![vec![4, 7, 2], vec![2, 9]],
                pad: 0,
            };
            let f = seqlogp::forward_train(e, &rows, 2)?;
            let c = if bad { f32::NAN } else { self.coeff * scale };
            let coeff: Vec<Vec<f32>> = f.logp.iter().map(|l| vec![c; l.len()]).collect();
            let loss = if bad { f64::NAN } else { -f.logp.iter().flatten().sum::<f64>() };
            seqlogp::backward(e, f, &coeff, 2)?;
            Ok(Micro { loss, tokens: 5, metrics: vec![("x", 1.0)] })
        }
    }

    #[test]
    fn non_finite_steps_are_skipped_then_the_run_stops_with_finite_weights_saved() {
        let mut e = exec(1);
        let tc = TrainConfig {
            steps: Some(20),
            batch: 1,
            max_bad_steps: 3,
            save_every: 0,
            ..TrainConfig::default()
        };
        let dir = tempfile::tempdir().unwrap();
        let mut task = LogpTask { from: 2, coeff: -1.0 };
        let mut st = start(&mut task, &mut e, &tc, dir.path(), false).unwrap();
        let opts = Options { quiet: true, ..Options::default() };
        let e2 = run(&mut task, &mut e, &tc, dir.path(), &mut st, opts).err().unwrap().to_string();
        assert!(e2.contains("3 non-finite steps in a row at step 5"), "{e2}");
        let rows = curves::read(&dir.path().join("metrics.jsonl")).unwrap();
        assert_eq!(rows.len(), 5);
        assert!(rows[..2].iter().all(|r| r.get("skipped").is_none()));
        assert!(rows[2..].iter().all(|r| r["skipped"] == true));
        let after_two = host(&e);
        assert!(after_two.iter().flatten().all(|x| x.is_finite()));
        assert_ne!(after_two, host(&exec(1)), "the two finite steps changed the weights");
        // the checkpoint holds the weights of the last finite step
        let mut q = exec(9);
        let st = q.load_latest(&dir.path().join("checkpoints")).unwrap().unwrap();
        assert_eq!((st.step, st.skipped_steps), (5, 3));
        assert_eq!(host(&q), after_two);
    }

    /// A reducer standing for two ranks that saw the same data: it sums a gradient with an
    /// identical copy of it.
    struct TwoSameRanks;

    impl GradReduce for TwoSameRanks {
        fn sum(&self, _: &str, g: &mut [f32]) -> Result<(), TrainError> {
            g.iter_mut().for_each(|x| *x += *x);
            Ok(())
        }
    }

    /// The reduction hook runs between the micro-batches and the update: two identical ranks
    /// give the weights of one rank with a doubled loss, bit for bit (doubling is exact).
    #[test]
    fn the_reduction_hook_sums_before_the_update() {
        let tc = TrainConfig { steps: Some(3), batch: 1, clip: 0.0, ..TrainConfig::default() };
        let train = |coeff: f32, reduce: Option<&dyn GradReduce>| {
            let mut e = exec(2);
            let dir = tempfile::tempdir().unwrap();
            let mut task = LogpTask { from: 99, coeff };
            let mut st = start(&mut task, &mut e, &tc, dir.path(), false).unwrap();
            let opts = Options { quiet: true, reduce, ..Options::default() };
            run(&mut task, &mut e, &tc, dir.path(), &mut st, opts).unwrap();
            host(&e)
        };
        let two = train(-1.0, Some(&TwoSameRanks));
        assert_eq!(two, train(-2.0, None));
        assert_ne!(two, train(-1.0, None));
    }

    /// Paused at step 2 (a checkpoint there), resumed and paused at 4 (reached again: no
    /// second save), then run to the end: the weights of an uninterrupted run, bit for bit.
    #[test]
    fn a_run_paused_and_continued_equals_an_uninterrupted_one() {
        let tc = TrainConfig { steps: Some(5), batch: 1, save_every: 0, ..TrainConfig::default() };
        let whole = {
            let mut e = exec(3);
            let dir = tempfile::tempdir().unwrap();
            let mut task = LogpTask { from: 99, coeff: -1.0 };
            let mut st = start(&mut task, &mut e, &tc, dir.path(), false).unwrap();
            let opts = Options { quiet: true, ..Options::default() };
            run(&mut task, &mut e, &tc, dir.path(), &mut st, opts).unwrap();
            host(&e)
        };
        let dir = tempfile::tempdir().unwrap();
        let mut task = LogpTask { from: 99, coeff: -1.0 };
        let mut resume = false;
        for (pause, want) in [
            (2, Outcome::Interrupted { step: 2 }),
            (4, Outcome::Interrupted { step: 4 }),
            (4, Outcome::Interrupted { step: 4 }),
            (9, Outcome::Finished),
        ] {
            let mut e = exec(3);
            let mut st = start(&mut task, &mut e, &tc, dir.path(), resume).unwrap();
            let opts = Options { quiet: true, pause_at: Some(pause), ..Options::default() };
            assert_eq!(run(&mut task, &mut e, &tc, dir.path(), &mut st, opts).unwrap(), want);
            resume = true;
            if want == Outcome::Finished {
                assert_eq!(host(&e), whole);
            }
        }
        let ck: Vec<u64> = checkpoint::list(&dir.path().join("checkpoints"))
            .unwrap()
            .iter()
            .map(|c| c.0)
            .collect();
        assert_eq!(ck, [5], "a finished run keeps its newest checkpoint");
        let rows = curves::read(&dir.path().join("metrics.jsonl")).unwrap();
        assert_eq!(rows.iter().filter(|r| r.get("loss").is_some()).count(), 5, "one row per step");
    }

    /// The loop calls the injected hook once per step, in order.
    #[test]
    fn after_step_hook_sees_every_step() {
        let mut e = exec(1);
        let tc = TrainConfig { steps: Some(4), batch: 1, ..TrainConfig::default() };
        let dir = tempfile::tempdir().unwrap();
        let mut task = LogpTask { from: 99, coeff: -1.0 };
        let seen = std::sync::Mutex::new(Vec::new());
        let hook = |s: u64| seen.lock().unwrap().push(s);
        let mut st = start(&mut task, &mut e, &tc, dir.path(), false).unwrap();
        let opts = Options { quiet: true, after_step: Some(&hook), ..Options::default() };
        assert_eq!(
            run(&mut task, &mut e, &tc, dir.path(), &mut st, opts).unwrap(),
            Outcome::Finished
        );
        assert_eq!(*seen.lock().unwrap(), vec![1, 2, 3, 4]);
    }
}
