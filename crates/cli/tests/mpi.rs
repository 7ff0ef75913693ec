//! Data parallel under OpenMPI's `mpirun` (Debian's openmpi-bin; `.ci/run` installs it): two
//! ranks train as one process with the same global batch (distill and sft), the sharded
//! optimizer (ZeRO-1, the default) as every rank keeping all moments, a rank killed with
//! SIGKILL ends the job and the run resumes on two ranks (bit-identical) or one, SIGTERM to the
//! job stops every rank at one step with one checkpoint, commands that do not run data
//! parallel are refused under a launcher, and two ranks in two network namespaces joined by a
//! veth pair (two "machines": the collectives cross an interface) train as one process.
//! Without mpirun every test says so and checks nothing; `ORLIK_REQUIRE_MPI=1` (CI) makes a
//! missing mpirun a failure.

#![allow(clippy::unwrap_used)] // tests unwrap: a failure is the test failing

use serde_json::Value;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::{ok, rows, trajectory, weights};

/// `mpirun -np n` as root on 2 cores (the flags OpenMPI needs there), or None (said) when
/// there is no mpirun.
fn mpirun(n: usize) -> Option<Command> {
    let found = Command::new("mpirun").arg("--version").output().is_ok_and(|o| o.status.success());
    if !found {
        let why = "mpirun not found (install OpenMPI: apt-get install openmpi-bin)";
        assert!(
            std::env::var_os("ORLIK_REQUIRE_MPI").is_none(),
            "ORLIK_REQUIRE_MPI is set but {why}"
        );
        eprintln!("skipped: {why}");
        return None;
    }
    let mut c = Command::new("mpirun");
    c.args(["--allow-run-as-root", "--oversubscribe", "-np", &n.to_string()]);
    c.arg(env!("CARGO_BIN_EXE_orlik"));
    Some(c)
}

fn run_ranks(n: usize, args: &[&str]) -> Option<Output> {
    Some(mpirun(n)?.args(args).output().unwrap())
}

fn ok_ranks(n: usize, args: &[&str]) -> Option<String> {
    let o = run_ranks(n, args)?;
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "mpirun -np {n} {args:?}: {err}");
    Some(String::from_utf8(o.stdout).unwrap())
}

type Setup = common::Dir;

/// The tiny teacher, a 1-layer student pruned from it, and text (as in train.rs).
fn setup() -> Setup {
    let s = common::Dir::new();
    common::tiny_teacher_and_text(&s.root, 12345);
    ok(&["prune", &s.p("teacher"), "--importance", "magnitude", "--layers", "1", "--ffn", "24"]
        .into_iter()
        .chain(["-o", &s.p("student")])
        .collect::<Vec<_>>());
    s
}

fn distill<'a>(s: &'a Setup, accum: &'a str, steps: &'a str, out: &'a str) -> Vec<String> {
    let a = [
        "distill",
        "--teacher",
        &s.p("teacher"),
        "--student",
        &s.p("student"),
        "--data",
        &s.p("train.txt"),
        "--val",
        &s.p("val.txt"),
        "--seq-len",
        "16",
        "--batch",
        "2",
        "--grad-accum",
        accum,
        "--steps",
        steps,
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
    a.iter().map(|x| x.to_string()).collect()
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// OUT/final's f32 tensors by name.
fn tensors(out: &str) -> Vec<(String, Vec<f32>)> {
    read_f32(&weights(out))
}

/// The f32 tensors of a safetensors file's bytes (a header, then little-endian data), by name.
fn read_f32(b: &[u8]) -> Vec<(String, Vec<f32>)> {
    let n = u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
    let header: serde_json::Map<String, Value> = serde_json::from_slice(&b[8..8 + n]).unwrap();
    let mut out: Vec<(String, Vec<f32>)> = header
        .iter()
        .filter(|(k, _)| *k != "__metadata__")
        .map(|(k, v)| {
            assert_eq!(v["dtype"], "F32", "{k}");
            let (s, e) =
                (v["data_offsets"][0].as_u64().unwrap(), v["data_offsets"][1].as_u64().unwrap());
            let data = &b[8 + n + s as usize..8 + n + e as usize];
            (k.clone(), data.chunks(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect())
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn max_weight_diff(a: &str, b: &str) -> f32 {
    let (x, y) = (tensors(a), tensors(b));
    assert_eq!(x.len(), y.len());
    x.iter()
        .zip(&y)
        .flat_map(|((n, p), (m, q))| {
            assert_eq!(n, m);
            p.iter().zip(q).map(|(u, v)| (u - v).abs())
        })
        .fold(0.0, f32::max)
}

/// Largest difference of every logged loss (training, validation, KL) and gradient norm.
fn max_loss_diff(a: &str, b: &str) -> f64 {
    let (x, y) = (rows(a), rows(b));
    assert_eq!(x.len(), y.len(), "{a} and {b} logged different rows");
    let keys = ["loss", "kd", "grad_norm", "val_loss", "val_kl"];
    let mut worst = 0.0f64;
    for (r, q) in x.iter().zip(&y) {
        assert_eq!(r["step"], q["step"]);
        for k in keys {
            if let (Some(u), Some(v)) =
                (r.get(k).and_then(Value::as_f64), q.get(k).and_then(Value::as_f64))
            {
                worst = worst.max((u - v).abs());
            }
        }
    }
    worst
}

/// Each rank does one of the step's two micro-batches: the sum of two gradients is the same
/// addition on one process and on two ranks, so the runs are bit-identical. With four
/// micro-batches, two per rank, the sum's order differs ((a + b) + (c + d) against
/// ((a + b) + c) + d): equal within 1e-5.
#[test]
fn two_ranks_distil_as_one_process_with_the_same_global_batch() {
    if mpirun(2).is_none() {
        return;
    }
    let s = setup();
    let (one, two) = (s.p("one"), s.p("two"));
    ok(&strs(&distill(&s, "2", "6", &one)));
    let o = run_ranks(2, &strs(&distill(&s, "2", "6", &two))).unwrap();
    let (said, err) = (String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(o.status.success(), "{err}");
    assert_eq!(said.matches("trained 6 steps").count(), 1, "rank 0 alone prints: {said}");
    assert!(err.contains("optimizer state sharded over 2 ranks (ZeRO-1)"), "{err}");
    assert_eq!(trajectory(&one), trajectory(&two));
    assert_eq!(weights(&one), weights(&two));
    // ZeRO-1 (the default): one optimizer file per rank in the checkpoint, the same bits as
    // every rank keeping all moments.
    let files = |out: &str| -> Vec<String> {
        let ck = Path::new(out).join("checkpoints/step-00000006");
        let mut v: Vec<String> = ck
            .read_dir()
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
            .filter(|n| n.starts_with("optimizer"))
            .collect();
        v.sort();
        v
    };
    let shards =
        ["optimizer-rank-0000-of-0002.safetensors", "optimizer-rank-0001-of-0002.safetensors"];
    assert_eq!(files(&two), shards);
    let whole = s.p("two-whole");
    let mut a = distill(&s, "2", "6", &whole);
    a.push("--no-shard-optimizer".into());
    ok_ranks(2, &strs(&a)).unwrap();
    assert_eq!(files(&whole), ["optimizer.safetensors"]);
    assert_eq!(weights(&whole), weights(&two));
    assert_eq!(trajectory(&whole), trajectory(&two));

    // A tokenized dataset (`orlik tokenize`) in place of the text: each rank maps the shards
    // and reads its own windows; the same run.
    let ds = s.p("ds");
    let (st, tr, va) = (s.p("student"), s.p("train.txt"), s.p("val.txt"));
    ok(&["tokenize", "--model", &st, "--data", &tr, "--val", &va, "--seq-len", "16"]
        .into_iter()
        .chain(["--shard-size", "340B", "-o", &ds])
        .collect::<Vec<_>>());
    let two_ds = s.p("two-ds");
    let mut a = distill(&s, "2", "6", &two_ds);
    (a[6], a[8]) = (ds.clone(), ds.clone());
    ok_ranks(2, &strs(&a)).unwrap();
    assert_eq!(trajectory(&one), trajectory(&two_ds));
    assert_eq!(weights(&one), weights(&two_ds));

    let (one4, two4) = (s.p("one4"), s.p("two4"));
    ok(&strs(&distill(&s, "4", "6", &one4)));
    ok_ranks(2, &strs(&distill(&s, "4", "6", &two4))).unwrap();
    let (dl, dw) = (max_loss_diff(&one4, &two4), max_weight_diff(&one4, &two4));
    eprintln!("grad-accum 4 on 1 process vs 2 ranks: losses within {dl:.2e}, weights {dw:.2e}");
    assert!(dl <= 1e-5 && dw <= 1e-5, "losses {dl}, weights {dw}");

    // The global batch is split by micro-batches: 3 of them do not go into 2 ranks.
    let o = run_ranks(2, &strs(&distill(&s, "3", "2", &s.p("odd")))).unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("--grad-accum 3 is not a multiple of the 2 ranks"),
        "{err}"
    );
    // A command that does not run data parallel would write its output twice: refused.
    let o = run_ranks(2, &["inspect", &s.p("teacher")]).unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("does not run data parallel"), "{err}");
}

#[test]
fn two_ranks_sft_as_one_process() {
    if mpirun(2).is_none() {
        return;
    }
    let s = setup();
    let rows: String = (0..16)
        .map(|i| {
            let w = ["the", "hat", "tea", "earth"][i % 4];
            format!("{{\"messages\": [{{\"role\": \"user\", \"content\": \"{w} at\"}}, {{\"role\": \"assistant\", \"content\": \"hat tea\"}}]}}\n")
        })
        .collect();
    std::fs::write(s.root.join("sft.jsonl"), rows).unwrap();
    let args = |out: &str| -> Vec<String> {
        let m = s.p("teacher");
        let d = s.p("sft.jsonl");
        [&m, "--data", &d, "--steps", "5", "--batch", "2", "--grad-accum", "2", "--lr", "1e-2"]
            .iter()
            .chain(&["--max-len", "64", "--max-prompt", "32", "-o", out])
            .map(|x| x.to_string())
            .collect()
    };
    let (one, two) = (s.p("one"), s.p("two"));
    let a1 = args(&one);
    ok(&[&["sft"][..], &strs(&a1)].concat());
    let a2 = args(&two);
    ok_ranks(2, &[&["sft"][..], &strs(&a2)].concat()).unwrap();
    assert_eq!(trajectory(&one), trajectory(&two));
    assert_eq!(weights(&one), weights(&two));
}

/// `orlik score` on 2 ranks (each takes every other calibration batch, the accumulators are
/// summed) gives the scores of one process, streamed and in memory, leave-one-out included.
#[test]
fn two_ranks_score_as_one_process() {
    if mpirun(2).is_none() {
        return;
    }
    let s = setup();
    for extra in [&[][..], &["--in-memory"][..]] {
        let args = |out: &str| -> Vec<String> {
            let (t, d) = (s.p("teacher"), s.p("train.txt"));
            [&t, "--data", &d, "--samples", "12", "--seq-len", "16", "--batch", "2"]
                .iter()
                .chain(&["--loo-batches", "3", "-o", out])
                .chain(extra)
                .map(|x| x.to_string())
                .collect()
        };
        let (one, two) = (s.p("s1"), s.p("s2"));
        let _ = std::fs::remove_dir_all(&one);
        let _ = std::fs::remove_dir_all(&two);
        ok(&[&["score"][..], &strs(&args(&one))].concat());
        let said = ok_ranks(2, &[&["score"][..], &strs(&args(&two))].concat()).unwrap();
        assert_eq!(said.matches("# Importance scores").count(), 1, "rank 0 alone prints");
        let meta = |d: &str| -> Value {
            serde_json::from_slice(&std::fs::read(Path::new(d).join("scores.json")).unwrap())
                .unwrap()
        };
        let (m1, m2) = (meta(&one), meta(&two));
        assert_eq!(m1["tokens"], m2["tokens"], "the same tokens scored once: {m1} {m2}");
        assert_eq!(m1["full_loss"], m2["full_loss"]);
        let read =
            |d: &str| read_f32(&std::fs::read(Path::new(d).join("scores.safetensors")).unwrap());
        let (a, b) = (read(&one), read(&two));
        assert_eq!(a.len(), b.len());
        let mut worst = 0.0f32;
        for ((n, x), (m, y)) in a.iter().zip(&b) {
            assert_eq!(n, m);
            for (u, v) in x.iter().zip(y) {
                worst = worst.max((u - v).abs() / u.abs().max(1e-3));
            }
        }
        eprintln!("score {extra:?}: 2 ranks vs 1 process, largest relative difference {worst:.2e}");
        assert!(worst <= 1e-5, "{worst}");
    }
}

/// `orlik compress` on 2 ranks: score and distill on both, prune and eval on rank 0 while the
/// other waits; the same final model as one process, bit for bit; run again, every stage kept.
#[test]
fn two_ranks_compress_as_one_process() {
    if mpirun(2).is_none() {
        return;
    }
    let s = setup();
    let args = |out: &str| -> Vec<String> {
        let mut a: Vec<String> = ["compress", &s.p("teacher"), "--params", "0.6", "--data"]
            .iter()
            .chain(&[s.p("train.txt").as_str(), "--val", &s.p("val.txt"), "--tokens", "2000"])
            .map(|x| x.to_string())
            .collect();
        for kv in [
            "distill.seq_len=16",
            "distill.batch=2",
            "distill.grad_accum=2",
            "distill.save_every=5",
            "score.samples=8",
            "score.seq_len=16",
            "prune.proxy_samples=2",
            "prune.seq_len=16",
            "prune.multiple=8",
            "eval.context=32",
            "eval.speed_reps=1",
            "eval.agree_tokens=256",
        ] {
            a.extend(["--set".into(), kv.into()]);
        }
        a.extend(["-o".into(), out.into()]);
        a
    };
    let (one, two) = (s.p("c1"), s.p("c2"));
    ok(&strs(&args(&one)));
    let said = ok_ranks(2, &strs(&args(&two))).unwrap();
    assert!(said.contains("report:"), "{said}");
    assert!(Path::new(&two).join("report.md").is_file());
    assert_eq!(weights(&one), weights(&two), "the same final model");
    let o = run_ranks(2, &strs(&args(&two))).unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    for st in ["score", "prune", "distill", "eval"] {
        assert!(err.contains(&format!("== {st}: unchanged, kept")), "{st}: {err}");
    }
}

/// `orlik teacher-cache` on 2 ranks (each builds every other shard, rank 0 the manifest) is
/// the 1-process cache, byte for byte in every shard and the manifest; a re-run on 2 ranks
/// keeps the finished shards (not rewritten).
#[test]
fn two_ranks_build_the_teacher_cache_of_one_process() {
    if mpirun(2).is_none() {
        return;
    }
    let s = setup();
    let args = |out: &str| -> Vec<String> {
        let (t, d, v) = (s.p("teacher"), s.p("train.txt"), s.p("val.txt"));
        ["teacher-cache", "--teacher", &t, "--data", &d, "--val", &v, "--topk", "8"]
            .iter()
            .chain(&["--seq-len", "16", "--shard-windows", "64", "-o", out])
            .map(|x| x.to_string())
            .collect()
    };
    let (one, two) = (s.p("cache1"), s.p("cache2"));
    ok(&strs(&args(&one)));
    ok_ranks(2, &strs(&args(&two))).unwrap();
    let files = |d: &str| -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
            .filter(|n| n.ends_with(".bin") || n == "cache.json")
            .collect();
        v.sort();
        v
    };
    let (f1, f2) = (files(&one), files(&two));
    assert!(f1.len() > 3, "several shards: {f1:?}");
    assert_eq!(f1, f2);
    for f in &f1 {
        let (a, b) = (Path::new(&one).join(f), Path::new(&two).join(f));
        assert_eq!(std::fs::read(a).unwrap(), std::fs::read(b).unwrap(), "{f}");
    }
    let mtimes = || -> Vec<std::time::SystemTime> {
        let shards = f1.iter().filter(|f| f.ends_with(".bin")); // the manifest is rewritten
        shards.map(|f| Path::new(&two).join(f).metadata().unwrap().modified().unwrap()).collect()
    };
    let before = mtimes();
    let o = run_ranks(2, &strs(&args(&two))).unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(mtimes(), before, "finished shards kept on a re-run");
}

/// DPO (its reference log-probabilities computed on every rank, cached by rank 0) and GRPO (its
/// samples seeded by (seed, step, prompt)) on 2 ranks: the run of one process, bit for bit, and
/// GRPO's samples.jsonl the rows of one process.
#[test]
fn two_ranks_dpo_and_grpo_as_one_process() {
    if mpirun(2).is_none() {
        return;
    }
    let s = setup();
    let words = ["the", "hat", "tea", "earth", "heart"];
    let (mut pairs, mut prompts) = (String::new(), String::new());
    for i in 0..8 {
        let (a, b) = (words[i % 5], words[(i + 2) % 5]);
        pairs += &format!(
            "{{\"prompt\": \"{a} {b}\", \"chosen\": \"heart earth\", \"rejected\": \"{b} hat\"}}\n"
        );
        prompts += &format!("{{\"prompt\": \"{a} {b}\", \"answer\": \"hat\"}}\n");
    }
    std::fs::write(s.root.join("dpo.jsonl"), pairs).unwrap();
    std::fs::write(s.root.join("grpo.jsonl"), prompts).unwrap();
    let m = s.p("teacher");
    let common = ["--steps", "3", "--grad-accum", "2", "--lr", "5e-3", "--max-len", "64"];
    let dpo = |out: &str| -> Vec<String> {
        let d = s.p("dpo.jsonl");
        ["dpo", &m, "--data", &d, "--batch", "2", "--max-prompt", "32", "-o", out]
            .iter()
            .chain(&common)
            .map(|x| x.to_string())
            .collect()
    };
    let grpo = |out: &str| -> Vec<String> {
        let d = s.p("grpo.jsonl");
        ["grpo", &m, "--prompts", &d, "--reward", "regex:a", "--group", "4", "--batch", "1"]
            .iter()
            .chain(&[
                "--max-new-tokens",
                "6",
                "--max-prompt",
                "16",
                "--log-samples",
                "1",
                "-o",
                out,
            ])
            .chain(&common)
            .map(|x| x.to_string())
            .collect()
    };
    for (name, args) in [("dpo", &dpo as &dyn Fn(&str) -> Vec<String>), ("grpo", &grpo)] {
        let (one, two) = (s.p(&format!("{name}1")), s.p(&format!("{name}2")));
        ok(&strs(&args(&one)));
        ok_ranks(2, &strs(&args(&two))).unwrap();
        assert_eq!(trajectory(&one), trajectory(&two), "{name}");
        assert_eq!(weights(&one), weights(&two), "{name}");
    }
    // GRPO's completions from every rank reach samples.jsonl (rank 0 writes them, in rank
    // order within a step): the rows of one process.
    let rows = |out: &str| -> Vec<String> {
        let t = std::fs::read_to_string(Path::new(out).join("samples.jsonl")).unwrap();
        let mut v: Vec<String> = t.lines().map(String::from).collect();
        v.sort();
        v
    };
    let (one, two) = (rows(&s.p("grpo1")), rows(&s.p("grpo2")));
    assert_eq!(one.len(), 3 * 2 * 4, "3 steps x 2 prompts x 4 samples");
    assert_eq!(one, two);
}

/// The pid of rank `rank` of a job writing to `out` (its environment says the rank).
fn rank_pid(out: &str, rank: usize) -> Option<u32> {
    let want = format!("OMPI_COMM_WORLD_RANK={rank}");
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let cmd = std::fs::read(e.path().join("cmdline")).ok()?;
        let env = std::fs::read(e.path().join("environ")).ok()?;
        let has = |b: &[u8], s: &str| b.split(|c| *c == 0).any(|x| x == s.as_bytes());
        (has(&cmd, out) && has(&env, &want) && !has(&cmd, "mpirun")).then_some(pid)
    })
}

/// A slowed-down two-rank run, started; returns once `n` steps are logged.
fn start_slow(args: &[String], out: &str, n: usize) -> Child {
    let mut c = mpirun(2).unwrap();
    let mut child = c
        .args(args)
        .env("ORLIK_STEP_DELAY_MS", "300")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    common::wait_logged(&mut child, out, n);
    child
}

/// Wait for the job, at most `limit`; its exit status and stderr.
fn wait_within(mut child: Child, limit: Duration) -> (std::process::ExitStatus, String) {
    let t0 = Instant::now();
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            let mut err = String::new();
            std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
            return (st, err);
        }
        if t0.elapsed() > limit {
            child.kill().unwrap();
            panic!("the job was still running after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let t = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &t);
        } else {
            std::fs::copy(e.path(), t).unwrap();
        }
    }
}

/// SIGKILL to rank 1: the job ends within 60 s, non-zero, the rank named; the run resumes on
/// 2 ranks bit-identically and on 1 within 1e-5. SIGTERM to mpirun (Slurm's preemption):
/// both ranks stop at the same step with one checkpoint, and resume to the same end.
#[test]
fn a_killed_rank_ends_the_job_and_the_run_resumes_on_two_ranks_or_one() {
    if mpirun(2).is_none() {
        return;
    }
    let s = setup();
    let full = s.p("full");
    ok_ranks(2, &strs(&distill(&s, "4", "12", &full))).unwrap();

    let out = s.p("killed");
    let args = distill(&s, "4", "12", &out);
    let child = start_slow(&args, &out, 4);
    let pid = rank_pid(&out, 1).expect("rank 1's process");
    let killed_at = Instant::now();
    Command::new("kill").args(["-KILL", &pid.to_string()]).status().unwrap();
    let (st, err) = wait_within(child, Duration::from_secs(60));
    eprintln!(
        "after SIGKILL to rank 1 the job ended in {:.1} s",
        killed_at.elapsed().as_secs_f64()
    );
    assert!(!st.success(), "{err}");
    assert!(err.contains("rank 1"), "the dead rank is named: {err}");
    assert!(rank_pid(&out, 0).is_none(), "rank 0 is gone too");

    let one = s.p("killed-then-1");
    copy_dir(Path::new(&out), Path::new(&one));
    let mut resume = args.clone();
    resume.push("--resume".into());
    ok_ranks(2, &strs(&resume)).unwrap();
    assert_eq!(weights(&out), weights(&full), "2 -> 2 ranks: bit-identical");
    assert_eq!(trajectory(&out), trajectory(&full));
    let mut resume1 = distill(&s, "4", "12", &one);
    resume1.push("--resume".into());
    ok(&strs(&resume1));
    let dw = max_weight_diff(&one, &full);
    eprintln!("2 ranks killed, resumed on 1 process: weights within {dw:.2e} of the 2-rank run");
    assert!(dw <= 1e-5, "{dw}");

    let term = s.p("term");
    let targs = distill(&s, "4", "12", &term);
    let child = start_slow(&targs, &term, 2);
    Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    let (st, err) = wait_within(child, Duration::from_secs(60));
    assert!(!st.success(), "{err}");
    let logged = rows(&term).iter().filter(|r| r.get("loss").is_some()).count();
    let ck: Vec<String> = std::fs::read_dir(Path::new(&term).join("checkpoints"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n.starts_with("step-"))
        .collect();
    assert!(
        ck.contains(&format!("step-{logged:08}")),
        "a checkpoint of the last logged step {logged}: {ck:?} ({err})"
    );
    let mut tres = targs.clone();
    tres.push("--resume".into());
    ok_ranks(2, &strs(&tres)).unwrap();
    assert_eq!(weights(&term), weights(&full), "stopped by SIGTERM, resumed: bit-identical");
}

/// Two network namespaces' worth of machine: this one (rank 0) and `ns` (rank 1), joined by a
/// veth pair; removed on drop (deleting the namespace deletes the pair).
struct Netns {
    ns: String,
    veth: String,
}

const HOST_A: &str = "10.231.7.1";
const HOST_B: &str = "10.231.7.2";

fn ip(args: &[&str]) -> bool {
    Command::new("ip").args(args).output().is_ok_and(|o| o.status.success())
}

impl Netns {
    /// None (the reason printed) where the sandbox refuses namespaces.
    fn new() -> Option<Netns> {
        let id = std::process::id();
        let n = Netns { ns: format!("orlik-{id}"), veth: format!("olk{}", id % 100_000) };
        let (a, b) = (format!("{}a", n.veth), format!("{}b", n.veth));
        if !ip(&["netns", "add", &n.ns]) {
            eprintln!("skipped: cannot make a network namespace here (`ip netns add` needs root and CAP_SYS_ADMIN, and iproute2)");
            return None;
        }
        let ns = n.ns.as_str();
        let steps: [&[&str]; 7] = [
            &["link", "add", &a, "type", "veth", "peer", "name", &b],
            &["link", "set", &b, "netns", ns],
            &["addr", "add", &format!("{HOST_A}/24"), "dev", &a],
            &["link", "set", &a, "up"],
            &["-n", ns, "addr", "add", &format!("{HOST_B}/24"), "dev", &b],
            &["-n", ns, "link", "set", &b, "up"],
            &["-n", ns, "link", "set", "lo", "up"],
        ];
        for s in steps {
            assert!(ip(s), "ip {s:?} failed");
        }
        Some(n)
    }

    fn tx_bytes(&self) -> u64 {
        let p = format!("/sys/class/net/{}a/statistics/tx_bytes", self.veth);
        std::fs::read_to_string(p).unwrap().trim().parse().unwrap()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        ip(&["netns", "del", &self.ns]);
    }
}

/// Rank 1 runs in another network namespace, reached by mpirun through an rsh agent script
/// (`ip netns exec`), and MPI's TCP transport is told to use only the veth pair's subnet: the
/// run equals one process bit for bit, and the pair carried at least the gradient sums (a ring
/// all-reduce of n bytes sends 2·(N−1)/N·n from each rank, n here per step).
#[test]
fn two_ranks_on_two_network_namespaces_train_as_one_process() {
    if mpirun(2).is_none() {
        return;
    }
    let Some(net) = Netns::new() else { return };
    let s = setup();
    let agent = s.root.join("agent.sh");
    // mpirun calls: AGENT HOST COMMAND...; the only remote host is the namespace.
    std::fs::write(
        &agent,
        format!("#!/bin/sh\nshift\nexec ip netns exec {} sh -c \"$*\"\n", net.ns),
    )
    .unwrap();
    Command::new("chmod").args(["+x", agent.to_str().unwrap()]).status().unwrap();
    let (one, two) = (s.p("one"), s.p("two"));
    ok(&strs(&distill(&s, "2", "6", &one)));
    let before = net.tx_bytes();
    let subnet = "10.231.7.0/24";
    let o = Command::new("mpirun")
        .args(["--allow-run-as-root", "-np", "2", "-host", &format!("{HOST_A}:1,{HOST_B}:1")])
        .args(["--mca", "plm_rsh_agent", agent.to_str().unwrap(), "--mca", "btl", "tcp,self"])
        .args(["--mca", "btl_tcp_if_include", subnet, "--mca", "oob_tcp_if_include", subnet])
        .arg(env!("CARGO_BIN_EXE_orlik"))
        .args(distill(&s, "2", "6", &two))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let moved = net.tx_bytes() - before;
    let grad_bytes =
        std::fs::metadata(Path::new(&s.p("student")).join("model.safetensors")).unwrap().len();
    eprintln!("two namespaces: {moved} bytes left rank 0 over the veth pair in 6 steps (gradient {grad_bytes} bytes a step)");
    // The file's size stands in for the gradient's (its header is a few per cent of it).
    assert!(moved as f64 >= 0.9 * 6.0 * grad_bytes as f64, "{moved} bytes crossed the pair");
    assert_eq!(weights(&one), weights(&two));
    assert_eq!(trajectory(&one), trajectory(&two));
}
