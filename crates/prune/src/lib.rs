//! Structured pruning (Minitron): prune plans and exact slicing of HF weights.
//!
//! Plans (plan.rs), plans from importance at exact dims (select.rs), the parameter-budget search
//! (search.rs) and exact slicing (slice.rs).

pub mod plan;
pub mod run;
pub mod search;
pub mod select;
pub mod slice;
pub mod trim;
pub mod vocab;

pub use plan::Plan;
pub use run::{run, PruneInputs, PruneOutcome, PruneSettings};
pub use slice::apply;

#[derive(Debug, thiserror::Error)]
pub enum PruneError {
    #[error("prune plan: {0}")]
    Plan(String),
    #[error("missing tensor {0}")]
    Missing(String),
    #[error("{0}")]
    Input(String),
    #[error(transparent)]
    Io(#[from] orlik_io::IoError),
    #[error(transparent)]
    Score(#[from] orlik_score::ScoreError),
    #[error(transparent)]
    Model(#[from] orlik_model::ModelError),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

#[cfg(test)]
mod tests;
