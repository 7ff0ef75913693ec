//! Objectives that are functions of the log-probabilities the model gives to chosen tokens
//! (SFT's masked cross-entropy, DPO's sequence log-likelihoods, GRPO's per-token ratios).
//!
//! [`forward_train`] runs the body on right-padded rows (the hand-written path of
//! `orlik_model::llama_grad` when the architecture has one, else autograd; [`forward`] runs any
//! model under autograd) and returns, for every position,
//! log p(target | prefix); the caller turns its loss into c_r = dL/d logp_r per position, and
//! [`backward`] pushes it through: dL/dz_r = c_r (onehot(target_r) − softmax(z_r)), computed
//! `chunk` positions at a time outside autograd (as the KD trainer does), so (positions × vocab)
//! logits never exist whole. Right padding needs no attention mask: causal attention never lets
//! a real position see the padding after it.

use crate::params::Params;
use crate::TrainError;
use candle_core::{Device, Tensor};
use orlik_model::llama_grad::Saved;
use orlik_model::{GradModel, Model};
use rayon::prelude::*;

/// A batch of token rows: `inputs[r]` and `targets[r]` have equal lengths; rows may differ in
/// length and are right-padded with `pad`.
pub struct Rows {
    pub inputs: Vec<Vec<u32>>,
    pub targets: Vec<Vec<u32>>,
    pub pad: u32,
}

/// Where the final hidden states came from, and what their backward needs.
enum Body {
    /// (b, t, hidden), attached to the autograd graph.
    Graph(Tensor),
    /// The hand-written path's saved activations.
    Fast(GradModel, Saved),
}

pub struct Forward {
    body: Body,
    /// The same final hidden states, detached, (b · t, hidden).
    hd: Tensor,
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
    let b = rows.inputs.len();
    let input = Tensor::from_vec(ids, (b, width), &Device::Cpu)?;
    let h = model.forward_hidden(&input, None, None, None)?; // (b, t, hidden)
    let hid = h.dim(2)?;
    let hd = h.detach().reshape((b * width, hid))?; // (n, hidden)
    let logp = logps(&hd, &model.head_weight().detach(), &targets, rows, width, chunk)?;
    Ok(Forward { body: Body::Graph(h), hd, targets, width, logp })
}

/// The policy's forward for training: the hand-written body when `p`'s architecture has one
/// (no autograd graph, a third of the memory), else `forward` on `p.model`.
pub fn forward_train(p: &Params, rows: &Rows, chunk: usize) -> Result<Forward, TrainError> {
    let (ids, targets, width) = pad(rows)?;
    let Some(fast) = p.grad_model(width)? else {
        return forward(&p.model, rows, chunk);
    };
    let b = rows.inputs.len();
    let (h, saved) = fast.forward(&p.weight_slices(), &ids, b, width, true)?;
    let saved = saved.ok_or_else(|| TrainError::Data("no saved activations".into()))?;
    let hid = h.len() / (b * width);
    let hd = Tensor::from_vec(h, (b * width, hid), &Device::Cpu)?; // (n, hidden)
    let logp = logps(&hd, &p.head_weight(), &targets, rows, width, chunk)?;
    Ok(Forward { body: Body::Fast(fast, saved), hd, targets, width, logp })
}

/// log p(target) per real position from final hidden states hd (n, hidden), `chunk` rows of
/// logits at a time.
fn logps(
    hd: &Tensor,
    w: &Tensor,
    targets: &[u32],
    rows: &Rows,
    width: usize,
    chunk: usize,
) -> Result<Vec<Vec<f64>>, TrainError> {
    let b = rows.inputs.len();
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
    Ok(logp)
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
pub fn backward(
    p: &Params,
    f: Forward,
    coeff: &[Vec<f32>],
    chunk: usize,
) -> Result<Vec<Vec<f32>>, TrainError> {
    let hid = p.model.config().hidden_size;
    let (b, t) = (f.logp.len(), f.width);
    let n = b * t;
    let mut c_flat = vec![0f32; n];
    for (r, cs) in coeff.iter().enumerate().take(b) {
        let len = cs.len().min(t);
        c_flat[r * t..r * t + len].copy_from_slice(&cs[..len]);
    }
    let hd = &f.hd;
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
    let gh = hg.hidden(b, t, hid)?; // (b, t, hidden)
    let mut grads = match f.body {
        Body::Graph(h) => {
            let mut grads = p.zero_grads();
            p.add_store(&mut grads, &(h * gh)?.sum_all()?.backward()?)?;
            grads
        }
        Body::Fast(fast, saved) => p.hand_backward(&fast, saved, &gh)?,
    };
    if let Some(hw) = &hg.w {
        crate::params::add_into(&mut grads[p.head], hw)?;
    }
    Ok(grads)
}

/// Σ over positions of log-probabilities in each row, for the positions marked in `mask`.
pub fn masked_sums(logp: &[Vec<f64>], mask: &[Vec<bool>]) -> Vec<f64> {
    logp.iter()
        .zip(mask)
        .map(|(l, m)| l.iter().zip(m).filter(|x| *x.1).map(|x| x.0).sum())
        .collect()
}
