//! Activation-based importance scoring (Minitron) for every pruning axis, and the versioned
//! scores file the pruning stage reads.
//!
//! Two passes compute the same scores (`collect.rs`): `collect` on a model held whole in memory,
//! and `collect_streaming`, which loads one layer's weights at a time (the default of `orlik
//! score`), so a model larger than memory can be scored.

pub mod charts;
pub mod collect;
pub mod run;

pub use run::{run, ScoreRun, ScoreSettings};

use candle_core::{Device, Tensor};
use orlik_io::safetensors::Checkpoint;
use orlik_model::ComputeDtype;
use serde::{Deserialize, Serialize};
use std::path::Path;

pub const FORMAT_VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum ScoreError {
    #[error("{0}")]
    Input(String),
    #[error(transparent)]
    Model(#[from] orlik_model::ModelError),
    #[error(transparent)]
    Io(#[from] orlik_io::IoError),
    #[error(transparent)]
    Plot(#[from] orlik_plot::PlotError),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error("data parallel: {0}")]
    Dist(#[from] orlik_dist::DistError),
    /// A GPU's failure (boxed: the error stays small for the common paths).
    #[error(transparent)]
    Cuda(Box<orlik_cuda::CudaError>),
}

impl From<orlik_cuda::CudaError> for ScoreError {
    fn from(e: orlik_cuda::CudaError) -> ScoreError {
        ScoreError::Cuda(Box::new(e))
    }
}

/// One calibration batch: token rows and, per position, whether it is real text (not padding).
pub type Batch = (Vec<Vec<u32>>, Vec<Vec<bool>>);

/// Reduction over the sequence or over the batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum Agg {
    Mean,
    L2,
    Max,
    Var,
}

impl std::str::FromStr for Agg {
    type Err = String;
    fn from_str(s: &str) -> Result<Agg, String> {
        match s {
            "mean" => Ok(Agg::Mean),
            "l2" => Ok(Agg::L2),
            "max" => Ok(Agg::Max),
            "var" => Ok(Agg::Var),
            _ => Err(format!("unknown aggregation {s:?} (mean, l2, max, var)")),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ScoreOptions {
    /// Over the sequence (Minitron: mean of |activation|).
    pub seq: Agg,
    /// Over the batch (Minitron: L2).
    pub batch: Agg,
    /// Largest block size n for the angular distance of n contiguous layers.
    pub max_block: usize,
    /// Calibration batches also used for leave-one-layer-out (costs one forward per layer each).
    pub loo_batches: usize,
}

impl Default for ScoreOptions {
    fn default() -> Self {
        ScoreOptions { seq: Agg::Mean, batch: Agg::L2, max_block: 8, loo_batches: 2 }
    }
}

/// Importance of every prunable unit. Larger = more important, except `angular`, `bi`,
/// `loo_kl`, `loo_loss` where larger means the layer(s) change more when removed, i.e. also more
/// important.
#[derive(Debug, Clone, PartialEq)]
pub struct Scores {
    pub mlp: Vec<Vec<f32>>,
    pub heads: Vec<Vec<f32>>,
    pub hidden: Vec<f32>,
    pub bi: Vec<f32>,
    /// angular[n-1][l]: blocks of n layers starting at l.
    pub angular: Vec<Vec<f32>>,
    pub loo_kl: Vec<f32>,
    pub loo_loss: Vec<f32>,
    pub full_loss: f32,
    pub tokens: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScoreMeta {
    pub format_version: u32,
    pub model_sha256: String,
    pub data_sha256: String,
    pub settings: ScoreOptions,
    pub samples: usize,
    pub seq_len: usize,
    pub tokens: usize,
    pub full_loss: f32,
    pub num_hidden_layers: usize,
    /// How the model held its matrices while scored (absent = f32, as in files from before
    /// 16-bit inference).
    #[serde(default = "ComputeDtype::f32_default", skip_serializing_if = "ComputeDtype::is_f32")]
    pub compute_dtype: ComputeDtype,
}

fn t2(v: &[Vec<f32>]) -> candle_core::Result<Tensor> {
    let r = v.len();
    let c = v.first().map_or(0, Vec::len);
    Tensor::from_vec(v.iter().flatten().copied().collect::<Vec<_>>(), (r, c), &Device::Cpu)
}

impl Scores {
    /// Write `scores.safetensors` + `scores.json` into `dir` (which must exist).
    pub fn save(&self, dir: &Path, meta: &ScoreMeta) -> Result<(), ScoreError> {
        let v = |x: &[f32]| Tensor::new(x, &Device::Cpu);
        let mut t = vec![
            ("mlp".to_string(), t2(&self.mlp)?),
            ("heads".to_string(), t2(&self.heads)?),
            ("hidden".to_string(), v(&self.hidden)?),
            ("bi".to_string(), v(&self.bi)?),
            ("loo_kl".to_string(), v(&self.loo_kl)?),
            ("loo_loss".to_string(), v(&self.loo_loss)?),
        ];
        for (i, a) in self.angular.iter().enumerate() {
            t.push((format!("angular.{}", i + 1), v(a)?));
        }
        let refs: Vec<&(String, Tensor)> = t.iter().collect();
        orlik_io::safetensors::write_file(
            &dir.join("scores.safetensors"),
            &refs,
            candle_core::DType::F32,
        )?;
        let p = dir.join("scores.json");
        std::fs::write(&p, serde_json::to_string_pretty(meta).unwrap_or_default())
            .map_err(|e| ScoreError::Input(format!("{}: {e}", p.display())))?;
        Ok(())
    }

    /// Every score a finite number: a NaN or infinity (from a corrupt model or an overflow) is an
    /// error naming the score, never written out for `prune` to trip over.
    pub fn check_finite(&self) -> Result<(), ScoreError> {
        let ones: [(&str, &[f32]); 5] = [
            ("hidden", &self.hidden),
            ("bi", &self.bi),
            ("loo_kl", &self.loo_kl),
            ("loo_loss", &self.loo_loss),
            ("full_loss", std::slice::from_ref(&self.full_loss)),
        ];
        let rows = [("mlp", &self.mlp), ("heads", &self.heads), ("angular", &self.angular)];
        let named = ones.into_iter().map(|(n, v)| (n, 0usize, v)).chain(
            rows.into_iter()
                .flat_map(|(n, r)| r.iter().enumerate().map(move |(i, v)| (n, i, v.as_slice()))),
        );
        for (name, row, v) in named {
            if let Some(j) = v.iter().position(|x| !x.is_finite()) {
                return Err(ScoreError::Input(format!(
                    "importance score {name}[{row}][{j}] is {}: the model computes non-finite values on the calibration data (corrupt weights?)",
                    v[j]
                )));
            }
        }
        Ok(())
    }

    pub fn load(dir: &Path) -> Result<(Scores, ScoreMeta), ScoreError> {
        let p = dir.join("scores.json");
        let text = std::fs::read_to_string(&p)
            .map_err(|e| ScoreError::Input(format!("{}: {e}", p.display())))?;
        let meta: ScoreMeta = serde_json::from_str(&text)
            .map_err(|e| ScoreError::Input(format!("{}: {e}", p.display())))?;
        if meta.format_version != FORMAT_VERSION {
            return Err(ScoreError::Input(format!(
                "{}: scores format {} (this orlik reads {FORMAT_VERSION})",
                p.display(),
                meta.format_version
            )));
        }
        let ck = Checkpoint::open(&dir.join("scores.safetensors"))?;
        let v1 = |n: &str| -> Result<Vec<f32>, ScoreError> { Ok(ck.tensor(n)?.to_vec1()?) };
        let v2 = |n: &str| -> Result<Vec<Vec<f32>>, ScoreError> { Ok(ck.tensor(n)?.to_vec2()?) };
        let mut angular = Vec::new();
        while ck.info(&format!("angular.{}", angular.len() + 1)).is_some() {
            angular.push(v1(&format!("angular.{}", angular.len() + 1))?);
        }
        Ok((
            Scores {
                mlp: v2("mlp")?,
                heads: v2("heads")?,
                hidden: v1("hidden")?,
                bi: v1("bi")?,
                angular,
                loo_kl: v1("loo_kl")?,
                loo_loss: v1("loo_loss")?,
                full_loss: meta.full_loss,
                tokens: meta.tokens,
            },
            meta,
        ))
        .and_then(|(s, m)| {
            s.check_finite().map_err(|e| ScoreError::Input(format!("{}: {e}", dir.display())))?;
            Ok((s, m))
        })
    }
}

/// Calibration batches: documents tokenized, joined with `sep` (EOS), cut into `samples` windows of
/// `seq_len` tokens (deterministic: the first windows), grouped `batch` at a time.
pub fn calibration_batches(
    docs: &[Vec<u32>],
    sep: Option<u32>,
    samples: usize,
    seq_len: usize,
    batch: usize,
) -> Result<Vec<Batch>, ScoreError> {
    // Checked here too, so that every caller (not only the CLI's flags) gets the same errors.
    if seq_len < 2 || samples == 0 || batch == 0 {
        return Err(ScoreError::Input(format!(
            "calibration: seq_len {seq_len} must be at least 2, samples {samples} and batch {batch} at least 1"
        )));
    }
    let mut stream = Vec::new();
    for d in docs {
        stream.extend_from_slice(d);
        if let Some(s) = sep {
            stream.push(s);
        }
        if stream.len() >= samples * seq_len {
            break;
        }
    }
    let n = (stream.len() / seq_len.max(1)).min(samples);
    if n == 0 {
        return Err(ScoreError::Input(format!(
            "calibration data has {} tokens, fewer than one window of {seq_len}",
            stream.len()
        )));
    }
    let rows: Vec<Vec<u32>> =
        (0..n).map(|i| stream[i * seq_len..(i + 1) * seq_len].to_vec()).collect();
    Ok(rows
        .chunks(batch.max(1))
        .map(|c| (c.to_vec(), vec![vec![true; seq_len]; c.len()]))
        .collect())
}

#[cfg(test)]
mod tests;
