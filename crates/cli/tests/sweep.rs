//! `orlik sweep` end to end on the tiny converted model: every axis at every fraction and the
//! budget search's pick measured; a fraction of 1 on any axis is the original exactly (KL 0,
//! same bits/byte); the Pareto marks are the undominated points; a sweep killed with SIGKILL and
//! continued with --resume gives the same points as one never stopped.

#![allow(clippy::unwrap_used)] // tests unwrap: a failure is the test failing

use serde_json::Value;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::{fails, ok};

fn args(root: &Path, out: &str) -> Vec<String> {
    let p = |n: &str| root.join(n).to_str().unwrap().to_string();
    [
        "sweep",
        &p("teacher"),
        "--importance",
        "magnitude",
        "--data",
        &p("train.txt"),
        "--val",
        &p("val.txt"),
        &p("train.txt"),
        "--fractions",
        "1,0.6",
        "--multiple",
        "8",
        "--tolerance",
        "0.1",
        "--context",
        "64",
        "--val-bytes",
        "3000",
        "--agree-tokens",
        "128",
        "-o",
        out,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn points(out: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(Path::new(out).join("sweep.json")).unwrap_or_default();
    serde_json::from_str::<Value>(&text)
        .ok()
        .and_then(|v| v["points"].as_array().cloned())
        .unwrap_or_default()
}

fn f(v: &Value, k: &str) -> f64 {
    v[k].as_f64().unwrap_or_else(|| panic!("no {k} in {v}"))
}

#[test]
fn sweep_measures_every_axis_and_resumes_after_sigkill() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    common::tiny_teacher_and_text(root, 11);
    let a = root.join("a").to_str().unwrap().to_string();
    let av = args(root, &a);
    let table = ok(&av.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(table.contains("| axis |") && table.contains("pooled bits/byte"), "{table}");
    let pa = points(&a);
    let axes: Vec<&str> = pa.iter().map(|p| p["axis"].as_str().unwrap()).collect();
    let want = ["original", "depth", "depth", "hidden", "hidden", "heads", "heads", "mlp", "mlp"];
    assert_eq!(axes[..9], want, "{axes:?}");
    assert!(axes[9..].iter().all(|a| *a == "search") && axes.len() > 9, "no search: {axes:?}");
    let original = &pa[0];
    assert!(f(original, "kl").abs() < 1e-9 && f(original, "top1") == 1.0);
    for p in &pa[1..] {
        if f(p, "fraction") == 1.0 {
            // nothing cut: the original's own numbers
            assert_eq!(p["params"], original["params"], "{p}");
            assert!(f(p, "kl") < 1e-9 && f(p, "top1") == 1.0, "{p}");
            assert_eq!(p["bits_per_byte"], original["bits_per_byte"], "{p}");
        } else if p["axis"] != "heads" {
            assert!(f(p, "param_fraction") < 0.95 && f(p, "kl") > 0.0, "{p}");
        }
        assert_eq!(p["bits_per_byte"].as_array().unwrap().len(), 2);
    }
    // the front: exactly the pruned points (the whole model's rows take no part) that no
    // other pruned point dominates
    let whole = f(original, "params");
    let pruned: Vec<(f64, f64)> = pa[1..]
        .iter()
        .map(|p| (f(p, "params"), f(p, "bits_per_byte_pooled")))
        .filter(|p| p.0 != whole)
        .collect();
    assert!(pruned.len() >= 4);
    for p in &pa {
        let (n, b) = (f(p, "params"), f(p, "bits_per_byte_pooled"));
        let dominated = pruned.iter().any(|&(m, c)| m <= n && c <= b && (m < n || c < b));
        assert_eq!(p["pareto"].as_bool().unwrap(), n != whole && !dominated, "{p}");
    }
    assert!(pa.iter().any(|p| p["pareto"] == true));
    for file in ["sweep.md", "sweep_bpb.png", "sweep_kl.png"] {
        assert!(Path::new(&a).join(file).exists(), "{file}");
    }

    // killed after a few points, continued: the same points
    let b = root.join("b").to_str().unwrap().to_string();
    let bv = args(root, &b);
    let mut child = Command::new(env!("CARGO_BIN_EXE_orlik"))
        .args(&bv)
        .env("ORLIK_STEP_DELAY_MS", "400")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while points(&b).len() < 4 && t0.elapsed() < Duration::from_secs(120) {
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let kept = points(&b).len();
    assert!((4..pa.len()).contains(&kept), "killed after {kept} of {} points", pa.len());
    // without --resume the directory is refused, naming both ways on
    let bref: Vec<&str> = bv.iter().map(String::as_str).collect();
    fails(&bref, &["already holds a `sweep` output", "--force", "--resume"]);
    // --resume with a setting that changes the numbers is refused, naming it; the points stay
    let mut other = bref.clone();
    let i = other.iter().position(|x| *x == "--context").unwrap();
    other[i + 1] = "32";
    other.push("--resume");
    fails(&other, &["made with other inputs or settings (--context)", "--force"]);
    assert_eq!(points(&b).len(), kept);
    let mut resumed = bref.clone();
    resumed.push("--resume");
    let o = common::orlik(&resumed);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    let notice = format!("{kept} of {} points kept from the earlier sweep", pa.len());
    assert!(err.contains(&notice), "{err}");
    let pb = points(&b);
    assert_eq!(pb.len(), pa.len());
    for (x, y) in pa.iter().zip(&pb) {
        assert!(close(x, y), "resumed sweep differs:\n{x}\n{y}");
    }
}

/// Equal, numbers to 1e-9 relative (rayon's parallel sums may round in another order).
fn close(x: &Value, y: &Value) -> bool {
    match (x, y) {
        (Value::Number(a), Value::Number(b)) => {
            let (a, b) = (a.as_f64().unwrap(), b.as_f64().unwrap());
            (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1e-30)
        }
        (Value::Array(a), Value::Array(b)) => {
            a.len() == b.len() && a.iter().zip(b).all(|(a, b)| close(a, b))
        }
        (Value::Object(a), Value::Object(b)) => {
            a.len() == b.len() && a.iter().all(|(k, v)| b.get(k).is_some_and(|w| close(v, w)))
        }
        _ => x == y,
    }
}

#[test]
fn bad_settings_are_refused_naming_the_flag() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    common::tiny_teacher_and_text(root, 12);
    let out = root.join("o").to_str().unwrap().to_string();
    let base = args(root, &out);
    let with = |k: &str, v: &str| -> Vec<String> {
        let mut a = base.clone();
        let i = a.iter().position(|x| x == k).unwrap();
        a[i + 1] = v.into();
        a
    };
    for (a, want) in [
        (with("--fractions", "0.5,1.2"), "--fractions 1.2: each must be in (0, 1]"),
        (with("--multiple", "0"), "--multiple 0"),
        (with("--importance", "minitron"), "--scores DIR"),
    ] {
        fails(&a.iter().map(String::as_str).collect::<Vec<_>>(), &[want]);
        assert!(!Path::new(&out).exists(), "a refused sweep left {out}");
    }
    // an axis that cannot move (hidden 32 on multiples of 64) is left out, and said so
    let mut a = with("--multiple", "64");
    a.extend(["--axes".into(), "hidden".into(), "--no-search".into()]);
    ok(&a.iter().map(String::as_str).collect::<Vec<_>>());
    let v: Value =
        serde_json::from_str(&std::fs::read_to_string(Path::new(&out).join("sweep.json")).unwrap())
            .unwrap();
    assert_eq!(v["points"].as_array().unwrap().len(), 2, "original and hidden 1: {v}");
    let skipped = v["skipped"].as_array().unwrap();
    assert!(skipped[0]
        .as_str()
        .unwrap()
        .starts_with("hidden 0.6: the nearest shape on this axis is the whole model"));
    let md = std::fs::read_to_string(Path::new(&out).join("sweep.md")).unwrap();
    assert!(md.contains("Left out: hidden 0.6"), "{md}");
    let mut a = base.clone();
    a.extend(["--axes".into(), "depth,width".into()]);
    fails(&a.iter().map(String::as_str).collect::<Vec<_>>(), &["unknown axis \"width\""]);
}
