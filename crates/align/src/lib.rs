//! Alignment objectives as pure functions of sequence / token log-probabilities, each returning
//! the loss and its gradient with respect to the policy's log-probabilities (the trainer turns
//! those into a backward through the model, as the KD losses do). The commands that train with
//! them (`orlik sft`, `orlik dpo`, `orlik grpo`) are not built yet.
//!
//! - DPO (Rafailov et al. 2023): `-log σ(β·h)`, h = (log π(y_w) − log π_ref(y_w)) −
//!   (log π(y_l) − log π_ref(y_l)); IPO (Azar et al. 2023): `(h − 1/(2β))²`; DPO-Positive
//!   (Smaug, Pal et al. 2024, arXiv 2402.13228): `-log σ(β·(h − λ·max(0, log π_ref(y_w) −
//!   log π(y_w))))`, which stops the chosen answer's likelihood from falling below the reference.
//! - GRPO (Shao et al. 2024): group-normalised advantages, the clipped ratio objective per token
//!   (ε, ε_high as in DAPO), optional k3 KL to the reference; Dr. GRPO (Liu et al. 2025): no std
//!   normalisation and a constant length normaliser instead of each completion's length.

pub mod dpo;
pub mod grpo;
