//! One calibration pass collecting Minitron importance (arXiv 2407.14679 §2.1) and depth metrics.
//!
//! Width: activations are reduced over the sequence first (`seq`), then over the batch (`batch`),
//! per unit. Minitron's default is mean over the sequence of |activation|, then L2 over the batch.
//! - MLP neuron i of layer l: activation at the down_proj input (after SwiGLU).
//! - Attention head: L2 norm over head_dim of its output before o_proj, per token.
//! - Hidden channel: |output| of every RMSNorm (input, post-attention, final), summed over norms.
//! Depth, side by side:
//! - Block Influence (Men et al. 2024, ShortGPT): 1 − cos(layer input, layer output), token mean.
//! - Angular distance of n contiguous layers (Gromov et al. 2024): arccos(cos(h_l, h_{l+n}))/π.
//! - Leave-one-layer-out: KL(full ‖ model without layer l) per token and the LM loss without it.

use crate::{Agg, ScoreError, ScoreOptions, Scores};
use candle_core::{DType, Device, Tensor, D};
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
fn push_rows(accs: &mut [Acc], x: &Tensor, valid: &[Vec<bool>], seq: Agg) -> candle_core::Result<()> {
    let (b, t, u) = x.dims3()?;
    let v: Vec<f32> = x.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
    for r in 0..b {
        let mut row = vec![Acc::default(); u];
        for p in 0..t {
            if !valid[r][p] {
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
fn log_probs(model: &Model, hidden: &Tensor) -> Result<Tensor, ScoreError> {
    Ok(ops::log_softmax_last(&model.lm_head(hidden)?)?)
}

/// Mean next-token loss and per-token KL(p ‖ q) sums over valid positions.
fn loss_and_kl(p: &Tensor, q: &Tensor, ids: &[Vec<u32>], valid: &[Vec<bool>]) -> Result<(f64, f64, f64), ScoreError> {
    let (b, t, _) = q.dims3()?;
    let kl: Vec<Vec<f32>> = (p.exp()? * (p - q)?)?.sum(D::Minus1)?.to_vec2()?;
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

/// Run the calibration pass. `batches` are (ids, valid) with rows of equal length.
pub fn collect(
    model: &Model,
    batches: &[(Vec<Vec<u32>>, Vec<Vec<bool>>)],
    opts: &ScoreOptions,
    mut progress: impl FnMut(&str, usize, usize),
) -> Result<Scores, ScoreError> {
    let cfg = model.config();
    let (nl, ffn, nh, h) = (cfg.num_hidden_layers, cfg.intermediate_size, cfg.num_attention_heads, cfg.hidden_size);
    let mut mlp = vec![vec![Acc::default(); ffn]; nl];
    let mut heads = vec![vec![Acc::default(); nh]; nl];
    let mut hidden = vec![vec![Acc::default(); h]; 2 * nl + 1];
    let (mut bi_sum, mut bi_n) = (vec![0.0; nl], 0.0);
    let max_n = opts.max_block.min(nl);
    let mut ang = vec![vec![0.0f64; nl]; max_n + 1]; // ang[n][l]: sum over tokens
    let (mut full_loss, mut loss_n) = (0.0, 0.0);
    let mut loo_loss = vec![0.0; nl];
    let mut loo_kl = vec![0.0; nl];
    for (bi, (ids, valid)) in batches.iter().enumerate() {
        progress("calibration", bi, batches.len());
        let b = ids.len();
        let t = ids.first().map_or(0, Vec::len);
        let flat: Vec<u32> = ids.iter().flatten().copied().collect();
        let x = Tensor::from_vec(flat, (b, t), &Device::Cpu)?;
        let mut states: Vec<Tensor> = Vec::with_capacity(nl + 1);
        let mut tap = |l: usize, what: Tap, a: &Tensor| -> candle_core::Result<()> {
            match what {
                Tap::LayerInput => states.push(a.clone()),
                Tap::LayerOutput if l + 1 == nl => states.push(a.clone()),
                Tap::MlpAct => push_rows(&mut mlp[l], a, valid, opts.seq)?,
                Tap::Heads => push_rows(&mut heads[l], &a.sqr()?.sum(D::Minus1)?.sqrt()?, valid, opts.seq)?,
                Tap::InputNorm => push_rows(&mut hidden[2 * l], a, valid, opts.seq)?,
                Tap::PostAttnNorm => push_rows(&mut hidden[2 * l + 1], a, valid, opts.seq)?,
                Tap::FinalNorm => push_rows(&mut hidden[2 * nl], a, valid, opts.seq)?,
                _ => {}
            }
            Ok(())
        };
        let fin = model.forward_tapped(&x, Some(valid), &[], &mut tap)?;
        // depth: BI and angular distances from the layer-boundary states
        for n in 1..=max_n {
            for l in 0..=nl - n {
                let c = cosine(&states[l], &states[l + n])?;
                if n == 1 && l < nl {
                    bi_sum[l] += mean_valid(&c, valid, |x| 1.0 - x as f64).0;
                }
                ang[n][l] += mean_valid(&c, valid, |x| (x.clamp(-1.0, 1.0) as f64).acos() / std::f64::consts::PI).0;
            }
        }
        bi_n += mean_valid(&vec![vec![0.0; t]; b], valid, |_| 1.0).1;
        drop(states);
        if bi < opts.loo_batches {
            let p = log_probs(model, &fin)?;
            let (l0, _, n0) = loss_and_kl(&p, &p, ids, valid)?;
            full_loss += l0;
            loss_n += n0;
            for l in 0..nl {
                progress("leave-one-out", l, nl);
                let q = log_probs(model, &model.forward_tapped(&x, Some(valid), &[l], &mut |_, _, _| Ok(()))?)?;
                let (lq, kq, _) = loss_and_kl(&p, &q, ids, valid)?;
                loo_loss[l] += lq;
                loo_kl[l] += kq;
            }
        }
    }
    let fin = |accs: &[Vec<Acc>]| -> Vec<Vec<f32>> { accs.iter().map(|r| r.iter().map(|a| a.get(opts.batch)).collect()).collect() };
    let hid_parts = fin(&hidden);
    let hidden_score: Vec<f32> = (0..h).map(|j| hid_parts.iter().map(|r| r[j]).sum()).collect();
    let tokens = bi_n.max(1.0);
    Ok(Scores {
        mlp: fin(&mlp),
        heads: fin(&heads),
        hidden: hidden_score,
        bi: bi_sum.iter().map(|s| (s / tokens) as f32).collect(),
        angular: (1..=max_n).map(|n| ang[n][..=nl - n].iter().map(|s| (s / tokens) as f32).collect()).collect(),
        loo_kl: loo_kl.iter().map(|s| (s / loss_n.max(1.0)) as f32).collect(),
        loo_loss: loo_loss.iter().map(|s| (s / loss_n.max(1.0)) as f32).collect(),
        full_loss: (full_loss / loss_n.max(1.0)) as f32,
        tokens: tokens as usize,
    })
}
