//! End-to-end training on a tiny converted model: distillation into a pruned student, killed
//! with SIGKILL and resumed (bit-identical to an uninterrupted run), interrupted with SIGINT
//! (checkpoint saved, clean exit), cached vs online teacher (same losses with k = vocabulary),
//! `orlik train` from random init, and bad input.

#![allow(clippy::unwrap_used)] // tests unwrap: a failure is the test failing

use serde_json::Value;
use std::path::{Path, PathBuf};

mod common;
use common::{fails, interrupt_after, ok, rows, trajectory, weights};

struct Setup {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    teacher: String,
    student: String,
    data: String,
    val: String,
}

impl Setup {
    fn p(&self, name: &str) -> String {
        self.root.join(name).to_str().unwrap().to_string()
    }
}

/// Teacher: the tiny GGUF converted; student: it pruned to 1 layer and a narrower MLP; text:
/// seeded random sentences over words the tiny vocabulary knows.
fn setup() -> Setup {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_path_buf();
    common::tiny_teacher_and_text(&root, 12345);
    let (teacher, data, val) = (root.join("teacher"), root.join("train.txt"), root.join("val.txt"));
    let student = root.join("student");
    ok(&[
        "prune",
        teacher.to_str().unwrap(),
        "--importance",
        "magnitude",
        "--layers",
        "1",
        "--ffn",
        "24",
        "-o",
        student.to_str().unwrap(),
    ]);
    let s = |p: PathBuf| p.to_str().unwrap().to_string();
    Setup { teacher: s(teacher), student: s(student), data: s(data), val: s(val), root, _tmp: tmp }
}

fn distill_args<'a>(s: &'a Setup, out: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut a = vec![
        "distill",
        "--teacher",
        &s.teacher,
        "--student",
        &s.student,
        "--data",
        &s.data,
        "--val",
        &s.val,
        "--seq-len",
        "16",
        "--batch",
        "2",
        "--steps",
        "12",
        "--save-every",
        "3",
        "--eval-every",
        "6",
        "--val-tokens",
        "64",
        "--lr",
        "1e-2",
        "-o",
        out,
    ];
    a.extend_from_slice(extra);
    a
}

/// Set `flag` to `value` (replacing it when present).
fn with<'a>(mut args: Vec<&'a str>, flag: &'a str, value: &'a str) -> Vec<&'a str> {
    match args.iter().position(|a| *a == flag) {
        Some(i) => args[i + 1] = value,
        None => args.extend([flag, value]),
    }
    args
}

#[test]
fn distill_resume_after_sigkill_and_sigint_is_bit_identical() {
    let s = setup();
    let a = s.p("a");
    let out = ok(&distill_args(&s, &a, &[]));
    assert!(out.contains("trained 12 steps"), "{out}");
    let ta = trajectory(&a);
    assert_eq!(ta.iter().filter(|r| r.get("loss").is_some()).count(), 12);
    assert_eq!(
        ta.iter().filter(|r| r.get("val_kl").is_some()).count(),
        2,
        "validation at 6 and 12"
    );
    for k in ["loss", "kl", "lr", "grad_norm", "tokens"] {
        assert!(ta[0].get(k).is_some(), "metrics row lacks {k}: {}", ta[0]);
    }
    assert!(Path::new(&a).join("loss.png").exists() && Path::new(&a).join("val_bpb.png").exists());
    assert!(Path::new(&a).join("final/tokenizer.json").exists());
    let png = s.p("cmp.png");
    let said = ok(&["curves", &a, &a, "--key", "val_kl", "-o", &png]);
    assert!(said.contains("cmp.png") && said.contains("cmp.svg"), "{said}");
    let svg = std::fs::read_to_string(s.p("cmp.svg")).unwrap();
    // the legend names both runs, the axis its unit
    assert!(svg.matches(a.as_str()).count() >= 2 && svg.contains("nats / token"), "{svg}");
    assert!(Path::new(&png).exists());
    fails(&["curves", &a, "--key", "nope", "-o", &png], &["no \"nope\""]);
    let ckpts: Vec<_> = std::fs::read_dir(Path::new(&a).join("checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(ckpts, ["step-00000012"], "a finished run keeps its last checkpoint only");

    // SIGKILL after step 7 (checkpoint at 6), resume.
    let b = s.p("b");
    let st = interrupt_after(&distill_args(&s, &b, &[]), &b, 7, "KILL");
    assert!(!st.success());
    assert!(!Path::new(&b).join("final").exists());
    ok(&distill_args(&s, &b, &["--resume"]));
    assert_eq!(trajectory(&b), ta, "resumed trajectory differs");
    assert!(weights(&b) == weights(&a), "resumed weights differ");

    // SIGINT: checkpoint at the current step, exit 130, resume.
    let c = s.p("c");
    let st = interrupt_after(&distill_args(&s, &c, &[]), &c, 4, "INT");
    assert_eq!(st.code(), Some(130));
    let last = rows(&c).iter().filter_map(|r| r["step"].as_u64()).max().unwrap();
    assert!(
        Path::new(&c).join(format!("checkpoints/step-{last:08}")).exists(),
        "checkpoint of step {last} saved"
    );
    ok(&distill_args(&s, &c, &["--resume"]));
    assert!(weights(&c) == weights(&a), "SIGINT-resumed weights differ");
    let d = s.p("d");
    assert_eq!(
        interrupt_after(&distill_args(&s, &d, &[]), &d, 2, "TERM").code(),
        Some(130),
        "SIGTERM saves and exits too"
    );
    ok(&distill_args(&s, &d, &["--resume"]));
    assert!(weights(&d) == weights(&a), "SIGTERM-resumed weights differ");

    // Resuming with other settings names the keys; an existing run is not overwritten.
    let changed = with(with(distill_args(&s, &c, &["--resume"]), "--lr", "2e-2"), "--batch", "3");
    fails(&changed, &["batch (2 -> 3)", "lr (0.01 -> 0.02)"]);
    fails(&distill_args(&s, &c, &[]), &["already holds a `distill` output", "--resume"]);
}

#[test]
fn cached_teacher_with_k_equal_vocab_matches_online_and_cache_resumes() {
    let s = setup();
    let cache = s.p("cache");
    let args = [
        "teacher-cache",
        "--teacher",
        &s.teacher,
        "--data",
        &s.data,
        "--val",
        &s.val,
        "--topk",
        "64",
        "--seq-len",
        "16",
        "--shard-windows",
        "16",
        "-o",
        &cache,
    ];
    ok(&args);
    let m: Value = serde_json::from_str(
        &std::fs::read_to_string(Path::new(&cache).join("cache.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(m["topk"], 64);
    assert_eq!(m["vocab_size"], 64);
    let shards = m["train"]["shards"].as_array().unwrap();
    assert!(shards.len() >= 3, "{m}");
    // Re-running rebuilds only a missing shard, bit for bit.
    let first = Path::new(&cache).join(shards[1].as_str().unwrap());
    let bytes = std::fs::read(&first).unwrap();
    std::fs::remove_file(&first).unwrap();
    ok(&args);
    assert_eq!(std::fs::read(&first).unwrap(), bytes);
    // An f32 teacher's manifest has no compute_dtype key (caches from before it still open);
    // a teacher held in bf16 is recorded, and its cache is one of other settings.
    assert!(m.get("compute_dtype").is_none(), "{m}");
    let cache16 = s.p("cache16");
    ok(&with(with(args.to_vec(), "-o", &cache16), "--compute-dtype", "bf16"));
    let m16 = std::fs::read_to_string(Path::new(&cache16).join("cache.json")).unwrap();
    assert_eq!(serde_json::from_str::<Value>(&m16).unwrap()["compute_dtype"], "bf16");
    fails(&with(args.to_vec(), "--compute-dtype", "bf16"), &["other settings"]);

    let (on, ca, ck) = (s.p("online"), s.p("cached"), s.p("ckpt"));
    ok(&distill_args(&s, &on, &[]));
    // The teacher's matrices held in bf16: recorded in run.json (an f32 teacher's run.json has
    // no such key, as before 16-bit inference), a trajectory close to the f32 teacher's.
    let bf = s.p("bf16");
    ok(&distill_args(&s, &bf, &["--teacher-compute-dtype", "bf16"]));
    let run_json = |d: &str| -> Value {
        serde_json::from_str(&std::fs::read_to_string(Path::new(d).join("run.json")).unwrap())
            .unwrap()
    };
    assert_eq!(run_json(&bf)["run"]["teacher_compute_dtype"], "bf16");
    assert_eq!(run_json(&bf)["config"]["teacher_compute_dtype"], "bf16");
    assert!(run_json(&on)["run"].get("teacher_compute_dtype").is_none());
    assert!(run_json(&on)["config"].get("teacher_compute_dtype").is_none());
    for (a, b) in rows(&on).iter().zip(&rows(&bf)) {
        if let (Some(p), Some(q)) = (a["loss"].as_f64(), b["loss"].as_f64()) {
            assert!((p - q).abs() <= 5e-2 * p.abs().max(1e-2), "bf16 teacher loss {q} vs {p}");
        }
    }
    // Activation checkpointing re-runs layers in the backward: the same trajectory.
    ok(&distill_args(&s, &ck, &["--checkpoint-layers"]));
    for (a, b) in rows(&on).iter().zip(&rows(&ck)) {
        if let (Some(p), Some(q)) = (a["loss"].as_f64(), b["loss"].as_f64()) {
            assert!((p - q).abs() <= 1e-4 * p.abs(), "checkpointed loss {q} vs {p}");
        }
    }
    let mut cached = distill_args(&s, &ca, &["--teacher-cache", &cache]);
    let i = cached.iter().position(|a| *a == "--teacher").unwrap();
    cached.drain(i..i + 2); // no teacher model at all
    ok(&cached);
    let (x, y) = (rows(&on), rows(&ca));
    assert_eq!(x.len(), y.len());
    for (a, b) in x.iter().zip(&y) {
        for k in ["loss", "kl", "val_kl", "val_loss"] {
            if let (Some(p), Some(q)) = (a[k].as_f64(), b[k].as_f64()) {
                assert!((p - q).abs() <= 1e-4 * p.abs().max(1e-3), "{k}: online {p} vs cached {q}");
            } else {
                assert_eq!(
                    a.get(k).is_some(),
                    b.get(k).is_some(),
                    "{k} present in one only: {a} {b}"
                );
            }
        }
    }

    // A cache from another teacher, another seq-len or temperature is refused.
    let other = s.p("cached2");
    fails(
        &with(distill_args(&s, &other, &["--teacher-cache", &cache]), "--teacher", &s.student),
        &["another teacher"],
    );
    fails(
        &distill_args(&s, &other, &["--teacher-cache", &cache, "--temperature", "2"]),
        &["temperature"],
    );
    fails(
        &[
            "distill",
            "--student",
            &s.student,
            "--teacher-cache",
            &cache,
            "--data",
            &s.data,
            "--seq-len",
            "8",
            "--steps",
            "1",
            "-o",
            &other,
        ],
        &["seq_len 16"],
    );
}

#[test]
fn train_from_random_init_learns_and_bad_input_is_refused() {
    let s = setup();
    let r = s.p("scratch");
    ok(&[
        "train",
        &s.student,
        "--init",
        "random",
        "--data",
        &s.data,
        "--val",
        &s.val,
        "--seq-len",
        "16",
        "--batch",
        "4",
        "--steps",
        "40",
        "--lr",
        "1e-2",
        "--warmup",
        "4",
        "-o",
        &r,
    ]);
    let l: Vec<f64> = rows(&r).iter().filter_map(|x| x["loss"].as_f64()).collect();
    let head = l[..5].iter().sum::<f64>() / 5.0;
    let tail = l[35..].iter().sum::<f64>() / 5.0;
    assert!(tail < head - 0.5, "CE did not fall: {head} -> {tail}");
    assert!(rows(&r).iter().any(|x| x.get("val_bits_per_byte").is_some()));

    // A student token the teacher lacks is found before any compute (vocabularies are mapped
    // by token string, so the student's must be a subset of the teacher's).
    let odd = s.root.join("odd");
    std::fs::create_dir(&odd).unwrap();
    for e in std::fs::read_dir(&s.student).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, odd.join(p.file_name().unwrap())).unwrap();
    }
    let tj = odd.join("tokenizer.json");
    let mut tok: Value = serde_json::from_str(&std::fs::read_to_string(&tj).unwrap()).unwrap();
    let vocab = tok["model"]["vocab"].as_object_mut().unwrap();
    // a filler token no merge uses (the tiny vocabulary's "x<n>" entries)
    let k1 =
        vocab.keys().find(|k| k.starts_with('x') && k[1..].parse::<u32>().is_ok()).unwrap().clone();
    let v1 = vocab.remove(&k1).unwrap();
    vocab.insert("qqqq".into(), v1);
    std::fs::write(&tj, tok.to_string()).unwrap();
    let out = s.p("x");
    fails(
        &[
            "distill",
            "--teacher",
            &s.teacher,
            "--student",
            odd.to_str().unwrap(),
            "--data",
            &s.data,
            "--steps",
            "1",
            "-o",
            &out,
        ],
        &["\"qqqq\"", "is not in the teacher's vocabulary"],
    );
    let empty = s.root.join("empty.txt");
    std::fs::write(&empty, "\n\n").unwrap();
    fails(
        &[
            "distill",
            "--teacher",
            &s.teacher,
            "--student",
            &s.student,
            "--data",
            empty.to_str().unwrap(),
            "--steps",
            "1",
            "--seq-len",
            "16",
            "-o",
            &out,
        ],
        &["empty.txt", "empty"],
    );
    fails(
        &[
            "distill",
            "--teacher",
            &s.teacher,
            "--student",
            &s.student,
            "--data",
            &s.data,
            "--steps",
            "1",
            "--seq-len",
            "100000",
            "-o",
            &out,
        ],
        &["max_position_embeddings"],
    );
    fails(
        &["distill", "--student", &s.student, "--data", &s.data, "--steps", "1", "-o", &out],
        &["--teacher"],
    );
    fails(
        &[
            "distill",
            "--teacher",
            &s.teacher,
            "--student",
            &s.student,
            "--data",
            &s.data,
            "-o",
            &out,
        ],
        &["--steps or --tokens"],
    );
    let toml = s.root.join("bad.toml");
    std::fs::write(&toml, "stepz = 3\n").unwrap();
    fails(
        &["train", &s.student, "--data", &s.data, "--config", toml.to_str().unwrap(), "-o", &out],
        &["bad.toml", "stepz"],
    );
    assert!(!Path::new(&out).exists(), "nothing written on bad input");
}

/// A top-k cache (k < vocabulary: every record has a tail mass) trains, and `orlik bench --train`
/// times training steps on the model's own weights.
#[test]
fn top_k_cache_distils_and_bench_train_runs() {
    let s = setup();
    let cache = s.p("cache-k4");
    ok(&[
        "teacher-cache",
        "--teacher",
        &s.teacher,
        "--data",
        &s.data,
        "--topk",
        "4",
        "--seq-len",
        "16",
        "-o",
        &cache,
    ]);
    let out = s.p("kd-k4");
    let args: Vec<&str> = distill_args(&s, &out, &["--topk", "4"])
        .into_iter()
        .enumerate()
        .filter(|&(i, _)| i != 1 && i != 2) // no --teacher: the cache alone
        .map(|(_, a)| a)
        .collect();
    let args = with(with(args, "--steps", "3"), "--teacher-cache", &cache);
    ok(&args);
    let r = rows(&out);
    assert!(
        r.iter().filter(|x| x["kl"].as_f64().is_some_and(f64::is_finite)).count() >= 3,
        "{r:?}"
    );
    let said = ok(&[
        "bench",
        &s.teacher,
        "--train",
        "--batch",
        "2",
        "--seq-len",
        "16",
        "--reps",
        "2",
        "--json",
    ]);
    let v: Value = serde_json::from_str(said.trim()).unwrap();
    assert!(v["median_tokens_per_s"].as_f64().unwrap() > 0.0, "{v}");
}

/// `orlik mem` prints a training command's components without running it; the command itself
/// prints the estimate, and one whose estimate is above `--memory-limit` is refused before it
/// writes anything, naming the fixes; `--no-memory-check` runs it anyway.
#[test]
fn the_memory_planner_prints_the_components_and_refuses_a_run_that_will_not_fit() {
    let s = setup();
    let out = s.p("m");
    let mut mem = vec!["mem"];
    mem.extend(distill_args(&s, &out, &[]));
    let said = ok(&mem);
    for want in [
        "weights (f32 tensors)",
        "master copy",
        "AdamW moments",
        "gradients",
        "teacher / reference weights",
        "activations + backward workspace",
        "lm_head gradient",
        "peak (held + the larger step moment)",
        "memory: estimated peak",
        "with --checkpoint-layers (each layer's input kept, one more forward)",
    ] {
        assert!(said.contains(want), "{want:?} not in {said}");
    }
    assert!(!Path::new(&out).exists(), "orlik mem runs nothing");
    let json: Value =
        serde_json::from_str(&ok(&[&["mem", "--json"][..], &mem[1..]].concat())).unwrap();
    assert!(
        json["peak_bytes"].as_u64().unwrap() > json["components"][2]["bytes"].as_u64().unwrap()
    );

    let mut limited = vec!["--memory-limit", "1KB"];
    limited.extend(distill_args(&s, &out, &[]));
    fails(
        &limited,
        &["will not fit", "--batch 1", "teacher cache", "orlik mem", "--no-memory-check"],
    );
    assert!(!Path::new(&out).exists(), "refused before writing anything");
    let mut forced = vec!["--no-memory-check"];
    forced.extend(distill_args(&s, &out, &[]));
    let o = common::orlik(&forced);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stderr).contains("memory: estimated peak"));
    fails(&["mem", "inspect", &s.teacher], &["orlik mem takes a training command"]);
}
