//! The inference interface: what evaluation (perplexity, multiple choice, agreement, speed,
//! generation), GRPO's rollouts, the online teacher and teacher caching call. Token ids go in as
//! host slices; hidden states and logits come back as candle tensors (on the host for the CPU
//! executors; a GPU executor's are copies, so callers keep them to a chunk of rows); the KV
//! cache is the executor's own, behind [`Cache`]. The candle graph (`llama.rs`) implements it;
//! the training side has its own interface (`orlik_train::exec`).
//!
//! | operation | what it does |
//! | --- | --- |
//! | [`Infer::new_cache`] / [`Infer::repeat_cache`] | an empty KV cache; a batch-1 cache repeated `n` times (a prompt prefilled once, sampled `n` ways) |
//! | [`Infer::hidden`] | final hidden states (b, t, hidden) for ids (b · t): prefill (t > 1) or decode (t = 1) when a cache is given, padding marked by `key_valid`, explicit `positions` |
//! | [`Infer::head`] | logits (…, vocab) of hidden states (…, hidden), any number of rows at a time |
//! | [`Infer::logits`] | both at once (default: `head(hidden(..))`) |
//! | [`Infer::hidden_tapped`] | the forward reporting each layer's activations ([`Tap`]) and leaving out the layers in `skip` (importance scoring, leave-one-out) |
//!
//! The streaming scorer (`orlik_score::collect::collect_streaming`, one layer's weights in memory
//! at a time) builds one-layer candle models itself.

use crate::llama::{KvCache, Model};
pub use crate::llama::{LayerTap, Tap};
use crate::{Config, ModelError};
use candle_core::Tensor;
use std::any::Any;

/// An executor's KV cache (only the executor that made it can read it).
pub struct Cache(Box<dyn Any + Send>);

impl Cache {
    pub fn new<T: Any + Send>(inner: T) -> Cache {
        Cache(Box::new(inner))
    }

    pub fn get_mut<T: Any>(&mut self) -> Result<&mut T, ModelError> {
        self.0.downcast_mut::<T>().ok_or_else(foreign)
    }

    pub fn get<T: Any>(&self) -> Result<&T, ModelError> {
        self.0.downcast_ref::<T>().ok_or_else(foreign)
    }
}

fn foreign() -> ModelError {
    ModelError::Input("internal: a KV cache handed to an executor that did not make it".into())
}

/// The rows of one inference call: `b` rows of `t` ids, row-major.
#[derive(Clone, Copy)]
pub struct Rows<'a> {
    pub ids: &'a [u32],
    pub b: usize,
    pub t: usize,
    /// `key_valid[r][j]`: whether key j (over the cached and new positions) of row r is real.
    pub key_valid: Option<&'a [Vec<bool>]>,
    /// Each row's positions (default: the cache's length onwards).
    pub positions: Option<&'a [Vec<u32>]>,
}

impl<'a> Rows<'a> {
    /// `b` rows of `t` ids, no padding, positions from the cache's length.
    pub fn new(ids: &'a [u32], b: usize, t: usize) -> Rows<'a> {
        Rows { ids, b, t, key_valid: None, positions: None }
    }
}

/// A model that runs inference.
pub trait Infer: Sync {
    fn config(&self) -> &Config;
    fn new_cache(&self) -> Cache;
    /// A cache of batch 1 repeated `n` times along the batch.
    fn repeat_cache(&self, c: &Cache, n: usize) -> Result<Cache, ModelError>;
    /// Final hidden states (b, t, hidden), continuing `cache` when given.
    fn hidden(&self, rows: Rows, cache: Option<&mut Cache>) -> Result<Tensor, ModelError>;
    /// Logits (…, vocab) of hidden states (…, hidden).
    fn head(&self, hidden: &Tensor) -> Result<Tensor, ModelError>;
    /// Final hidden states (b, t, hidden) with `tap(layer, what, activation)` called for every
    /// layer's [`Tap`] points (for `Tap::FinalNorm` the layer is `num_hidden_layers`) and the
    /// layers in `skip` left out.
    fn hidden_tapped(
        &self,
        rows: Rows,
        skip: &[usize],
        tap: LayerTap,
    ) -> Result<Tensor, ModelError>;
    /// Logits (b, t, vocab).
    fn logits(&self, rows: Rows, cache: Option<&mut Cache>) -> Result<Tensor, ModelError> {
        self.head(&self.hidden(rows, cache)?)
    }
}

impl Infer for Model {
    fn config(&self) -> &Config {
        Model::config(self)
    }

    fn new_cache(&self) -> Cache {
        Cache::new(KvCache::new())
    }

    fn repeat_cache(&self, c: &Cache, n: usize) -> Result<Cache, ModelError> {
        Ok(Cache::new(c.get::<KvCache>()?.repeat_batch(n)?))
    }

    fn hidden(&self, rows: Rows, cache: Option<&mut Cache>) -> Result<Tensor, ModelError> {
        let x = ids(self, &rows)?;
        let kv = match cache {
            Some(c) => Some(c.get_mut::<KvCache>()?),
            None => None,
        };
        self.forward_hidden(&x, rows.key_valid, rows.positions, kv)
    }

    fn hidden_tapped(
        &self,
        rows: Rows,
        skip: &[usize],
        tap: LayerTap,
    ) -> Result<Tensor, ModelError> {
        if rows.positions.is_some() {
            return Err(ModelError::Input("a tapped forward takes no positions".into()));
        }
        self.forward_tapped(&ids(self, &rows)?, rows.key_valid, skip, tap)
    }

    fn head(&self, hidden: &Tensor) -> Result<Tensor, ModelError> {
        self.lm_head(hidden)
    }
}

/// The ids as a (b, t) tensor on the model's device.
fn ids(m: &Model, rows: &Rows) -> Result<Tensor, ModelError> {
    if rows.ids.len() != rows.b * rows.t {
        return Err(ModelError::Input(format!(
            "{} ids for {} rows of {}",
            rows.ids.len(),
            rows.b,
            rows.t
        )));
    }
    Ok(Tensor::from_slice(rows.ids, (rows.b, rows.t), m.device())?) // (b, t)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::init::random_weights;
    use crate::ModelOptions;
    use candle_core::DType;

    fn host(t: &Tensor) -> Vec<f32> {
        t.to_dtype(DType::F32).unwrap().flatten_all().unwrap().to_vec1().unwrap()
    }

    /// Through the interface: prefill then decode one token at a time gives the logits of the
    /// whole sequence at once, a repeated cache continues each row the same way, and another
    /// executor's cache is refused.
    #[test]
    fn prefill_and_decode_through_the_interface_equal_one_forward() {
        let cfg = crate::testing::tiny("LlamaForCausalLM", serde_json::json!({}));
        let w = random_weights(&cfg, 4, 0.5).unwrap();
        let m = Model::new(&cfg, &w, ModelOptions { dtype: DType::F32, differentiable: false })
            .unwrap();
        let e: &dyn Infer = &m;
        let ids = [3u32, 1, 4, 1, 5, 9];
        let whole = host(&e.logits(Rows::new(&ids, 1, 6), None).unwrap()); // (1, 6, v)
        let v = cfg.vocab_size;
        let mut cache = e.new_cache();
        let pre = host(&e.logits(Rows::new(&ids[..4], 1, 4), Some(&mut cache)).unwrap());
        assert_eq!(pre.len(), 4 * v);
        let mut two = e.repeat_cache(&cache, 2).unwrap();
        for (k, &id) in ids[4..].iter().enumerate() {
            let step = host(&e.logits(Rows::new(&[id, id], 2, 1), Some(&mut two)).unwrap());
            let want = &whole[(4 + k) * v..(5 + k) * v];
            for row in step.chunks(v) {
                let err = row.iter().zip(want).fold(0f32, |a, (x, y)| a.max((x - y).abs()));
                assert!(err < 1e-4, "decode step {k}: {err}");
            }
        }
        let mut wrong = Cache::new(0u8);
        let e2 = e.hidden(Rows::new(&ids, 1, 6), Some(&mut wrong)).unwrap_err().to_string();
        assert!(e2.contains("did not make it"), "{e2}");
        let e3 = e.hidden(Rows::new(&ids, 2, 6), None).unwrap_err().to_string();
        assert!(e3.contains("6 ids for 2 rows of 6"), "{e3}");
    }
}
