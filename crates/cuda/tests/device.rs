//! `--device` on this machine, whatever it has: without a GPU, `cuda` is a one-line error that
//! says what is missing and `auto` falls back to the CPU saying why; with one, both take it.

#![allow(clippy::unwrap_used)] // tests unwrap: a failure is the test failing

use orlik_cuda::device::{probe, resolve, DeviceChoice, Resolved};

#[test]
fn cuda_is_taken_where_there_is_one_and_a_one_line_reason_where_not() {
    let cuda = resolve(DeviceChoice::Cuda(None), 0);
    let auto = resolve(DeviceChoice::Auto, 0).unwrap();
    assert_eq!(resolve(DeviceChoice::Cpu, 0).unwrap(), Resolved::Cpu { why_not_gpu: None });
    match probe() {
        Ok(gpus) => {
            assert_eq!(cuda.unwrap(), Resolved::Cuda(gpus[0].clone()));
            assert_eq!(auto, Resolved::Cuda(gpus[0].clone()));
            let past = DeviceChoice::Cuda(Some(gpus.len()));
            let e = resolve(past, 0).unwrap_err().to_string();
            assert!(
                e.starts_with(&format!("--device cuda:{}: this machine has", gpus.len())),
                "{e}"
            );
        }
        Err(why) => {
            let e = cuda.unwrap_err().to_string();
            assert_eq!(e, format!("--device cuda: no usable GPU: {why}"));
            assert!(!e.contains('\n'), "{e}");
            assert!(
                why.contains("libcuda") || why.contains("driver") || why.contains("device"),
                "{why}"
            );
            assert_eq!(auto, Resolved::Cpu { why_not_gpu: Some(why.clone()) });
            assert_eq!(auto.describe(), format!("device: cpu (no GPU: {why})"));
            let e = resolve(DeviceChoice::Cuda(Some(1)), 0).unwrap_err().to_string();
            assert_eq!(e, format!("--device cuda:1: no usable GPU: {why}"));
        }
    }
}
