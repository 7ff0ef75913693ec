//! Forward-pass throughput: prefill tokens/s at a given (batch, length) and decode tokens/s with
//! a KV cache. Inputs are fixed pseudo-random token ids so runs are comparable across tools.
//!
//! Prefill is a prompt as generation runs it: every position through the layers, the next
//! token's logits (the last position's) through the head ([`Infer::last_logits`]), as
//! llama.cpp's `llama-bench -p` and transformers' `generate` do. (Before 2026-12-07 every
//! position went through the head, a fifth more FLOPs on SmolLM2: figures from before read
//! lower.)

use crate::EvalError;
use orlik_model::infer::{Infer, Rows};
use serde::Serialize;
use std::time::Instant;

#[derive(Debug, Clone, Serialize)]
pub struct Timing {
    pub what: String,
    pub tokens_per_s: f64,
    /// Median seconds per repetition.
    pub seconds: f64,
}

pub use orlik_model::init::bench_ids;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    v[v.len() / 2]
}

pub fn prefill(
    model: &dyn Infer,
    batch: usize,
    len: usize,
    reps: usize,
) -> Result<Timing, EvalError> {
    let ids = bench_ids(batch * len, model.config().vocab_size);
    let rows = Rows::new(&ids, batch, len);
    let _ = model.last_logits(rows, None)?; // warm-up
    let mut times = Vec::new();
    for _ in 0..reps.max(1) {
        let t = Instant::now();
        let _ = model.last_logits(rows, None)?;
        times.push(t.elapsed().as_secs_f64());
    }
    let s = median(times);
    Ok(Timing {
        what: format!("prefill b{batch}x{len}"),
        tokens_per_s: (batch * len) as f64 / s,
        seconds: s,
    })
}

/// Decode `new` tokens per row one step at a time for `batch` rows after a `prompt`-token prefill
/// (prefill time excluded); tokens/s counts every row's tokens.
pub fn decode(
    model: &dyn Infer,
    batch: usize,
    prompt: usize,
    new: usize,
    reps: usize,
) -> Result<Timing, EvalError> {
    let b = batch.max(1);
    let ids = bench_ids(b * (prompt + new), model.config().vocab_size);
    let row = |r: usize, from: usize, to: usize| {
        ids[r * (prompt + new) + from..r * (prompt + new) + to].to_vec()
    };
    let mut times = Vec::new();
    for r in 0..reps.max(1) + 1 {
        let mut cache = model.new_cache();
        let p: Vec<u32> = (0..b).flat_map(|i| row(i, 0, prompt)).collect();
        let _ = model.last_logits(Rows::new(&p, b, prompt), Some(&mut cache))?;
        let t = Instant::now();
        for k in prompt..prompt + new {
            let step: Vec<u32> = (0..b).flat_map(|i| row(i, k, k + 1)).collect();
            let _ = model.last_logits(Rows::new(&step, b, 1), Some(&mut cache))?;
        }
        if r > 0 {
            times.push(t.elapsed().as_secs_f64()); // first round is warm-up
        }
    }
    let s = median(times);
    Ok(Timing {
        what: format!("decode b{b} {new} tokens after {prompt}"),
        tokens_per_s: (b * new) as f64 / s,
        seconds: s,
    })
}
