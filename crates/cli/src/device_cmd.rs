//! `orlik device`: what `--device` picks here, and whether the CUDA kernels compile for it.

use anyhow::Result;
use orlik_cuda::device::{probe, resolve_with, DeviceChoice, Resolved};
use orlik_cuda::kernels::MODULES;
use orlik_cuda::{nvrtc, Gpu};
use std::time::Instant;

pub fn run(device: &str, kernels: bool) -> Result<()> {
    let choice = DeviceChoice::parse(device)?;
    let found =
        if choice == DeviceChoice::Cpu { Err("not probed (--device cpu)".into()) } else { probe() };
    // Why there is no GPU is said once: in the choice's line (auto) or in the error (cuda).
    if let Ok(gpus) = &found {
        gpus.iter().for_each(|g| println!("found {g}"));
    }
    let local_rank = orlik_dist::world().local_rank();
    let resolved = resolve_with(choice, found, local_rank)?;
    println!("{}", resolved.describe());
    if !kernels {
        return Ok(());
    }
    let start = Instant::now();
    match resolved {
        Resolved::Cuda(info) => {
            let gpu = Gpu::open(&info)?;
            println!(
                "kernels: {} modules ready for {} (NVRTC {}, PTX cache {}), {:.2} s",
                MODULES.len(),
                gpu.arch,
                gpu.nvrtc_version,
                nvrtc::cache_dir().display(),
                start.elapsed().as_secs_f64()
            );
        }
        Resolved::Cpu { .. } => {
            for m in MODULES.iter() {
                nvrtc::compile(m, "compute_90")?;
            }
            println!(
                "kernels: {} modules compile for compute_90 with NVRTC {} (not loaded: no GPU), {:.2} s",
                MODULES.len(),
                nvrtc::version()?,
                start.elapsed().as_secs_f64()
            );
        }
    }
    Ok(())
}
