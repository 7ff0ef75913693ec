//! orlik's trainer, shared by distillation (`orlik distill`), plain language-model training
//! (`orlik train`) and alignment: AdamW on f32 master weights, warmup + cosine / WSD / constant
//! schedules, gradient accumulation, global-norm clipping, packed data in an order that is a pure
//! function of (seed, cursor), atomic checkpoints with full state and bit-identical resume, a
//! non-finite-step guard, graceful interrupt, metrics.jsonl and PNG curves.
//!
//! The loss over the vocabulary is computed outside autograd (`losses.rs`), chunk by chunk over
//! positions, and its gradient is pushed back through lm_head by hand; autograd runs only through
//! the transformer body. See `trainer.rs`.

pub mod bench;
pub mod body;
pub mod checkpoint;
pub mod config;
pub mod curves;
pub mod data;
pub mod lm;
pub mod losses;
pub mod mem;
pub mod optim;
pub mod params;
pub mod runner;
pub mod seqlogp;
pub mod trainer;

pub use config::TrainConfig;
pub use runner::{Micro, Outcome, Task};
pub use trainer::{LmTask, StepRows, TeacherSource, Trainer};

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("config: {0}")]
    Config(String),
    #[error("data: {0}")]
    Data(String),
    #[error("resume: {0}")]
    Resume(String),
    #[error("teacher: {0}")]
    Teacher(String),
    #[error("training stopped: {0}")]
    NonFinite(String),
    /// The memory planner's refusal: the estimate, what is available, and the fixes.
    #[error("memory: {0}")]
    Memory(String),
    #[error(transparent)]
    Io(#[from] orlik_io::IoError),
    #[error(transparent)]
    Plot(#[from] orlik_plot::PlotError),
    #[error(transparent)]
    Model(#[from] orlik_model::ModelError),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error("{path}: {source}")]
    File { path: std::path::PathBuf, source: std::io::Error },
}

pub(crate) fn file_err(
    path: impl Into<std::path::PathBuf>,
) -> impl FnOnce(std::io::Error) -> TrainError {
    let path = path.into();
    move |source| TrainError::File { path, source }
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_matrix;
