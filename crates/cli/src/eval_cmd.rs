//! `orlik eval ppl | mc | agree | speed`: `orlik_eval::suite`'s measurements with progress bars,
//! printed as a table or, with --json, one JSON document.

use crate::commands::load;
use anyhow::Result;
use orlik_eval::ppl::PplOptions;
use orlik_eval::suite::{agree_result, mc_result, ppl_report, speed_rows};
use serde_json::{json, Value};
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
    json_out: bool,
) -> Result<()> {
    let (hf, model) = load(path)?;
    let (pb, show) = progress_bar();
    let r = ppl_report(&model, &hf, texts, PplOptions { context, stride, batch }, &show)?;
    pb.finish_and_clear();
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

pub fn mc(path: &Path, tasks: &Path, limit: usize, context: usize, json_out: bool) -> Result<()> {
    let (hf, model) = load(path)?;
    let (pb, show) = progress_bar();
    let r = mc_result(&model, &hf, tasks, limit, context, &show)?;
    pb.finish_and_clear();
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
    let (pb, show) = progress_bar();
    let r = agree_result((&s, &s_hf), (&t, &t_hf), texts, context, max_tokens, &show)?;
    pb.finish_and_clear();
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

pub fn speed(models: &[PathBuf], reps: usize, json_out: bool) -> Result<()> {
    let loaded = models.iter().map(|p| load(p).map(|(_, m)| m)).collect::<Result<Vec<_>>>()?;
    let named: Vec<(String, &orlik_model::Model)> =
        models.iter().map(|p| p.display().to_string()).zip(loaded.iter()).collect();
    let (pb, show) = progress_bar();
    let rows = speed_rows(&named, reps, &show)?;
    pb.finish_and_clear();
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
