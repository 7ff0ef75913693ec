//! End-to-end alignment on the tiny converted model (no chat template, so ChatML): SFT learns
//! the assistant turns and resumes bit-identically after SIGKILL; DPO (sigmoid, IPO, DPO-P)
//! raises its reward accuracy and caches the reference; GRPO raises the reward of a built-in
//! verifier and of an external command; bad input is refused with the file and line named.

#![allow(clippy::unwrap_used)] // tests unwrap: a failure is the test failing

use serde_json::{json, Value};
use std::path::{Path, PathBuf};

mod common;
use common::{fails, interrupt_after, ok, orlik, rows, trajectory, weights};

struct Setup {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    model: String,
}

impl Setup {
    fn p(&self, name: &str) -> String {
        self.root.join(name).to_str().unwrap().to_string()
    }
    fn write(&self, name: &str, rows: &[Value]) -> String {
        let text: String = rows.iter().map(|r| format!("{r}\n")).collect();
        std::fs::write(self.root.join(name), text).unwrap();
        self.p(name)
    }
}

const WORDS: [&str; 8] = ["the", "hat", "tea", "earth", "heart", "at", "in", "then"];

fn setup() -> Setup {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_path_buf();
    common::tiny_teacher_and_text(&root, 7);
    let model = root.join("teacher").to_str().unwrap().to_string();
    Setup { _tmp: tmp, root, model }
}

fn word(i: usize) -> &'static str {
    WORDS[(i * 5 + 3) % WORDS.len()]
}

fn mean(rows: &[Value], key: &str, range: std::ops::Range<usize>) -> f64 {
    let v: Vec<f64> = rows[range].iter().filter_map(|r| r.get(key)?.as_f64()).collect();
    v.iter().sum::<f64>() / v.len() as f64
}

#[test]
fn sft_learns_assistant_turns_and_resume_after_sigkill_is_bit_identical() {
    let s = setup();
    // The assistant always answers "hat tea"; the users say random words.
    let convs: Vec<Value> = (0..16)
        .map(|i| json!({"messages": [{"role": "user", "content": format!("{} {}", word(i), word(i + 3))}, {"role": "assistant", "content": "hat tea"}]}))
        .collect();
    let data = s.write("sft.jsonl", &convs);
    let (a, b) = (s.p("a"), s.p("b"));
    let args = |out: &str| -> Vec<String> {
        [
            "sft",
            &s.model,
            "--data",
            &data,
            "--steps",
            "12",
            "--batch",
            "4",
            "--lr",
            "1e-2",
            "--save-every",
            "3",
            "--max-len",
            "64",
            "--max-prompt",
            "32",
            "-o",
            out,
        ]
        .iter()
        .map(|x| x.to_string())
        .collect()
    };
    let av = args(&a);
    let out = ok(&av.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(out.contains("loss: first quarter"), "{out}");
    let r = rows(&a);
    assert_eq!(r.len(), 12);
    assert!(mean(&r, "loss", 9..12) < 0.5 * mean(&r, "loss", 0..3), "{r:?}");
    // the loss is on the assistant's turn only: its text and end-of-turn marker, 4 rows a step
    let tok = tokenizers::Tokenizer::from_file(Path::new(&s.model).join("tokenizer.json")).unwrap();
    let turn = tok.encode("hat tea<|im_end|>\n", false).unwrap().get_ids().len() as f64;
    assert!(r.iter().all(|x| x["assistant_tokens"].as_f64().unwrap() == 4.0 * turn), "{r:?}");
    // the trained model is an HF directory the other commands load
    ok(&["inspect", &format!("{a}/final")]);
    let run: Value =
        serde_json::from_str(&std::fs::read_to_string(format!("{a}/run.json")).unwrap()).unwrap();
    assert_eq!(run["run"]["template"], "ChatML (the model has no chat_template)");

    let bv = args(&b);
    let bargs: Vec<&str> = bv.iter().map(String::as_str).collect();
    let st = interrupt_after(&bargs, &b, 5, "KILL");
    assert!(!st.success());
    let mut resumed = bargs.clone();
    resumed.push("--resume");
    ok(&resumed);
    assert_eq!(trajectory(&a), trajectory(&b), "resumed run differs from the uninterrupted one");
    assert_eq!(weights(&a), weights(&b), "final weights differ");
}

#[test]
fn dpo_raises_reward_accuracy_caches_the_reference_and_checks_resume_settings() {
    let s = setup();
    let pairs: Vec<Value> = (0..12)
        .map(|i| {
            let prompt = if i % 2 == 0 { json!(format!("{} {}", word(i), word(i + 1))) } else { json!([{"role": "user", "content": word(i)}]) };
            json!({"prompt": prompt, "chosen": "heart earth", "rejected": format!("{} hat", word(i + 2))})
        })
        .collect();
    let data = s.write("dpo.jsonl", &pairs);
    for loss in ["sigmoid", "ipo", "dpop"] {
        let out = s.p(&format!("dpo-{loss}"));
        let args = [
            "dpo",
            &s.model,
            "--data",
            &data,
            "--loss",
            loss,
            "--lambda",
            "5",
            "--steps",
            "10",
            "--batch",
            "4",
            "--lr",
            "5e-3",
            "--max-len",
            "64",
            "--max-prompt",
            "32",
            "-o",
            &out,
        ];
        ok(&args);
        let r = rows(&out);
        assert_eq!(r.len(), 10);
        for k in
            ["loss", "rewards_chosen", "rewards_rejected", "rewards_margin", "rewards_accuracy"]
        {
            assert!(r.iter().all(|x| x.get(k).is_some_and(Value::is_f64)), "{loss}: no {k}");
        }
        assert_eq!(r[0]["rewards_accuracy"], 0.0, "policy = reference at the first step");
        assert!(mean(&r, "rewards_accuracy", 7..10) > 0.9, "{loss}: {r:?}");
        assert!(mean(&r, "rewards_margin", 7..10) > 0.0, "{loss}");
        assert!(Path::new(&out).join("ref_logps.json").exists());
        assert!(Path::new(&out).join("rewards_accuracy.png").exists());
        if loss == "dpop" {
            // resuming with another learning rate is refused, naming the key
            let mut changed = args.to_vec();
            let i = changed.iter().position(|a| *a == "5e-3").unwrap();
            changed[i] = "1e-3";
            changed.push("--resume");
            fails(&changed, &["lr"]);
        }
    }
}

#[test]
fn grpo_raises_the_reward_of_a_verifier_and_of_an_external_command() {
    let s = setup();
    let prompts: Vec<Value> = (0..6)
        .map(|i| json!({"prompt": format!("{} {}", word(i), word(i + 1)), "answer": "hat"}))
        .collect();
    let data = s.write("grpo.jsonl", &prompts);
    // The letter "a" in a completion: about 40% of the tiny model's samples at first.
    let command = r#"cmd:grep -o '"completion":"[^"]*"' | grep -q a && echo 1 || echo 0"#;
    for reward in ["regex:a", command] {
        let out = s.p(if reward.starts_with("cmd") { "grpo-cmd" } else { "grpo-re" });
        ok(&[
            "grpo",
            &s.model,
            "--prompts",
            &data,
            "--reward",
            reward,
            "--group",
            "8",
            "--max-new-tokens",
            "6",
            "--steps",
            "16",
            "--batch",
            "2",
            "--lr",
            "2e-2",
            "--max-len",
            "64",
            "--max-prompt",
            "16",
            "--log-samples",
            "5",
            "-o",
            &out,
        ]);
        let r = rows(&out);
        assert_eq!(r.len(), 16);
        for k in ["reward_mean", "reward_std", "kl", "completion_length", "clip_fraction"] {
            assert!(r.iter().all(|x| x.get(k).is_some()), "no {k}");
        }
        let (early, late) = (mean(&r, "reward_mean", 0..4), mean(&r, "reward_mean", 12..16));
        assert!(late > early + 0.3, "{reward}: reward_mean {early} -> {late}");
        let samples = std::fs::read_to_string(Path::new(&out).join("samples.jsonl")).unwrap();
        assert!(samples.lines().count() >= 8, "samples logged");
        assert!(Path::new(&out).join("reward_mean.png").exists());
    }
    // killed mid-run and resumed: the same samples, trajectory and weights (sampling is seeded by
    // (seed, step, prompt))
    let (a, b) = (s.p("grpo-a"), s.p("grpo-b"));
    let args = |out: &str| -> Vec<String> {
        [
            "grpo",
            &s.model,
            "--prompts",
            &data,
            "--reward",
            "regex:a",
            "--group",
            "4",
            "--max-new-tokens",
            "5",
            "--steps",
            "8",
            "--batch",
            "2",
            "--lr",
            "2e-2",
            "--max-len",
            "64",
            "--max-prompt",
            "16",
            "--save-every",
            "2",
            "--log-samples",
            "1",
            "-o",
            out,
        ]
        .iter()
        .map(|x| x.to_string())
        .collect()
    };
    let av = args(&a);
    ok(&av.iter().map(String::as_str).collect::<Vec<_>>());
    let bv = args(&b);
    let mut bargs: Vec<&str> = bv.iter().map(String::as_str).collect();
    assert!(!interrupt_after(&bargs, &b, 3, "KILL").success());
    bargs.push("--resume");
    ok(&bargs);
    assert_eq!(trajectory(&a), trajectory(&b), "resumed GRPO run differs");
    assert_eq!(weights(&a), weights(&b));
    let samples = |d: &str| std::fs::read_to_string(Path::new(d).join("samples.jsonl")).unwrap();
    assert_eq!(samples(&a), samples(&b), "samples.jsonl repeats or misses rows after resume");
    // Dr. GRPO with a KL term to the reference runs and reports a KL; the same with the frozen
    // reference held in bf16: recorded in run.json (an f32 one is not), the first step's samples
    // are the policy's own (the same rewards), and its KL to a bf16 copy of itself is the
    // rounding of the weights only.
    let dr = |out: &str, extra: &[&str]| {
        let mut a = vec![
            "grpo",
            &s.model,
            "--prompts",
            &data,
            "--reward",
            "regex:a",
            "--group",
            "4",
            "--max-new-tokens",
            "4",
            "--steps",
            "3",
            "--batch",
            "2",
            "--lr",
            "2e-2",
            "--dr-grpo",
            "--kl-beta",
            "0.1",
            "--max-len",
            "64",
            "--max-prompt",
            "16",
            "-o",
            out,
        ];
        a.extend_from_slice(extra);
        ok(&a);
    };
    let (out, half) = (s.p("grpo-dr"), s.p("grpo-dr-bf16"));
    dr(&out, &[]);
    assert!(rows(&out)[2]["kl"].as_f64().unwrap() > 0.0);
    dr(&half, &["--reference-compute-dtype", "bf16"]);
    let run = |d: &str| -> Value {
        serde_json::from_str(&std::fs::read_to_string(Path::new(d).join("run.json")).unwrap())
            .unwrap()
    };
    assert_eq!(run(&half)["run"]["reference_compute_dtype"], "bf16");
    assert!(run(&out)["run"].get("reference_compute_dtype").is_none());
    let (f, h) = (rows(&out), rows(&half));
    assert_eq!(f[0]["reward_mean"], h[0]["reward_mean"], "step 0 samples differ");
    let (kf, kh) = (f[0]["kl"].as_f64().unwrap(), h[0]["kl"].as_f64().unwrap());
    assert!(kf.abs() < 1e-6 && kh > kf && kh < 1e-3, "step 0 KL: f32 {kf}, bf16 {kh}");
    // greedy evaluation of the same prompts
    let e: Value = serde_json::from_str(&ok(&[
        "eval",
        "reward",
        &format!("{}/final", s.p("grpo-re")),
        "--prompts",
        &data,
        "--reward",
        "regex:a",
        "--max-new-tokens",
        "6",
        "--json",
    ]))
    .unwrap();
    assert_eq!(e["n"], 6);
}

#[test]
fn bad_input_is_refused_naming_the_file_and_line() {
    let s = setup();
    let good = json!({"messages": [{"role": "user", "content": "the"}, {"role": "assistant", "content": "hat"}]});
    let path = s.root.join("bad.jsonl");
    std::fs::write(
        &path,
        format!("{good}\n{good}\n{{\"messages\": [{{\"role\": \"user\"}}]}}\nnot json\n"),
    )
    .unwrap();
    let bad = path.to_str().unwrap();
    let out = s.p("o");
    fails(
        &["sft", &s.model, "--data", bad, "--steps", "1", "-o", &out],
        &["bad.jsonl:3", "content", "--skip-bad"],
    );
    assert!(!Path::new(&out).exists(), "nothing written on bad input");
    let o = orlik(&[
        "sft",
        &s.model,
        "--data",
        bad,
        "--steps",
        "1",
        "--batch",
        "2",
        "--skip-bad",
        "-o",
        &out,
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("bad.jsonl:4") && err.contains("2 rows used; 2 malformed skipped"),
        "{err}"
    );

    let dpo = s.write("dpo.jsonl", &[json!({"prompt": "the", "chosen": "hat"})]);
    fails(&["dpo", &s.model, "--data", &dpo, "-o", &s.p("d")], &["dpo.jsonl:1", "rejected"]);
    let grpo = s.write("g.jsonl", &[json!({"prompt": "the hat"})]);
    fails(
        &["grpo", &s.model, "--prompts", &grpo, "--reward", "numeric", "-o", &s.p("g")],
        &["g.jsonl:1", "answer"],
    );
    fails(
        &["grpo", &s.model, "--prompts", &grpo, "--reward", "bogus", "-o", &s.p("g")],
        &["unknown reward"],
    );
    fails(
        &[
            "grpo",
            &s.model,
            "--prompts",
            &grpo,
            "--reward",
            "regex:a",
            "--group",
            "1",
            "-o",
            &s.p("g"),
        ],
        &["--group"],
    );
    // a failing or hanging reward command stops the run with the reason, never scores 0
    for (cmd, why) in [
        ("cmd:exit 3", "exit status: 3"),
        ("cmd:sleep 10", "timed out"),
        ("cmd:echo x", "not a number"),
    ] {
        let o = orlik(&[
            "grpo",
            &s.model,
            "--prompts",
            &grpo,
            "--reward",
            cmd,
            "--reward-timeout",
            "0.5",
            "--group",
            "2",
            "--max-new-tokens",
            "2",
            "--steps",
            "1",
            "--batch",
            "1",
            "--max-len",
            "64",
            "--max-prompt",
            "16",
            "-o",
            &s.p(&format!("g-{}", why.len())),
        ]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{err}");
        assert!(
            err.contains("reward command") && err.contains(why) && err.contains("the hat"),
            "{cmd}: {err}"
        );
    }
}
