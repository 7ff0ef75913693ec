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
