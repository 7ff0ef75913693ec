//! Checkpoint IO for orlik: safetensors (single or sharded, mmap, validated both ways, atomic
//! sharded writes), GGUF import (v2/v3, dequantisation, llama.cpp Q/K un-permutation) and
//! export (`export`: llama.cpp names, metadata, tokenizer, block quantisation),
//! `tokenizer.json` built from a GGUF's embedded vocabulary, and the guards every command uses:
//! output directories that never overwrite inputs or foreign files (`output`), atomic writes that
//! clean up after killed writers (`atomic`), non-finite weights and SIGBUS on mapped files (`guard`).

pub mod atomic;
pub mod convert;
pub mod export;
pub mod gguf;
pub mod gguf_vocab;
pub mod gguf_write;
pub mod guard;
pub mod hfdir;
pub mod inspect;
pub mod kquants;
pub mod output;
pub mod rope_freqs;
pub mod safetensors;
pub mod text;
pub mod tokenizer;

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum IoError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: {msg}")]
    Format { path: PathBuf, msg: String },
    #[error("{path}: tensor {name}: {msg}")]
    Tensor { path: PathBuf, name: String, msg: String },
    #[error("duplicate tensor {name} in {first} and {second}")]
    Duplicate { name: String, first: PathBuf, second: PathBuf },
    #[error("{index}: shard {shard} is missing")]
    MissingShard { index: PathBuf, shard: PathBuf },
    #[error("{path}: tensor {name}: unsupported GGML type {ty} (supported: F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K)")]
    UnsupportedQuant { path: PathBuf, name: String, ty: String },
    #[error("{}", with_path(path, source))]
    Model { path: PathBuf, source: orlik_model::ModelError },
    #[error("{path}: tokenizer: {msg}")]
    Tokenizer { path: PathBuf, msg: String },
    #[error("{0} already exists (use --force to replace it)")]
    Exists(PathBuf),
    #[error("{path}: {msg}")]
    Output { path: PathBuf, msg: String },
    #[error("{path}: {count} non-finite value(s) in tensor {name} (first at element {first}: {value}); the checkpoint is corrupt")]
    NonFinite { path: PathBuf, name: String, count: usize, first: usize, value: f32 },
    #[error("{context}: {source}")]
    Candle { context: String, source: candle_core::Error },
}

/// "PATH: ERROR", unless the error already names the path (said once, not twice).
fn with_path(path: &std::path::Path, e: &dyn std::fmt::Display) -> String {
    let (p, e) = (path.display().to_string(), e.to_string());
    if e.contains(&p) {
        e
    } else {
        format!("{p}: {e}")
    }
}

pub(crate) fn io_err(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> IoError {
    let path = path.into();
    move |source| IoError::Io { path, source }
}

/// Peak resident set size of this process (Linux VmHWM), in KiB.
pub fn peak_rss_kb() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}
