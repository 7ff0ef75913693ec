//! One calibration pass collecting Minitron importance (arXiv 2407.14679 §2.1) and depth metrics.
//!
//! Width: activations are reduced over the sequence first (`seq`), then over the batch (`batch`),
//! per unit. Minitron's default is mean over the sequence of |activation|, then L2 over the batch.
//! - MLP neuron i of layer l: activation at the down_proj input (after SwiGLU).
//! - Attention head: L2 norm over head_dim of its output before o_proj, per token.
//! - Hidden channel: |output| of every RMSNorm (input, post-attention, final), summed over norms.
//!
//! Depth, side by side:
//! - Block Influence (Men et al. 2024, ShortGPT): 1 − cos(layer input, layer output), token mean.
//! - Angular distance of n contiguous layers (Gromov et al. 2024): arccos(cos(h_l, h_{l+n}))/π.
//! - Leave-one-layer-out: KL(full ‖ model without layer l) per token and the LM loss without it.
//!
//! Across data-parallel ranks (`collect_ranks`, `collect_streaming_ranks`), rank r takes every
//! N-th calibration batch from r; every accumulator is a sum or a maximum of per-row values, so
//! they are summed (maxima: maximised) over ranks before the scores are formed and N ranks give
//! the scores of one process over the same windows (up to the order of f64 sums).

use crate::{Agg, ScoreError, ScoreOptions, Scores};
use candle_core::{DType, Device, Tensor, D};
use orlik_dist::Comm;
use orlik_model::infer::{Infer, Rows};
use orlik_model::{ops, Model, Tap};

/// Per-unit accumulator over batch rows of per-row (sequence-aggregated) values.
#[derive(Clone, Default)]
struct Acc {
    n: f64,
    sum: f64,
    sumsq: f64,
    max: f64,
}

impl Acc {
    fn push(&mut self, v: f64) {
        self.n += 1.0;
        self.sum += v;
        self.sumsq += v * v;
        self.max = if self.n == 1.0 { v } else { self.max.max(v) };
    }
    fn get(&self, agg: Agg) -> f32 {
        let n = self.n.max(1.0);
        (match agg {
            Agg::Mean => self.sum / n,
            Agg::L2 => self.sumsq.sqrt(),
            Agg::Max => self.max,
            Agg::Var => (self.sumsq / n - (self.sum / n).powi(2)).max(0.0),
        }) as f32
    }
}

/// Reduce (b, t, u) over valid tokens of each row with `seq`; push one value per (row, unit).
fn push_rows(
    accs: &mut [Acc],
    x: &Tensor,
    valid: &[Vec<bool>],
    seq: Agg,
) -> candle_core::Result<()> {
    let (b, t, u) = x.dims3()?;
    let v: Vec<f32> = x.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
    for (r, vr) in valid.iter().enumerate().take(b) {
        let mut row = vec![Acc::default(); u];
        for (p, &ok) in vr.iter().enumerate().take(t) {
            if !ok {
                continue;
            }
            let base = (r * t + p) * u;
            for (j, a) in row.iter_mut().enumerate() {
                let x = v[base + j] as f64;
                a.push(if seq == Agg::Var { x } else { x.abs() });
            }
        }
        for (j, a) in row.iter().enumerate() {
            accs[j].push(a.get(seq) as f64);
        }
    }
    Ok(())
}

/// Per-token cosine similarity of two (b, t, h) tensors -> (b, t).
fn cosine(a: &Tensor, b: &Tensor) -> candle_core::Result<Vec<Vec<f32>>> {
    let dot = (a * b)?.sum(D::Minus1)?;
    let na = a.sqr()?.sum(D::Minus1)?.sqrt()?;
    let nb = b.sqr()?.sum(D::Minus1)?.sqrt()?;
    (dot / ((na * nb)? + 1e-12)?)?.to_vec2()
}

fn mean_valid(v: &[Vec<f32>], valid: &[Vec<bool>], f: impl Fn(f32) -> f64) -> (f64, f64) {
    let (mut s, mut n) = (0.0, 0.0);
    for (r, row) in v.iter().enumerate() {
        for (p, &x) in row.iter().enumerate() {
            if valid[r][p] {
                s += f(x);
                n += 1.0;
            }
        }
    }
    (s, n)
}

/// Log-probabilities (b, t, vocab) of a final hidden state.
fn log_probs(model: &dyn Infer, hidden: &Tensor) -> Result<Tensor, ScoreError> {
    Ok(ops::log_softmax_last(&model.head(hidden)?)?)
}

/// Mean next-token loss and per-token KL(p ‖ q) sums over valid positions.
fn loss_and_kl(
    p: &Tensor,
    q: &Tensor,
    ids: &[Vec<u32>],
    valid: &[Vec<bool>],
) -> Result<(f64, f64, f64), ScoreError> {
    let (b, t, _) = q.dims3()?;
    let kl: Vec<Vec<f32>> = orlik_model::prob::kl_last(p, q)?.to_vec2()?;
    let (mut loss, mut kls, mut n) = (0.0, 0.0, 0.0);
    for r in 0..b {
        let qr = q.get(r)?; // (t, vocab)
        for pos in 0..t.saturating_sub(1) {
            if !(valid[r][pos] && valid[r][pos + 1]) {
                continue;
            }
            let lp: f32 = qr.get(pos)?.get(ids[r][pos + 1] as usize)?.to_scalar()?;
            loss -= lp as f64;
            kls += kl[r][pos] as f64;
            n += 1.0;
        }
    }
    Ok((loss, kls, n))
}

/// Everything a calibration pass accumulates; shared by the in-memory and streaming passes.
struct Accums {
    nl: usize,
    mlp: Vec<Vec<Acc>>,
    heads: Vec<Vec<Acc>>,
    hidden: Vec<Vec<Acc>>,
    bi: Vec<f64>,
    ang: Vec<Vec<f64>>, // ang[n][l]: sum over tokens
    tokens: f64,
    full_loss: f64,
    loss_n: f64,
    loo_loss: Vec<f64>,
    loo_kl: Vec<f64>,
    max_n: usize,
}

impl Accums {
    fn new(cfg: &orlik_model::Config, opts: &ScoreOptions) -> Accums {
        let nl = cfg.num_hidden_layers;
        let max_n = opts.max_block.min(nl);
        Accums {
            nl,
            mlp: vec![vec![Acc::default(); cfg.intermediate_size]; nl],
            heads: vec![vec![Acc::default(); cfg.num_attention_heads]; nl],
            hidden: vec![vec![Acc::default(); cfg.hidden_size]; 2 * nl + 1],
            bi: vec![0.0; nl],
            ang: vec![vec![0.0; nl]; max_n + 1],
            tokens: 0.0,
            full_loss: 0.0,
            loss_n: 0.0,
            loo_loss: vec![0.0; nl],
            loo_kl: vec![0.0; nl],
            max_n,
        }
    }

    /// Width importance from one tapped activation of layer `l`.
    fn record(
        &mut self,
        l: usize,
        what: Tap,
        a: &Tensor,
        valid: &[Vec<bool>],
        seq: Agg,
    ) -> candle_core::Result<()> {
        match what {
            Tap::MlpAct => push_rows(&mut self.mlp[l], a, valid, seq),
            Tap::Heads => {
                push_rows(&mut self.heads[l], &a.sqr()?.sum(D::Minus1)?.sqrt()?, valid, seq)
            }
            Tap::InputNorm => push_rows(&mut self.hidden[2 * l], a, valid, seq),
            Tap::PostAttnNorm => push_rows(&mut self.hidden[2 * l + 1], a, valid, seq),
            Tap::FinalNorm => push_rows(&mut self.hidden[2 * self.nl], a, valid, seq),
            _ => Ok(()),
        }
    }

    /// Depth metrics between boundary state `from` (input of layer `l`) and the state `n` layers on.
    fn depth(
        &mut self,
        l: usize,
        n: usize,
        from: &Tensor,
        to: &Tensor,
        valid: &[Vec<bool>],
    ) -> candle_core::Result<()> {
        let c = cosine(from, to)?;
        if n == 1 {
            self.bi[l] += mean_valid(&c, valid, |x| 1.0 - x as f64).0;
        }
        self.ang[n][l] +=
            mean_valid(&c, valid, |x| (x.clamp(-1.0, 1.0) as f64).acos() / std::f64::consts::PI).0;
        Ok(())
    }

    /// Sum the accumulators over `comm`'s ranks (maxima: their maximum; every pushed value is
    /// ≥ 0, so a rank that saw no rows, with max 0, changes nothing).
    fn reduce(&mut self, comm: &dyn Comm) -> Result<(), ScoreError> {
        if comm.size() == 1 {
            return Ok(());
        }
        let mut sums: Vec<f64> = Vec::new();
        let mut maxes: Vec<f64> = Vec::new();
        for a in self.mlp.iter().chain(&self.heads).chain(&self.hidden).flatten() {
            sums.extend([a.n, a.sum, a.sumsq]);
            maxes.push(a.max);
        }
        // Read back below in the same order.
        sums.extend([self.tokens, self.full_loss, self.loss_n]);
        sums.extend(self.bi.iter().chain(&self.loo_loss).chain(&self.loo_kl));
        sums.extend(self.ang.iter().flatten());
        comm.sum_f64(&mut sums).map_err(ScoreError::from)?;
        comm.max_f64(&mut maxes).map_err(ScoreError::from)?;
        let (mut s, mut m) = (sums.into_iter(), maxes.into_iter());
        let mut next = || s.next().unwrap_or(0.0);
        for a in self.mlp.iter_mut().chain(&mut self.heads).chain(&mut self.hidden).flatten() {
            (a.n, a.sum, a.sumsq) = (next(), next(), next());
            a.max = m.next().unwrap_or(0.0);
        }
        (self.tokens, self.full_loss, self.loss_n) = (next(), next(), next());
        for x in self.bi.iter_mut().chain(&mut self.loo_loss).chain(&mut self.loo_kl) {
            *x = next();
        }
        for x in self.ang.iter_mut().flatten() {
            *x = next();
        }
        Ok(())
    }

    fn finish(self, opts: &ScoreOptions) -> Scores {
        let fin = |accs: &[Vec<Acc>]| -> Vec<Vec<f32>> {
            accs.iter().map(|r| r.iter().map(|a| a.get(opts.batch)).collect()).collect()
        };
        let hid_parts = fin(&self.hidden);
        let h = hid_parts.first().map_or(0, Vec::len);
        let tokens = self.tokens.max(1.0);
        let per_tok =
            |v: &[f64], n: f64| v.iter().map(|s| (s / n.max(1.0)) as f32).collect::<Vec<_>>();
        Scores {
            mlp: fin(&self.mlp),
            heads: fin(&self.heads),
            hidden: (0..h).map(|j| hid_parts.iter().map(|r| r[j]).sum()).collect(),
            bi: per_tok(&self.bi, tokens),
            angular: (1..=self.max_n)
                .map(|n| per_tok(&self.ang[n][..=self.nl - n], tokens))
                .collect(),
            loo_kl: per_tok(&self.loo_kl, self.loss_n),
            loo_loss: per_tok(&self.loo_loss, self.loss_n),
            full_loss: (self.full_loss / self.loss_n.max(1.0)) as f32,
            tokens: tokens as usize,
        }
    }
}

fn ids_tensor(ids: &[Vec<u32>]) -> candle_core::Result<Tensor> {
    let t = ids.first().map_or(0, Vec::len);
    Tensor::from_vec(
        ids.iter().flatten().copied().collect::<Vec<u32>>(),
        (ids.len(), t),
        &Device::Cpu,
    )
}

fn count_tokens(valid: &[Vec<bool>]) -> f64 {
    valid.iter().flatten().filter(|&&v| v).count() as f64
}

/// This rank's calibration batches (every N-th from its rank) and its options: the
/// leave-one-out batches are the global first `loo_batches`, so locally those of them it holds.
fn share(
    comm: &dyn Comm,
    batches: &[crate::Batch],
    opts: &ScoreOptions,
) -> (Vec<crate::Batch>, ScoreOptions) {
    let (r, n) = (comm.rank(), comm.size());
    let mine: Vec<usize> = (0..batches.len()).filter(|i| i % n == r).collect();
    let loo = mine.iter().filter(|&&i| i < opts.loo_batches).count();
    (mine.iter().map(|&i| batches[i].clone()).collect(), ScoreOptions { loo_batches: loo, ..*opts })
}

/// Run the calibration pass with the whole model in memory. `batches` are (ids, valid) with rows
/// of equal length.
pub fn collect(
    model: &dyn Infer,
    batches: &[crate::Batch],
    opts: &ScoreOptions,
    progress: impl FnMut(&str, usize, usize),
) -> Result<Scores, ScoreError> {
    collect_ranks(&orlik_dist::Single, model, batches, opts, progress)
}

/// [`collect`] over `comm`'s ranks: each takes its share of `batches`, the accumulators are
/// summed; every rank gets the scores.
pub fn collect_ranks(
    comm: &dyn Comm,
    model: &dyn Infer,
    batches: &[crate::Batch],
    opts: &ScoreOptions,
    progress: impl FnMut(&str, usize, usize),
) -> Result<Scores, ScoreError> {
    across(comm, batches, opts, |mine, local| pass(model, mine, local, progress))
}

/// A calibration pass `pass` over this rank's share of `batches`, its accumulators summed over
/// `comm`'s ranks, then the scores.
fn across(
    comm: &dyn Comm,
    batches: &[crate::Batch],
    opts: &ScoreOptions,
    pass: impl FnOnce(&[crate::Batch], &ScoreOptions) -> Result<Accums, ScoreError>,
) -> Result<Scores, ScoreError> {
    let (mine, local) = share(comm, batches, opts);
    let mut acc = pass(&mine, &local)?;
    acc.reduce(comm)?;
    let s = acc.finish(opts);
    s.check_finite()?;
    Ok(s)
}

fn pass(
    model: &dyn Infer,
    batches: &[crate::Batch],
    opts: &ScoreOptions,
    mut progress: impl FnMut(&str, usize, usize),
) -> Result<Accums, ScoreError> {
    let mut acc = Accums::new(model.config(), opts);
    let nl = acc.nl;
    for (bi, (ids, valid)) in batches.iter().enumerate() {
        progress("calibration", bi, batches.len());
        let flat: Vec<u32> = ids.iter().flatten().copied().collect();
        let rows = Rows {
            key_valid: Some(valid),
            ..Rows::new(&flat, ids.len(), ids.first().map_or(0, Vec::len))
        };
        let mut states: Vec<Tensor> = Vec::with_capacity(nl + 1);
        let mut tap = |l: usize, what: Tap, a: &Tensor| -> candle_core::Result<()> {
            match what {
                Tap::LayerInput => states.push(a.clone()),
                Tap::LayerOutput if l + 1 == nl => states.push(a.clone()),
                _ => {}
            }
            acc.record(l, what, a, valid, opts.seq)
        };
        let fin = model.hidden_tapped(rows, &[], &mut tap)?;
        for n in 1..=acc.max_n {
            for l in 0..=nl - n {
                acc.depth(l, n, &states[l], &states[l + n], valid)?;
            }
        }
        acc.tokens += count_tokens(valid);
        drop(states);
        if bi < opts.loo_batches {
            let p = log_probs(model, &fin)?;
            let (l0, _, n0) = loss_and_kl(&p, &p, ids, valid)?;
            acc.full_loss += l0;
            acc.loss_n += n0;
            for l in 0..nl {
                progress("leave-one-out", l, nl);
                let q = log_probs(model, &model.hidden_tapped(rows, &[l], &mut |_, _, _| Ok(()))?)?;
                let (lq, kq, _) = loss_and_kl(&p, &q, ids, valid)?;
                acc.loo_loss[l] += lq;
                acc.loo_kl[l] += kq;
            }
        }
    }
    Ok(acc)
}

/// Load layer `l` of `hf` alone, as a one-layer model (placeholder 1-token embedding, tied).
fn layer_model(
    hf: &orlik_io::hfdir::HfModel,
    l: usize,
    half: Option<DType>,
) -> Result<Model, ScoreError> {
    let opts = orlik_model::ModelOptions::inference(half);
    let cfg = &hf.config;
    let mut c = cfg.clone();
    c.num_hidden_layers = 1;
    c.vocab_size = 1;
    c.tie_word_embeddings = true;
    c.head_dim = Some(cfg.head_dim());
    // The layer's own kind, whatever rule the config states it by (explicit layer_types, Qwen2's
    // max_window_layers, Gemma's periodic pattern).
    let kind = if cfg.layer_window(l).is_some() { "sliding_attention" } else { "full_attention" };
    c.layer_types = Some(vec![kind.to_string()]);
    c.max_window_layers = cfg.max_window_layers.map(|m| usize::from(l < m));
    let mut w = orlik_model::Weights::new();
    let prefix = format!("model.layers.{l}.");
    for t in hf.checkpoint.infos() {
        if let Some(rest) = t.name.strip_prefix(&prefix) {
            let want = opts.dtype_of(&t.shape);
            w.insert(
                format!("model.layers.0.{rest}"),
                hf.checkpoint.tensor(&t.name)?.to_dtype(want)?,
            );
            hf.checkpoint.release(&t.name);
        }
    }
    w.insert(
        "model.embed_tokens.weight".into(),
        Tensor::zeros((1, cfg.hidden_size), DType::F32, &Device::Cpu)?,
    );
    w.insert(
        "model.norm.weight".into(),
        hf.checkpoint.tensor("model.norm.weight")?.to_dtype(DType::F32)?,
    );
    Ok(Model::new(&c, &w, opts)?)
}

/// The same pass, layer by layer: only one layer's weights are in memory at a time (plus the
/// embedding or lm_head at the start and end), and the residual streams of all calibration
/// batches. Leave-one-out re-runs the layers after the left-out one from its stored input.
pub fn collect_streaming(
    hf: &orlik_io::hfdir::HfModel,
    batches: &[crate::Batch],
    opts: &ScoreOptions,
    progress: impl FnMut(&str, usize, usize),
) -> Result<Scores, ScoreError> {
    collect_streaming_ranks(&orlik_dist::Single, hf, None, batches, opts, progress)
}

/// [`collect_streaming`] over `comm`'s ranks (as [`collect_ranks`]), the matrices held in
/// `half` (None: f32).
pub fn collect_streaming_ranks(
    comm: &dyn Comm,
    hf: &orlik_io::hfdir::HfModel,
    half: Option<DType>,
    batches: &[crate::Batch],
    opts: &ScoreOptions,
    progress: impl FnMut(&str, usize, usize),
) -> Result<Scores, ScoreError> {
    across(comm, batches, opts, |mine, local| pass_streaming(hf, half, mine, local, progress))
}

fn pass_streaming(
    hf: &orlik_io::hfdir::HfModel,
    half: Option<DType>,
    batches: &[crate::Batch],
    opts: &ScoreOptions,
    mut progress: impl FnMut(&str, usize, usize),
) -> Result<Accums, ScoreError> {
    let cfg = &hf.config;
    let mut acc = Accums::new(cfg, opts);
    let nl = acc.nl;
    let spec = orlik_model::block::BlockSpec::of(cfg)?;
    let table_dtype = half.unwrap_or(DType::F32);
    let embed = hf.checkpoint.tensor("model.embed_tokens.weight")?.to_dtype(table_dtype)?;
    let mut xs: Vec<Tensor> = Vec::with_capacity(batches.len());
    for (ids, _) in batches {
        xs.push(orlik_model::llama::embed(&spec, &embed, &ids_tensor(ids)?)?);
    }
    drop(embed);
    let nloo = opts.loo_batches.min(batches.len());
    let mut ring: Vec<std::collections::VecDeque<Tensor>> = vec![Default::default(); batches.len()];
    let mut loo_inputs: Vec<Vec<Tensor>> = vec![Vec::new(); nloo]; // [batch][layer]
    for l in 0..nl {
        progress("layers", l, nl);
        let m = layer_model(hf, l, half)?;
        for (bi, (_, valid)) in batches.iter().enumerate() {
            if bi < nloo {
                loo_inputs[bi].push(xs[bi].clone());
            }
            ring[bi].push_back(xs[bi].clone());
            let out = m.forward_layers(&xs[bi], Some(valid), &mut |_, what, a| {
                acc.record(l, what, a, valid, opts.seq)
            })?;
            // depth: blocks of n layers ending after layer l
            for n in 1..=acc.max_n.min(ring[bi].len()) {
                let from = &ring[bi][ring[bi].len() - n];
                acc.depth(l + 1 - n, n, from, &out, valid)?;
            }
            while ring[bi].len() >= acc.max_n.max(1) {
                ring[bi].pop_front();
            }
            xs[bi] = out;
        }
    }
    drop(ring);
    // final norm and lm_head (the embedding when tied)
    let norm = hf.checkpoint.tensor("model.norm.weight")?.to_dtype(DType::F32)?;
    let final_norm = |x: &Tensor| orlik_model::llama::norm(&spec, x, &norm, false);
    let head_name =
        if cfg.tie_word_embeddings { "model.embed_tokens.weight" } else { "lm_head.weight" };
    let head = hf.checkpoint.tensor(head_name)?.to_dtype(table_dtype)?;
    let logp = |x: &Tensor| -> Result<Tensor, ScoreError> {
        let logits = orlik_model::llama::logits(&head, &final_norm(x)?)?; // (b, t, vocab)
        Ok(ops::log_softmax_last(&logits)?)
    };
    for (bi, (_, valid)) in batches.iter().enumerate() {
        let h = final_norm(&xs[bi])?;
        acc.record(nl, Tap::FinalNorm, &h, valid, opts.seq)?;
        acc.tokens += count_tokens(valid);
    }
    let fulls: Vec<Tensor> = (0..nloo).map(|bi| logp(&xs[bi])).collect::<Result<_, _>>()?;
    for (bi, p) in fulls.iter().enumerate() {
        let (l0, _, n0) = loss_and_kl(p, p, &batches[bi].0, &batches[bi].1)?;
        acc.full_loss += l0;
        acc.loss_n += n0;
    }
    let loo_layers = if nloo > 0 { nl } else { 0 };
    #[allow(clippy::needless_range_loop)] // l indexes the inner lists of loo_inputs
    for l in 0..loo_layers {
        progress("leave-one-out", l, nl);
        let mut ys: Vec<Tensor> = (0..nloo).map(|bi| loo_inputs[bi][l].clone()).collect();
        for j in l + 1..nl {
            let m = layer_model(hf, j, half)?;
            for (bi, y) in ys.iter_mut().enumerate() {
                *y = m.forward_layers(y, Some(&batches[bi].1), &mut |_, _, _| Ok(()))?;
            }
        }
        for (bi, y) in ys.iter().enumerate() {
            let (lq, kq, _) = loss_and_kl(&fulls[bi], &logp(y)?, &batches[bi].0, &batches[bi].1)?;
            acc.loo_loss[l] += lq;
            acc.loo_kl[l] += kq;
        }
    }
    Ok(acc)
}
