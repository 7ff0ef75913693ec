//! `orlik bench --train`: the speed of a training step (forward + backward + AdamW, plain CE) on
//! a model's own weights and deterministic tokens, timed step by step after one warm-up step.

use crate::data::Packed;
use crate::{TrainConfig, TrainError, Trainer};
use candle_core::DType;
use orlik_io::hfdir::HfModel;
use std::path::Path;

/// Tokens per second of each of `steps` timed steps (after one untimed warm-up step).
pub fn train_steps(
    model: &Path,
    batch: usize,
    seq_len: usize,
    steps: usize,
    checkpoint_layers: bool,
    device: &str,
) -> Result<Vec<f64>, TrainError> {
    let hf = HfModel::open(model)?;
    let cfg = TrainConfig {
        steps: Some(steps as u64 + 1),
        batch,
        seq_len,
        // time_steps never saves; a positive interval past the last step keeps the config valid
        save_every: steps as u64 + 2,
        checkpoint_layers,
        device: device.to_string(),
        ..Default::default()
    };
    let n = (batch * (steps + 1) + 1) * (seq_len + 1);
    let tokens = orlik_model::init::bench_ids(n, hf.config.vocab_size);
    let data = Packed::from_tokens(tokens, seq_len, n, n);
    // The trainer wants a run directory; nothing is written there by time_steps but metrics.
    let dir = std::env::temp_dir().join(format!("orlik-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let weights = hf.checkpoint.load_all(DType::F32)?;
    let kind = serde_json::json!({"kind": "bench"});
    let mut t = Trainer::new(cfg, &hf.config, weights, data, None, None, &dir, kind, false)?;
    let secs = t.time_steps(steps + 1);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(secs?[1..].iter().map(|s| (batch * seq_len) as f64 / s).collect())
}
