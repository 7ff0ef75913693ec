//! `orlik eval ppl | mc | agree | speed`: each returns its results (the pipeline's eval stage
//! reuses them) and prints a table or, with --json, one JSON document.

use crate::commands::{bar, load};
use anyhow::{bail, Context, Result};
use orlik_eval::agree::Agreement;
use orlik_eval::mc::McResult;
use orlik_eval::ppl::{PplOptions, PplResult};
use orlik_eval::speed::Timing;
use orlik_io::hfdir::HfModel;
use serde::Serialize;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

/// Perplexity of each file, then pooled over all of them.
#[derive(Debug, Clone, Serialize)]
pub struct PplReport {
    pub files: Vec<(String, PplResult)>,
    pub total: PplResult,
    pub context: usize,
    pub stride: usize,
}

pub fn ppl_report(
    model: &orlik_model::Model,
    hf: &HfModel,
    texts: &[PathBuf],
    opts: PplOptions,
) -> Result<PplReport> {
    let tok = hf.tokenizer()?;
    let mut files = Vec::new();
    for f in texts {
        let text = orlik_eval::read_text(f)?;
        let enc = tok
            .encode(text.as_str(), true)
            .map_err(|e| anyhow::anyhow!("{}: tokenizing: {e}", f.display()))?;
        let ids = enc.get_ids();
        let pb = bar(ids.len() as u64, "ppl");
        let r = orlik_eval::ppl::score_ids(model, ids, text.len(), &opts, |done, _| {
            pb.set_position(done as u64)
        })
        .with_context(|| f.display().to_string())?;
        pb.finish_and_clear();
        files.push((f.display().to_string(), r));
    }
    let total = PplResult::pooled(&files.iter().map(|r| r.1.clone()).collect::<Vec<_>>());
    Ok(PplReport { files, total, context: opts.context, stride: opts.stride })
}

pub fn ppl(
    path: &Path,
    texts: &[PathBuf],
    context: usize,
    stride: usize,
    batch: usize,
    json_out: bool,
) -> Result<()> {
    let (hf, model) = load(path)?;
    let r = ppl_report(&model, &hf, texts, PplOptions { context, stride, batch })?;
    if json_out {
        let mut v = serde_json::to_value(&r.total)?;
        if let Some(o) = v.as_object_mut() {
            let files: serde_json::Map<String, Value> = r
                .files
                .iter()
                .map(|(f, x)| (f.clone(), serde_json::to_value(x).unwrap_or_default()))
                .collect();
            o.insert("files".into(), Value::Object(files));
            o.insert("context".into(), context.into());
            o.insert("stride".into(), stride.into());
        }
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    for (f, x) in &r.files {
        println!(
            "{f}: {} tokens, nll {:.4}, ppl {:.3}, bits/byte {:.4}, {:.0} tokens/s",
            x.tokens, x.nll, x.ppl, x.bits_per_byte, x.tokens_per_s
        );
    }
    if r.files.len() > 1 {
        println!(
            "total: {} tokens, ppl {:.3}, bits/byte {:.4}",
            r.total.tokens, r.total.ppl, r.total.bits_per_byte
        );
    }
    Ok(())
}

/// Multiple-choice accuracy of one model on the first `limit` questions (0 = all).
pub fn mc_result(
    model: &orlik_model::Model,
    hf: &HfModel,
    tasks: &Path,
    limit: usize,
    context: usize,
) -> Result<McResult> {
    let mut qs = orlik_eval::mc::load(tasks)?;
    if limit > 0 {
        qs.truncate(limit);
    }
    let tok = hf.tokenizer()?;
    let pb = bar(qs.len() as u64, "mc");
    let r = orlik_eval::mc::evaluate(
        model,
        &tok,
        &qs,
        context.min(hf.config.max_position_embeddings),
        |d, _| pb.set_position(d as u64),
    )?;
    pb.finish_and_clear();
    Ok(r)
}

pub fn mc(path: &Path, tasks: &Path, limit: usize, context: usize, json_out: bool) -> Result<()> {
    let (hf, model) = load(path)?;
    let r = mc_result(&model, &hf, tasks, limit, context)?;
    if json_out {
        println!(
            "{}",
            serde_json::to_string_pretty(
                &json!({"tasks": tasks.display().to_string(), "result": r})
            )?
        );
    } else {
        println!(
            "{}: {} questions, accuracy {:.2}% (length-normalised {:.2}%), chance {:.2}%{}",
            tasks.display(),
            r.questions,
            100.0 * r.accuracy,
            100.0 * r.accuracy_norm,
            100.0 * r.chance,
            if r.truncated > 0 {
                format!(", {} choices truncated from the left to {context} tokens", r.truncated)
            } else {
                String::new()
            }
        );
    }
    Ok(())
}

/// KL(teacher ‖ student) and top-1 agreement over the texts (pooled), at most `max_tokens`.
pub fn agree_result(
    student: (&orlik_model::Model, &HfModel),
    teacher: (&orlik_model::Model, &HfModel),
    texts: &[PathBuf],
    context: usize,
    max_tokens: usize,
) -> Result<Agreement> {
    let (s_tok, t_tok) = (student.1.tokenizer()?, teacher.1.tokenizer()?);
    orlik_distill::check_vocab((&teacher.1.config, &t_tok), (&student.1.config, &s_tok))?;
    let mut ids = Vec::new();
    for f in texts {
        let text = orlik_eval::read_text(f)?;
        let enc = s_tok
            .encode(text.as_str(), true)
            .map_err(|e| anyhow::anyhow!("{}: tokenizing: {e}", f.display()))?;
        ids.extend_from_slice(enc.get_ids());
    }
    let context = context
        .min(student.1.config.max_position_embeddings)
        .min(teacher.1.config.max_position_embeddings);
    let total = if max_tokens == 0 { ids.len() } else { ids.len().min(max_tokens) };
    let pb = bar(total as u64, "agree");
    let r =
        orlik_eval::agree::agreement(teacher.0, student.0, &ids, context, max_tokens, |d, _| {
            pb.set_position(d as u64)
        })?;
    pb.finish_and_clear();
    Ok(r)
}

pub fn agree(
    student: &Path,
    teacher: &Path,
    texts: &[PathBuf],
    context: usize,
    max_tokens: usize,
    json_out: bool,
) -> Result<()> {
    let (s_hf, s) = load(student)?;
    let (t_hf, t) = load(teacher)?;
    let r = agree_result((&s, &s_hf), (&t, &t_hf), texts, context, max_tokens)?;
    if json_out {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        println!(
            "{} tokens: KL(teacher || student) {:.4} nats/token, top-1 agreement {:.2}%",
            r.tokens,
            r.kl,
            100.0 * r.top1
        );
    }
    Ok(())
}

/// Speed of one model: prefill and decode at batch 1 and 8.
#[derive(Debug, Clone, Serialize)]
pub struct SpeedRow {
    pub model: String,
    pub timings: Vec<Timing>,
}

/// Every measurement is taken for each model in turn before the next measurement, so a slow
/// moment of a noisy machine hits all of them alike; ratios are to the first model.
pub fn speed_rows(models: &[(String, &orlik_model::Model)], reps: usize) -> Result<Vec<SpeedRow>> {
    if models.is_empty() {
        bail!("give at least one model");
    }
    let mut rows: Vec<SpeedRow> =
        models.iter().map(|(n, _)| SpeedRow { model: n.clone(), timings: Vec::new() }).collect();
    type Measure = fn(&orlik_model::Model, usize) -> Result<Timing, orlik_eval::EvalError>;
    let plan: [Measure; 4] = [
        |m, r| orlik_eval::speed::prefill(m, 1, 256, r),
        |m, r| orlik_eval::speed::prefill(m, 8, 256, r),
        |m, r| orlik_eval::speed::decode(m, 1, 64, 32, r),
        |m, r| orlik_eval::speed::decode(m, 8, 64, 32, r),
    ];
    let pb = bar((plan.len() * models.len()) as u64, "speed");
    for f in plan {
        for (row, (_, m)) in rows.iter_mut().zip(models) {
            row.timings.push(f(m, reps)?);
            pb.inc(1);
        }
    }
    pb.finish_and_clear();
    Ok(rows)
}

pub fn speed(models: &[PathBuf], reps: usize, json_out: bool) -> Result<()> {
    let loaded = models.iter().map(|p| load(p).map(|(_, m)| m)).collect::<Result<Vec<_>>>()?;
    let named: Vec<(String, &orlik_model::Model)> =
        models.iter().map(|p| p.display().to_string()).zip(loaded.iter()).collect();
    let rows = speed_rows(&named, reps)?;
    if json_out {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    print!("{:40}", "model");
    for t in &rows[0].timings {
        print!(" {:>22}", t.what.split(" tokens").next().unwrap_or(&t.what));
    }
    println!("   (tokens/s; x = speed-up over the first model)");
    for r in &rows {
        print!("{:40}", r.model);
        for (t, base) in r.timings.iter().zip(&rows[0].timings) {
            print!(" {:>13.1} ({:>5.2}x)", t.tokens_per_s, t.tokens_per_s / base.tokens_per_s);
        }
        println!();
    }
    Ok(())
}
