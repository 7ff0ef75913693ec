//! A frozen model (an online teacher, the teacher of `teacher-cache`, a model being evaluated,
//! sampled or benchmarked) on the device a setting names: the CPU executor's candle model with
//! its matrices as `--compute-dtype` says, or the CUDA inference executor (f32 weights).

use crate::exec::Backend;
use crate::{TrainConfig, TrainError};
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

/// `hf`'s weights for inference on `device` ("cpu", "cuda", "cuda:N", "auto") with its
/// matrices held as `compute` says. A 16-bit compute dtype on a GPU is refused (the GPU holds
/// f32 weights so far).
pub fn load(hf: &HfModel, compute: ComputeDtype, device: &str) -> Result<Frozen, TrainError> {
    let probe = TrainConfig { device: device.to_string(), ..TrainConfig::default() };
    match Backend::of(&probe)? {
        Backend::Cpu => {
            let (model, resolved) = hf.load_frozen(compute)?;
            Ok(Frozen { model: Box::new(model), compute: resolved, said: resolved.describe() })
        }
        Backend::Cuda(info) => {
            if !matches!(compute, ComputeDtype::Auto | ComputeDtype::F32) {
                return Err(TrainError::Config(format!(
                    "compute dtype {compute} on device {device}: the GPU holds f32 weights only so far; \
                     use auto or f32"
                )));
            }
            let (model, _) = hf.load_frozen(ComputeDtype::F32)?;
            let gpu = orlik_cuda::Gpu::open(&info)
                .map_err(|e| TrainError::Model(orlik_model::ModelError::Backend(e.to_string())))?;
            let on_gpu = orlik_cuda::CudaModel::from_model(&model, std::sync::Arc::new(gpu))?;
            Ok(Frozen {
                model: Box::new(on_gpu),
                compute: ComputeDtype::F32,
                said: Some(format!("on {info}, f32 weights")),
            })
        }
    }
}
