//! The CPU flat-buffer executor: the block of `block.rs` on plain f32 slices with hand-written
//! kernels (`kernels.rs`: gemm, norms, RoPE, softmax; `act.rs`: the MLP's activations) and a hand-written backward
//! (`train.rs`, attention in `attention.rs`). Results depend only on the inputs and the thread
//! count: every reduction runs in a fixed order.

pub mod act;
pub mod attention;
pub mod kernels;
pub mod mixed;
pub mod train;

pub use train::{GradModel, Keep, Saved};
