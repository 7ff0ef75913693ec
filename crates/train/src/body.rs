//! The CPU executor's body and lm_head (`exec/cpu.rs`), as every training objective runs them:
//! KD / CE (`trainer.rs`) and the log-probability objectives of SFT, DPO and GRPO
//! (`seqlogp.rs`).
//!
//! 1. [`forward`] runs the body to the final hidden states h (n = b · t rows): the hand-written
//!    path of `orlik_model::cpu` (no autograd graph; every architecture), else
//!    candle autograd, optionally with activation checkpointing (only each layer's input kept).
//! 2. [`head_chunks`] takes the rows `chunk` at a time: logits z_c = h_c Wᵀ (c, vocab) go to the
//!    caller, which reads them and (when training) writes dL/dz_c; then dL/dh_c = dL/dz_c · W and
//!    dL/dW += dL/dz_cᵀ · h_c. The (positions × vocab) logits never exist whole and never enter
//!    the autograd graph.
//! 3. [`backward`] pushes dL/dh through the body the way its forward ran and adds lm_head's
//!    gradient (the embedding's, when tied).

use crate::params::Params;
use crate::TrainError;
use candle_core::{Device, Tensor, Var};
use orlik_model::cpu::kernels::{gemm, Par, View};
use orlik_model::prob::logsumexp;
use orlik_model::{cpu, GradModel, Model};
use rayon::prelude::*;

/// What the body's backward needs, by the path its forward took.
enum Saved {
    /// No gradients wanted (validation, a frozen model's log-probabilities).
    Nothing,
    /// The hand-written path's activations.
    Fast(cpu::Saved),
    /// h (b, t, hidden), attached to the autograd graph.
    Graph(Tensor),
    /// Activation checkpointing: the input ids, each layer's input, and the top layer's output
    /// as a leaf; the layers are re-run one at a time under autograd in the backward.
    Checkpointed { inputs: Tensor, layers: Vec<Tensor>, top: Var, h: Tensor },
}

/// The body's output for a batch of `b` rows of `t` positions.
pub struct Hidden {
    saved: Saved,
    /// Final hidden states, detached: (b · t, hidden).
    pub hd: Tensor,
    pub b: usize,
    pub t: usize,
}

/// How the trainable body runs.
#[derive(Clone, Copy)]
pub enum Path<'a> {
    /// The CPU executor's hand-written forward/backward; `checkpoint` keeps only each layer's
    /// input and re-runs the layer in the backward.
    Fast { model: &'a GradModel, checkpoint: bool },
    /// Candle autograd; `checkpoint` keeps only each layer's input for the backward.
    Autograd { checkpoint: bool },
}

/// Run `p`'s body on `ids` (b · t, row-major); `grad` keeps what the backward needs.
pub fn forward(
    p: &Params,
    path: Path,
    ids: Vec<u32>,
    b: usize,
    t: usize,
    grad: bool,
) -> Result<Hidden, TrainError> {
    let hid = p.model.config().hidden_size;
    let n = b * t;
    match path {
        Path::Fast { model, checkpoint } => {
            let keep = match (grad, checkpoint) {
                (false, _) => cpu::Keep::Nothing,
                (true, false) => cpu::Keep::All,
                (true, true) => cpu::Keep::Inputs,
            };
            let (h, saved) = model.forward(&p.weight_slices(), &ids, b, t, keep)?;
            let hd = Tensor::from_vec(h, (n, hid), &Device::Cpu)?; // (n, hidden)
            let saved = match saved {
                Some(s) => Saved::Fast(s),
                None => Saved::Nothing,
            };
            Ok(Hidden { saved, hd, b, t })
        }
        Path::Autograd { checkpoint: true } if grad => {
            let inputs = Tensor::from_vec(ids, (b, t), &Device::Cpu)?;
            let mut x = p.model.embed(&inputs)?.detach();
            let mut layers = Vec::with_capacity(p.model.num_layers());
            for l in 0..p.model.num_layers() {
                layers.push(x.clone());
                x = p.model.layer(l, &x)?.detach();
            }
            let top = Var::from_tensor(&x)?;
            let h = p.model.final_norm(top.as_tensor())?; // (b, t, hidden)
            let hd = h.detach().reshape((n, hid))?; // (n, hidden)
            Ok(Hidden { saved: Saved::Checkpointed { inputs, layers, top, h }, hd, b, t })
        }
        Path::Autograd { .. } => {
            let hidden = graph(&p.model, ids, b, t)?;
            Ok(if grad { hidden } else { Hidden { saved: Saved::Nothing, ..hidden } })
        }
    }
}

/// The trainable model's body under autograd.
fn graph(model: &Model, ids: Vec<u32>, b: usize, t: usize) -> Result<Hidden, TrainError> {
    let inputs = Tensor::from_vec(ids, (b, t), &Device::Cpu)?;
    let h = model.forward_hidden(&inputs, None, None, None)?; // (b, t, hidden)
    let hid = h.dim(2)?;
    let hd = h.detach().reshape((b * t, hid))?; // (n, hidden)
    Ok(Hidden { saved: Saved::Graph(h), hd, b, t })
}

/// The lm_head over `hd` (n, hidden) `chunk` rows at a time, with `w` (vocab, hidden).
/// `each(start, z, dz)` gets the chunk's first row, its logits z (c · vocab, row-major) and,
/// when `grad`, a zeroed dL/dz of the same size to fill; the chunks' dL/dz are pushed back
/// through the head into the returned [`HeadGrad`].
pub fn head_chunks(
    hd: &Tensor,
    w: &Tensor,
    chunk: usize,
    grad: bool,
    mut each: impl FnMut(usize, &[f32], Option<&mut [f32]>) -> Result<(), TrainError>,
) -> Result<HeadGrad, TrainError> {
    let n = hd.dim(0)?;
    let vocab = w.dim(0)?;
    let chunk = chunk.max(1);
    let mut hg = HeadGrad::default();
    for start in (0..n).step_by(chunk) {
        let c = chunk.min(n - start);
        let hc = hd.narrow(0, start, c)?; // (c, hidden)
        let z = orlik_model::ops::matmul_frozen_t(&hc.contiguous()?, w)?; // (c, vocab), not zeroed first
        let z = z.flatten_all()?.to_vec1::<f32>()?;
        if grad {
            let mut g = vec![0f32; c * vocab];
            each(start, &z, Some(&mut g))?;
            hg.add(g, w, &hc)?;
        } else {
            each(start, &z, None)?;
        }
    }
    Ok(hg)
}

/// log p(targets[r]) for every row r of `hd` (n, hidden) under lm_head `w` (vocab, hidden),
/// `chunk` rows of logits at a time.
pub fn token_logp(
    hd: &Tensor,
    w: &Tensor,
    targets: &[u32],
    chunk: usize,
) -> Result<Vec<f64>, TrainError> {
    let vocab = w.dim(0)?;
    let mut flat = vec![0f64; hd.dim(0)?];
    head_chunks(hd, w, chunk, false, |start, z, _| {
        let c = z.len() / vocab;
        target_logp(&mut flat[start..start + c], z, vocab, &targets[start..start + c]);
        Ok(())
    })?;
    Ok(flat)
}

/// out[i] = log softmax(z_i)[targets[i]] for the logit rows z (out.len() rows of `vocab`).
pub(crate) fn target_logp(out: &mut [f64], z: &[f32], vocab: usize, targets: &[u32]) {
    out.par_iter_mut()
        .zip(z.par_chunks(vocab))
        .zip(targets.par_iter())
        .for_each(|((o, zi), &t)| *o = zi[t as usize] as f64 - logsumexp(zi, 1.0));
}

/// lm_head's backward of Σ_r coeff[r] · log p(targets[r]): dL/dz_r = c_r (onehot(target_r) −
/// softmax(z_r)), `chunk` rows at a time (rows with c_r = 0 contribute nothing).
pub fn token_logp_head_backward(
    hd: &Tensor,
    w: &Tensor,
    targets: &[u32],
    coeff: &[f32],
    chunk: usize,
) -> Result<HeadGrad, TrainError> {
    let vocab = w.dim(0)?;
    head_chunks(hd, w, chunk, true, |start, z, g| {
        let Some(g) = g else { return Ok(()) };
        g.par_chunks_mut(vocab).zip(z.par_chunks(vocab)).enumerate().for_each(|(i, (gi, zi))| {
            let k = coeff[start + i];
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
    })
}

/// The lm_head's backward, chunk by chunk: dL/dh_c = dL/dz · W collected, dL/dW += dL/dzᵀ · h_c
/// accumulated in place in one (vocab, hidden) buffer (with a 262k vocabulary that buffer is
/// 0.7 GB for a 640-wide model: no second copy of it is made).
#[derive(Default)]
pub struct HeadGrad {
    parts: Vec<Tensor>,
    w: Option<Vec<f32>>,
}

impl HeadGrad {
    /// `dl` (c, vocab) for hidden rows `hc` (c, hidden); `w` (vocab, hidden).
    fn add(&mut self, dl: Vec<f32>, w: &Tensor, hc: &Tensor) -> Result<(), TrainError> {
        let (vocab, hid) = w.dims2()?;
        let c = dl.len() / vocab;
        let hc_host = hc.flatten_all()?.to_vec1::<f32>()?; // (c, hidden)
        let acc = self.w.get_or_insert_with(|| vec![0f32; vocab * hid]);
        let (dlt, hr) = (View::t(&dl, vocab), View::rows(&hc_host, hid)); // (vocab, c), (c, hidden)
        gemm(acc, hid, vocab, hid, c, dlt, hr, true, 1.0, Par::All);
        let dl = Tensor::from_vec(dl, (c, vocab), &Device::Cpu)?;
        self.parts.push(dl.matmul(w)?); // (c, hidden)
        Ok(())
    }
}

/// Gradients of every parameter (`p.names` order) from the head's backward `hg`, through the
/// body the way `h`'s forward ran (`path` must be the one given to [`forward`]).
pub fn backward(
    p: &Params,
    path: Path,
    h: Hidden,
    hg: HeadGrad,
) -> Result<Vec<Vec<f32>>, TrainError> {
    let hid = p.model.config().hidden_size;
    let gh = Tensor::cat(&hg.parts, 0)?.reshape((h.b, h.t, hid))?; // (b, t, hidden)
    let mut grads = match (h.saved, path) {
        (Saved::Fast(saved), Path::Fast { model, .. }) => p.hand_backward(model, saved, &gh)?,
        (Saved::Graph(h), _) => {
            let mut grads = p.zero_grads();
            p.add_store(&mut grads, &(h * gh)?.sum_all()?.backward()?)?;
            grads
        }
        (Saved::Checkpointed { inputs, layers, top, h }, _) => {
            checkpointed(p, inputs, layers, top, h, gh)?
        }
        _ => {
            return Err(TrainError::Data(
                "internal: backward without the forward's saved activations".into(),
            ))
        }
    };
    if let Some(hw) = &hg.w {
        grads[p.head].iter_mut().zip(hw).for_each(|(a, b)| *a += b);
    }
    Ok(grads)
}

/// The checkpointed body's backward from Σ h ⊙ gh, layer by layer from the stored inputs. Each
/// GradStore also holds the gradient of every intermediate tensor of its graph, so the weights'
/// gradients are taken out and the store dropped at once (one layer's store alive at a time).
fn checkpointed(
    p: &Params,
    inputs: Tensor,
    layers: Vec<Tensor>,
    top: Var,
    h: Tensor,
    gh: Tensor,
) -> Result<Vec<Vec<f32>>, TrainError> {
    let mut grads = p.zero_grads();
    let store = (h * gh)?.sum_all()?.backward()?;
    p.add_store(&mut grads, &store)?;
    let mut g = store
        .get(top.as_tensor())
        .cloned()
        .ok_or_else(|| TrainError::Data("no gradient at the top layer".into()))?;
    drop(store);
    for (l, xin) in layers.iter().enumerate().rev() {
        let xin = Var::from_tensor(xin)?;
        let st = (p.model.layer(l, xin.as_tensor())? * &g)?.sum_all()?.backward()?;
        g = st
            .get(xin.as_tensor())
            .cloned()
            .ok_or_else(|| TrainError::Data(format!("no gradient into layer {l}")))?;
        p.add_store(&mut grads, &st)?;
    }
    let st = (p.model.embed(&inputs)? * &g)?.sum_all()?.backward()?;
    p.add_store(&mut grads, &st)?;
    Ok(grads)
}
