//! Alignment after distillation, on orlik's trainer (`orlik_train`): SFT on conversations, DPO
//! (sigmoid, IPO, DPO-Positive) on preference pairs, GRPO on prompts with verifiable rewards.
//! The objectives are pure functions of sequence / token log-probabilities returning the loss and
//! its gradient with respect to them (`dpo.rs`, `grpo.rs`); `orlik_train::seqlogp` turns those
//! into a backward through the model. Each objective is a `Task` of the one training loop,
//! `orlik_train::runner` (resume, checkpoints, metrics, the non-finite guard).
//!
//! - DPO (Rafailov et al. 2023): `-log σ(β·h)`, h = (log π(y_w) − log π_ref(y_w)) −
//!   (log π(y_l) − log π_ref(y_l)); IPO (Azar et al. 2023): `(h − 1/(2β))²`; DPO-Positive
//!   (Smaug, Pal et al. 2024, arXiv 2402.13228): `-log σ(β·(h − λ·max(0, log π_ref(y_w) −
//!   log π(y_w))))`, which stops the chosen answer's likelihood from falling below the reference.
//! - GRPO (Shao et al. 2024): group-normalised advantages, the clipped ratio objective per token
//!   (ε, ε_high as in DAPO), optional k3 KL to the reference; Dr. GRPO (Liu et al. 2025): no std
//!   normalisation and a constant length normaliser instead of each completion's length.

pub mod chat;
pub mod data;
pub mod dpo;
pub mod grpo;
pub mod reward;
pub mod rollout;
pub mod sft;
pub mod stage;

#[derive(Debug, thiserror::Error)]
pub enum AlignError {
    #[error("data: {0}")]
    Data(String),
    #[error("chat template: {0}")]
    Template(String),
    #[error("config: {0}")]
    Config(String),
    #[error("reward: {0}")]
    Reward(String),
    #[error(transparent)]
    Train(#[from] orlik_train::TrainError),
    #[error(transparent)]
    Model(#[from] orlik_model::ModelError),
    #[error(transparent)]
    Eval(#[from] orlik_eval::EvalError),
    #[error(transparent)]
    Io(#[from] orlik_io::IoError),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

impl From<orlik_dist::DistError> for AlignError {
    fn from(e: orlik_dist::DistError) -> AlignError {
        AlignError::Train(e.into())
    }
}
