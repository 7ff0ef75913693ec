//! Objectives that are functions of the log-probabilities the model gives to chosen tokens
//! (SFT's masked cross-entropy, DPO's sequence log-likelihoods, GRPO's per-token ratios).
//!
//! [`forward`] runs the body under autograd on right-padded rows and returns, for every position,
//! log p(target | prefix); the caller turns its loss into c_r = dL/d logp_r per position, and
//! [`backward`] pushes it through: dL/dz_r = c_r (onehot(target_r) − softmax(z_r)), computed
//! `chunk` positions at a time outside autograd (as the KD trainer does), so (positions × vocab)
//! logits never exist whole. Right padding needs no attention mask: causal attention never lets
//! a real position see the padding after it.

use crate::params::Params;
use crate::TrainError;
use candle_core::{Device, Tensor};
use orlik_model::Model;
use rayon::prelude::*;

/// A batch of token rows: `inputs[r]` and `targets[r]` have equal lengths; rows may differ in
/// length and are right-padded with `pad`.
pub struct Rows {
    pub inputs: Vec<Vec<u32>>,
    pub targets: Vec<Vec<u32>>,
    pub pad: u32,
}

pub struct Forward {
    /// Final hidden states (b, t, hidden), attached to the autograd graph.
    h: Tensor,
    /// Targets, flat (b · t) with padding positions set to `pad`.
    targets: Vec<u32>,
    pub width: usize,
    /// log p(target) per row and position (padding positions hold 0).
    pub logp: Vec<Vec<f64>>,
}

fn log_softmax_at(z: &[f32], target: u32) -> (f64, f64) {
    let max = z.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let lse = z.iter().map(|&x| (x as f64 - max).exp()).sum::<f64>().ln() + max;
    (z[target as usize] as f64 - lse, lse)
}

/// Run `model` on `rows` and return log p(target) at every real position (the policy's
/// `Params::model` for training, or any other model, e.g. a frozen reference).
pub fn forward(model: &Model, rows: &Rows, chunk: usize) -> Result<Forward, TrainError> {
    let width = rows.inputs.iter().map(Vec::len).max().unwrap_or(0);
    if width == 0 || rows.inputs.len() != rows.targets.len() {
        return Err(TrainError::Data("empty batch, or inputs and targets of different counts".into()));
    }
    let b = rows.inputs.len();
    let mut ids = Vec::with_capacity(b * width);
    let mut targets = Vec::with_capacity(b * width);
    for (inp, tgt) in rows.inputs.iter().zip(&rows.targets) {
        if inp.len() != tgt.len() {
            return Err(TrainError::Data(format!("row of {} inputs has {} targets", inp.len(), tgt.len())));
        }
        ids.extend_from_slice(inp);
        ids.extend(std::iter::repeat_n(rows.pad, width - inp.len()));
        targets.extend_from_slice(tgt);
        targets.extend(std::iter::repeat_n(rows.pad, width - inp.len()));
    }
    let input = Tensor::from_vec(ids, (b, width), &Device::Cpu)?;
    let h = model.forward_hidden(&input, None, None, None)?; // (b, t, hidden)
    let hid = h.dim(2)?;
    let hd = h.detach().reshape((b * width, hid))?; // (n, hidden)
    let w = model.head_weight().detach(); // (vocab, hidden)
    let vocab = w.dim(0)?;
    let mut flat = vec![0f64; b * width];
    for start in (0..b * width).step_by(chunk.max(1)) {
        let c = chunk.max(1).min(b * width - start);
        let z = hd.narrow(0, start, c)?.matmul(&w.t()?)?.flatten_all()?.to_vec1::<f32>()?; // (c, vocab)
        let tg = &targets[start..start + c];
        flat[start..start + c]
            .par_iter_mut()
            .zip(z.par_chunks(vocab))
            .zip(tg.par_iter())
            .for_each(|((o, zi), &t)| *o = log_softmax_at(zi, t).0);
    }
    let logp = rows
        .inputs
        .iter()
        .enumerate()
        .map(|(r, inp)| flat[r * width..r * width + inp.len()].to_vec())
        .collect();
    Ok(Forward { h, targets, width, logp })
}

/// The hand-made lm_head backward, chunk by chunk: for dL/dlogits of rows h_c, collects
/// dL/dh_c = dL/dz · W and accumulates dL/dW += dL/dzᵀ · h_c.
#[derive(Default)]
pub(crate) struct HeadGrad {
    parts: Vec<Tensor>,
    pub w: Option<Tensor>,
}

impl HeadGrad {
    /// `dl` (c, vocab) for hidden rows `hc` (c, hidden); `w` (vocab, hidden).
    pub fn add(&mut self, dl: Tensor, w: &Tensor, hc: &Tensor) -> candle_core::Result<()> {
        self.parts.push(dl.matmul(w)?); // (c, hidden)
        let part = dl.t()?.matmul(hc)?; // (vocab, hidden)
        self.w = Some(match self.w.take() {
            Some(a) => (a + part)?,
            None => part,
        });
        Ok(())
    }

    /// dL/dh over all rows, as (b, t, hidden).
    pub fn hidden(&self, b: usize, t: usize, hid: usize) -> candle_core::Result<Tensor> {
        Tensor::cat(&self.parts, 0)?.reshape((b, t, hid))
    }
}

/// Gradients (in `p.names` order) of a loss whose derivative with respect to each position's
/// log-probability is `coeff[row][pos]` (positions not listed, and padding, get 0).
pub fn backward(p: &Params, f: Forward, coeff: &[Vec<f32>], chunk: usize) -> Result<Vec<Vec<f32>>, TrainError> {
    let (b, t, hid) = f.h.dims3()?;
    let n = b * t;
    let mut c_flat = vec![0f32; n];
    for (r, cs) in coeff.iter().enumerate().take(b) {
        let len = cs.len().min(t);
        c_flat[r * t..r * t + len].copy_from_slice(&cs[..len]);
    }
    let hd = f.h.detach().reshape((n, hid))?;
    let w = p.head_weight();
    let vocab = w.dim(0)?;
    let mut hg = HeadGrad::default();
    for start in (0..n).step_by(chunk.max(1)) {
        let c = chunk.max(1).min(n - start);
        let hc = hd.narrow(0, start, c)?;
        let z = hc.matmul(&w.t()?)?.flatten_all()?.to_vec1::<f32>()?; // (c, vocab)
        let mut g = vec![0f32; c * vocab];
        g.par_chunks_mut(vocab).zip(z.par_chunks(vocab)).enumerate().for_each(|(i, (gi, zi))| {
            let k = c_flat[start + i];
            if k == 0.0 {
                return;
            }
            let (_, lse) = log_softmax_at(zi, f.targets[start + i]);
            for (gv, &zv) in gi.iter_mut().zip(zi) {
                *gv = -k * ((zv as f64 - lse).exp() as f32);
            }
            gi[f.targets[start + i] as usize] += k;
        });
        hg.add(Tensor::from_vec(g, (c, vocab), &Device::Cpu)?, &w, &hc)?;
    }
    let store = (f.h * hg.hidden(b, t, hid)?)?.sum_all()?.backward()?;
    p.gradients(&[&store], hg.w.as_ref())
}

/// Σ over positions of log-probabilities in each row, for the positions marked in `mask`.
pub fn masked_sums(logp: &[Vec<f64>], mask: &[Vec<bool>]) -> Vec<f64> {
    logp.iter().zip(mask).map(|(l, m)| l.iter().zip(m).filter(|x| *x.1).map(|x| x.0).sum()).collect()
}
