//! Objectives that are functions of the log-probabilities the model gives to chosen tokens
//! (SFT's masked cross-entropy, DPO's sequence log-likelihoods, GRPO's per-token ratios).
//!
//! [`forward_train`] runs the body on right-padded rows (`body.rs`: the hand-written path of
//! `orlik_model::cpu` unless autograd is asked for; [`forward`] runs any
//! model under autograd) and returns, for every position,
//! log p(target | prefix); the caller turns its loss into c_r = dL/d logp_r per position, and
//! [`backward`] pushes it through: dL/dz_r = c_r (onehot(target_r) − softmax(z_r)), computed
//! `chunk` positions at a time outside autograd (as the KD trainer does), so (positions × vocab)
//! logits never exist whole. Right padding needs no attention mask: causal attention never lets
//! a real position see the padding after it.

use crate::body::{self, Hidden, Path};
use crate::params::Params;
use crate::TrainError;
use orlik_model::prob::logsumexp;
use orlik_model::{GradModel, Model};
use rayon::prelude::*;

/// A batch of token rows: `inputs[r]` and `targets[r]` have equal lengths; rows may differ in
/// length and are right-padded with `pad`.
pub struct Rows {
    pub inputs: Vec<Vec<u32>>,
    pub targets: Vec<Vec<u32>>,
    pub pad: u32,
}

pub struct Forward {
    hidden: Hidden,
    /// The hand-written body the forward ran (None: autograd).
    fast: Option<GradModel>,
    /// Targets, flat (b · t) with padding positions set to `pad`.
    targets: Vec<u32>,
    pub width: usize,
    /// log p(target) per row and position (padding positions hold 0).
    pub logp: Vec<Vec<f64>>,
}

/// Right-padded ids and targets, flat (b · width), and the width.
fn pad(rows: &Rows) -> Result<(Vec<u32>, Vec<u32>, usize), TrainError> {
    let width = rows.inputs.iter().map(Vec::len).max().unwrap_or(0);
    if width == 0 || rows.inputs.len() != rows.targets.len() {
        return Err(TrainError::Data(
            "empty batch, or inputs and targets of different counts".into(),
        ));
    }
    let b = rows.inputs.len();
    let mut ids = Vec::with_capacity(b * width);
    let mut targets = Vec::with_capacity(b * width);
    for (inp, tgt) in rows.inputs.iter().zip(&rows.targets) {
        if inp.len() != tgt.len() {
            return Err(TrainError::Data(format!(
                "row of {} inputs has {} targets",
                inp.len(),
                tgt.len()
            )));
        }
        ids.extend_from_slice(inp);
        ids.extend(std::iter::repeat_n(rows.pad, width - inp.len()));
        targets.extend_from_slice(tgt);
        targets.extend(std::iter::repeat_n(rows.pad, width - inp.len()));
    }
    Ok((ids, targets, width))
}

/// Run `model` under autograd on `rows` and return log p(target) at every real position (any
/// model, e.g. a frozen reference; `backward` works through the graph).
pub fn forward(model: &Model, rows: &Rows, chunk: usize) -> Result<Forward, TrainError> {
    let (ids, targets, width) = pad(rows)?;
    let hidden = body::graph(model, ids, rows.inputs.len(), width)?;
    let logp = logps(&hidden, &model.head_weight().detach(), &targets, rows, chunk)?;
    Ok(Forward { hidden, fast: None, targets, width, logp })
}

/// The policy's forward for training: the hand-written body when `p`'s architecture has one
/// (no autograd graph, a third of the memory), else autograd through `p.model`.
pub fn forward_train(p: &Params, rows: &Rows, chunk: usize) -> Result<Forward, TrainError> {
    let (ids, targets, width) = pad(rows)?;
    let fast = p.grad_model(width)?;
    let path = match &fast {
        Some(f) => Path::Fast { model: f, checkpoint: false },
        None => Path::Autograd { checkpoint: false },
    };
    let hidden = body::forward(p, path, ids, rows.inputs.len(), width, true)?;
    let logp = logps(&hidden, &p.head_weight(), &targets, rows, chunk)?;
    Ok(Forward { hidden, fast, targets, width, logp })
}

/// log p(target) per real position from the final hidden states, `chunk` rows of logits at a
/// time.
fn logps(
    h: &Hidden,
    w: &candle_core::Tensor,
    targets: &[u32],
    rows: &Rows,
    chunk: usize,
) -> Result<Vec<Vec<f64>>, TrainError> {
    let vocab = w.dim(0)?;
    let mut flat = vec![0f64; h.b * h.t];
    body::head_chunks(&h.hd, w, chunk, false, |start, z, _| {
        let c = z.len() / vocab;
        flat[start..start + c]
            .par_iter_mut()
            .zip(z.par_chunks(vocab))
            .zip(targets[start..start + c].par_iter())
            .for_each(|((o, zi), &t)| *o = zi[t as usize] as f64 - logsumexp(zi, 1.0));
        Ok(())
    })?;
    let width = h.t;
    let logp = rows
        .inputs
        .iter()
        .enumerate()
        .map(|(r, inp)| flat[r * width..r * width + inp.len()].to_vec())
        .collect();
    Ok(logp)
}

/// Gradients (in `p.names` order) of a loss whose derivative with respect to each position's
/// log-probability is `coeff[row][pos]` (positions not listed, and padding, get 0).
pub fn backward(
    p: &Params,
    f: Forward,
    coeff: &[Vec<f32>],
    chunk: usize,
) -> Result<Vec<Vec<f32>>, TrainError> {
    let (b, t) = (f.logp.len(), f.width);
    let mut c_flat = vec![0f32; b * t];
    for (r, cs) in coeff.iter().enumerate().take(b) {
        let len = cs.len().min(t);
        c_flat[r * t..r * t + len].copy_from_slice(&cs[..len]);
    }
    let w = p.head_weight();
    let vocab = w.dim(0)?;
    let targets = &f.targets;
    let hg = body::head_chunks(&f.hidden.hd, &w, chunk, true, |start, z, g| {
        let Some(g) = g else { return Ok(()) };
        g.par_chunks_mut(vocab).zip(z.par_chunks(vocab)).enumerate().for_each(|(i, (gi, zi))| {
            let k = c_flat[start + i];
            if k == 0.0 {
                return;
            }
            let lse = logsumexp(zi, 1.0);
            for (gv, &zv) in gi.iter_mut().zip(zi) {
                *gv = -k * ((zv as f64 - lse).exp() as f32);
            }
            gi[targets[start + i] as usize] += k;
        });
        Ok(())
    })?;
    let path = match &f.fast {
        Some(fast) => Path::Fast { model: fast, checkpoint: false },
        None => Path::Autograd { checkpoint: false },
    };
    body::backward(p, path, f.hidden, hg)
}

/// Σ over positions of log-probabilities in each row, for the positions marked in `mask`.
pub fn masked_sums(logp: &[Vec<f64>], mask: &[Vec<bool>]) -> Vec<f64> {
    logp.iter()
        .zip(mask)
        .map(|(l, m)| l.iter().zip(m).filter(|x| *x.1).map(|x| x.0).sum())
        .collect()
}
