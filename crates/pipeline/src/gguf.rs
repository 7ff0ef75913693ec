//! The pipeline's export stage: the run's final model as OUT/final.gguf (`orlik_io::export`),
//! and, where llama.cpp's `llama-bench` is found, its decode speed as llama.cpp runs it.
//! OUT/export.json records both; the report reads it.

use crate::{PipelineError, Ui};
use orlik_io::export::{ExportReport, ExportSettings};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

type Result<T> = std::result::Result<T, PipelineError>;

/// OUT/export.json.
#[derive(Debug, Serialize, Deserialize)]
pub struct Exported {
    pub gguf: PathBuf,
    /// The HF directory exported.
    pub model: PathBuf,
    pub settings: ExportSettings,
    pub report: ExportReport,
    /// llama.cpp's decode speed of the file (tokens/s, 64 tokens at batch 1), or why not measured.
    pub llama_cpp_decode: std::result::Result<Decode, String>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Decode {
    pub tokens_per_second: f64,
    pub threads: usize,
    pub binary: PathBuf,
}

/// `llama-bench`: in `$ORLIK_LLAMA_CPP` (the binary, or the directory holding it), else on PATH.
fn llama_bench() -> std::result::Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("ORLIK_LLAMA_CPP").map(PathBuf::from) {
        let bin = if p.is_dir() { p.join("llama-bench") } else { p };
        return if bin.is_file() {
            Ok(bin)
        } else {
            Err(format!("ORLIK_LLAMA_CPP={}: no llama-bench there", bin.display()))
        };
    }
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join("llama-bench"))
        .find(|b| b.is_file())
        .ok_or_else(|| {
            "no llama-bench found (set ORLIK_LLAMA_CPP=DIR, or build one with scripts/build-llamacpp.sh)"
                .into()
        })
}

/// Decode tokens/s of `gguf` by llama-bench (`-p 0 -n 64`, JSON output's `avg_ts`).
fn decode_speed(gguf: &Path) -> std::result::Result<Decode, String> {
    let bin = llama_bench()?;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let out = std::process::Command::new(&bin)
        .args(["-m", &gguf.display().to_string(), "-p", "0", "-n", "64", "-r", "3", "-o", "json"])
        .args(["-t", &threads.to_string()])
        .output()
        .map_err(|e| format!("{}: {e}", bin.display()))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(format!("{} failed: {}", bin.display(), err.lines().last().unwrap_or("")));
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| format!("{}: output is not JSON: {e}", bin.display()))?;
    let ts = v
        .as_array()
        .and_then(|a| a.iter().find_map(|r| r["avg_ts"].as_f64()))
        .ok_or_else(|| format!("{}: no avg_ts in its JSON", bin.display()))?;
    Ok(Decode { tokens_per_second: ts, threads, binary: bin })
}

/// Export `model` to OUT/final.gguf and write OUT/export.json.
pub(crate) fn run(model: &Path, out: &Path, s: &ExportSettings, ui: &dyn Ui) -> Result<()> {
    let gguf = out.join("final.gguf");
    let show = |i: usize, n: usize, _: &str| ui.progress("export", i, n);
    let report = orlik_io::export::run(model, &gguf, s.gguf, true, show)?;
    ui.progress_done();
    ui.print(&report.summary(&gguf));
    for n in &report.notes {
        ui.notice(&format!("note: {n}"));
    }
    ui.notice("llama.cpp decode speed (llama-bench)...");
    let llama_cpp_decode = decode_speed(&gguf);
    if let Err(why) = &llama_cpp_decode {
        ui.notice(&format!("llama.cpp decode speed not measured: {why}"));
    }
    let e = Exported { gguf, model: model.into(), settings: s.clone(), report, llama_cpp_decode };
    crate::run::write_json(&out.join("export.json"), &e)
}

/// The report's section on OUT/final.gguf (empty when the recipe exports nothing).
pub(crate) fn section(out: &Path) -> String {
    let Ok(text) = std::fs::read_to_string(out.join("export.json")) else { return String::new() };
    let Ok(e) = serde_json::from_str::<Exported>(&text) else { return String::new() };
    let r = &e.report;
    let types: Vec<String> = r.types.iter().map(|(t, n)| format!("{n} {t}")).collect();
    let mut md = format!(
        "## GGUF for llama.cpp\n\n`final.gguf` ({}, from `{}`): {}, llama.cpp architecture `{}`, {} tokenizer, {} tensors ({}).\n",
        serde_json::to_value(e.settings.gguf).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default(),
        e.model.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default(),
        orlik_io::text::format_size(r.bytes),
        r.arch,
        r.tokenizer,
        r.tensors,
        types.join(", ")
    );
    for (why, names) in &r.fallbacks {
        md.push_str(&format!("- {} tensors stored as {why}.\n", names.len()));
    }
    for n in &r.notes {
        md.push_str(&format!("- {n}.\n"));
    }
    match &e.llama_cpp_decode {
        Ok(d) => md.push_str(&format!(
            "\nllama.cpp decode speed: **{:.1} tokens/s** (llama-bench, 64 tokens at batch 1, {} threads, `{}`).\n\n",
            d.tokens_per_second,
            d.threads,
            d.binary.display()
        )),
        Err(why) => md.push_str(&format!("\nllama.cpp decode speed not measured: {why}.\n\n")),
    }
    md
}
