//! Every golden file says which version of its layout it is and the command that regenerates
//! it, so that a changed reference is remade the same way (style rule: parity through a
//! committed generator).

#![allow(clippy::unwrap_used)] // tests unwrap: a failure is the test failing

use std::path::{Path, PathBuf};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

/// The generator named by `generated_by` exists in scripts/.
fn check_command(file: &Path, cmd: &str) {
    let script = cmd.split_whitespace().find(|w| w.starts_with("scripts/")).unwrap_or_else(|| {
        panic!("{}: generated_by {cmd:?} names no scripts/ generator", file.display())
    });
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").join(script);
    assert!(path.is_file(), "{}: generator {script} does not exist", file.display());
}

#[test]
fn every_golden_file_has_a_version_and_its_generator() {
    let mut seen = 0;
    for e in std::fs::read_dir(fixtures()).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "json") {
            let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
            assert_eq!(v["format_version"], 1, "{}: format_version", p.display());
            check_command(&p, v["generated_by"].as_str().unwrap_or_default());
            seen += 1;
        }
        let golden = p.join("golden.safetensors");
        if golden.is_file() {
            let b = std::fs::read(&golden).unwrap();
            let n = u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
            let h: serde_json::Value = serde_json::from_slice(&b[8..8 + n]).unwrap();
            let m = &h["__metadata__"];
            assert_eq!(
                m["format_version"],
                "1",
                "{}: __metadata__.format_version",
                golden.display()
            );
            check_command(&golden, m["generated_by"].as_str().unwrap_or_default());
            // the file still opens as a checkpoint
            orlik_io::safetensors::Checkpoint::open(&golden).unwrap();
            seen += 1;
        }
    }
    assert!(seen >= 8, "{seen} golden files found");
}
