//! Structured pruning (Minitron): prune plans and exact slicing of HF weights.
//!
//! Status: the plan format and slicing are complete and tested; importance scoring, plan search
//! and the `orlik score` / `orlik prune` commands are not built yet (issue 3).

pub mod plan;
pub mod search;
pub mod select;
pub mod slice;

pub use plan::Plan;
pub use slice::apply;

#[derive(Debug, thiserror::Error)]
pub enum PruneError {
    #[error("prune plan: {0}")]
    Plan(String),
    #[error("missing tensor {0}")]
    Missing(String),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

#[cfg(test)]
mod tests;
