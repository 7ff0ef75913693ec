//! orlik's trainer, shared by distillation (`orlik distill`), plain language-model training
//! (`orlik train`) and alignment: AdamW on f32 master weights, warmup + cosine / WSD / constant
//! schedules, gradient accumulation, global-norm clipping, packed data in an order that is a pure
//! function of (seed, cursor), atomic checkpoints with full state and bit-identical resume, a
//! non-finite-step guard, graceful interrupt, metrics.jsonl and PNG curves.
//!
//! Weights, gradients, optimizer state and activations live in an executor (`exec/`: the
//! interface a backend implements, and the CPU executor); the loop (`runner.rs`) and the
//! objectives see only its operations. The loss over the vocabulary is computed chunk by chunk
//! over positions and its gradient pushed back through lm_head by hand (`losses.rs`,
//! `body.rs`). See `trainer.rs`.

pub mod bench;
mod body;
pub mod checkpoint;
pub mod config;
pub mod curves;
pub mod data;
pub mod dataset;
pub mod exec;
pub mod lm;
pub mod losses;
pub mod mem;
pub mod optim;
mod params;
pub mod phase;
pub mod runner;
pub mod seqlogp;
pub mod shard;
pub mod trainer;

pub use config::TrainConfig;
pub use exec::{Backend, Executor};
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
    #[error("data parallel: {0}")]
    Dist(#[from] orlik_dist::DistError),
    /// A GPU's failure (boxed: the error stays small for the common paths).
    #[error(transparent)]
    Cuda(Box<orlik_cuda::CudaError>),
}

impl From<orlik_cuda::CudaError> for TrainError {
    fn from(e: orlik_cuda::CudaError) -> TrainError {
        TrainError::Cuda(Box::new(e))
    }
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
