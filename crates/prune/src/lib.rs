//! Structured pruning (Minitron): prune plans and exact slicing of HF weights.
//!
//! Plans (plan.rs), plans from importance at exact dims (select.rs), the parameter-budget search
//! (search.rs) and exact slicing (slice.rs).

pub mod plan;
pub mod search;
pub mod select;
pub mod slice;
pub mod vocab;

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
