//! Evaluation: perplexity / bits per byte, multiple choice, teacher agreement, generation,
//! forward speed.

pub mod agree;
pub mod generate;
pub mod mc;
pub mod ppl;
pub mod show;
pub mod speed;
pub mod suite;

#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error("{0}")]
    Input(String),
    /// A computed result that is NaN or infinite: never printed as a number.
    #[error("{0} is not finite: the model computes NaN or infinite values (corrupt or overflowing weights?)")]
    NonFinite(String),
    #[error(transparent)]
    Model(#[from] orlik_model::ModelError),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error(transparent)]
    Io(#[from] orlik_io::IoError),
}

/// Read a text file as UTF-8; empty or non-UTF-8 files are errors naming the file
/// (`orlik_io::text::read_text`).
pub fn read_text(path: &std::path::Path) -> Result<String, EvalError> {
    Ok(orlik_io::text::read_text(path)?)
}
