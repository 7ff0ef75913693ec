//! The alignment training loop, on the trainer's pieces (`orlik_train`): AdamW on f32 master
//! weights, warmup + cosine / WSD / constant schedule, gradient accumulation, clipping, atomic
//! checkpoints with full state and resume, the non-finite-step guard, graceful interrupt,
//! metrics.jsonl and PNG curves. What a step computes is the [`Task`]'s: SFT, DPO or GRPO.
//!
//! The order of the units (conversations, pairs, prompts) is a pure function of (seed, cursor),
//! and a task's own randomness (GRPO's sampling) is seeded from (seed, step), so a resumed run
//! repeats the uninterrupted one.

use crate::AlignError;
use orlik_train::checkpoint::State;
use orlik_train::data::Order;
use orlik_train::optim::{global_norm, lr_at};
use orlik_train::params::Params;
use orlik_train::{curves, TrainConfig};
use serde_json::{json, Map, Value};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

/// One micro-batch's result: the loss, its gradient (in `Params::names` order, already scaled
/// for averaging over the step's micro-batches), tokens trained on, and metrics to average.
pub struct Micro {
    pub loss: f64,
    pub grads: Vec<Vec<f32>>,
    pub tokens: u64,
    pub metrics: Vec<(&'static str, f64)>,
}

pub trait Task {
    /// Number of units the data order permutes.
    fn units(&self) -> usize;
    /// Loss and gradient of the micro-batch `units` (indices) at optimizer step `step`;
    /// `scale` = 1 / micro-batches per step.
    fn micro(
        &mut self,
        p: &Params,
        units: &[usize],
        step: u64,
        scale: f32,
    ) -> Result<Micro, AlignError>;
    /// Called on `--resume` with the step of the checkpoint the run continues from (tasks that
    /// write their own logs cut them back to it).
    fn on_resume(&mut self, _step: u64) -> Result<(), AlignError> {
        Ok(())
    }
    /// Metrics drawn as `OUT/<key>.png` at the end (besides loss.png).
    fn curves(&self) -> &'static [&'static str] {
        &[]
    }
}

pub enum Outcome {
    Finished,
    Interrupted { step: u64 },
}

fn add_grads(acc: &mut Option<Vec<Vec<f32>>>, g: Vec<Vec<f32>>) {
    match acc {
        None => *acc = Some(g),
        Some(a) => {
            for (x, y) in a.iter_mut().zip(g) {
                x.iter_mut().zip(y).for_each(|(u, v)| *u += v);
            }
        }
    }
}

/// Train `p` with `task` for `cfg`'s steps into `out` (checkpoints/, metrics.jsonl, curves).
/// `cfg.batch` is units per micro-batch. Returns the final state and how the run ended.
pub fn run(
    task: &mut dyn Task,
    p: &mut Params,
    cfg: &TrainConfig,
    out: &Path,
    resume: bool,
    quiet: bool,
    stop: Option<&AtomicBool>,
) -> Result<(State, Outcome), AlignError> {
    let total = cfg.total_steps()?;
    let warmup = cfg.warmup_steps()?;
    let ck = out.join("checkpoints");
    let metrics = out.join("metrics.jsonl");
    let mut st = State::fresh(cfg.seed);
    if resume {
        if let Some(s) = p.load_latest(&ck)? {
            st = s;
        }
        curves::truncate(&metrics, st.step)?;
        task.on_resume(st.step)?;
    }
    let mut order = Order::new(task.units(), cfg.seed);
    let pb =
        if quiet { indicatif::ProgressBar::hidden() } else { indicatif::ProgressBar::new(total) };
    pb.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:30} {pos}/{len} steps  {msg}  [{elapsed_precise}<{eta_precise}]",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    pb.set_position(st.step);
    let started = Instant::now();
    let base = st.train_seconds;
    let mut last_saved = st.step;
    let delay = std::env::var("ORLIK_STEP_DELAY_MS").ok().and_then(|v| v.parse::<u64>().ok());
    while st.step < total {
        if stop.is_some_and(|s| s.load(Ordering::SeqCst)) {
            st.train_seconds = base + started.elapsed().as_secs_f64();
            p.save(&ck, &st)?;
            pb.abandon_with_message(format!("interrupted: checkpoint at step {}", st.step));
            let step = st.step;
            return Ok((st, Outcome::Interrupted { step }));
        }
        let t0 = Instant::now();
        let lr = lr_at(cfg.schedule, st.step, total, warmup, cfg.lr, cfg.min_lr(), cfg.wsd_decay);
        let scale = 1.0 / cfg.grad_accum as f32;
        let (mut grads, mut loss, mut tokens) = (None, 0.0, 0u64);
        let mut sums: Vec<(&'static str, f64)> = Vec::new();
        for _ in 0..cfg.grad_accum {
            let units: Vec<usize> =
                (0..cfg.batch as u64).map(|i| order.window(st.cursor + i)).collect();
            st.cursor += cfg.batch as u64;
            let m = task.micro(p, &units, st.step, scale)?;
            loss += m.loss / cfg.grad_accum as f64;
            tokens += m.tokens;
            for (k, v) in m.metrics {
                match sums.iter_mut().find(|x| x.0 == k) {
                    Some(x) => x.1 += v / cfg.grad_accum as f64,
                    None => sums.push((k, v / cfg.grad_accum as f64)),
                }
            }
            add_grads(&mut grads, m.grads);
        }
        let mut grads = grads.ok_or_else(|| AlignError::Data("no micro-batches".into()))?;
        let t = st.step + 1 - st.skipped_steps;
        let gnorm =
            if loss.is_finite() { p.update(&mut grads, lr, t, cfg)? } else { global_norm(&grads) };
        let finite = loss.is_finite() && gnorm.is_finite();
        if finite {
            st.bad_in_a_row = 0;
        } else {
            st.bad_in_a_row += 1;
            st.skipped_steps += 1;
            pb.println(format!(
                "warning: step {}: non-finite loss {loss} or gradient norm {gnorm}; step skipped ({} in a row)",
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
        if !finite {
            row.insert("skipped".into(), json!(true));
        }
        curves::append(&metrics, &Value::Object(row))?;
        if let Some(ms) = delay {
            std::thread::sleep(std::time::Duration::from_millis(ms));
        }
        pb.set_position(st.step);
        let shown: Vec<String> = sums.iter().take(3).map(|(k, v)| format!("{k} {v:.3}")).collect();
        pb.set_message(format!("loss {loss:.4}  {}  lr {lr:.2e}", shown.join("  ")));
        if st.bad_in_a_row >= cfg.max_bad_steps {
            st.train_seconds = base + started.elapsed().as_secs_f64();
            p.save(&ck, &st)?;
            pb.abandon();
            return Err(AlignError::Train(orlik_train::TrainError::NonFinite(format!(
                "{} non-finite steps in a row at step {} (lower --lr or check the data); last finite weights saved",
                st.bad_in_a_row, st.step
            ))));
        }
        if cfg.save_every > 0 && st.step % cfg.save_every == 0 {
            st.train_seconds = base + started.elapsed().as_secs_f64();
            p.save(&ck, &st)?;
            last_saved = st.step;
        }
    }
    pb.finish_and_clear();
    st.train_seconds = base + started.elapsed().as_secs_f64();
    if last_saved != st.step || orlik_train::checkpoint::list(&ck)?.is_empty() {
        p.save(&ck, &st)?;
    }
    curves::draw(&metrics, out)?;
    for key in task.curves() {
        curves::draw_key(&metrics, key, &out.join(format!("{key}.png")))?;
    }
    Ok((st, Outcome::Finished))
}

#[cfg(test)]
mod tests {
    use super::*;
    use orlik_model::init::random_weights;
    use orlik_model::Config;

    /// A task whose loss is NaN from step `from` on.
    struct NanAfter {
        from: u64,
    }

    impl Task for NanAfter {
        fn units(&self) -> usize {
            3
        }
        fn micro(
            &mut self,
            p: &Params,
            _: &[usize],
            step: u64,
            _: f32,
        ) -> Result<Micro, AlignError> {
            let bad = step >= self.from;
            let grads =
                p.slots.iter().map(|s| vec![if bad { f32::NAN } else { 0.1 }; s.w.len()]).collect();
            Ok(Micro {
                loss: if bad { f64::NAN } else { 1.0 },
                grads,
                tokens: 1,
                metrics: vec![("x", 1.0)],
            })
        }
    }

    #[test]
    fn non_finite_steps_are_skipped_then_the_run_stops_with_finite_weights_saved() {
        let cfg = Config::from_json_str(
            r#"{"architectures":["LlamaForCausalLM"],"model_type":"llama","vocab_size":11,"hidden_size":8,
            "intermediate_size":12,"num_hidden_layers":1,"num_attention_heads":2,"num_key_value_heads":1,
            "head_dim":4,"rms_norm_eps":1e-5,"rope_theta":100.0,"max_position_embeddings":32,"tie_word_embeddings":true}"#,
            "tiny",
        )
        .unwrap();
        let mut p = Params::new(&cfg, random_weights(&cfg, 1, 0.3).unwrap()).unwrap();
        let tc = TrainConfig {
            steps: Some(20),
            batch: 1,
            max_bad_steps: 3,
            save_every: 0,
            ..TrainConfig::default()
        };
        let dir = std::env::temp_dir().join(format!("orlik-runner-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let e = run(&mut NanAfter { from: 2 }, &mut p, &tc, &dir, false, true, None)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("3 non-finite steps in a row at step 5"), "{e}");
        let rows = curves::read(&dir.join("metrics.jsonl")).unwrap();
        assert_eq!(rows.len(), 5);
        assert!(
            rows[..2].iter().all(|r| r.get("skipped").is_none())
                && rows[2..].iter().all(|r| r["skipped"] == true)
        );
        let after_two: Vec<Vec<f32>> = p.slots.iter().map(|s| s.w.clone()).collect();
        assert!(after_two.iter().flatten().all(|x| x.is_finite()));
        // the checkpoint holds the weights of the last finite step
        let mut q = Params::new(&cfg, random_weights(&cfg, 9, 0.3).unwrap()).unwrap();
        let st = q.load_latest(&dir.join("checkpoints")).unwrap().unwrap();
        assert_eq!((st.step, st.skipped_steps), (5, 3));
        assert_eq!(q.slots.iter().map(|s| s.w.clone()).collect::<Vec<_>>(), after_two);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
