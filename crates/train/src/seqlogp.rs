//! Objectives that are functions of the log-probabilities the model gives to chosen tokens
//! (SFT's masked cross-entropy, DPO's sequence log-likelihoods, GRPO's per-token ratios).
//!
//! [`forward_train`] runs the executor's body on right-padded rows ([`frozen`] runs a frozen
//! model) and returns, for every position, log p(target | prefix); the caller turns its loss
//! into c_r = dL/d logp_r per position, and [`backward`] pushes it through
//! (`Executor::token_logp_backward`: dL/dz_r = c_r (onehot(target_r) − softmax(z_r)), `chunk`
//! positions at a time, so (positions × vocab) logits never exist whole). Right padding needs no attention mask: causal attention never lets
//! a real position see the padding after it.

use crate::body;
use crate::exec::{Acts, Executor};
use crate::TrainError;
use orlik_model::infer::{self, Infer};

/// A batch of token rows: `inputs[r]` and `targets[r]` have equal lengths; rows may differ in
/// length and are right-padded with `pad`.
pub struct Rows {
    pub inputs: Vec<Vec<u32>>,
    pub targets: Vec<Vec<u32>>,
    pub pad: u32,
}

/// A training forward: the executor's activations and every row's log-probabilities.
pub struct Forward {
    acts: Acts,
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

/// log p(target) at every real position of `rows` under a frozen `model` (a reference model;
/// inference only).
pub fn frozen(model: &dyn Infer, rows: &Rows, chunk: usize) -> Result<Vec<Vec<f64>>, TrainError> {
    let (ids, targets, width) = pad(rows)?;
    let b = rows.inputs.len();
    let h = model.hidden(infer::Rows::new(&ids, b, width), None)?; // (b, width, hidden)
    let hd = h.reshape((b * width, h.dim(2)?))?; // (n, hidden)
    let mut flat = vec![0f64; b * width];
    for start in (0..b * width).step_by(chunk.max(1)) {
        let c = chunk.max(1).min(b * width - start);
        let z = model.head(&hd.narrow(0, start, c)?)?; // (c, vocab)
        let vocab = z.dim(1)?;
        let z = z.to_dtype(candle_core::DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        body::target_logp(&mut flat[start..start + c], &z, vocab, &targets[start..start + c]);
    }
    Ok(per_row(&flat, rows, width))
}

/// log p(target) at every real position of `rows` under the executor's current weights, no
/// gradient kept (DPO's reference log-probabilities, before training).
pub fn logp(e: &mut dyn Executor, rows: &Rows, chunk: usize) -> Result<Vec<Vec<f64>>, TrainError> {
    let (ids, targets, width) = pad(rows)?;
    let acts = e.forward(&ids, rows.inputs.len(), width, false)?;
    Ok(per_row(&e.token_logp(&acts, &targets, chunk)?, rows, width))
}

/// The policy's forward for training: log p(target) at every position, and what [`backward`]
/// needs.
pub fn forward_train(
    e: &mut dyn Executor,
    rows: &Rows,
    chunk: usize,
) -> Result<Forward, TrainError> {
    let (ids, targets, width) = pad(rows)?;
    let acts = e.forward(&ids, rows.inputs.len(), width, true)?;
    let logp = per_row(&e.token_logp(&acts, &targets, chunk)?, rows, width);
    Ok(Forward { acts, targets, width, logp })
}

/// Each row's real positions of `flat` (b · width).
fn per_row(flat: &[f64], rows: &Rows, width: usize) -> Vec<Vec<f64>> {
    rows.inputs
        .iter()
        .enumerate()
        .map(|(r, inp)| flat[r * width..r * width + inp.len()].to_vec())
        .collect()
}

/// Add to the executor's gradient that of a loss whose derivative with respect to each
/// position's log-probability is `coeff[row][pos]` (positions not listed, and padding, get 0).
pub fn backward(
    e: &mut dyn Executor,
    f: Forward,
    coeff: &[Vec<f32>],
    chunk: usize,
) -> Result<(), TrainError> {
    let (b, t) = (f.logp.len(), f.width);
    let mut c_flat = vec![0f32; b * t];
    for (r, cs) in coeff.iter().enumerate().take(b) {
        let len = cs.len().min(t);
        c_flat[r * t..r * t + len].copy_from_slice(&cs[..len]);
    }
    e.token_logp_backward(f.acts, &f.targets, &c_flat, chunk)
}

/// Σ over positions of log-probabilities in each row, for the positions marked in `mask`.
pub fn masked_sums(logp: &[Vec<f64>], mask: &[Vec<bool>]) -> Vec<f64> {
    logp.iter()
        .zip(mask)
        .map(|(l, m)| l.iter().zip(m).filter(|x| *x.1).map(|x| x.0).sum())
        .collect()
}
