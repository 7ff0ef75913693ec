//! The trainable state shared by every training loop (distillation, `orlik train`, alignment):
//! the model built on `Var`s, f32 master weights with their AdamW moments, and the step that
//! clips, updates and copies the master weights back into the model.

use crate::checkpoint::{self, State};
use crate::config::TrainConfig;
use crate::optim::{adamw_step, clip, global_norm, AdamWConfig, Slot};
use crate::TrainError;
use candle_core::{backprop::GradStore, DType, Device, Tensor, Var};
use orlik_model::cpu::Saved;
use orlik_model::{Config, GradModel, Model, ModelOptions, Weights};
use std::path::{Path, PathBuf};

/// One gradient buffer per parameter, in `Params::names` order.
pub type Grads = Vec<Vec<f32>>;

pub struct Params {
    pub model: Model,
    /// HF tensor names, in layer order; `vars`, `slots` and every gradient list follow it.
    pub names: Vec<String>,
    pub vars: Vec<Var>,
    pub slots: Vec<Slot>,
    /// Index of the output projection (lm_head, or the embedding when tied).
    pub head: usize,
}

impl Params {
    pub fn new(model_cfg: &Config, weights: Weights) -> Result<Params, TrainError> {
        let mut names: Vec<String> = weights.keys().cloned().collect();
        names.sort_by_key(|n| orlik_model::config::layer_order(n));
        let mut vars = Vec::with_capacity(names.len());
        let mut slots = Vec::with_capacity(names.len());
        let mut held = Weights::new();
        for n in &names {
            let t = weights[n].to_dtype(DType::F32)?;
            let w = t.flatten_all()?.to_vec1::<f32>()?;
            let var = Var::from_tensor(&t)?;
            held.insert(n.clone(), var.as_tensor().clone());
            slots.push(Slot {
                m: vec![0.0; w.len()],
                v: vec![0.0; w.len()],
                decay: t.rank() >= 2,
                w,
            });
            vars.push(var);
        }
        drop(weights);
        let model = Model::new(
            model_cfg,
            &held,
            ModelOptions { dtype: DType::F32, differentiable: true, half_weights: None },
        )?;
        let head_name = if model_cfg.tie_word_embeddings {
            "model.embed_tokens.weight"
        } else {
            "lm_head.weight"
        };
        let head = names
            .iter()
            .position(|n| n == head_name)
            .ok_or_else(|| TrainError::Config(format!("no {head_name}")))?;
        Ok(Params { model, names, vars, slots, head })
    }

    /// The output projection's weight, detached: (vocab, hidden).
    pub fn head_weight(&self) -> Tensor {
        self.vars[self.head].as_tensor().detach()
    }

    /// Copy the master weights into the model's `Var`s (the copy on every thread: on one, it
    /// was a tenth of an update step).
    pub fn push_weights(&self) -> Result<(), TrainError> {
        use rayon::prelude::*;
        for (v, s) in self.vars.iter().zip(&self.slots) {
            let w: Vec<f32> = s.w.par_iter().copied().collect();
            v.set(&Tensor::from_vec(w, v.as_tensor().shape(), &Device::Cpu)?)?;
        }
        Ok(())
    }

    /// The current weights by HF name (f32).
    pub fn named_weights(&self) -> Vec<(String, Tensor)> {
        self.names
            .iter()
            .zip(&self.vars)
            .map(|(n, v)| (n.clone(), v.as_tensor().detach()))
            .collect()
    }

    pub fn save(
        &self,
        root: &Path,
        state: &State,
        shard: Option<&crate::shard::Shard>,
    ) -> Result<PathBuf, TrainError> {
        match shard {
            None => checkpoint::save(root, state, &self.names, &self.slots),
            Some(sh) => checkpoint::save_sharded(root, state, &self.names, &self.slots, sh),
        }
    }

    /// Load the newest checkpoint under `root` (None when there is none).
    pub fn load_latest(&mut self, root: &Path) -> Result<Option<State>, TrainError> {
        match checkpoint::list(root)?.pop() {
            Some((_, dir)) => {
                let st = checkpoint::load(&dir, &self.names, &mut self.slots)?;
                self.push_weights()?;
                Ok(Some(st))
            }
            None => Ok(None),
        }
    }

    /// The master weights as flat buffers, in `names` order (what `GradModel` reads).
    pub fn weight_slices(&self) -> Vec<&[f32]> {
        self.slots.iter().map(|s| s.w.as_slice()).collect()
    }

    /// The hand-written training path for rows of up to `max_t` tokens, or None when the
    /// architecture needs autograd (`GradModel::unsupported`).
    pub fn grad_model(&self, max_t: usize) -> Result<Option<GradModel>, TrainError> {
        if GradModel::unsupported(self.model.config()).is_some() {
            return Ok(None);
        }
        Ok(Some(GradModel::new(self.model.config(), &self.names, &self.model, max_t)?))
    }

    /// The body's gradients (`names` order) from dL/dh `gh` (b, t, hidden) through the
    /// hand-written backward, given the activations its forward saved.
    pub fn hand_backward(
        &self,
        fast: &GradModel,
        saved: Saved,
        gh: &Tensor,
    ) -> Result<Vec<Vec<f32>>, TrainError> {
        let mut grads = self.zero_grads();
        fast.backward(
            &self.weight_slices(),
            saved,
            &gh.flatten_all()?.to_vec1::<f32>()?,
            &mut grads,
        )?;
        Ok(grads)
    }

    /// Zero gradient buffers, one per parameter.
    pub fn zero_grads(&self) -> Vec<Vec<f32>> {
        self.slots.iter().map(|s| vec![0f32; s.w.len()]).collect()
    }

    /// Add the parameters' gradients found in `store` into `grads` (`names` order).
    pub fn add_store(&self, grads: &mut [Vec<f32>], store: &GradStore) -> Result<(), TrainError> {
        for (g, v) in grads.iter_mut().zip(&self.vars) {
            if let Some(t) = store.get(v.as_tensor()) {
                add_into(g, t)?;
            }
        }
        Ok(())
    }

    /// Clip to `cfg.clip` and take one AdamW step (`t` is the 1-based update count for bias
    /// correction); with `shard`, `grads` are this rank's unreduced gradients: they are
    /// reduce-scattered, the step taken on this rank's tensors only, then every tensor's
    /// weights gathered from its owner. Returns the gradient's global norm before clipping; with a non-finite norm
    /// nothing is updated and the norm is returned for the caller's guard.
    pub fn update(
        &mut self,
        grads: &mut [Vec<f32>],
        lr: f64,
        t: u64,
        cfg: &TrainConfig,
        shard: Option<&crate::shard::Shard>,
    ) -> Result<f64, TrainError> {
        // Sharded, `grads` are this rank's own sums: reduce-scattered here (see shard.rs).
        let gnorm = match shard {
            None => global_norm(grads),
            Some(sh) => {
                sh.reduce_scatter(grads)?;
                sh.global_norm(grads)?
            }
        };
        if !gnorm.is_finite() {
            return Ok(gnorm);
        }
        clip(grads, gnorm, cfg.clip);
        let adam = AdamWConfig {
            beta1: cfg.beta1,
            beta2: cfg.beta2,
            eps: cfg.eps,
            weight_decay: cfg.weight_decay,
        };
        match shard {
            None => adamw_step(&mut self.slots, grads, lr, t, &adam),
            Some(sh) => {
                for (i, (s, g)) in self.slots.iter_mut().zip(grads.iter()).enumerate() {
                    if sh.mine(i) {
                        adamw_step(std::slice::from_mut(s), std::slice::from_ref(g), lr, t, &adam);
                    }
                }
                sh.share_weights(&mut self.slots)?;
            }
        }
        self.push_weights()?;
        Ok(gnorm)
    }
}

/// g += t elementwise (t flattened; same element count).
pub fn add_into(g: &mut [f32], t: &Tensor) -> Result<(), TrainError> {
    let v = t.flatten_all()?.to_vec1::<f32>()?;
    if v.len() != g.len() {
        return Err(TrainError::Data(format!(
            "gradient of {} elements added to a buffer of {}",
            v.len(),
            g.len()
        )));
    }
    g.iter_mut().zip(v).for_each(|(a, b)| *a += b);
    Ok(())
}
