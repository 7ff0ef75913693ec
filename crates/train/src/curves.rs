//! metrics.jsonl: one JSON object per optimizer step (and one per validation), appended and
//! flushed as training goes; truncated back to the checkpoint on resume so the file always
//! describes one uninterrupted trajectory. PNG curves are drawn from it at the end.

use crate::{file_err, TrainError};
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

/// Draw `loss.png` (training loss per step, raw and smoothed; blue raw, red smoothed, green
/// validation KL for distillation runs, validation loss otherwise) and `val_bpb.png` (validation bits per byte) when there are rows for them.
/// Returns the files written.
pub fn draw(metrics: &Path, dir: &Path) -> Result<Vec<String>, TrainError> {
    let rows = read(metrics)?;
    let mut out = Vec::new();
    let loss = series(&rows, "loss");
    if !loss.is_empty() {
        let smooth = ema(&loss, 0.9);
        // The validation series on the training loss's scale: KL for distillation, CE otherwise.
        let val_key =
            if rows.iter().any(|r| r.get("kl").is_some()) { "val_kl" } else { "val_loss" };
        let c = orlik_io::png::line_chart(&[loss, smooth, series(&rows, val_key)], 800, 400, false);
        c.save(&dir.join("loss.png"))?;
        out.push("loss.png".into());
    }
    let bpb = series(&rows, "val_bits_per_byte");
    if !bpb.is_empty() {
        orlik_io::png::line_chart(&[bpb], 800, 400, false).save(&dir.join("val_bpb.png"))?;
        out.push("val_bpb.png".into());
    }
    Ok(out)
}

/// One chart comparing runs: `key` (e.g. `val_bits_per_byte`, `loss`) against `step`, one series
/// per run directory (its metrics.jsonl), smoothed when `smooth`. Returns "colour: run" captions.
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
    let mut all = Vec::new();
    let mut captions = Vec::new();
    for (i, r) in runs.iter().enumerate() {
        let rows = read(&r.join("metrics.jsonl"))?;
        let s = series(&rows, key);
        if s.is_empty() {
            return Err(TrainError::Data(format!("{}: no {key:?} in metrics.jsonl", r.display())));
        }
        let name = orlik_io::png::COLOUR_NAMES[i % orlik_io::png::COLOUR_NAMES.len()];
        captions.push(format!("{name}: {}", r.display()));
        all.push(if smooth { ema(&s, 0.9) } else { s });
    }
    orlik_io::png::line_chart(&all, 800, 400, false).save(out)?;
    Ok(captions)
}

/// `key` per step as a PNG at `out`: raw (blue) and smoothed (red). False when no row has it.
pub fn draw_key(metrics: &Path, key: &str, out: &Path) -> Result<bool, TrainError> {
    let s = series(&read(metrics)?, key);
    if s.is_empty() {
        return Ok(false);
    }
    let smooth = ema(&s, 0.9);
    orlik_io::png::line_chart(&[s, smooth], 800, 400, false).save(out)?;
    Ok(true)
}
