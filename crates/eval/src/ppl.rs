//! Perplexity and bits per byte over whole texts.
//!
//! Each text is tokenized once, as transformers' `AutoTokenizer` would (special tokens added by
//! the tokenizer's post-processor, e.g. BOS for Llama-SPM). Tokens are split into windows of
//! `context` starting every `stride` tokens; in each window every token except the first is
//! scored unless an earlier window already scored it (with stride = context: every token but the
//! first of each window). bits/byte = total NLL / ln 2 / UTF-8 bytes of the text.

use crate::EvalError;
use candle_core::Tensor;
use orlik_model::infer::{Infer, Rows};
use rayon::prelude::*;
use serde::Serialize;

#[derive(Debug, Clone, Copy)]
pub struct PplOptions {
    pub context: usize,
    pub stride: usize,
    /// Windows per forward pass.
    pub batch: usize,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PplResult {
    /// Tokens scored.
    pub tokens: usize,
    /// Mean negative log-likelihood per scored token, nats.
    pub nll: f64,
    pub ppl: f64,
    pub bits_per_byte: f64,
    pub tokens_per_s: f64,
    /// Total NLL in nats and UTF-8 bytes of the text(s), so results can be pooled.
    pub total_nll: f64,
    pub bytes: usize,
}

impl PplResult {
    pub fn from_totals(tokens: usize, total_nll: f64, bytes: usize, secs: f64) -> PplResult {
        let nll = total_nll / tokens.max(1) as f64;
        PplResult {
            tokens,
            nll,
            ppl: nll.exp(),
            bits_per_byte: total_nll / std::f64::consts::LN_2 / bytes.max(1) as f64,
            tokens_per_s: tokens as f64 / secs.max(1e-9),
            total_nll,
            bytes,
        }
    }
    pub fn pooled(parts: &[PplResult]) -> PplResult {
        let tokens = parts.iter().map(|p| p.tokens).sum();
        let nll = parts.iter().map(|p| p.total_nll).sum();
        let bytes = parts.iter().map(|p| p.bytes).sum();
        let secs: f64 = parts.iter().map(|p| p.tokens as f64 / p.tokens_per_s.max(1e-9)).sum();
        PplResult::from_totals(tokens, nll, bytes, secs)
    }
}

/// One window: token range [start, end) and the first position scored in it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Window {
    pub start: usize,
    pub end: usize,
    pub first_scored: usize,
}

pub fn windows(n: usize, context: usize, stride: usize) -> Vec<Window> {
    let mut out = Vec::new();
    let mut scored_to = 1; // position 0 never has context
    let mut s = 0;
    while scored_to < n {
        let e = (s + context).min(n);
        let first = scored_to.max(s + 1);
        if first < e {
            out.push(Window { start: s, end: e, first_scored: first });
            scored_to = e;
        }
        if e == n {
            break;
        }
        s += stride;
    }
    out
}

/// Sum of -log p(target) over positions [from, to) of one row's hidden states (t, h), in chunks
/// of positions so a large vocabulary never materialises (t, vocab) at once. Each logit row is
/// read once: -log p = logsumexp(row) - row[target] (`orlik_model::prob`), accumulated in f64.
fn row_nll(
    model: &dyn Infer,
    hidden: &Tensor,
    ids: &[u32],
    from: usize,
    to: usize,
) -> Result<f64, EvalError> {
    const CHUNK: usize = 256;
    let mut total = 0.0;
    let mut p = from;
    while p < to {
        let n = CHUNK.min(to - p);
        let h = hidden.narrow(0, p - 1, n)?.unsqueeze(0)?; // (1, n, h): predicts positions p..p+n
        let logits = model.head(&h)?.squeeze(0)?; // (n, vocab)
        let v = logits.dim(1)?;
        let targets = &ids[p..p + n];
        // Rows in parallel, summed in order: rayon's own `sum` groups the rows by how the work
        // was stolen, so the same model on the same text could differ in the last bit.
        let mut nll = Vec::with_capacity(n);
        orlik_model::prob::with_f32(&logits, |flat| {
            flat.par_chunks(v)
                .zip(targets.par_iter())
                .map(|(row, &t)| orlik_model::prob::logsumexp(row, 1.0) - row[t as usize] as f64)
                .collect_into_vec(&mut nll)
        })?;
        total += nll.iter().sum::<f64>();
        p += n;
    }
    Ok(total)
}

/// Score token ids; `progress(done_tokens, total_tokens)` after each batch.
pub fn score_ids(
    model: &dyn Infer,
    ids: &[u32],
    bytes: usize,
    opts: &PplOptions,
    mut progress: impl FnMut(usize, usize),
) -> Result<PplResult, EvalError> {
    if ids.len() < 2 {
        return Err(EvalError::Input(format!(
            "text has {} tokens; at least 2 are needed",
            ids.len()
        )));
    }
    if opts.context < 2 || opts.stride == 0 || opts.stride > opts.context {
        return Err(EvalError::Input(format!(
            "need context >= 2 and 1 <= stride <= context (got context {}, stride {})",
            opts.context, opts.stride
        )));
    }
    let t0 = std::time::Instant::now();
    let ws = windows(ids.len(), opts.context, opts.stride);
    let (mut total, mut count) = (0.0, 0usize);
    let mut i = 0;
    while i < ws.len() {
        // Batch consecutive windows of equal length.
        let len = ws[i].end - ws[i].start;
        let mut j = i + 1;
        while j < ws.len() && j - i < opts.batch.max(1) && ws[j].end - ws[j].start == len {
            j += 1;
        }
        let rows: Vec<u32> =
            ws[i..j].iter().flat_map(|w| ids[w.start..w.end].iter().copied()).collect();
        let hidden = model.hidden(Rows::new(&rows, j - i, len), None)?; // (b, len, h)
        for (r, w) in ws[i..j].iter().enumerate() {
            let h = hidden.get(r)?; // (len, h)
            total += row_nll(
                model,
                &h,
                &ids[w.start..w.end],
                w.first_scored - w.start,
                w.end - w.start,
            )?;
            count += w.end - w.first_scored;
        }
        progress(ws[j - 1].end, ids.len());
        i = j;
    }
    if !total.is_finite() {
        return Err(EvalError::NonFinite(format!("the negative log-likelihood ({total})")));
    }
    Ok(PplResult::from_totals(count, total, bytes, t0.elapsed().as_secs_f64()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_cover_every_token_but_the_first_once() {
        for (n, c, s) in [(10, 4, 4), (10, 4, 2), (11, 5, 3), (3, 8, 8), (9, 3, 1)] {
            let ws = windows(n, c, s);
            let mut scored = vec![0; n];
            for w in &ws {
                assert!(w.end - w.start <= c && w.first_scored > w.start);
                scored[w.first_scored..w.end].iter_mut().for_each(|k| *k += 1);
            }
            assert_eq!(scored[0], 0);
            for (p, &k) in scored.iter().enumerate().skip(1) {
                // stride == context: window starts have no context and are skipped
                let want = if s == c && p % c == 0 { 0 } else { 1 };
                assert_eq!(k, want, "{n} {c} {s}: {scored:?}");
            }
        }
        // stride = context: the first token of each window is not scored
        assert_eq!(windows(8, 4, 4).iter().map(|w| w.first_scored).collect::<Vec<_>>(), vec![1, 5]);
    }

    /// The same model on the same tokens scores the same bits with any number of threads (a
    /// sweep compares a point cut by nothing with the original exactly; a reduction grouped by
    /// rayon's work stealing once made them differ in the last bit).
    #[test]
    fn the_score_does_not_depend_on_the_thread_count() {
        use orlik_model::{Model, ModelOptions};
        let cfg = orlik_model::testing::tiny("LlamaForCausalLM", serde_json::json!({}));
        let w = orlik_model::init::random_weights(&cfg, 7, 0.5).unwrap();
        let model = Model::new(&cfg, &w, ModelOptions::default()).unwrap();
        let mut x = 5u64;
        let ids: Vec<u32> = (0..700)
            .map(|_| {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                (x >> 33) as u32 % cfg.vocab_size as u32
            })
            .collect();
        let opts = PplOptions { context: 600, stride: 300, batch: 2 };
        let score = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            pool.install(|| score_ids(&model, &ids, 1000, &opts, |_, _| {}).unwrap().total_nll)
        };
        let one = score(1);
        assert!(one.is_finite() && one > 0.0);
        for threads in [2, 3, 4, 7, 2, 3, 4, 7] {
            assert_eq!(score(threads).to_bits(), one.to_bits(), "{threads} threads");
        }
    }
}
