//! `orlik eval ppl | mc | agree | speed`: `orlik_eval::suite`'s measurements with progress bars,
//! printed as a table or, with --json, one JSON document.

use crate::commands::load;
use anyhow::Result;
use orlik_eval::ppl::PplOptions;
use orlik_eval::suite::{agree_result, mc_result, ppl_report, speed_rows};
use orlik_model::ComputeDtype;
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
    compute: ComputeDtype,
    json_out: bool,
) -> Result<()> {
    let (hf, model) = load(path, compute)?;
    let (pb, show) = progress_bar();
    let r = ppl_report(&model, &hf, texts, PplOptions { context, stride, batch }, &show)?;
    pb.finish_and_clear();
    if json_out {
        let mut j = r.json();
        j["compute_dtype"] = serde_json::json!(compute.resolve(&hf.stored_dtypes()));
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
    compute: ComputeDtype,
    json_out: bool,
) -> Result<()> {
    let (hf, model) = load(path, compute)?;
    let (pb, show) = progress_bar();
    let r = mc_result(&model, &hf, tasks, limit, context, &show)?;
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
    compute: ComputeDtype,
    json_out: bool,
) -> Result<()> {
    let (s_hf, s) = load(student, compute)?;
    let (t_hf, t) = load(teacher, compute)?;
    let (pb, show) = progress_bar();
    let r = agree_result((&s, &s_hf), (&t, &t_hf), texts, context, max_tokens, &show)?;
    pb.finish_and_clear();
    if json_out {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        println!("{}", r.text());
    }
    Ok(())
}

pub fn speed(models: &[PathBuf], reps: usize, compute: ComputeDtype, json_out: bool) -> Result<()> {
    let loaded =
        models.iter().map(|p| load(p, compute).map(|(_, m)| m)).collect::<Result<Vec<_>>>()?;
    let named: Vec<(String, &orlik_model::Model)> =
        models.iter().map(|p| p.display().to_string()).zip(loaded.iter()).collect();
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
