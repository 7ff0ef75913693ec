//! Training settings: one serde struct with documented defaults, read from TOML (unknown keys are
//! errors), overridden by command-line flags, saved resolved beside the run, and compared key by
//! key on `--resume`.

use crate::losses::KdLoss;
use crate::optim::Schedule;
use crate::TrainError;
use orlik_model::ComputeDtype;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    /// Optimizer steps (one of `steps` / `tokens`; `tokens` is converted to steps).
    pub steps: Option<u64>,
    /// Training tokens (targets) to see: steps = ceil(tokens / (batch · grad_accum · seq_len)).
    pub tokens: Option<u64>,
    /// Tokens per training window (inputs; each window holds seq_len + 1 ids). Default 256.
    pub seq_len: usize,
    /// Windows per micro-batch. Default 8.
    pub batch: usize,
    /// Micro-batches per optimizer step. Default 1.
    pub grad_accum: usize,
    /// Peak learning rate. Default 3e-4.
    pub lr: f64,
    /// Linear warmup steps. Default 0 = 2% of the steps (at least 1).
    pub warmup: u64,
    /// cosine (default), wsd or constant.
    pub schedule: Schedule,
    /// Final learning rate of cosine / wsd. Default 0.1 · lr when not set.
    pub min_lr: Option<f64>,
    /// Fraction of steps WSD spends decaying. Default 0.2.
    pub wsd_decay: f64,
    /// Decoupled weight decay on matrices. Default 0.01.
    pub weight_decay: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// Global gradient-norm clip; 0 disables. Default 1.0.
    pub clip: f64,
    /// Distillation divergence: fkl (default; Minitron's choice), rkl, jsd.
    pub loss: KdLoss,
    /// Distillation temperature (loss scaled by T²). Default 1.
    pub temperature: f32,
    /// β of the generalised JSD. Default 0.5.
    pub jsd_beta: f32,
    /// Weight of the cross-entropy term added to the KD loss. Default 0 (logit-only KD).
    pub ce_weight: f32,
    /// Teacher top-k with a tail bucket; 0 = the full vocabulary. Default 0.
    pub topk: usize,
    /// Seed of the data order (and of random initialisation in `orlik train --init random`).
    pub seed: u64,
    /// Save a checkpoint every N steps (0 = only at the end / on interrupt). Default 100.
    pub save_every: u64,
    /// Evaluate on the validation text every N steps (0 = only at the end). Default 0.
    pub eval_every: u64,
    /// Validation tokens used per evaluation (0 = all). Default 32768.
    pub val_tokens: usize,
    /// Stop after this many non-finite steps in a row. Default 5.
    pub max_bad_steps: u32,
    /// Rows of logits computed at once in the loss (memory: rows · vocab · 4 bytes · 3). Default 256.
    pub loss_chunk: usize,
    /// Activation checkpointing: keep only each layer's input during the forward and re-run one
    /// layer's forward at a time in the backward (one extra forward; activation memory of one
    /// layer instead of all; the same gradients bit for bit). Default false.
    pub checkpoint_layers: bool,
    /// Under data parallel, each rank keeps the AdamW moments of 1/N of the tensors and
    /// updates only those (ZeRO-1; the same result bit for bit, 8 bytes × (1 − 1/N) less per
    /// parameter and rank). No effect on one process. Default true.
    pub shard_optimizer: bool,
    /// How the online teacher holds its matrices (distillation): auto = as stored (a bf16 or
    /// f16 teacher stays 16-bit, half the memory; products accumulate in f32), or f32, bf16,
    /// f16. The resolved value goes into run.json. Default auto.
    #[serde(skip_serializing_if = "ComputeDtype::is_auto")]
    pub teacher_compute_dtype: ComputeDtype,
    /// Where the student trains: cpu (default), cuda (the first NVIDIA GPU, or the local
    /// rank's under a launcher), cuda:N, or auto (a GPU when there is one). Left out of run.json
    /// when cpu, so runs from before the key resume; a run may resume on another device (the
    /// numbers then differ in the last bits from an uninterrupted run).
    #[serde(skip_serializing_if = "is_cpu")]
    pub device: String,
}

fn is_cpu(d: &str) -> bool {
    d == "cpu"
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            steps: None,
            tokens: None,
            seq_len: 256,
            batch: 8,
            grad_accum: 1,
            lr: 3e-4,
            warmup: 0,
            schedule: Schedule::Cosine,
            min_lr: None,
            wsd_decay: 0.2,
            weight_decay: 0.01,
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            clip: 1.0,
            loss: KdLoss::Fkl,
            temperature: 1.0,
            jsd_beta: 0.5,
            ce_weight: 0.0,
            topk: 0,
            seed: 0,
            save_every: 100,
            eval_every: 0,
            val_tokens: 32768,
            max_bad_steps: 5,
            loss_chunk: 256,
            checkpoint_layers: false,
            shard_optimizer: true,
            teacher_compute_dtype: ComputeDtype::Auto,
            device: "cpu".into(),
        }
    }
}

/// Keys that may change between an interrupted run and its resumption (they do not affect the
/// trajectory).
/// (`shard_optimizer` changes where the moments live, not the result; runs from before it
/// existed resume too.)
pub const RESUMABLE_KEYS: &[&str] =
    &["save_every", "eval_every", "val_tokens", "max_bad_steps", "shard_optimizer", "device"];

impl TrainConfig {
    pub fn from_toml(text: &str, origin: &str) -> Result<TrainConfig, TrainError> {
        toml::from_str(text).map_err(|e: toml::de::Error| {
            let line = e.span().map(|r| text[..r.start.min(text.len())].matches('\n').count() + 1);
            let at = line.map(|l| format!(" (line {l})")).unwrap_or_default();
            TrainError::Config(format!("{origin}{at}: {}", e.message().trim().replace('\n', " ")))
        })
    }

    pub fn tokens_per_step(&self) -> u64 {
        (self.batch * self.grad_accum * self.seq_len) as u64
    }

    pub fn total_steps(&self) -> Result<u64, TrainError> {
        match (self.steps, self.tokens) {
            (Some(_), Some(_)) => {
                Err(TrainError::Config("give --steps or --tokens, not both".into()))
            }
            (Some(s), None) if s > 0 => Ok(s),
            (None, Some(t)) if t > 0 => Ok(t.div_ceil(self.tokens_per_step())),
            _ => Err(TrainError::Config("give a positive --steps or --tokens".into())),
        }
    }

    pub fn warmup_steps(&self) -> Result<u64, TrainError> {
        let total = self.total_steps()?;
        Ok(if self.warmup > 0 { self.warmup.min(total) } else { (total / 50).max(1) })
    }

    pub fn min_lr(&self) -> f64 {
        self.min_lr.unwrap_or(self.lr * 0.1)
    }

    pub fn validate(&self) -> Result<(), TrainError> {
        let bad = |m: &str| Err(TrainError::Config(m.into()));
        self.total_steps()?;
        if let Err(e) = orlik_cuda::DeviceChoice::parse(&self.device) {
            return bad(&e.to_string().replacen("--device", "device", 1));
        }
        if self.seq_len == 0 || self.batch == 0 || self.grad_accum == 0 {
            return bad("seq_len, batch and grad_accum must be positive");
        }
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            return bad("lr must be positive");
        }
        if !(self.temperature > 0.0 && self.temperature.is_finite()) {
            return bad("temperature must be positive");
        }
        if let Some(m) = self.min_lr {
            if !(m >= 0.0 && m <= self.lr) {
                return bad("min_lr must be in [0, lr]");
            }
        }
        if !(self.weight_decay >= 0.0 && self.weight_decay.is_finite()) {
            return bad("weight_decay must be a number >= 0");
        }
        if !(self.eps > 0.0 && self.eps.is_finite()) {
            return bad("eps must be positive");
        }
        if !(self.clip >= 0.0 && self.clip.is_finite()) {
            return bad("clip must be a number >= 0 (0 = no clipping)");
        }
        if !(self.ce_weight >= 0.0 && self.ce_weight.is_finite()) {
            return bad("ce_weight must be a number >= 0");
        }
        if self.save_every == 0 {
            return bad("save_every must be positive");
        }
        if !(self.jsd_beta > 0.0 && self.jsd_beta < 1.0) {
            return bad("jsd_beta must be in (0, 1)");
        }
        if !(0.0..=1.0).contains(&self.wsd_decay) {
            return bad("wsd_decay must be in [0, 1]");
        }
        if self.loss_chunk == 0 {
            return bad("loss_chunk must be positive");
        }
        Ok(())
    }
}

/// Check a run directory before training into it and record the run there: a new run needs an
/// empty (or absent) `out` and writes `out/run.json`; `resume` needs `out/run.json` with the same
/// settings (`run_json`) except the keys that may change on resume, and names those that differ.
pub fn open_run(
    out: &std::path::Path,
    run_json: &serde_json::Value,
    resume: bool,
) -> Result<(), TrainError> {
    let run_path = out.join("run.json");
    if resume {
        let text = std::fs::read_to_string(&run_path).map_err(|e| {
            TrainError::Resume(format!("{}: {e} (nothing to resume)", run_path.display()))
        })?;
        let saved: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| TrainError::Resume(format!("{}: {e}", run_path.display())))?;
        let diff = differing_keys(&saved, run_json, RESUMABLE_KEYS);
        if !diff.is_empty() {
            return Err(TrainError::Resume(format!(
                "the run's settings changed since it started: {}",
                diff.join("; ")
            )));
        }
        return Ok(());
    }
    let holds_files = out.exists()
        && std::fs::read_dir(out)
            .map_err(crate::file_err(out))?
            .flatten()
            .any(|e| e.file_name() != orlik_io::output::MARKER);
    if holds_files {
        return Err(TrainError::Config(format!(
            "{} already holds a run (use --resume to continue it, --force to replace it)",
            out.display()
        )));
    }
    std::fs::create_dir_all(out).map_err(crate::file_err(out))?;
    // Atomically: a run killed here must leave no half-written run.json that --resume trips on.
    orlik_io::atomic::write_file_atomically(
        &run_path,
        &serde_json::to_vec_pretty(run_json).unwrap_or_default(),
    )
    .map_err(|e| TrainError::Config(e.to_string()))
}

/// Keys whose values differ between two JSON objects (recursively, dotted), ignoring `skip`.
pub fn differing_keys(a: &serde_json::Value, b: &serde_json::Value, skip: &[&str]) -> Vec<String> {
    fn walk(
        prefix: &str,
        a: &serde_json::Value,
        b: &serde_json::Value,
        skip: &[&str],
        out: &mut Vec<String>,
    ) {
        match (a, b) {
            (serde_json::Value::Object(x), serde_json::Value::Object(y)) => {
                let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
                keys.sort();
                keys.dedup();
                for k in keys {
                    let path = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                    if skip.contains(&k.as_str()) {
                        continue;
                    }
                    let n = serde_json::Value::Null;
                    walk(&path, x.get(k).unwrap_or(&n), y.get(k).unwrap_or(&n), skip, out);
                }
            }
            _ if a != b => out.push(format!("{prefix} ({a} -> {b})")),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk("", a, b, skip, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_rejects_unknown_keys_and_wrong_types_and_fills_defaults() {
        let c = TrainConfig::from_toml("steps = 10\nlr = 1e-3\nschedule = \"wsd\"\n", "a.toml")
            .unwrap();
        assert_eq!((c.steps, c.lr, c.schedule, c.batch), (Some(10), 1e-3, Schedule::Wsd, 8));
        let e = TrainConfig::from_toml("stepz = 10\n", "a.toml").unwrap_err().to_string();
        assert!(e.contains("stepz") && e.contains("a.toml"), "{e}");
        let e = TrainConfig::from_toml("lr = \"fast\"\n", "a.toml").unwrap_err().to_string();
        assert!(e.contains("lr") || e.contains("invalid type"), "{e}");
        let c = TrainConfig { tokens: Some(1000), seq_len: 10, batch: 2, ..Default::default() };
        assert_eq!(c.total_steps().unwrap(), 50);
        assert!(TrainConfig { steps: Some(1), tokens: Some(1), ..Default::default() }
            .validate()
            .is_err());
    }

    #[test]
    fn differing_keys_names_each_changed_key() {
        let a =
            serde_json::json!({"lr": 1.0, "batch": 8, "save_every": 5, "run": {"teacher": "x"}});
        let b =
            serde_json::json!({"lr": 2.0, "batch": 8, "save_every": 6, "run": {"teacher": "y"}});
        let d = differing_keys(&a, &b, RESUMABLE_KEYS);
        assert_eq!(d.len(), 2, "{d:?}");
        assert!(d[0].starts_with("lr") && d[1].starts_with("run.teacher"), "{d:?}");
    }
}
