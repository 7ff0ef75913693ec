//! metrics.jsonl: one JSON object per optimizer step (and one per validation), appended and
//! flushed as training goes; truncated back to the checkpoint on resume so the file always
//! describes one uninterrupted trajectory. Curves (PNG + SVG, `orlik_plot`) are drawn from it at
//! the end.

use crate::{file_err, TrainError};
use orlik_plot::{Lines, Series};
use serde_json::Value;
use std::io::Write;
use std::path::Path;

pub fn read(path: &Path) -> Result<Vec<Value>, TrainError> {
    if !path.exists() {
        return Ok(Vec::new());
    }
    let text = std::fs::read_to_string(path).map_err(file_err(path))?;
    // A killed writer may leave a partial last line: ignore lines that do not parse.
    Ok(text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect())
}

/// Keep only rows with `step` ≤ `last_step` (rewritten atomically).
pub fn truncate(path: &Path, last_step: u64) -> Result<(), TrainError> {
    let rows: Vec<Value> = read(path)?
        .into_iter()
        .filter(|r| r.get("step").and_then(Value::as_u64).is_some_and(|s| s <= last_step))
        .collect();
    let tmp = path.with_extension("jsonl.tmp");
    let mut text = String::new();
    for r in rows {
        text.push_str(&r.to_string());
        text.push('\n');
    }
    std::fs::write(&tmp, text).map_err(file_err(&tmp))?;
    std::fs::rename(&tmp, path).map_err(file_err(path))
}

pub fn append(path: &Path, row: &Value) -> Result<(), TrainError> {
    let mut f =
        std::fs::OpenOptions::new().create(true).append(true).open(path).map_err(file_err(path))?;
    writeln!(f, "{row}").map_err(file_err(path))?;
    f.flush().map_err(file_err(path))
}

fn series(rows: &[Value], key: &str) -> Vec<(f64, f64)> {
    rows.iter().filter_map(|r| Some((r.get("step")?.as_f64()?, r.get(key)?.as_f64()?))).collect()
}

/// Smooth a noisy series with an exponential moving average (debiased like Adam's moments).
fn ema(s: &[(f64, f64)], beta: f64) -> Vec<(f64, f64)> {
    let mut m = 0.0;
    s.iter()
        .enumerate()
        .map(|(i, &(x, y))| {
            m = beta * m + (1.0 - beta) * y;
            (x, m / (1.0 - beta.powi(i as i32 + 1)))
        })
        .collect()
}

fn chart(title: &str, y_label: &str, series: Vec<Series>) -> Lines {
    Lines {
        title: title.into(),
        x_label: "optimizer step".into(),
        y_label: y_label.into(),
        series: series.into_iter().filter(|s| !s.points.is_empty()).collect(),
        reference: None,
    }
}

/// What a metric is, for axis labels.
fn unit(key: &str) -> String {
    match key {
        "loss" | "val_loss" | "ce" => format!("{key} (nats / token)"),
        "kl" | "val_kl" => format!("{key} (nats / token, T²-scaled)"),
        "val_bits_per_byte" => "bits per byte".into(),
        "lr" => "learning rate".into(),
        "tokens_per_s" => "tokens / s".into(),
        _ => key.into(),
    }
}

/// Draw `loss.png` (training loss per step, raw and smoothed, with the validation KL for
/// distillation runs or the validation loss otherwise) and `val_bpb.png` (validation bits per
/// byte) when there are rows for them, each with its `.svg`. Returns the PNGs written.
pub fn draw(metrics: &Path, dir: &Path) -> Result<Vec<String>, TrainError> {
    let rows = read(metrics)?;
    let mut out = Vec::new();
    let loss = series(&rows, "loss");
    if !loss.is_empty() {
        let smooth = ema(&loss, 0.9);
        // The validation series on the training loss's scale: KL for distillation, CE otherwise.
        let val_key =
            if rows.iter().any(|r| r.get("kl").is_some()) { "val_kl" } else { "val_loss" };
        let c = chart(
            "Training loss",
            "loss (nats / token)",
            vec![
                Series::line("train loss", loss),
                Series::line("train loss, smoothed (EMA 0.9)", smooth),
                Series::line(val_key.replace('_', " "), series(&rows, val_key)),
            ],
        );
        c.save(&dir.join("loss.png"))?;
        out.push("loss.png".into());
    }
    let bpb = series(&rows, "val_bits_per_byte");
    if !bpb.is_empty() {
        let c = chart(
            "Validation bits per byte",
            "bits per byte",
            vec![Series::line("validation", bpb)],
        );
        c.save(&dir.join("val_bpb.png"))?;
        out.push("val_bpb.png".into());
    }
    Ok(out)
}

/// One chart comparing runs: `key` (e.g. `val_bits_per_byte`, `loss`) against `step`, one series
/// per run directory (its metrics.jsonl, named in the legend), smoothed when `smooth`. Returns
/// the runs in legend order.
pub fn compare(
    runs: &[std::path::PathBuf],
    key: &str,
    smooth: bool,
    out: &Path,
) -> Result<Vec<String>, TrainError> {
    // The chart replaces only a PNG: never a user's other file, never a run it reads.
    let is_png = std::fs::read(out).map(|b| b.starts_with(b"\x89PNG\r\n\x1a\n")).unwrap_or(false);
    if out.is_dir() || (out.exists() && !is_png) {
        return Err(TrainError::Data(format!(
            "{}: exists and is not a PNG chart; choose another --output",
            out.display()
        )));
    }
    let svg = out.with_extension("svg");
    let svg_ok = std::fs::read_to_string(&svg).map(|t| t.contains("<svg")).unwrap_or(false);
    if svg.is_dir() || (svg.exists() && !svg_ok) {
        return Err(TrainError::Data(format!(
            "{}: exists and is not an SVG chart (the chart's SVG goes there); choose another --output",
            svg.display()
        )));
    }
    let mut all = Vec::new();
    let mut names = Vec::new();
    for r in runs {
        let rows = read(&r.join("metrics.jsonl"))?;
        let s = series(&rows, key);
        if s.is_empty() {
            return Err(TrainError::Data(format!("{}: no {key:?} in metrics.jsonl", r.display())));
        }
        let name = r.display().to_string();
        names.push(name.clone());
        all.push(Series::line(name, if smooth { ema(&s, 0.9) } else { s }));
    }
    let title = if smooth { format!("{key} (smoothed, EMA 0.9)") } else { key.to_string() };
    chart(&title, &unit(key), all).save(out)?;
    Ok(names)
}

/// `key` per step as a chart at `out` (and its `.svg`): raw and smoothed. False when no row
/// has it.
pub fn draw_key(metrics: &Path, key: &str, out: &Path) -> Result<bool, TrainError> {
    let s = series(&read(metrics)?, key);
    if s.is_empty() {
        return Ok(false);
    }
    let smooth = ema(&s, 0.9);
    let c = chart(
        &key.replace('_', " "),
        &unit(key),
        vec![Series::line(key, s), Series::line(format!("{key}, smoothed (EMA 0.9)"), smooth)],
    );
    c.save(out)?;
    Ok(true)
}
