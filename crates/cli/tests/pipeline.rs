//! End-to-end `orlik compress` / `orlik run` on a tiny converted model: every stage's output,
//! the report, skipping unchanged stages, refusing another run's directory, `--resume` redoing
//! only what changed, an interrupted distillation resumed, the standalone eval commands, and bad
//! input.

#![allow(clippy::unwrap_used)] // tests unwrap: a failure is the test failing

use serde_json::Value;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::{fails, ok, orlik};

type Setup = common::Dir;

fn setup() -> Setup {
    let s = common::Dir::new();
    let root = &s.root;
    common::tiny_teacher_and_text(root, 777);
    let q = |i: usize| {
        format!(
            r#"{{"id": "q{i}", "question": {{"stem": "the heart", "choices": [{{"label": "A", "text": "tea"}}, {{"label": "B", "text": "hat at the"}}, {{"label": "C", "text": "earth"}}]}}, "answerKey": "{}"}}"#,
            ["A", "B", "C"][i % 3]
        )
    };
    std::fs::write(root.join("mc.jsonl"), (0..6).map(q).collect::<Vec<_>>().join("\n")).unwrap();
    s
}

/// compress flags for the tiny model: everything small.
fn compress_args<'a>(s: &'a Setup, out: &'a str, extra: &[&'a str]) -> Vec<String> {
    let mut a: Vec<String> = vec![
        "compress".into(),
        s.p("teacher"),
        "--params".into(),
        "0.6".into(),
        "--data".into(),
        s.p("train.txt"),
    ];
    a.extend([
        "--val".into(),
        s.p("val.txt"),
        "--tokens".into(),
        "3000".into(),
        "--mc-tasks".into(),
        s.p("mc.jsonl"),
    ]);
    for kv in [
        "distill.seq_len=16",
        "distill.batch=4",
        "distill.save_every=5",
        "distill.eval_every=5",
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
    a.extend(extra.iter().map(|x| x.to_string()));
    a
}

fn run(args: &[String]) -> (String, String) {
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = orlik(&refs);
    let (so, se) = (
        String::from_utf8_lossy(&o.stdout).to_string(),
        String::from_utf8_lossy(&o.stderr).to_string(),
    );
    assert!(o.status.success(), "{args:?} failed: {se}");
    (so, se)
}

fn eval_json(out: &str) -> Value {
    serde_json::from_slice(&std::fs::read(Path::new(out).join("eval.json")).unwrap()).unwrap()
}

#[test]
fn compress_writes_every_stage_and_report_and_reruns_only_what_changed() {
    let s = setup();
    let out = s.p("out");
    let (table, log) = run(&compress_args(&s, &out, &[]));
    for f in [
        "scores/scores.json",
        "pruned/config.json",
        "pruned/prune_plan.json",
        "final/config.json",
        "final/model.safetensors",
        "distill/metrics.jsonl",
        "eval.json",
        "report.md",
        "quality.png",
        "speed.png",
        "recipe.toml",
        "pipeline.json",
    ] {
        assert!(Path::new(&out).join(f).is_file(), "{f} missing; log: {log}");
    }
    assert!(
        table.contains("| | teacher | pruned | distilled |")
            && table.contains("bits/byte, val.txt"),
        "{table}"
    );
    let ev = eval_json(&out);
    let ms = ev["models"].as_array().unwrap();
    assert_eq!(
        ms.iter().map(|m| m["name"].as_str().unwrap()).collect::<Vec<_>>(),
        ["teacher", "pruned", "distilled"]
    );
    let (t, p, d) = (&ms[0], &ms[1], &ms[2]);
    assert!(p["parameters"].as_u64().unwrap() < t["parameters"].as_u64().unwrap());
    assert_eq!(p["parameters"], d["parameters"]);
    // distillation moved the student towards the teacher
    assert!(d["kl"].as_f64().unwrap() < p["kl"].as_f64().unwrap(), "{ev}");
    assert!(t["kl"].is_null() && t["mc"]["questions"] == 6);
    assert_eq!(t["speed"].as_array().unwrap().len(), 4);
    let report = std::fs::read_to_string(Path::new(&out).join("report.md")).unwrap();
    assert!(
        report.contains("![quality](quality.png)") && report.contains("gap closed"),
        "{report}"
    );

    // Same command again: every stage kept, results unchanged.
    let before = std::fs::read(Path::new(&out).join("eval.json")).unwrap();
    let (_, log) = run(&compress_args(&s, &out, &[]));
    for st in ["score", "prune", "distill", "eval"] {
        assert!(log.contains(&format!("== {st}: unchanged, kept")), "{st}: {log}");
    }
    assert_eq!(std::fs::read(Path::new(&out).join("eval.json")).unwrap(), before);
    // The saved recipe reproduces the run: `orlik run` keeps everything too.
    let (_, log) = run(&["run".into(), format!("{out}/recipe.toml")]);
    assert!(log.contains("== distill: unchanged, kept"), "{log}");

    // Another recipe in the same directory is refused, naming the key; --resume redoes distill
    // and eval only.
    let changed = compress_args(&s, &out, &["--set", "distill.lr=0.001"]);
    let refs: Vec<&str> = changed.iter().map(String::as_str).collect();
    fails(&refs, &["holds another run", "distill.lr (0.0003 -> 0.001)", "--resume", "--force"]);
    let (_, log) = run(&compress_args(&s, &out, &["--set", "distill.lr=0.001", "--resume"]));
    assert!(
        log.contains("== score: unchanged, kept") && log.contains("== prune: unchanged, kept"),
        "{log}"
    );
    assert!(log.contains("== distill\n") && log.contains("== eval\n"), "{log}");
    assert_ne!(std::fs::read(Path::new(&out).join("eval.json")).unwrap(), before);
}

fn rows(run_dir: &Path) -> usize {
    std::fs::read_to_string(run_dir.join("metrics.jsonl"))
        .map(|t| t.lines().filter(|l| l.contains("\"loss\"")).count())
        .unwrap_or(0)
}

#[test]
fn an_interrupted_distillation_resumes_where_it_stopped() {
    let s = setup();
    let out = s.p("out");
    let args = compress_args(&s, &out, &[]);
    let mut child = Command::new(env!("CARGO_BIN_EXE_orlik"))
        .args(&args)
        .env("ORLIK_STEP_DELAY_MS", "200")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while rows(&Path::new(&out).join("distill")) < 7 {
        assert!(t0.elapsed() < Duration::from_secs(120), "no progress");
        assert!(child.try_wait().unwrap().is_none(), "ended before the interrupt");
        std::thread::sleep(Duration::from_millis(20));
    }
    Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    assert_eq!(child.wait().unwrap().code(), Some(130));
    let state: Value =
        serde_json::from_slice(&std::fs::read(Path::new(&out).join("pipeline.json")).unwrap())
            .unwrap();
    assert_eq!(state["stages"]["distill"]["done"], false);
    let (_, log) = run(&args);
    assert!(log.contains("== distill: resuming"), "{log}");
    assert!(log.contains("resuming at step") || log.contains("resum"), "{log}");
    // The resumed run equals an uninterrupted one bit for bit.
    let other = s.p("other");
    run(&compress_args(&s, &other, &[]));
    let w = |o: &str| std::fs::read(Path::new(o).join("final/model.safetensors")).unwrap();
    assert!(w(&out) == w(&other), "resumed pipeline's weights differ");
}

#[test]
fn eval_commands_stand_alone() {
    let s = setup();
    let t = s.p("teacher");
    let v: Value = serde_json::from_str(&ok(&[
        "eval",
        "agree",
        &t,
        "--teacher",
        &t,
        "--text",
        &s.p("val.txt"),
        "--json",
    ]))
    .unwrap();
    assert!(v["kl"].as_f64().unwrap().abs() < 1e-6 && v["top1"] == 1.0, "{v}");
    let v: Value = serde_json::from_str(&ok(&[
        "eval",
        "mc",
        &t,
        "--tasks",
        &s.p("mc.jsonl"),
        "--limit",
        "4",
        "--json",
    ]))
    .unwrap();
    assert_eq!(v["result"]["questions"], 4);
    assert!((v["result"]["chance"].as_f64().unwrap() - 1.0 / 3.0).abs() < 1e-9);
    let acc = v["result"]["accuracy"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&acc));
    let text = ok(&["eval", "speed", &t, &t, "--reps", "1"]);
    assert!(
        text.contains("prefill b1x256") && text.contains("decode b8") && text.lines().count() == 3,
        "{text}"
    );
    let ppl =
        ok(&["eval", "ppl", &t, "--text", &s.p("val.txt"), &s.p("train.txt"), "--context", "32"]);
    assert!(ppl.contains("total:"), "{ppl}");
    // bad MC file: the line is named
    std::fs::write(
        s.p("bad.jsonl"),
        "{\"question\": {\"stem\": \"x\", \"choices\": []}, \"answerKey\": \"A\"}\n",
    )
    .unwrap();
    fails(&["eval", "mc", &t, "--tasks", &s.p("bad.jsonl")], &["bad.jsonl:1", "at least 2"]);
}

#[test]
fn bad_input_is_refused_before_any_work() {
    let s = setup();
    let t = s.p("teacher");
    let base = |out: &str, params: &str| -> Vec<String> {
        vec![
            "compress".into(),
            t.clone(),
            "--params".into(),
            params.into(),
            "--data".into(),
            s.p("train.txt"),
            "--val".into(),
            s.p("val.txt"),
            "-o".into(),
            out.into(),
        ]
    };
    let call = |a: Vec<String>, needles: &[&str]| {
        let refs: Vec<&str> = a.iter().map(String::as_str).collect();
        fails(&refs, needles);
    };
    call(base(&s.p("o1"), "1.0"), &["prune.params 1", "not smaller than the model's"]);
    call(base(&s.p("o1"), "5000000"), &["not smaller than the model's"]);
    assert!(!Path::new(&s.p("o1")).exists(), "nothing may be written for a refused budget");
    // an output directory that is not a pipeline run
    std::fs::create_dir_all(s.p("mine")).unwrap();
    std::fs::write(s.p("mine/notes.txt"), "keep me").unwrap();
    call(base(&s.p("mine"), "0.6"), &["did not write", "--force"]);
    assert_eq!(std::fs::read_to_string(s.p("mine/notes.txt")).unwrap(), "keep me");
    // an output directory holding the inputs
    call(base(&s.root.to_string_lossy(), "0.6"), &["contains the input"]);
    // recipes: unknown key, wrong type, missing budget, missing file
    std::fs::write(
        s.p("r1.toml"),
        format!("teacher = {t:?}\noutput = \"x\"\n[prune]\nparams = 0.5\n[distill]\nlrate = 1\n"),
    )
    .unwrap();
    fails(&["run", &s.p("r1.toml")], &["r1.toml (line 6, key lrate)", "unknown field `lrate`"]);
    std::fs::write(
        s.p("r2.toml"),
        format!("teacher = {t:?}\noutput = \"x\"\n[prune]\nparams = \"half\"\n"),
    )
    .unwrap();
    fails(&["run", &s.p("r2.toml")], &["r2.toml (line 4, key params)", "invalid type"]);
    std::fs::write(s.p("r3.toml"), format!("teacher = {t:?}\noutput = \"x\"\n")).unwrap();
    fails(
        &["run", &s.p("r3.toml"), "--set", "data=[\"/nonexistent.txt\"]"],
        &["/nonexistent.txt: no such file"],
    );
    fails(
        &[
            "run",
            &s.p("r3.toml"),
            "--set",
            &format!("data=[{:?}]", s.p("train.txt")),
            "--set",
            &format!("val=[{:?}]", s.p("val.txt")),
        ],
        &["give a budget (prune.params"],
    );
    fails(&["run", &s.p("r3.toml"), "--set", "prune.params"], &["expected key=value"]);
}

/// A recipe with SFT → DPO-P → GRPO after distillation: each stage runs on the previous one's
/// model, the report gains a row per stage with held-out reward before and after, a rerun keeps
/// every stage, and a changed DPO setting redoes DPO and GRPO but keeps SFT.
#[test]
fn alignment_stages_follow_distillation_and_rerun_only_what_changed() {
    let s = setup();
    let rows = |name: &str, rows: Vec<String>| {
        std::fs::write(s.root.join(name), rows.join("\n")).unwrap();
        s.p(name)
    };
    let words = ["the", "heart", "hat", "tea", "earth"];
    let sft = rows(
        "sft.jsonl",
        (0..8)
            .map(|i| format!(r#"{{"messages": [{{"role": "user", "content": "{} {}"}}, {{"role": "assistant", "content": "hat tea"}}]}}"#, words[i % 5], words[(i + 2) % 5]))
            .collect(),
    );
    let dpo = rows(
        "dpo.jsonl",
        (0..6)
            .map(|i| {
                format!(
                    r#"{{"prompt": "{}", "chosen": "heart earth", "rejected": "{} hat"}}"#,
                    words[i % 5],
                    words[(i + 1) % 5]
                )
            })
            .collect(),
    );
    let prompts = |n: usize| -> Vec<String> {
        (0..n)
            .map(|i| {
                format!(
                    r#"{{"prompt": "{} {}", "answer": "hat"}}"#,
                    words[i % 5],
                    words[(i + 3) % 5]
                )
            })
            .collect()
    };
    let grpo = rows("grpo.jsonl", prompts(4));
    let held = rows("held.jsonl", prompts(3));
    let recipe = format!(
        r#"teacher = "{t}"
data = ["{train}"]
val = ["{val}"]
[score]
samples = 8
seq_len = 16
[prune]
params = 0.6
proxy_samples = 2
seq_len = 16
multiple = 8
[distill]
tokens = 1000
seq_len = 16
batch = 4
[eval]
context = 32
speed = false
agree_tokens = 128
[sft]
data = "{sft}"
[sft.train]
steps = 3
batch = 2
max_len = 64
max_prompt = 32
lr = 5e-3
[sft.heldout]
prompts = "{held}"
reward = ["regex:a"]
limit = 3
max_new_tokens = 4
[dpo]
data = "{dpo}"
loss = "dpop"
lambda = 5.0
[dpo.train]
steps = 2
batch = 2
max_len = 64
max_prompt = 32
lr = 1e-3
[grpo]
prompts = "{grpo}"
reward = ["regex:a"]
group = 4
max_new_tokens = 4
log_samples = 0
[grpo.train]
steps = 2
batch = 1
max_len = 64
max_prompt = 16
lr = 1e-3
[grpo.heldout]
prompts = "{held}"
reward = ["regex:a"]
limit = 3
max_new_tokens = 4
"#,
        t = s.p("teacher"),
        train = s.p("train.txt"),
        val = s.p("val.txt"),
    );
    let path = rows("align.toml", vec![recipe]);
    let out = s.p("out");
    let (_, log) = run(&["run".into(), path.clone(), "-o".into(), out.clone()]);
    for f in [
        "sft/final/config.json",
        "dpo/final/config.json",
        "grpo/final/config.json",
        "dpo/ref_logps.json",
        "align_eval.json",
    ] {
        assert!(Path::new(&out).join(f).is_file(), "{f} missing; log: {log}");
    }
    // each stage started from the previous stage's model
    let run_json = |st: &str| -> Value {
        serde_json::from_slice(&std::fs::read(Path::new(&out).join(st).join("run.json")).unwrap())
            .unwrap()
    };
    let model_of = |st: &str| run_json(st)["run"]["model"]["path"].as_str().unwrap().to_string();
    assert!(model_of("sft").ends_with("out/final"), "{}", model_of("sft"));
    assert!(
        model_of("dpo").ends_with("out/sft/final") && model_of("grpo").ends_with("out/dpo/final")
    );
    assert_eq!(run_json("dpo")["run"]["loss"], "dpop");
    let ae: Value =
        serde_json::from_slice(&std::fs::read(Path::new(&out).join("align_eval.json")).unwrap())
            .unwrap();
    let st = ae["stages"].as_array().unwrap();
    assert_eq!(
        st.iter().map(|x| x["stage"].as_str().unwrap()).collect::<Vec<_>>(),
        ["sft", "dpo", "grpo"]
    );
    for x in [&st[0], &st[2]] {
        assert_eq!(x["prompts"], 3);
        let r = x["reward_after"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&r), "{x}");
    }
    assert!(st[1]["reward_after"].is_null(), "dpo has no heldout set");
    let report = std::fs::read_to_string(Path::new(&out).join("report.md")).unwrap();
    assert!(report.contains("## Alignment after distillation"), "{report}");
    for stage in ["| sft |", "| dpo |", "| grpo |"] {
        assert!(report.contains(stage), "{stage} row missing: {report}");
    }
    // a rerun keeps every stage
    let (_, log) = run(&["run".into(), path.clone(), "-o".into(), out.clone()]);
    for name in ["sft", "dpo", "grpo", "align-eval"] {
        assert!(log.contains(&format!("== {name}: unchanged, kept")), "{name}: {log}");
    }
    // another DPO β: SFT kept, DPO and everything after it redone
    let (_, log) = run(&[
        "run".into(),
        path,
        "-o".into(),
        out.clone(),
        "--set".into(),
        "dpo.beta=0.2".into(),
        "--resume".into(),
    ]);
    assert!(log.contains("== sft: unchanged, kept"), "{log}");
    assert!(!log.contains("== dpo: unchanged") && !log.contains("== grpo: unchanged"), "{log}");
    assert!(log.contains("== dpo: done") && log.contains("== grpo: done"), "{log}");
}

#[test]
fn compress_export_gguf_writes_final_gguf_that_converts_back() {
    let s = setup();
    let out = s.p("out");
    let args = compress_args(&s, &out, &["--export-gguf", "q8_0"]);
    let o = Command::new(env!("CARGO_BIN_EXE_orlik"))
        .args(&args)
        .env("ORLIK_LLAMA_CPP", s.p("no-llama-cpp-here"))
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(o.status.success(), "{log}");
    let gguf = Path::new(&out).join("final.gguf");
    assert!(gguf.is_file() && Path::new(&out).join("export.json").is_file(), "{log}");
    let report = std::fs::read_to_string(Path::new(&out).join("report.md")).unwrap();
    assert!(
        report.contains("## GGUF for llama.cpp")
            && report.contains("`final.gguf` (q8_0, from `final`)"),
        "{report}"
    );
    assert!(report.contains("llama.cpp decode speed not measured: ORLIK_LLAMA_CPP="), "{report}");
    let recipe = std::fs::read_to_string(Path::new(&out).join("recipe.toml")).unwrap();
    assert!(recipe.contains("[export]") && recipe.contains("gguf = \"q8_0\""), "{recipe}");
    // llama.cpp's layout, read back by orlik: the distilled model's dimensions.
    let back = s.p("back");
    ok(&["convert", gguf.to_str().unwrap(), "-o", &back]);
    let cfg = |d: &Path| -> Value {
        serde_json::from_slice(&std::fs::read(d.join("config.json")).unwrap()).unwrap()
    };
    let (a, b) = (cfg(&Path::new(&out).join("final")), cfg(Path::new(&back)));
    for k in [
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "head_dim",
    ] {
        assert_eq!(a[k], b[k], "{k}");
    }
    // A second run keeps the export stage.
    let o = Command::new(env!("CARGO_BIN_EXE_orlik"))
        .args(&args)
        .env("ORLIK_LLAMA_CPP", s.p("none"))
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&o.stderr).contains("== export: unchanged, kept"));
    // A bad type is refused by name before anything runs.
    fails(
        &compress_args(&s, &s.p("o2"), &["--set", "export.gguf=q3_x"])
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
        &["key gguf", "unknown variant `q3_x`", "q8_0"],
    );
}
