//! The compression pipeline behind `orlik compress` and `orlik run`: a [`Recipe`] (every stage's
//! settings, one serde struct per stage) run by [`run`] as score → prune → distill → (SFT → DPO
//! → GRPO) → eval → (GGUF export) → report, each stage a call into its library, each fingerprinted in
//! OUT/pipeline.json so that a second run keeps what is unchanged and resumes what was
//! interrupted (see `run.rs`). The caller owns the terminal: progress, notices and tables go
//! through [`Ui`], and the stop flag (SIGINT / SIGTERM) is the caller's.

mod gguf;
mod rank;
mod recipe;
mod report;
mod run;
pub mod sweep;

pub use recipe::{apply_sets, Quick, Recipe, TrimSettings, DEFAULT_TOKENS};
pub use report::{gap_closed, AlignEval, AlignStageEval};
pub use run::{run, Aligned, Options, Outcome};

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// A recipe that cannot be run as written: the message names the key, file or line.
    #[error("{0}")]
    Recipe(String),
    /// OUT holds something this run must not overwrite or cannot continue.
    #[error("{path}: {msg}")]
    Output { path: PathBuf, msg: String },
    #[error("{path}: {source}")]
    File { path: PathBuf, source: std::io::Error },
    /// A stage failed: its name, then the library's own error.
    #[error("stage {stage}: {source}")]
    Stage { stage: String, source: Box<PipelineError> },
    #[error(transparent)]
    Io(Box<orlik_io::IoError>),
    #[error(transparent)]
    Model(Box<orlik_model::ModelError>),
    #[error(transparent)]
    Score(Box<orlik_score::ScoreError>),
    #[error(transparent)]
    Prune(Box<orlik_prune::PruneError>),
    #[error(transparent)]
    Train(Box<orlik_train::TrainError>),
    #[error(transparent)]
    Distill(Box<orlik_distill::DistillError>),
    #[error(transparent)]
    Align(Box<orlik_align::AlignError>),
    #[error(transparent)]
    Eval(Box<orlik_eval::EvalError>),
    #[error(transparent)]
    Plot(Box<orlik_plot::PlotError>),
}

// The libraries' errors are boxed: some are large, and every pipeline call returns this type.
macro_rules! boxed_from {
    ($($variant:ident($t:ty)),* $(,)?) => {
        $(impl From<$t> for PipelineError {
            fn from(e: $t) -> Self {
                PipelineError::$variant(Box::new(e))
            }
        })*
    };
}

boxed_from!(
    Io(orlik_io::IoError),
    Model(orlik_model::ModelError),
    Score(orlik_score::ScoreError),
    Prune(orlik_prune::PruneError),
    Train(orlik_train::TrainError),
    Distill(orlik_distill::DistillError),
    Align(orlik_align::AlignError),
    Eval(orlik_eval::EvalError),
    Plot(orlik_plot::PlotError),
);

pub(crate) fn file_err(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> PipelineError {
    let path = path.to_path_buf();
    move |source| PipelineError::File { path, source }
}

/// Where the pipeline's output for a person goes (the CLI: stderr for notices and progress
/// bars, stdout for tables).
pub trait Ui: Sync {
    /// A one-line notice: stage headers (`== prune`), what a stage did, where it wrote.
    fn notice(&self, msg: &str);
    /// A result to keep (a stage's table, the final report's table).
    fn print(&self, text: &str);
    /// Progress of the current step: `what`, `done` of `total`.
    fn progress(&self, what: &str, done: usize, total: usize);
    /// The current step's progress is over (clear its bar).
    fn progress_done(&self);
}

/// A [`Ui`] that says nothing (tests, embedding).
pub struct Quiet;

impl Ui for Quiet {
    fn notice(&self, _: &str) {}
    fn print(&self, _: &str) {}
    fn progress(&self, _: &str, _: usize, _: usize) {}
    fn progress_done(&self) {}
}

impl From<orlik_dist::DistError> for PipelineError {
    fn from(e: orlik_dist::DistError) -> PipelineError {
        orlik_train::TrainError::from(e).into()
    }
}
