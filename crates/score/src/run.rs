//! The score stage as one call: [`run`] takes the model, the calibration text and
//! [`ScoreSettings`] (the recipe's `[score]` section; `orlik score`'s flags fill the same struct)
//! and writes OUT/ (scores, charts, report.md) atomically.

use crate::collect::{collect, collect_ranks, collect_streaming_ranks};
use crate::{calibration_batches, Agg, Batch, ScoreError, ScoreMeta, ScoreOptions, Scores};
use orlik_io::hfdir::HfModel;
use orlik_model::infer::{Infer, Rows};
use orlik_model::{ComputeDtype, ModelOptions};
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// How to score: the keys of a recipe's `[score]` and the flags of `orlik score` (one struct,
/// one set of defaults: those of `Default` below, which `--help` prints).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::Args))]
#[serde(deny_unknown_fields, default)]
pub struct ScoreSettings {
    /// Calibration windows.
    #[cfg_attr(feature = "clap", arg(long, default_value_t = ScoreSettings::default().samples))]
    pub samples: usize,
    /// Tokens per window.
    #[cfg_attr(feature = "clap", arg(long, default_value_t = ScoreSettings::default().seq_len))]
    pub seq_len: usize,
    /// Windows per forward pass.
    #[cfg_attr(feature = "clap", arg(long, default_value_t = ScoreSettings::default().batch))]
    pub batch: usize,
    /// Reduction over the sequence (mean of |x| is Minitron's).
    #[cfg_attr(feature = "clap", arg(long, value_enum, default_value_t = ScoreSettings::default().seq_agg))]
    pub seq_agg: Agg,
    /// Reduction over the batch.
    #[cfg_attr(feature = "clap", arg(long, value_enum, default_value_t = ScoreSettings::default().batch_agg))]
    pub batch_agg: Agg,
    /// Longest block of contiguous layers whose angular distance is measured.
    #[cfg_attr(feature = "clap", arg(long, default_value_t = ScoreSettings::default().max_block))]
    pub max_block: usize,
    /// Batches also scored with each layer left out, for leave-one-out KL and loss (one extra
    /// forward per layer each; 0 = skip).
    #[cfg_attr(feature = "clap", arg(long, default_value_t = ScoreSettings::default().loo_batches))]
    pub loo_batches: usize,
    /// Load the whole model instead of streaming one layer at a time (faster, more memory; the
    /// default streams, so that a model larger than the memory can be scored).
    #[cfg_attr(feature = "clap", arg(long))]
    pub in_memory: bool,
    /// Also time a plain forward against the scoring pass on the same batches and report the
    /// ratio (report.md).
    #[cfg_attr(feature = "clap", arg(long))]
    pub measure_cost: bool,
    /// The model's matrices in memory: auto (as stored: a bf16 / f16 checkpoint stays 16-bit,
    /// half the memory; products and statistics accumulate in f32), f32, bf16, f16. The
    /// resolved value is recorded in scores.json.
    #[cfg_attr(feature = "clap", arg(long, default_value_t = ComputeDtype::Auto, value_parser = ComputeDtype::parse))]
    #[serde(skip_serializing_if = "ComputeDtype::is_auto")]
    pub compute_dtype: ComputeDtype,
    /// Where the calibration pass runs: cpu, cuda (the first NVIDIA GPU, or the local rank's),
    /// cuda:N, or auto. On a GPU the whole model is held there in f32 (no layer streaming) and
    /// the taps come back to the host for the accumulators.
    #[cfg_attr(feature = "clap", arg(long, default_value = "cpu"))]
    #[serde(skip_serializing_if = "is_cpu")]
    pub device: String,
}

fn is_cpu(d: &str) -> bool {
    d == "cpu"
}

impl Default for ScoreSettings {
    fn default() -> Self {
        ScoreSettings {
            samples: 64,
            seq_len: 256,
            batch: 4,
            seq_agg: Agg::Mean,
            batch_agg: Agg::L2,
            max_block: 8,
            loo_batches: 2,
            in_memory: false,
            measure_cost: false,
            compute_dtype: ComputeDtype::Auto,
            device: "cpu".into(),
        }
    }
}

impl ScoreSettings {
    /// Every setting checked before any work, each error naming the setting as `name(key)`
    /// spells it (`--seq-len` for a flag, `score.seq_len` in a recipe).
    pub fn validate(&self, name: &dyn Fn(&str) -> String) -> Result<(), ScoreError> {
        if orlik_cuda::DeviceChoice::parse(&self.device).is_err() {
            let msg =
                format!("{} {:?}: expected auto, cpu, cuda or cuda:N", name("device"), self.device);
            return Err(ScoreError::Input(msg));
        }
        if self.seq_len < 2 {
            let msg = format!("{} {}: must be at least 2 tokens", name("seq_len"), self.seq_len);
            return Err(ScoreError::Input(msg));
        }
        for (key, v) in
            [("samples", self.samples), ("batch", self.batch), ("max_block", self.max_block)]
        {
            if v == 0 {
                return Err(ScoreError::Input(format!("{} 0: must be at least 1", name(key))));
            }
        }
        Ok(())
    }
}

/// A setting's command-line flag: `seq_len` → `--seq-len`.
pub fn flag(key: &str) -> String {
    format!("--{}", key.replace('_', "-"))
}

/// What a score run produced (also written to OUT/).
pub struct ScoreRun {
    pub scores: Scores,
    pub meta: ScoreMeta,
    /// report.md's text.
    pub report: String,
}

/// Paragraphs (blank-line separated) of `files`, tokenized without special tokens until about
/// `need` tokens are collected; taken from the end of the text when `from_end` (held-out text).
pub fn tokenize_paragraphs(
    tok: &tokenizers::Tokenizer,
    files: &[PathBuf],
    need: usize,
    from_end: bool,
) -> Result<Vec<Vec<u32>>, ScoreError> {
    let mut paras: Vec<String> = Vec::new();
    for f in files {
        let text = orlik_io::text::read_text(f)?;
        paras.extend(text.split("\n\n").filter(|p| !p.trim().is_empty()).map(String::from));
    }
    if from_end {
        paras.reverse();
    }
    let mut docs = Vec::new();
    let mut have = 0;
    for p in &paras {
        let ids = tok
            .encode(p.as_str(), false)
            .map_err(|e| ScoreError::Input(format!("tokenizing calibration text: {e}")))?;
        have += ids.len() + 1;
        docs.push(ids.get_ids().to_vec());
        if have >= need {
            break;
        }
    }
    Ok(docs)
}

/// Score `model` on `data` into `out` (refused if `out` is an input or another command's output;
/// replaced when `force` and it is a score output). `progress(what, done, total)`.
pub fn run(
    s: &ScoreSettings,
    model: &Path,
    data: &[PathBuf],
    out: &Path,
    force: bool,
    progress: &dyn Fn(&str, usize, usize),
) -> Result<ScoreRun, ScoreError> {
    s.validate(&flag)?;
    if data.is_empty() {
        return Err(ScoreError::Input("--data: give at least one calibration text file".into()));
    }
    let inputs: Vec<&Path> =
        std::iter::once(model).chain(data.iter().map(PathBuf::as_path)).collect();
    let mode = orlik_io::output::Mode::from_flags(force, false);
    orlik_io::output::check(out, "score", &inputs, mode)?;
    let hf = HfModel::open(model)?;
    let tok = hf.tokenizer()?;
    let eos = hf.config.eos_ids().first().copied();
    let docs = tokenize_paragraphs(&tok, data, s.samples * s.seq_len, false)?;
    let batches = calibration_batches(&docs, eos, s.samples, s.seq_len, s.batch)?;
    let opts = ScoreOptions {
        seq: s.seq_agg,
        batch: s.batch_agg,
        max_block: s.max_block,
        loo_batches: s.loo_batches,
    };
    let t0 = std::time::Instant::now();
    // Under data parallel every rank scores its share of the batches; rank 0 writes.
    let comm = orlik_dist::world();
    let mut compute = s.compute_dtype.resolve(&hf.stored_dtypes());
    let choice = orlik_cuda::DeviceChoice::parse(&s.device)?;
    let on_gpu = orlik_cuda::device::resolve(choice, comm.local_rank())?;
    let scores = if let orlik_cuda::Resolved::Cuda(_) = on_gpu {
        let f = orlik_cuda::frozen::load(&hf, s.compute_dtype, &s.device, comm.local_rank())?;
        compute = f.compute;
        collect_ranks(comm, f.model.as_ref(), &batches, &opts, progress)?
    } else if s.in_memory {
        let model = hf.load(ModelOptions::inference(compute.half()))?;
        collect_ranks(comm, &model, &batches, &opts, progress)?
    } else {
        collect_streaming_ranks(comm, &hf, compute.half(), &batches, &opts, progress)?
    };
    let meta = ScoreMeta {
        format_version: crate::FORMAT_VERSION,
        model_sha256: hf.content_sha256()?,
        data_sha256: orlik_io::hfdir::sha256_files(data)?,
        settings: opts,
        samples: batches.iter().map(|b| b.0.len()).sum(),
        seq_len: s.seq_len,
        tokens: scores.tokens,
        full_loss: scores.full_loss,
        num_hidden_layers: hf.config.num_hidden_layers,
        compute_dtype: compute,
    };
    let mut report = report(&scores, &meta, t0.elapsed().as_secs_f64());
    if comm.rank() != 0 {
        return Ok(ScoreRun { scores, meta, report });
    }
    if comm.size() > 1 {
        let _ = writeln!(report, "\nScored on {} data-parallel ranks.", comm.size());
    }
    if s.measure_cost {
        let (plain, sc) = measure_cost(&hf, compute, &batches, &meta.settings)?;
        let _ = writeln!(report, "\nCost: plain forward to the final hidden state {plain:.2} s, scoring pass without leave-one-out {sc:.2} s, ratio {:.2}.", sc / plain);
    }
    let _ = writeln!(report, "\n## Charts\n\n![depth](depth.png)\n![heads](heads.png)\n![mlp](mlp.png)\n![hidden](hidden.png)\n\n{}", crate::charts::CAPTIONS);
    if let Some(kb) = peak_rss_kb() {
        let _ = writeln!(
            report,
            "\nPeak resident memory: {:.1} MB ({}; checkpoint {:.1} MB).",
            kb as f64 / 1024.0,
            if s.in_memory { "whole model in memory" } else { "layer by layer" },
            hf.checkpoint.bytes_on_disk() as f64 / 1e6
        );
    }
    orlik_io::atomic::write_dir_atomically::<ScoreError>(out, "score", force, |tmp| {
        scores.save(tmp, &meta)?;
        crate::charts::draw(&scores, tmp)?;
        let write = |name: &str, bytes: &[u8]| {
            let p = tmp.join(name);
            std::fs::write(&p, bytes)
                .map_err(|source| orlik_io::IoError::Io { path: p, source }.into())
        };
        write("report.md", report.as_bytes())?;
        write("orlik.json", &orlik_io::text::provenance())
    })?;
    Ok(ScoreRun { scores, meta, report })
}

/// Same batches, measured side by side: a plain forward vs the scoring pass without
/// leave-one-out (which by definition costs one forward per layer). Seconds (plain, scoring).
fn measure_cost(
    hf: &HfModel,
    compute: ComputeDtype,
    batches: &[Batch],
    opts: &ScoreOptions,
) -> Result<(f64, f64), ScoreError> {
    let model = hf.load(ModelOptions::inference(compute.half()))?;
    let plain = std::time::Instant::now();
    for (ids, valid) in batches {
        let t = ids.first().map_or(0, Vec::len);
        let flat: Vec<u32> = ids.iter().flatten().copied().collect();
        let rows = Rows { key_valid: Some(valid), ..Rows::new(&flat, ids.len(), t) };
        model.hidden(rows, None)?; // without lm_head: the strict comparison
    }
    let plain = plain.elapsed().as_secs_f64();
    let no_loo = ScoreOptions { loo_batches: 0, ..opts.clone() };
    let sc = std::time::Instant::now();
    collect(&model, batches, &no_loo, |_: &str, _, _| {})?;
    Ok((plain, sc.elapsed().as_secs_f64()))
}

pub use orlik_io::peak_rss_kb;

fn report(s: &Scores, m: &ScoreMeta, secs: f64) -> String {
    let mut r = String::new();
    let _ = writeln!(r, "# Importance scores\n");
    let _ = writeln!(
        r,
        "{} samples x {} tokens ({} tokens), sequence aggregation {:?}, batch aggregation {:?}, {:.0} s. Calibration loss {:.4}.\n",
        m.samples, m.seq_len, m.tokens, m.settings.seq, m.settings.batch, secs, m.full_loss
    );
    let _ = writeln!(r, "## Depth (higher = more important)\n");
    let _ = writeln!(r, "| layer | block influence | angular (n=1) | LOO KL | LOO loss |\n| --- | --- | --- | --- | --- |");
    for l in 0..s.bi.len() {
        let a = s.angular.first().and_then(|v| v.get(l)).copied().unwrap_or(f32::NAN);
        let _ = writeln!(
            r,
            "| {l} | {:.4} | {:.4} | {:.4} | {:.4} |",
            s.bi[l], a, s.loo_kl[l], s.loo_loss[l]
        );
    }
    let _ = writeln!(r, "\n## Width\n");
    let _ = writeln!(r, "| layer | MLP min / median / max | head scores |\n| --- | --- | --- |");
    for l in 0..s.mlp.len() {
        let mut v = s.mlp[l].clone();
        v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
        let heads: Vec<String> = s.heads[l].iter().map(|x| format!("{x:.2}")).collect();
        let _ = writeln!(
            r,
            "| {l} | {:.3} / {:.3} / {:.3} | {} |",
            v[0],
            v[v.len() / 2],
            v[v.len() - 1],
            heads.join(" ")
        );
    }
    let mut h = s.hidden.clone();
    h.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    let _ = writeln!(
        r,
        "\nHidden channels: min {:.3}, median {:.3}, max {:.3}.",
        h[0],
        h[h.len() / 2],
        h[h.len() - 1]
    );
    r
}
