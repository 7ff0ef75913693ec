//! NVIDIA GPUs from the binary that is built without any CUDA (issue 17, first part).
//!
//! Nothing here needs a CUDA toolkit, a driver or a GPU at build time: `cudarc` opens libcuda,
//! libnvrtc and libcublas at run time (dynamic loading, CUDA 13.0 bindings for driver 580), and
//! every kernel is CUDA C in `kernels/` compiled by NVRTC for the GPU found, cached on disk.
//!
//! | module | what it does |
//! | --- | --- |
//! | [`device`] | `--device auto\|cpu\|cuda\|cuda:N`: what was asked, what the machine has, and a one-line reason when a GPU cannot be used (no driver, no device, no such ordinal) |
//! | [`nvrtc`] | the NVRTC library (the machine's own, or `ORLIK_NVRTC_LIB`), compiling a kernel module for an architecture, the PTX cache |
//! | [`kernels`] | the kernel modules: sources, the functions each defines |
//! | [`gpu`] | a context on one GPU with every module loaded and cuBLAS: the launches of the block's kernels on device buffers |
//! | [`infer`] | the inference executor: `orlik_model::Infer` on a GPU (f32), KV cache on the device |
//! | [`block`] | one layer's forward (keeping what its backward needs) and backward, for both executors |
//! | [`frozen`] | a frozen model (teacher, evaluated or scored model) on the device a setting names |
//!
//! What is here is the kernel layer of the CUDA executor: the block's operations (embedding,
//! RMSNorm, RoPE, the gated MLP's activations, causal GQA attention with its backward, the
//! lm_head losses' row terms, AdamW and the global norm) and the matrix products (cuBLAS), each
//! tested on a GPU against the CPU executor's kernels (`tests/kernels.rs`; skipped with the
//! reason printed where there is no GPU), and the inference executor built on them
//! ([`CudaModel`], `eval ppl --device cuda`). The training executor (`orlik_train::exec`) comes
//! next.

pub mod block;
pub mod device;
pub mod frozen;
pub mod gpu;
pub mod infer;
pub mod kernels;
pub mod nvrtc;

pub use cudarc::driver::CudaSlice;
pub use device::{DeviceChoice, GpuInfo, Resolved};
pub use gpu::Gpu;
pub use infer::CudaModel;

#[derive(Debug, thiserror::Error)]
pub enum CudaError {
    /// `--device` (or the recipe key `device`) is not one of the accepted forms.
    #[error("--device {0:?}: expected auto, cpu, cuda or cuda:N")]
    BadDevice(String),
    /// A GPU was asked for and cannot be used; the message says what is missing.
    #[error("--device {asked}: {why}")]
    Unavailable { asked: String, why: String },
    /// NVRTC cannot be loaded or used.
    #[error("NVRTC: {0}")]
    Nvrtc(String),
    /// A kernel module does not compile (orlik's bug, with NVRTC's log).
    #[error("kernels/{module}.cu does not compile for {arch} with NVRTC {version}:\n{log}")]
    Compile { module: String, arch: String, version: String, log: String },
    /// A CUDA driver call failed.
    #[error("CUDA driver: {0}")]
    Driver(String),
    /// A cuBLAS call failed.
    #[error("cuBLAS: {0}")]
    Blas(String),
    /// A launch's arguments do not fit the kernel (orlik's bug, not the user's).
    #[error("internal: {0}")]
    Internal(String),
    /// Reading a model to put on a device.
    #[error(transparent)]
    Io(#[from] orlik_io::IoError),
    #[error(transparent)]
    Model(#[from] orlik_model::ModelError),
}

impl From<cudarc::driver::DriverError> for CudaError {
    fn from(e: cudarc::driver::DriverError) -> CudaError {
        CudaError::Driver(device::driver_error_text(&e))
    }
}

impl From<cudarc::cublas::result::CublasError> for CudaError {
    fn from(e: cudarc::cublas::result::CublasError) -> CudaError {
        CudaError::Blas(format!("{e:?}"))
    }
}
