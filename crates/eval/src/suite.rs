//! The evaluation suite as one call: every model measured the same way (bits per byte per
//! text, multiple choice, KL / top-1 agreement with the first model, speed in one interleaved
//! run), with [`SuiteSettings`] (the recipe's `[eval]` section). The pipeline's eval stage and
//! `orlik eval ppl | mc | agree | speed` are built on it.

use crate::agree::Agreement;
use crate::mc::McResult;
use crate::ppl::{PplOptions, PplResult};
use crate::speed::Timing;
use crate::EvalError;
use orlik_io::hfdir::HfModel;
use orlik_model::{ComputeDtype, Infer, Model};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// What the suite measures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SuiteSettings {
    /// Texts for bits/byte (per file). The pipeline's default: its `val`.
    pub texts: Vec<PathBuf>,
    /// Perplexity window. Default 1024.
    pub context: usize,
    /// Multiple-choice questions (EXAMS JSONL); none = no MC evaluation.
    pub mc_tasks: Option<PathBuf>,
    /// First N questions, 0 = all. Default 200.
    pub mc_limit: usize,
    /// Tokens of prompt + answer kept (cut from the left). Default 512.
    pub mc_context: usize,
    /// Tokens of `texts` for KL / top-1 agreement with the first model, 0 = all. Default 16384.
    pub agree_tokens: usize,
    /// Default 256.
    pub agree_context: usize,
    /// Measure prefill / decode speed. Default true.
    pub speed: bool,
    /// Timed repetitions per speed measurement (median). Default 3.
    pub speed_reps: usize,
    /// How each model holds its matrices: auto (as stored: bf16 / f16 stay 16-bit, f32
    /// accumulation), f32, bf16, f16. The resolved value is in eval.json per model. Default auto.
    #[serde(skip_serializing_if = "ComputeDtype::is_auto")]
    pub compute_dtype: ComputeDtype,
}

impl Default for SuiteSettings {
    fn default() -> Self {
        SuiteSettings {
            texts: Vec::new(),
            context: 1024,
            mc_tasks: None,
            mc_limit: 200,
            mc_context: 512,
            agree_tokens: 16384,
            agree_context: 256,
            speed: true,
            speed_reps: 3,
            compute_dtype: ComputeDtype::Auto,
        }
    }
}

/// Version of eval.json's layout (part of the pipeline's eval-stage fingerprint).
pub const FORMAT_VERSION: u32 = 1;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelEval {
    pub name: String,
    pub path: String,
    pub parameters: usize,
    pub bytes: u64,
    /// layers / hidden / heads / kv heads / MLP
    pub shape: [usize; 5],
    /// bits/byte per text (file name) and "total" pooled over all texts.
    pub bits_per_byte: BTreeMap<String, f64>,
    pub mc: Option<McResult>,
    /// KL(first model ‖ model) per token and top-1 agreement; absent for the first model.
    pub kl: Option<f64>,
    pub top1: Option<f64>,
    /// tokens/s per measurement, in order ("prefill b1x256", ..., "decode b8").
    pub speed: Vec<(String, f64)>,
    /// How the model held its matrices (absent = f32, as in files from before 16-bit inference).
    #[serde(default = "ComputeDtype::f32_default", skip_serializing_if = "ComputeDtype::is_f32")]
    pub compute_dtype: ComputeDtype,
}

/// eval.json.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Eval {
    pub format_version: u32,
    pub context: usize,
    pub models: Vec<ModelEval>,
}

/// Progress: (what, done, total).
pub type Progress<'a> = &'a dyn Fn(&str, usize, usize);

/// Perplexity of each file, then pooled over all of them.
#[derive(Debug, Clone, Serialize)]
pub struct PplReport {
    pub files: Vec<(String, PplResult)>,
    pub total: PplResult,
    pub context: usize,
    pub stride: usize,
}

fn tokenize(tok: &tokenizers::Tokenizer, f: &Path) -> Result<(String, Vec<u32>), EvalError> {
    let text = crate::read_text(f)?;
    let enc = tok
        .encode(text.as_str(), true)
        .map_err(|e| EvalError::Input(format!("{}: tokenizing: {e}", f.display())))?;
    let ids = enc.get_ids().to_vec();
    Ok((text, ids))
}

pub fn ppl_report(
    model: &dyn Infer,
    hf: &HfModel,
    texts: &[PathBuf],
    opts: PplOptions,
    progress: Progress,
) -> Result<PplReport, EvalError> {
    let tok = hf.tokenizer()?;
    let mut files = Vec::new();
    for f in texts {
        let (text, ids) = tokenize(&tok, f)?;
        let r = crate::ppl::score_ids(model, &ids, text.len(), &opts, |done, _| {
            progress("ppl", done, ids.len())
        })
        .map_err(|e| EvalError::Input(format!("{}: {e}", f.display())))?;
        files.push((f.display().to_string(), r));
    }
    let total = PplResult::pooled(&files.iter().map(|r| r.1.clone()).collect::<Vec<_>>());
    Ok(PplReport { files, total, context: opts.context, stride: opts.stride })
}

/// Multiple-choice accuracy of one model on the first `limit` questions (0 = all).
pub fn mc_result(
    model: &dyn Infer,
    hf: &HfModel,
    tasks: &Path,
    limit: usize,
    context: usize,
    progress: Progress,
) -> Result<McResult, EvalError> {
    let mut qs = crate::mc::load(tasks)?;
    if limit > 0 {
        qs.truncate(limit);
    }
    let tok = hf.tokenizer()?;
    let n = qs.len();
    let context = context.min(hf.config.max_position_embeddings);
    crate::mc::evaluate(model, &tok, &qs, context, |d, _| progress("mc", d, n))
}

/// KL(teacher ‖ student) and top-1 agreement over the texts (pooled), at most `max_tokens`.
pub fn agree_result(
    student: (&dyn Infer, &HfModel),
    teacher: (&dyn Infer, &HfModel),
    texts: &[PathBuf],
    context: usize,
    max_tokens: usize,
    progress: Progress,
) -> Result<Agreement, EvalError> {
    let (s_tok, t_tok) = (student.1.tokenizer()?, teacher.1.tokenizer()?);
    // A trimmed student is compared on its own tokens (the teacher's logits of them).
    let map = orlik_io::tokenizer::id_map((&teacher.1.config, &t_tok), (&student.1.config, &s_tok))
        .map_err(|e| {
            EvalError::Input(format!("{e}: agreement needs the same vocabulary or a subset of it"))
        })?;
    let mut ids = Vec::new();
    for f in texts {
        ids.extend(tokenize(&s_tok, f)?.1);
    }
    let context = context
        .min(student.1.config.max_position_embeddings)
        .min(teacher.1.config.max_position_embeddings);
    let total = if max_tokens == 0 { ids.len() } else { ids.len().min(max_tokens) };
    crate::agree::agreement(
        teacher.0,
        student.0,
        &ids,
        map.as_deref(),
        context,
        max_tokens,
        |d, _| progress("agree", d, total),
    )
}

/// Speed of one model: prefill and decode at batch 1 and 8.
#[derive(Debug, Clone, Serialize)]
pub struct SpeedRow {
    pub model: String,
    pub timings: Vec<Timing>,
}

/// Every measurement is taken for each model in turn before the next measurement, so a slow
/// moment of a noisy machine hits all of them alike; ratios are to the first model.
pub fn speed_rows(
    models: &[(String, &dyn Infer)],
    reps: usize,
    progress: Progress,
) -> Result<Vec<SpeedRow>, EvalError> {
    if models.is_empty() {
        return Err(EvalError::Input("give at least one model".into()));
    }
    let mut rows: Vec<SpeedRow> =
        models.iter().map(|(n, _)| SpeedRow { model: n.clone(), timings: Vec::new() }).collect();
    type Measure = fn(&dyn Infer, usize) -> Result<Timing, EvalError>;
    let plan: [Measure; 4] = [
        |m, r| crate::speed::prefill(m, 1, 256, r),
        |m, r| crate::speed::prefill(m, 8, 256, r),
        |m, r| crate::speed::decode(m, 1, 64, 32, r),
        |m, r| crate::speed::decode(m, 8, 64, 32, r),
    ];
    let total = plan.len() * models.len();
    let mut done = 0;
    for f in plan {
        for (row, (_, m)) in rows.iter_mut().zip(models) {
            row.timings.push(f(*m, reps)?);
            done += 1;
            progress("speed", done, total);
        }
    }
    Ok(rows)
}

fn bytes_on_disk(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter(|e| e.path().extension().is_some_and(|x| x == "safetensors"))
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// A speed measurement's short name: "prefill b1x256", "decode b8".
fn short(what: &str) -> String {
    what.split_whitespace().take(2).collect::<Vec<_>>().join(" ")
}

/// Measure every model `(name, HF directory)`; the first is the reference the others' KL and
/// agreement are taken against. `notice(name)` before each model.
pub fn run(
    e: &SuiteSettings,
    models: &[(&str, &Path)],
    notice: &dyn Fn(&str),
    progress: Progress,
) -> Result<Eval, EvalError> {
    let hfs = models.iter().map(|(_, p)| HfModel::open(p)).collect::<Result<Vec<_>, _>>()?;
    let (loaded, computes): (Vec<Model>, Vec<ComputeDtype>) = hfs
        .iter()
        .map(|h| h.load_frozen(e.compute_dtype))
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .unzip();
    let mut out = Vec::new();
    for (i, ((name, path), (hf, m))) in models.iter().zip(hfs.iter().zip(&loaded)).enumerate() {
        notice(name);
        let c = &hf.config;
        let opts = PplOptions { context: e.context, stride: e.context, batch: 1 };
        let ppl = ppl_report(m, hf, &e.texts, opts, progress)?;
        let mut bpb: BTreeMap<String, f64> = ppl
            .files
            .iter()
            .map(|(f, x)| {
                let name = Path::new(f).file_name().map(|n| n.to_string_lossy().to_string());
                (name.unwrap_or_else(|| f.clone()), x.bits_per_byte)
            })
            .collect();
        bpb.insert("total".into(), ppl.total.bits_per_byte);
        let mc = match &e.mc_tasks {
            Some(t) => Some(mc_result(m, hf, t, e.mc_limit, e.mc_context, progress)?),
            None => None,
        };
        let agree = if i == 0 {
            None
        } else {
            let reference: (&dyn Infer, _) = (&loaded[0], &hfs[0]);
            Some(agree_result(
                (m as &dyn Infer, hf),
                reference,
                &e.texts,
                e.agree_context,
                e.agree_tokens,
                progress,
            )?)
        };
        out.push(ModelEval {
            name: name.to_string(),
            path: path.display().to_string(),
            parameters: c.param_count(),
            bytes: bytes_on_disk(path),
            shape: [
                c.num_hidden_layers,
                c.hidden_size,
                c.num_attention_heads,
                c.num_kv_heads(),
                c.intermediate_size,
            ],
            bits_per_byte: bpb,
            mc,
            kl: agree.as_ref().map(|a| a.kl),
            top1: agree.as_ref().map(|a| a.top1),
            speed: Vec::new(),
            compute_dtype: computes[i],
        });
    }
    if e.speed {
        notice("speed (all models, interleaved)");
        let named: Vec<(String, &dyn Infer)> = models
            .iter()
            .map(|(n, _)| n.to_string())
            .zip(loaded.iter().map(|m| m as &dyn Infer))
            .collect();
        for (row, me) in speed_rows(&named, e.speed_reps, progress)?.into_iter().zip(out.iter_mut())
        {
            me.speed = row.timings.iter().map(|t| (short(&t.what), t.tokens_per_s)).collect();
        }
    }
    Ok(Eval { format_version: FORMAT_VERSION, context: e.context, models: out })
}
