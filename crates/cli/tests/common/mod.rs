//! Helpers shared by the end-to-end tests: run the `orlik` binary, expect success or a clean,
//! one-line error.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Command, Output};

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

/// The tiny GGUF converted into ROOT/teacher, and seeded random text over words its vocabulary
/// knows: ROOT/train.txt (3000 words) and ROOT/val.txt (400), paragraphs of 9 words.
pub fn tiny_teacher_and_text(root: &std::path::Path, seed: u64) {
    let gguf = fixtures().join("gguf/tiny-llama.gguf");
    ok(&["convert", gguf.to_str().unwrap(), "-o", root.join("teacher").to_str().unwrap()]);
    let words = ["the", "theater", "then", "anthem", "in", "hearth", "heart", "earth", "at", "a", "tea", "hat"];
    let mut x = seed;
    let mut text = |n: usize| {
        let mut s = String::new();
        for i in 0..n {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            s.push_str(words[(x >> 33) as usize % words.len()]);
            s.push_str(if i % 9 == 8 { "\n\n" } else { " " });
        }
        s
    };
    std::fs::write(root.join("train.txt"), text(3000)).unwrap();
    std::fs::write(root.join("val.txt"), text(400)).unwrap();
}
