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
use candle_core::{DType, Tensor};
use std::any::Any;

/// How a frozen model (online teacher, `teacher-cache`, `score`, `eval`, `generate`, `bench`)
/// holds its matrices: `--compute-dtype`, settings key `compute_dtype`. Accumulation is f32
/// whatever this says (`cpu::mixed`); a model being trained is always f32.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ComputeDtype {
    /// The checkpoint's own: bf16 (or f16) matrices stay 16-bit, anything else is f32.
    #[default]
    Auto,
    F32,
    Bf16,
    F16,
}

impl ComputeDtype {
    pub const NAMES: [&'static str; 4] = ["auto", "f32", "bf16", "f16"];

    pub fn name(self) -> &'static str {
        match self {
            ComputeDtype::Auto => "auto",
            ComputeDtype::F32 => "f32",
            ComputeDtype::Bf16 => "bf16",
            ComputeDtype::F16 => "f16",
        }
    }

    pub fn parse(s: &str) -> Result<ComputeDtype, String> {
        Ok(match s {
            "auto" => ComputeDtype::Auto,
            "f32" => ComputeDtype::F32,
            "bf16" => ComputeDtype::Bf16,
            "f16" => ComputeDtype::F16,
            _ => return Err(format!("{s:?}: expected one of {}", ComputeDtype::NAMES.join(", "))),
        })
    }

    /// `Auto` made concrete for a checkpoint whose tensors are stored as `stored`: 16-bit when
    /// every tensor is bf16 (or every one f16), f32 otherwise. Others are returned as they are.
    pub fn resolve(self, stored: &[DType]) -> ComputeDtype {
        if self != ComputeDtype::Auto {
            return self;
        }
        match stored {
            [DType::BF16] => ComputeDtype::Bf16,
            [DType::F16] => ComputeDtype::F16,
            _ => ComputeDtype::F32,
        }
    }

    /// The 16-bit dtype the matrices are held in (`ModelOptions::half_weights`); None for f32
    /// (and for an unresolved `Auto`).
    pub fn half(self) -> Option<DType> {
        match self {
            ComputeDtype::Bf16 => Some(DType::BF16),
            ComputeDtype::F16 => Some(DType::F16),
            _ => None,
        }
    }

    /// Whether the value is f32 (settings leave it out of fingerprints then, so runs made before
    /// the key existed still resume).
    pub fn is_f32(&self) -> bool {
        *self == ComputeDtype::F32
    }

    /// "weights held in bf16 (f32 accumulation, avx512bf16 kernel)" for a resolved 16-bit
    /// value (what commands tell the user); None for f32.
    pub fn describe(self) -> Option<String> {
        self.half()?;
        let kernel = crate::cpu::mixed::Path::detect().name();
        Some(format!("weights held in {self} (f32 accumulation, {kernel} kernel)"))
    }

    /// F32: the serde default of the recorded (resolved) value in files written before 16-bit
    /// inference existed (scores.json, cache.json, eval.json).
    pub fn f32_default() -> ComputeDtype {
        ComputeDtype::F32
    }

    /// Whether the value is the default `Auto` (settings leave it out when serialized, so
    /// fingerprints and run.json files from before the key existed still match).
    pub fn is_auto(&self) -> bool {
        *self == ComputeDtype::Auto
    }
}

impl std::fmt::Display for ComputeDtype {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

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

/// Logits of a fixed subset of the vocabulary for hidden states (…, hidden) → (…, ids).
pub type SubHead = Box<dyn Fn(&Tensor) -> Result<Tensor, ModelError> + Send + Sync>;

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
    /// Logits (b, vocab) of each row's last position, continuing `cache` when given: what a
    /// sampler needs after a prompt. Only that position goes through the head, as llama.cpp's
    /// and transformers' generation do: the others' logits were a fifth of a 512-token prompt's
    /// FLOPs on SmolLM2 (a 576 × 49152 head against about 106M weights in the layers).
    fn last_logits(&self, rows: Rows, cache: Option<&mut Cache>) -> Result<Tensor, ModelError> {
        let h = self.hidden(rows, cache)?; // (b, t, hidden)
        let t = h.dim(1)?;
        let last = h.narrow(1, t - 1, 1)?.contiguous()?; // (b, 1, hidden)
        Ok(self.head(&last)?.squeeze(1)?) // (b, vocab)
    }
    /// A head that computes only the logits of the vocabulary ids `ids` (…, ids.len()), the
    /// values of [`Infer::head`] at those columns, for a student with a trimmed vocabulary (a
    /// teacher of 262k tokens for a student of 30k computes a ninth of its head). None: this
    /// executor has no such head (take `head`, then the columns).
    fn head_subset(&self, _ids: &[u32]) -> Result<Option<SubHead>, ModelError> {
        Ok(None)
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

    fn head_subset(&self, ids: &[u32]) -> Result<Option<SubHead>, ModelError> {
        let w = self.lm_head_weight();
        let (vocab, n) = (w.dim(0)?, ids.len());
        if let Some(&bad) = ids.iter().find(|&&i| i as usize >= vocab) {
            return Err(ModelError::Input(format!("head subset: id {bad} >= vocab_size {vocab}")));
        }
        let idx = Tensor::from_slice(ids, n, w.device())?;
        // (ids, hidden), in the head's own dtype: the same products as the whole head's rows
        let sub = w.index_select(&idx, 0)?;
        Ok(Some(Box::new(move |h: &Tensor| Ok(crate::llama::logits(&sub, h)?))))
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
    /// The subset head gives the whole head's logits at those columns.
    #[test]
    fn a_head_subset_equals_the_head_at_its_columns() {
        let cfg = crate::testing::tiny("LlamaForCausalLM", serde_json::json!({}));
        let w = random_weights(&cfg, 6, 0.5).unwrap();
        for half in [None, Some(DType::BF16)] {
            let m = Model::new(&cfg, &w, ModelOptions::inference(half)).unwrap();
            let e: &dyn Infer = &m;
            let h = e.hidden(Rows::new(&[3, 1, 4, 1, 5], 1, 5), None).unwrap(); // (1, 5, hidden)
            let ids = [7u32, 0, 2, 11, 3];
            let sub = e.head_subset(&ids).unwrap().unwrap()(&h).unwrap(); // (1, 5, 5)
            let idx = Tensor::new(&ids, h.device()).unwrap();
            let want = e.head(&h).unwrap().index_select(&idx, 2).unwrap();
            let (a, b) = (host(&sub), host(&want));
            let err = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
            assert!(err <= 1e-5, "{half:?}: {err}");
            assert!(e.head_subset(&[cfg.vocab_size as u32]).is_err());
        }
    }

    #[test]
    fn prefill_and_decode_through_the_interface_equal_one_forward() {
        let cfg = crate::testing::tiny("LlamaForCausalLM", serde_json::json!({}));
        let w = random_weights(&cfg, 4, 0.5).unwrap();
        let m = Model::new(
            &cfg,
            &w,
            ModelOptions { dtype: DType::F32, differentiable: false, half_weights: None },
        )
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
        // the last position's logits alone: the whole forward's last row, exactly, with and
        // without a cache, for two rows at once
        let mut c = e.new_cache();
        let last = host(&e.last_logits(Rows::new(&ids[..4], 1, 4), Some(&mut c)).unwrap());
        assert_eq!(last, pre[3 * v..].to_vec());
        let both = [&ids[..], &ids[..]].concat();
        let last2 = host(&e.last_logits(Rows::new(&both, 2, 6), None).unwrap()); // (2, v)
        for row in last2.chunks(v) {
            let err = row.iter().zip(&whole[5 * v..]).fold(0f32, |a, (x, y)| a.max((x - y).abs()));
            assert!(err < 1e-5, "last_logits: {err}");
        }
        let mut wrong = Cache::new(0u8);
        let e2 = e.hidden(Rows::new(&ids, 1, 6), Some(&mut wrong)).unwrap_err().to_string();
        assert!(e2.contains("did not make it"), "{e2}");
        let e3 = e.hidden(Rows::new(&ids, 2, 6), None).unwrap_err().to_string();
        assert!(e3.contains("6 ids for 2 rows of 6"), "{e3}");
    }

    /// 16-bit matrices (bf16 and f16) give the f32 model's logits to within the weights'
    /// rounding, for every architecture, prefill and decode alike; decode with a cache equals
    /// one forward of the whole sequence; a differentiable or f64 model refuses 16-bit weights.
    #[test]
    fn half_weights_follow_the_f32_model() {
        for arch in ["LlamaForCausalLM", "Qwen2ForCausalLM", "Gemma3ForCausalLM"] {
            let cfg = crate::testing::tiny(arch, serde_json::json!({}));
            // Weights already representable in bf16, so the two models hold the same values.
            let w: crate::Weights = random_weights(&cfg, 4, 0.5)
                .unwrap()
                .into_iter()
                .map(|(k, t)| (k, t.to_dtype(DType::BF16).unwrap().to_dtype(DType::F32).unwrap()))
                .collect();
            let full = Model::new(&cfg, &w, ModelOptions::default()).unwrap();
            let ids = [3u32, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5];
            let n = ids.len();
            let want = host(&full.logits(Rows::new(&ids, 1, n), None).unwrap());
            for half in [DType::BF16, DType::F16] {
                let m = Model::new(&cfg, &w, ModelOptions::inference(Some(half))).unwrap();
                let got = host(&m.logits(Rows::new(&ids, 1, n), None).unwrap());
                let scale = want.iter().fold(0f32, |a, x| a.max(x.abs()));
                // bf16 values are exact in bf16 and f16 holds the small ones exactly too, up to
                // f16's 11-bit mantissa: a bound of 2^-10 of the logits' scale covers both.
                let tol = if half == DType::BF16 { 1e-4 } else { 2e-3 } * scale.max(1.0);
                let err = got.iter().zip(&want).fold(0f32, |a, (x, y)| a.max((x - y).abs()));
                assert!(err <= tol, "{arch} {half:?}: prefill differs by {err} (tol {tol})");
                let mut cache = m.new_cache();
                let _ = m.logits(Rows::new(&ids[..7], 1, 7), Some(&mut cache)).unwrap();
                let v = cfg.vocab_size;
                for (k, &id) in ids[7..].iter().enumerate() {
                    let step = host(&m.logits(Rows::new(&[id], 1, 1), Some(&mut cache)).unwrap());
                    let row = &got[(7 + k) * v..(8 + k) * v];
                    let e = step.iter().zip(row).fold(0f32, |a, (x, y)| a.max((x - y).abs()));
                    assert!(e < 1e-4 * scale.max(1.0), "{arch} {half:?} decode step {k}: {e}");
                }
            }
        }
        for bad in [
            ModelOptions { differentiable: true, ..ModelOptions::inference(Some(DType::BF16)) },
            ModelOptions { dtype: DType::F64, ..ModelOptions::inference(Some(DType::F16)) },
        ] {
            assert!(bad.check().unwrap_err().to_string().contains("need f32 compute"));
        }
    }

    #[test]
    fn compute_dtype_resolves_from_the_stored_dtypes() {
        use ComputeDtype as C;
        assert_eq!(C::Auto.resolve(&[DType::BF16]), C::Bf16);
        assert_eq!(C::Auto.resolve(&[DType::F16]), C::F16);
        assert_eq!(C::Auto.resolve(&[DType::F32]), C::F32);
        assert_eq!(C::Auto.resolve(&[DType::BF16, DType::F32]), C::F32);
        assert_eq!(C::Bf16.resolve(&[DType::F32]), C::Bf16);
        assert_eq!(C::parse("bf16"), Ok(C::Bf16));
        assert!(C::parse("fp8").unwrap_err().contains("auto, f32, bf16, f16"));
    }
}
