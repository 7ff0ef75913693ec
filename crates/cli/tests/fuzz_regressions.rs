//! Replays every input kept in `tests/fuzz-regressions/TARGET/` (inputs that once crashed a
//! fuzz target, and hand-made ones aimed at each reader's checks) through the same code the fuzz
//! target runs (`fuzz/targets.rs`); the recipe parser, which lives in the binary, through
//! `orlik run`. A replay passes when it returns (or, for the binary, exits 0 or 1) without a panic.

#![allow(clippy::unwrap_used)] // tests unwrap: a failure is the test failing

#[path = "../../../fuzz/targets.rs"]
mod targets;

mod common;

use std::path::PathBuf;

fn kept() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fuzz-regressions")
}

#[test]
fn kept_fuzz_inputs_replay_without_a_crash() {
    let mut per_target = std::collections::BTreeMap::new();
    for dir in std::fs::read_dir(kept()).unwrap().flatten() {
        let target = dir.file_name().to_string_lossy().to_string();
        let mut files: Vec<PathBuf> =
            std::fs::read_dir(dir.path()).unwrap().flatten().map(|e| e.path()).collect();
        files.sort();
        for f in &files {
            let data = std::fs::read(f).unwrap();
            let replay = || match target.as_str() {
                "safetensors" => targets::safetensors(&data),
                "shard_index" => targets::shard_index(&data),
                "gguf" => targets::gguf(&data),
                "gguf_tokenizer" => targets::gguf_tokenizer(&data),
                "config_json" => targets::config_json(&data),
                "jsonl_rows" => targets::jsonl_rows(&data),
                "teacher_cache" => targets::teacher_cache(&data),
                "recipe" => {
                    // The teacher does not exist, so nothing runs past parsing and checking.
                    let o = common::orlik(&[
                        "run",
                        f.to_str().unwrap(),
                        "--set",
                        "teacher=/nonexistent/teacher",
                        "-o",
                        "/nonexistent/out",
                    ]);
                    let err = String::from_utf8_lossy(&o.stderr);
                    assert_eq!(o.status.code(), Some(1), "{}: {err}", f.display());
                    assert_eq!(err.trim_end().lines().count(), 1, "{}: {err}", f.display());
                }
                other => panic!("tests/fuzz-regressions/{other}: no such fuzz target"),
            };
            if let Err(e) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(replay)) {
                let msg = e
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()));
                panic!("{}: {}", f.display(), msg.unwrap_or_default());
            }
        }
        per_target.insert(target, files.len());
    }
    println!("replayed: {per_target:?}");
    for t in [
        "safetensors",
        "shard_index",
        "gguf",
        "gguf_tokenizer",
        "config_json",
        "jsonl_rows",
        "recipe",
        "teacher_cache",
    ] {
        assert!(per_target.get(t).is_some_and(|&n| n > 0), "no kept input for fuzz target {t}");
    }
}
