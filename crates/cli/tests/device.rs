//! `orlik device`: what --device picks here. On a machine without a GPU (CI, this one) `cuda`
//! is a one-line error saying what is missing and `auto` says it took the CPU and why; on a GPU
//! machine both take the GPU.

#![allow(clippy::unwrap_used)] // tests unwrap: a failure is the test failing

mod common;
use common::{fails, ok};
use orlik_cuda::device::probe;

#[test]
fn device_says_what_it_takes_and_why() {
    assert_eq!(ok(&["device", "--device", "cpu"]).trim(), "device: cpu");
    fails(
        &["device", "--device", "gpu"],
        &["--device \"gpu\": expected auto, cpu, cuda or cuda:N"],
    );
    let auto = ok(&["device"]);
    match probe() {
        Err(why) => {
            assert_eq!(auto.trim(), format!("device: cpu (no GPU: {why})"));
            fails(
                &["device", "--device", "cuda"],
                &["error: --device cuda: no usable GPU: ", &why],
            );
            fails(&["device", "--device", "cuda:0"], &["--device cuda:0: no usable GPU"]);
        }
        Ok(gpus) => {
            assert!(auto.contains(&format!("device: {}", gpus[0])), "{auto}");
            let past = format!("cuda:{}", gpus.len());
            fails(&["device", "--device", &past], &[&format!("--device {past}: this machine has")]);
        }
    }
}
