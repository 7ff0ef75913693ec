//! A frozen model (an online teacher, the teacher of `teacher-cache`, the model being scored,
//! evaluated, sampled or benchmarked) on the device a setting names: the CPU executor's candle
//! model with its matrices as `--compute-dtype` says, or the CUDA inference executor (f32
//! weights).

use crate::device::{resolve, DeviceChoice, Resolved};
use crate::{CudaError, CudaModel, Gpu};
use orlik_io::hfdir::HfModel;
use orlik_model::{ComputeDtype, Infer};

/// A frozen model ready for inference.
pub struct Frozen {
    pub model: Box<dyn Infer>,
    /// The compute dtype it really runs at (recorded in manifests and run.json).
    pub compute: ComputeDtype,
    /// One line for the user when it is not the plain f32 CPU model: where it runs and how its
    /// weights are held.
    pub said: Option<String>,
}

/// `hf`'s weights for inference on `device` ("cpu", "cuda", "cuda:N", "auto"; `local_rank`
/// picks the GPU under a launcher) with its matrices held as `compute` says. A 16-bit compute
/// dtype on a GPU is refused (the GPU holds f32 weights so far).
pub fn load(
    hf: &HfModel,
    compute: ComputeDtype,
    device: &str,
    local_rank: usize,
) -> Result<Frozen, CudaError> {
    match resolve(DeviceChoice::parse(device)?, local_rank)? {
        Resolved::Cpu { .. } => {
            let (model, resolved) = hf.load_frozen(compute)?;
            Ok(Frozen { model: Box::new(model), compute: resolved, said: resolved.describe() })
        }
        Resolved::Cuda(info) => {
            if !matches!(compute, ComputeDtype::Auto | ComputeDtype::F32) {
                return Err(CudaError::Unavailable {
                    asked: device.to_string(),
                    why: format!(
                        "compute dtype {compute}: the GPU holds f32 weights only so far; use auto or f32"
                    ),
                });
            }
            let (model, _) = hf.load_frozen(ComputeDtype::F32)?;
            let on_gpu = CudaModel::from_model(&model, std::sync::Arc::new(Gpu::open(&info)?))?;
            Ok(Frozen {
                model: Box::new(on_gpu),
                compute: ComputeDtype::F32,
                said: Some(format!("on {info}, f32 weights")),
            })
        }
    }
}
