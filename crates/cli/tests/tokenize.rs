//! `orlik tokenize`: a dataset trains (and feeds a teacher cache) exactly as the text it was made
//! from; a tokenize killed with SIGKILL continues to the same files; mixing weights and JSONL;
//! the refusals.

#![allow(clippy::unwrap_used)] // tests unwrap: a failure is the test failing

use serde_json::Value;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::{fails, ok, trajectory, weights, Dir};

fn setup() -> Dir {
    let d = Dir::new();
    common::tiny_teacher_and_text(&d.root, 777);
    d
}

/// `orlik tokenize` of train.txt (+ val.txt) at seq-len 16, five windows per shard.
fn tokenize_args<'a>(d: &'a Dir, out: &'a str, v: &'a mut Vec<String>) -> Vec<&'a str> {
    *v = vec![d.p("teacher"), d.p("train.txt"), d.p("val.txt")];
    vec![
        "tokenize",
        "--model",
        &v[0],
        "--data",
        &v[1],
        "--val",
        &v[2],
        "--seq-len",
        "16",
        "--shard-size",
        "340B",
        "-o",
        out,
    ]
}

fn train_args<'a>(d: &'a Dir, data: &'a str, val: &'a str, out: &'a str) -> Vec<String> {
    let v = [
        "train",
        &d.p("teacher"),
        "--data",
        data,
        "--val",
        val,
        "--seq-len",
        "16",
        "--batch",
        "2",
        "--steps",
        "4",
        "--eval-every",
        "2",
        "--val-tokens",
        "64",
        "--lr",
        "1e-2",
        "-o",
        out,
    ];
    v.iter().map(|s| s.to_string()).collect()
}

fn run_json(out: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(Path::new(out).join("run.json")).unwrap())
        .unwrap()
}

#[test]
fn a_dataset_trains_and_caches_exactly_as_the_text_it_was_made_from() {
    let d = setup();
    let ds = d.p("ds");
    let mut v = Vec::new();
    let said = ok(&tokenize_args(&d, &ds, &mut v));
    assert!(said.contains("shards written"), "{said}");
    let m: Value = serde_json::from_str(
        &std::fs::read_to_string(Path::new(&ds).join("dataset.json")).unwrap(),
    )
    .unwrap();
    assert!(m["train"]["sources"][0]["shards"].as_array().unwrap().len() > 3, "several shards");
    let (a, b) = (d.p("from-text"), d.p("from-dataset"));
    let ta = train_args(&d, &d.p("train.txt"), &d.p("val.txt"), &a);
    ok(&ta.iter().map(String::as_str).collect::<Vec<_>>());
    let tb = train_args(&d, &ds, &ds, &b);
    ok(&tb.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(trajectory(&a), trajectory(&b), "losses and validation");
    assert!(trajectory(&a).iter().any(|r| r.get("val_loss").is_some()), "validation ran");
    assert_eq!(weights(&a), weights(&b), "final weights bit-identical");
    assert_eq!(run_json(&a)["run"]["data_sha256"], run_json(&b)["run"]["data_sha256"]);
    assert_eq!(run_json(&b)["run"]["data_sha256"], m["train"]["packed_sha256"]);
    // A teacher cache made from the dataset is the one made from the text, shard for shard.
    let (ca, cb) = (d.p("cache-text"), d.p("cache-ds"));
    let t = d.p("teacher");
    for (data, out) in [(d.p("train.txt"), &ca), (ds.clone(), &cb)] {
        ok(&[
            "teacher-cache",
            "--teacher",
            &t,
            "--data",
            &data,
            "--seq-len",
            "16",
            "--topk",
            "4",
            "-o",
            out,
        ]);
    }
    let mut n = 0;
    for e in std::fs::read_dir(&ca).unwrap() {
        let name = e.unwrap().file_name();
        if name.to_string_lossy().ends_with(".bin") {
            let f = |dir: &str| std::fs::read(Path::new(dir).join(&name)).unwrap();
            assert_eq!(f(&ca), f(&cb), "{name:?}");
            n += 1;
        }
    }
    assert!(n > 0, "the caches have shards");
}

/// Every file of a dataset directory (dataset.json without its command line).
fn contents(dir: &str) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| !p.file_name().unwrap().to_string_lossy().starts_with('.'))
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().to_string();
            let mut bytes = std::fs::read(&p).unwrap();
            if name == "dataset.json" {
                let mut m: Value = serde_json::from_slice(&bytes).unwrap();
                m.as_object_mut().unwrap().remove("command");
                bytes = serde_json::to_vec(&m).unwrap();
            }
            (name, bytes)
        })
        .collect();
    v.sort();
    v
}

fn recorded_shards(out: &str) -> usize {
    let Ok(t) = std::fs::read_to_string(Path::new(out).join("progress.json")) else { return 0 };
    let Ok(p) = serde_json::from_str::<Value>(&t) else { return 0 };
    p["sources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["source"]["shards"].as_array().unwrap().len())
        .sum()
}

#[test]
fn a_killed_tokenize_continues_to_the_same_files() {
    let d = setup();
    let (whole, killed) = (d.p("whole"), d.p("killed"));
    let mut v = Vec::new();
    ok(&tokenize_args(&d, &whole, &mut v));
    let mut v2 = Vec::new();
    let args = tokenize_args(&d, &killed, &mut v2);
    let mut child = Command::new(env!("CARGO_BIN_EXE_orlik"))
        .args(&args)
        .env("ORLIK_STEP_DELAY_MS", "150")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while recorded_shards(&killed) < 4 {
        assert!(t0.elapsed() < Duration::from_secs(120), "tokenize did not progress");
        assert!(child.try_wait().unwrap().is_none(), "tokenize ended before it was killed");
        std::thread::sleep(Duration::from_millis(10));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(!Path::new(&killed).join("dataset.json").exists(), "killed before the end");
    let said = ok(&args);
    assert!(!said.contains(" 0 kept"), "continued, not started over: {said}");
    assert_eq!(contents(&whole), contents(&killed));
    assert!(ok(&args).contains("already tokenized"));
    // Other settings: refused without --force, replaced with it.
    let mut other = args.clone();
    other[8] = "8";
    fails(&other, &["holds a dataset of other sources or settings", "--force"]);
    other.push("--force");
    ok(&other);
}

#[test]
fn mixing_weights_and_jsonl_sources() {
    let d = setup();
    let text = std::fs::read_to_string(d.root.join("val.txt")).unwrap();
    let jsonl: String = text
        .split("\n\n")
        .map(|p| serde_json::json!({"id": 1, "text": p.trim()}).to_string() + "\n")
        .collect();
    std::fs::write(d.root.join("b.jsonl"), jsonl).unwrap();
    let (t, a, b, ds) = (d.p("teacher"), d.p("train.txt"), d.p("b.jsonl"), d.p("ds"));
    ok(&[
        "tokenize",
        "--model",
        &t,
        "--data",
        &a,
        &b,
        "--weights",
        "0.5,3",
        "--seq-len",
        "16",
        "-o",
        &ds,
    ]);
    let m: Value = serde_json::from_str(
        &std::fs::read_to_string(Path::new(&ds).join("dataset.json")).unwrap(),
    )
    .unwrap();
    let src = m["train"]["sources"].as_array().unwrap();
    let n = |i: usize| src[i]["windows"].as_u64().unwrap() as f64;
    let want = (0.5 * n(0)).round() + 3.0 * n(1);
    assert_eq!(m["train"]["windows"].as_f64().unwrap(), want);
    assert_eq!(src[1]["format"], serde_json::json!({"format": "jsonl", "field": "text"}));
    // The JSONL source holds the documents of val.txt: the same windows as the text would give.
    let (vt, vj) = (d.p("val-text"), d.p("val-jsonl"));
    ok(&["tokenize", "--model", &t, "--data", &d.p("val.txt"), "--seq-len", "16", "-o", &vt]);
    ok(&["tokenize", "--model", &t, "--data", &b, "--seq-len", "16", "-o", &vj]);
    let shard = |dir: &str| std::fs::read(Path::new(dir).join("train-000-00000.bin")).unwrap();
    assert_eq!(shard(&vt), shard(&vj));
    let out = d.p("run");
    let args = train_args(&d, &ds, &d.p("val.txt"), &out);
    ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
}

#[test]
fn bad_datasets_and_sources_are_one_line_errors() {
    let d = setup();
    let (t, a, ds) = (d.p("teacher"), d.p("train.txt"), d.p("ds"));
    ok(&["tokenize", "--model", &t, "--data", &a, "--seq-len", "16", "-o", &ds]);
    let run = d.p("run");
    let mut args = train_args(&d, &ds, &d.p("val.txt"), &run);
    args[7] = "32".into();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    fails(&args, &["--seq-len 16", "this run uses --seq-len 32"]);
    let mixed = train_args(&d, &ds, &d.p("val.txt"), &run);
    let mut mixed: Vec<&str> = mixed.iter().map(String::as_str).collect();
    mixed.insert(4, &a);
    fails(&mixed, &["must be the only --data"]);
    let no_val = train_args(&d, &a, &ds, &run);
    fails(&no_val.iter().map(String::as_str).collect::<Vec<_>>(), &["no validation split"]);
    // A damaged manifest is a one-line error before any window is read, never a panic.
    let mp = Path::new(&ds).join("dataset.json");
    let orig: Value = serde_json::from_str(&std::fs::read_to_string(&mp).unwrap()).unwrap();
    let good = train_args(&d, &ds, &d.p("val.txt"), &run);
    let good: Vec<&str> = good.iter().map(String::as_str).collect();
    let mut m = orig.clone();
    m["windows_per_shard"] = 0.into();
    std::fs::write(&mp, m.to_string()).unwrap();
    fails(&good, &["dataset.json", "windows_per_shard is 0"]);
    let mut m = orig.clone();
    m["train"]["sources"][0]["shards"][0]["windows"] = 1.into();
    std::fs::write(&mp, m.to_string()).unwrap();
    fails(&good, &["dataset.json", "its shards hold 1 windows"]);
    std::fs::write(&mp, orig.to_string()).unwrap();
    let o = d.p("o");
    fails(
        &["tokenize", "--model", &t, "--data", &a, "--weights", "1,2", "-o", &o],
        &["--weights has 2 values for 1 --data"],
    );
    std::fs::write(d.root.join("bad.jsonl"), "{\"text\": \"the\"}\n{\"body\": \"a\"}\n").unwrap();
    fails(
        &["tokenize", "--model", &t, "--data", &d.p("bad.jsonl"), "-o", &o],
        &["bad.jsonl:2: no field \"text\""],
    );
}
