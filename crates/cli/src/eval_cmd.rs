//! `orlik eval ppl | mc | agree | speed`: `orlik_eval::suite`'s measurements with progress bars,
//! printed as a table or, with --json, one JSON document.

use crate::commands::load_on;
use crate::Frozen;
use anyhow::Result;
use orlik_eval::ppl::PplOptions;
use orlik_eval::suite::{agree_result, mc_result, ppl_report, speed_rows};
use std::path::{Path, PathBuf};

/// A progress bar fed by the suite's (what, done, total) callback.
pub fn progress_bar() -> (indicatif::ProgressBar, impl Fn(&str, usize, usize)) {
    let pb = crate::term::counter(0, "");
    let p = pb.clone();
    (pb, move |what: &str, done: usize, total: usize| crate::term::show(&p, what, done, total))
}

pub fn ppl(
    path: &Path,
    texts: &[PathBuf],
    context: usize,
    stride: usize,
    batch: usize,
    frozen: Frozen,
    json_out: bool,
) -> Result<()> {
    let (hf, model, compute) = load_on(path, frozen)?;
    let (pb, show) = progress_bar();
    let r = ppl_report(model.as_ref(), &hf, texts, PplOptions { context, stride, batch }, &show)?;
    pb.finish_and_clear();
    if json_out {
        let mut j = r.json();
        j["compute_dtype"] = serde_json::json!(compute);
        j["device"] = serde_json::json!(frozen.device.to_string());
        println!("{}", serde_json::to_string_pretty(&j)?);
    } else {
        println!("{}", r.text());
    }
    Ok(())
}

pub fn mc(
    path: &Path,
    tasks: &Path,
    limit: usize,
    context: usize,
    frozen: Frozen,
    json_out: bool,
) -> Result<()> {
    let (hf, model, _) = load_on(path, frozen)?;
    let (pb, show) = progress_bar();
    let r = mc_result(model.as_ref(), &hf, tasks, limit, context, &show)?;
    pb.finish_and_clear();
    if json_out {
        println!("{}", serde_json::to_string_pretty(&r.json(tasks))?);
    } else {
        println!("{}", r.text(tasks, context));
    }
    Ok(())
}

pub fn agree(
    student: &Path,
    teacher: &Path,
    texts: &[PathBuf],
    context: usize,
    max_tokens: usize,
    frozen: Frozen,
    json_out: bool,
) -> Result<()> {
    let (s_hf, s, _) = load_on(student, frozen)?;
    let (t_hf, t, _) = load_on(teacher, frozen)?;
    let (pb, show) = progress_bar();
    let r =
        agree_result((s.as_ref(), &s_hf), (t.as_ref(), &t_hf), texts, context, max_tokens, &show)?;
    pb.finish_and_clear();
    if json_out {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        println!("{}", r.text());
    }
    Ok(())
}

pub fn speed(models: &[PathBuf], reps: usize, frozen: Frozen, json_out: bool) -> Result<()> {
    let loaded =
        models.iter().map(|p| load_on(p, frozen).map(|(_, m, _)| m)).collect::<Result<Vec<_>>>()?;
    let named: Vec<(String, &dyn orlik_model::Infer)> = models
        .iter()
        .map(|p| p.display().to_string())
        .zip(loaded.iter().map(|m| m.as_ref()))
        .collect();
    let (pb, show) = progress_bar();
    let rows = speed_rows(&named, reps, &show)?;
    pb.finish_and_clear();
    if json_out {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        println!("{}", orlik_eval::show::speed_table(&rows));
    }
    Ok(())
}
