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

/// The frozen-model commands take --device: cpu runs as before, auto says where it went, and
/// cuda without a GPU is the same one-line error as `orlik device` gives, before any work.
#[test]
fn eval_ppl_takes_a_device() {
    let d = common::Dir::new();
    let gguf = common::fixtures().join("gguf/tiny-llama.gguf");
    ok(&["convert", gguf.to_str().unwrap(), "-o", &d.p("tiny")]);
    std::fs::write(d.root.join("t.txt"), "the theater then the anthem ".repeat(20)).unwrap();
    let run = |device: &str| {
        common::orlik(&[
            "eval",
            "ppl",
            &d.p("tiny"),
            "--text",
            &d.p("t.txt"),
            "--context",
            "16",
            "--json",
            "--device",
            device,
        ])
    };
    let cpu: serde_json::Value = serde_json::from_slice(&run("cpu").stdout).unwrap();
    assert_eq!(cpu["device"], "cpu");
    assert_eq!(cpu["compute_dtype"], "f32");
    match probe() {
        Err(why) => {
            let auto = run("auto");
            assert!(auto.status.success());
            let v: serde_json::Value = serde_json::from_slice(&auto.stdout).unwrap();
            assert_eq!(v["nll"], cpu["nll"], "auto without a GPU is the CPU run");
            assert!(String::from_utf8_lossy(&auto.stderr)
                .contains(&format!("device: cpu (no GPU: {why})")));
            fails(
                &["eval", "ppl", &d.p("tiny"), "--text", &d.p("t.txt"), "--device", "cuda"],
                &["--device cuda: no usable GPU"],
            );
            fails(
                &["bench", &d.p("tiny"), "--device", "cuda:0"],
                &["--device cuda:0: no usable GPU"],
            );
            fails(
                &["generate", &d.p("tiny"), "--prompt", "the", "--device", "cuda"],
                &["no usable GPU"],
            );
        }
        Ok(_) => {
            // On a GPU: the f32 GPU executor's bits/byte within 1e-5 of the CPU's.
            let gpu: serde_json::Value = serde_json::from_slice(&run("cuda").stdout).unwrap();
            let (a, b) =
                (gpu["bits_per_byte"].as_f64().unwrap(), cpu["bits_per_byte"].as_f64().unwrap());
            assert!((a - b).abs() <= 1e-5 * b.abs(), "GPU {a} vs CPU {b}");
            assert_eq!(gpu["device"], "cuda");
        }
    }
    fails(&["eval", "ppl", &d.p("tiny"), "--text", &d.p("t.txt"), "--device", "tpu"], &["\"tpu\""]);
}

/// Training takes --device too (recipe / config key `device`): without a GPU, cuda is refused
/// before the output directory is made; on one, the loss of each step follows the CPU run's.
#[test]
fn train_takes_a_device() {
    let d = common::Dir::new();
    common::tiny_teacher_and_text(&d.root, 7);
    let run = |device: &str, out: &str| {
        common::orlik(&[
            "train",
            &d.p("teacher"),
            "--data",
            &d.p("train.txt"),
            "--steps",
            "3",
            "--batch",
            "2",
            "--seq-len",
            "16",
            "--device",
            device,
            "-o",
            &d.p(out),
        ])
    };
    assert!(run("cpu", "cpu").status.success());
    let run_json = std::fs::read_to_string(d.root.join("cpu/run.json")).unwrap();
    assert!(!run_json.contains("\"device\""), "cpu is left out of run.json: {run_json}");
    match probe() {
        Err(_) => {
            fails(
                &[
                    "train",
                    &d.p("teacher"),
                    "--data",
                    &d.p("train.txt"),
                    "--steps",
                    "3",
                    "--seq-len",
                    "16",
                    "--device",
                    "cuda",
                    "-o",
                    &d.p("gpu"),
                ],
                &["--device cuda: no usable GPU"],
            );
            assert!(!d.root.join("gpu").exists(), "a refused run leaves no directory");
        }
        Ok(_) => {
            assert!(run("cuda", "gpu").status.success());
            let losses = |dir: &str| -> Vec<f64> {
                std::fs::read_to_string(d.root.join(dir).join("metrics.jsonl"))
                    .unwrap()
                    .lines()
                    .filter_map(|l| {
                        serde_json::from_str::<serde_json::Value>(l).ok()?["loss"].as_f64()
                    })
                    .collect()
            };
            let (c, g) = (losses("cpu"), losses("gpu"));
            assert_eq!(c.len(), g.len());
            for (a, b) in g.iter().zip(&c) {
                assert!((a - b).abs() <= 1e-4 * b.abs(), "GPU loss {a} vs CPU {b}");
            }
        }
    }
    fails(
        &[
            "train",
            &d.p("teacher"),
            "--data",
            &d.p("train.txt"),
            "--steps",
            "3",
            "--device",
            "tpu",
            "-o",
            &d.p("x"),
        ],
        &["\"tpu\""],
    );
}

/// `teacher-cache --device`: cuda without a GPU is refused before the cache directory is made;
/// with one, the cache's shards hold the CPU cache's top-k ids.
#[test]
fn teacher_cache_takes_a_device() {
    let d = common::Dir::new();
    common::tiny_teacher_and_text(&d.root, 11);
    let args = |device: &str, out: &str| -> Vec<String> {
        [
            "teacher-cache",
            "--teacher",
            &d.p("teacher"),
            "--data",
            &d.p("train.txt"),
            "--topk",
            "8",
            "--seq-len",
            "16",
            "--device",
            device,
            "-o",
            &d.p(out),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let run = |device: &str, out: &str| {
        let a = args(device, out);
        common::orlik(&a.iter().map(String::as_str).collect::<Vec<_>>())
    };
    assert!(run("cpu", "cpu").status.success());
    match probe() {
        Err(_) => {
            let a = args("cuda", "gpu");
            fails(
                &a.iter().map(String::as_str).collect::<Vec<_>>(),
                &["--device cuda: no usable GPU"],
            );
            assert!(!d.root.join("gpu").exists(), "a refused cache leaves no directory");
        }
        Ok(_) => {
            assert!(run("cuda", "gpu").status.success());
            let manifest = |dir: &str| -> serde_json::Value {
                serde_json::from_str(
                    &std::fs::read_to_string(d.root.join(dir).join("cache.json")).unwrap(),
                )
                .unwrap()
            };
            assert_eq!(
                manifest("gpu")["train"],
                manifest("cpu")["train"],
                "the same windows and shards"
            );
        }
    }
}

/// `score --device` (recipe key `score.device`): cuda without a GPU is refused before the
/// output is made, a bad value names the flag; with a GPU the scores follow the CPU's.
#[test]
fn score_takes_a_device() {
    let d = common::Dir::new();
    common::tiny_teacher_and_text(&d.root, 13);
    let args = |device: &str, out: &str| -> Vec<String> {
        let a = [
            "score",
            &d.p("teacher"),
            "--data",
            &d.p("train.txt"),
            "--samples",
            "4",
            "--seq-len",
            "16",
            "--batch",
            "2",
            "--loo-batches",
            "1",
            "--device",
            device,
            "-o",
            &d.p(out),
        ];
        a.iter().map(|s| s.to_string()).collect()
    };
    let run = |device: &str, out: &str| {
        let a = args(device, out);
        common::orlik(&a.iter().map(String::as_str).collect::<Vec<_>>())
    };
    assert!(run("cpu", "cpu").status.success());
    let bad = args("tpu", "bad");
    fails(&bad.iter().map(String::as_str).collect::<Vec<_>>(), &["\"tpu\""]);
    match probe() {
        Err(_) => {
            let a = args("cuda", "gpu");
            fails(
                &a.iter().map(String::as_str).collect::<Vec<_>>(),
                &["--device cuda: no usable GPU"],
            );
            assert!(!d.root.join("gpu").exists(), "a refused score leaves no directory");
        }
        Ok(_) => {
            assert!(run("cuda", "gpu").status.success());
            let scores = |dir: &str| -> serde_json::Value {
                serde_json::from_str(
                    &std::fs::read_to_string(d.root.join(dir).join("scores.json")).unwrap(),
                )
                .unwrap()
            };
            let (c, g) = (scores("cpu"), scores("gpu"));
            let (a, b) = (c["full_loss"].as_f64().unwrap(), g["full_loss"].as_f64().unwrap());
            assert!((a - b).abs() <= 1e-4 * a.abs(), "calibration loss GPU {b} vs CPU {a}");
        }
    }
}
