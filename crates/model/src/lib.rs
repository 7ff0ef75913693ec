//! orlik's model core: HF-layout decoder-only causal LMs with a differentiable forward.
//!
//! Parameters are plain candle tensors keyed by their exact HF names; a training caller passes
//! `Var`s (as tensors) and gets gradients for every one of them. See `llama.rs` for the forward.

pub mod block;
pub mod config;
pub mod cpu;
pub mod infer;
pub mod init;
pub mod llama;
pub mod masked_softmax;
pub mod ops;
pub mod prob;
pub mod testing;

pub use config::{Arch, Config};
pub use cpu::GradModel;
pub use infer::{ComputeDtype, Infer};
pub use llama::{KvCache, Model, ModelOptions, Tap};

use std::collections::HashMap;

/// Tensors by HF name.
pub type Weights = HashMap<String, candle_core::Tensor>;

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("{origin}: invalid config: {msg}")]
    Config { origin: String, msg: String },
    #[error("{origin}: unknown architecture {name:?} (supported: {})", Arch::SUPPORTED.join(", "))]
    UnknownArchitecture { origin: String, name: String },
    #[error("missing tensor {name} (expected shape {expected:?})")]
    MissingTensor { name: String, expected: Vec<usize> },
    #[error("tensor {name}: expected shape {expected:?}, found {actual:?}")]
    Shape { name: String, expected: Vec<usize>, actual: Vec<usize> },
    #[error("unexpected tensor {name} (not used by this config)")]
    ExtraTensor { name: String },
    #[error("input: {0}")]
    Input(String),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// An executor's own failure (a GPU's driver or library), said by that executor.
    #[error("{0}")]
    Backend(String),
}

#[cfg(test)]
mod tests;
