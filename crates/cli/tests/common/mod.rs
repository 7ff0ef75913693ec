//! Helpers shared by the end-to-end tests: run the `orlik` binary, expect success or a clean,
//! one-line error.
#![allow(dead_code)]

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

pub fn orlik(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_orlik")).args(args).output().unwrap()
}

pub fn ok(args: &[&str]) -> String {
    let o = orlik(args);
    assert!(o.status.success(), "{args:?} failed: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout).unwrap()
}

/// Fails with exit 1 and exactly one line on stderr that contains every `needles`.
pub fn fails(args: &[&str], needles: &[&str]) {
    let o = orlik(args);
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
    assert!(!err.contains("panicked"), "{args:?} panicked: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: not one line: {err}");
    for n in needles {
        assert!(err.contains(n), "{args:?}: {err:?} lacks {n:?}");
    }
}

/// A test's temporary directory (removed on drop) and paths in it.
pub struct Dir {
    _tmp: tempfile::TempDir,
    pub root: PathBuf,
}

impl Dir {
    pub fn new() -> Dir {
        let tmp = tempfile::tempdir().unwrap();
        Dir { root: tmp.path().to_path_buf(), _tmp: tmp }
    }

    /// ROOT/name as a string (for argument lists).
    pub fn p(&self, name: &str) -> String {
        self.root.join(name).to_str().unwrap().to_string()
    }
}

/// The tiny GGUF converted into ROOT/teacher, and seeded random text over words its vocabulary
/// knows: ROOT/train.txt (3000 words) and ROOT/val.txt (400), paragraphs of 9 words.
pub fn tiny_teacher_and_text(root: &std::path::Path, seed: u64) {
    let gguf = fixtures().join("gguf/tiny-llama.gguf");
    ok(&["convert", gguf.to_str().unwrap(), "-o", root.join("teacher").to_str().unwrap()]);
    let words = [
        "the", "theater", "then", "anthem", "in", "hearth", "heart", "earth", "at", "a", "tea",
        "hat",
    ];
    let mut x = seed;
    let mut text = |n: usize| orlik_model::testing::seeded_words(&words, n, &mut x);
    std::fs::write(root.join("train.txt"), text(3000)).unwrap();
    std::fs::write(root.join("val.txt"), text(400)).unwrap();
}

/// Rows of OUT/metrics.jsonl; a last line still being written by a running process is left out.
pub fn rows(out: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(Path::new(out).join("metrics.jsonl")).unwrap_or_default();
    let complete = &text[..text.rfind('\n').map_or(0, |i| i + 1)];
    complete.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// The trajectory without wall-clock fields.
pub fn trajectory(out: &str) -> Vec<Value> {
    rows(out)
        .into_iter()
        .map(|mut r| {
            let o = r.as_object_mut().unwrap();
            o.remove("tokens_per_s");
            o.remove("seconds");
            o.remove("comm_seconds");
            o.remove("phase_seconds");
            r
        })
        .collect()
}

pub fn weights(out: &str) -> Vec<u8> {
    std::fs::read(Path::new(out).join("final/model.safetensors")).unwrap()
}

/// Wait until `child`, a training run into `out`, has logged `n` steps (it must still run).
pub fn wait_logged(child: &mut std::process::Child, out: &str, n: usize) {
    let t0 = Instant::now();
    while rows(out).iter().filter(|r| r.get("loss").is_some()).count() < n {
        assert!(t0.elapsed() < Duration::from_secs(120), "run did not progress");
        assert!(child.try_wait().unwrap().is_none(), "run ended before it was interrupted");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Start a slowed-down run, wait until `n` steps are logged, then signal it.
pub fn interrupt_after(
    args: &[&str],
    out: &str,
    n: usize,
    signal: &str,
) -> std::process::ExitStatus {
    let mut child = Command::new(env!("CARGO_BIN_EXE_orlik"))
        .args(args)
        .env("ORLIK_STEP_DELAY_MS", "300")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_logged(&mut child, out, n);
    if signal == "KILL" {
        child.kill().unwrap();
    } else {
        Command::new("kill")
            .args([&format!("-{signal}"), &child.id().to_string()])
            .status()
            .unwrap();
    }
    child.wait().unwrap()
}
