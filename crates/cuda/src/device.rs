//! Which device a command runs on: `--device auto|cpu|cuda|cuda:N` (recipe key `device`).
//!
//! `auto` takes the first usable GPU, else the CPU, and says which; under a data-parallel
//! launch it takes the GPU of the process's local rank (rank r on a machine takes GPU r mod
//! count). `cuda` without a usable GPU is an error that names what is missing: the driver
//! library, a device, the ordinal. Probing opens libcuda only; it creates no context, so it
//! costs no GPU memory.

use crate::CudaError;
use cudarc::driver::{result, sys, DriverError};

/// What the user asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceChoice {
    /// The first usable GPU (the local rank's), else the CPU.
    #[default]
    Auto,
    Cpu,
    /// A GPU: the local rank's (None) or this ordinal.
    Cuda(Option<usize>),
}

impl DeviceChoice {
    pub fn parse(s: &str) -> Result<DeviceChoice, CudaError> {
        match s {
            "auto" => Ok(DeviceChoice::Auto),
            "cpu" => Ok(DeviceChoice::Cpu),
            "cuda" => Ok(DeviceChoice::Cuda(None)),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|n| n.parse::<usize>().ok())
                .map(|n| DeviceChoice::Cuda(Some(n)))
                .ok_or_else(|| CudaError::BadDevice(s.to_string())),
        }
    }
}

impl std::fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeviceChoice::Auto => f.write_str("auto"),
            DeviceChoice::Cpu => f.write_str("cpu"),
            DeviceChoice::Cuda(None) => f.write_str("cuda"),
            DeviceChoice::Cuda(Some(n)) => write!(f, "cuda:{n}"),
        }
    }
}

/// One GPU as the driver reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct GpuInfo {
    pub ordinal: usize,
    pub name: String,
    /// Compute capability (9, 0 for H100 / H200).
    pub capability: (i32, i32),
    pub total_bytes: usize,
}

impl std::fmt::Display for GpuInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let gib = self.total_bytes as f64 / (1u64 << 30) as f64;
        let (ma, mi) = self.capability;
        write!(f, "cuda:{} {} (sm_{ma}{mi}, {gib:.1} GiB)", self.ordinal, self.name)
    }
}

/// Where a command runs.
#[derive(Debug, Clone, PartialEq)]
pub enum Resolved {
    /// The CPU; with `auto`, why no GPU was taken.
    Cpu {
        why_not_gpu: Option<String>,
    },
    Cuda(GpuInfo),
}

impl Resolved {
    /// One line for the user: "device: cuda:0 NVIDIA H200 (sm_90, 139.8 GiB)" or
    /// "device: cpu (no GPU: ...)".
    pub fn describe(&self) -> String {
        match self {
            Resolved::Cuda(g) => format!("device: {g}"),
            Resolved::Cpu { why_not_gpu: Some(why) } => format!("device: cpu (no GPU: {why})"),
            Resolved::Cpu { why_not_gpu: None } => "device: cpu".to_string(),
        }
    }
}

/// "CUDA_ERROR_NO_DEVICE (no CUDA-capable device is detected)" where the driver names it.
pub fn driver_error_text(e: &DriverError) -> String {
    let name = e.error_name().map(|s| s.to_string_lossy().into_owned());
    let text = e.error_string().map(|s| s.to_string_lossy().into_owned());
    match (name, text) {
        (Ok(n), Ok(t)) => format!("{n} ({t})"),
        (Ok(n), Err(_)) => n,
        _ => format!("{:?}", e.0),
    }
}

/// The GPUs this process can use, or why there are none (the driver library missing, the
/// driver refusing to start, no device).
pub fn probe() -> Result<Vec<GpuInfo>, String> {
    // SAFETY: only tries to dlopen the library; no symbol is called.
    if !unsafe { sys::is_culib_present() } {
        return Err("the NVIDIA driver library (libcuda.so.1) is not installed or not on the \
                    library path"
            .into());
    }
    result::init()
        .map_err(|e| format!("the CUDA driver did not start: {}", driver_error_text(&e)))?;
    let count = result::device::get_count().map_err(|e| driver_error_text(&e))?;
    if count <= 0 {
        return Err("the driver reports no CUDA device".into());
    }
    (0..count).map(|i| info(i).map_err(|e| driver_error_text(&e))).collect()
}

fn info(ordinal: i32) -> Result<GpuInfo, DriverError> {
    use sys::CUdevice_attribute as A;
    let dev = result::device::get(ordinal)?;
    // SAFETY: `dev` is a device handle the driver just returned.
    let (total, ma, mi) = unsafe {
        (
            result::device::total_mem(dev)?,
            result::device::get_attribute(dev, A::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)?,
            result::device::get_attribute(dev, A::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)?,
        )
    };
    Ok(GpuInfo {
        ordinal: ordinal as usize,
        name: result::device::get_name(dev)?,
        capability: (ma, mi),
        total_bytes: total,
    })
}

/// The device for `choice` given what [`probe`] found; `local_rank` picks the GPU under a
/// data-parallel launch (0 otherwise).
pub fn resolve_with(
    choice: DeviceChoice,
    found: Result<Vec<GpuInfo>, String>,
    local_rank: usize,
) -> Result<Resolved, CudaError> {
    let unavailable = |why: String| CudaError::Unavailable { asked: choice.to_string(), why };
    match (choice, found) {
        (DeviceChoice::Cpu, _) => Ok(Resolved::Cpu { why_not_gpu: None }),
        (DeviceChoice::Auto, Err(why)) => Ok(Resolved::Cpu { why_not_gpu: Some(why) }),
        (DeviceChoice::Cuda(_), Err(why)) => Err(unavailable(format!("no usable GPU: {why}"))),
        (DeviceChoice::Auto | DeviceChoice::Cuda(None), Ok(gpus)) => {
            Ok(Resolved::Cuda(gpus[local_rank % gpus.len()].clone()))
        }
        (DeviceChoice::Cuda(Some(n)), Ok(gpus)) => match gpus.get(n) {
            Some(g) => Ok(Resolved::Cuda(g.clone())),
            None => Err(unavailable(format!(
                "this machine has {} GPU{} (cuda:0{})",
                gpus.len(),
                if gpus.len() == 1 { "" } else { "s" },
                if gpus.len() > 1 { format!("..cuda:{}", gpus.len() - 1) } else { String::new() }
            ))),
        },
    }
}

/// [`resolve_with`] on this machine.
pub fn resolve(choice: DeviceChoice, local_rank: usize) -> Result<Resolved, CudaError> {
    let found = if choice == DeviceChoice::Cpu { Ok(Vec::new()) } else { probe() };
    resolve_with(choice, found, local_rank)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gpu(ordinal: usize) -> GpuInfo {
        GpuInfo { ordinal, name: "Test GPU".into(), capability: (9, 0), total_bytes: 80 << 30 }
    }

    #[test]
    fn parses_every_form_and_names_the_bad_one() {
        assert_eq!(DeviceChoice::parse("auto").unwrap(), DeviceChoice::Auto);
        assert_eq!(DeviceChoice::parse("cpu").unwrap(), DeviceChoice::Cpu);
        assert_eq!(DeviceChoice::parse("cuda").unwrap(), DeviceChoice::Cuda(None));
        assert_eq!(DeviceChoice::parse("cuda:3").unwrap(), DeviceChoice::Cuda(Some(3)));
        for bad in ["gpu", "cuda:", "cuda:x", "CUDA", "cuda:-1"] {
            let e = DeviceChoice::parse(bad).unwrap_err().to_string();
            assert_eq!(e, format!("--device {bad:?}: expected auto, cpu, cuda or cuda:N"));
        }
        for s in ["auto", "cpu", "cuda", "cuda:2"] {
            assert_eq!(DeviceChoice::parse(s).unwrap().to_string(), s);
        }
    }

    #[test]
    fn resolution_follows_what_was_found() {
        let none = || Err::<Vec<GpuInfo>, _>("no driver".to_string());
        let two = || Ok(vec![gpu(0), gpu(1)]);
        let cpu = resolve_with(DeviceChoice::Auto, none(), 0).unwrap();
        assert_eq!(cpu, Resolved::Cpu { why_not_gpu: Some("no driver".into()) });
        assert_eq!(cpu.describe(), "device: cpu (no GPU: no driver)");
        let e = resolve_with(DeviceChoice::Cuda(None), none(), 0).unwrap_err().to_string();
        assert_eq!(e, "--device cuda: no usable GPU: no driver");
        assert_eq!(resolve_with(DeviceChoice::Auto, two(), 3).unwrap(), Resolved::Cuda(gpu(1)));
        assert_eq!(
            resolve_with(DeviceChoice::Cuda(Some(1)), two(), 0).unwrap(),
            Resolved::Cuda(gpu(1))
        );
        let e = resolve_with(DeviceChoice::Cuda(Some(2)), two(), 0).unwrap_err().to_string();
        assert_eq!(e, "--device cuda:2: this machine has 2 GPUs (cuda:0..cuda:1)");
        let e = resolve_with(DeviceChoice::Cuda(Some(1)), Ok(vec![gpu(0)]), 0).unwrap_err();
        assert_eq!(e.to_string(), "--device cuda:1: this machine has 1 GPU (cuda:0)");
        assert_eq!(
            resolve_with(DeviceChoice::Cpu, two(), 0).unwrap(),
            Resolved::Cpu { why_not_gpu: None }
        );
        assert_eq!(Resolved::Cuda(gpu(0)).describe(), "device: cuda:0 Test GPU (sm_90, 80.0 GiB)");
    }
}
