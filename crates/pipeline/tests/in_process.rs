//! The pipeline called in-process on the tiny converted model: a run interrupted inside
//! distillation and again inside SFT (one stop flag for every training stage) resumes each
//! time where it stopped, finishes, and a third run keeps every stage.

#![allow(clippy::unwrap_used)] // tests unwrap: a failure is the test failing

use orlik_pipeline::{Outcome, Recipe};
use std::path::Path;

mod common;
use common::run;

/// The tiny GGUF as ROOT/teacher, seeded text over words its vocabulary knows, SFT rows.
fn inputs(root: &Path) {
    common::convert("tiny-llama.gguf", &root.join("teacher"));
    common::texts(root, 99, 2000, 300);
    let words = ["the", "theater", "then", "anthem", "in", "hearth"];
    let sft: Vec<String> = (0..6)
        .map(|i| format!(r#"{{"messages": [{{"role": "user", "content": "{}"}}, {{"role": "assistant", "content": "hat tea"}}]}}"#, words[i]))
        .collect();
    std::fs::write(root.join("sft.jsonl"), sft.join("\n")).unwrap();
}

fn recipe(root: &Path) -> Recipe {
    let p = |n: &str| root.join(n).display().to_string();
    let text = format!(
        r#"teacher = "{}"
output = "{}"
data = ["{}"]
val = ["{}"]
[score]
samples = 4
seq_len = 16
[prune]
params = 0.6
proxy_samples = 2
seq_len = 16
multiple = 8
[distill]
steps = 4
seq_len = 16
batch = 2
save_every = 2
eval_every = 0
val_tokens = 64
[eval]
context = 32
speed = false
agree_tokens = 64
[sft]
data = "{}"
[sft.train]
steps = 3
batch = 2
max_len = 32
max_prompt = 16
save_every = 1
"#,
        p("teacher"),
        p("out"),
        p("train.txt"),
        p("val.txt"),
        p("sft.jsonl")
    );
    Recipe::parse(&text, "test.toml", &[]).unwrap().resolve().unwrap()
}

#[test]
fn interrupted_in_distillation_and_in_sft_resumes_each_and_finishes() {
    let tmp = tempfile::tempdir().unwrap();
    inputs(tmp.path());
    let r = recipe(tmp.path());

    // Step 3 of 4 of distillation.
    let (o, ui) = run(&r, 3);
    assert_eq!(o, Outcome::Interrupted { stage: "distill".into(), step: 3 });
    assert!(ui.starts("== score: done in "));
    assert!(!r.output.join("final").exists(), "no final model from an interrupted run");

    // Resumed: distillation's last step, then the first SFT step is interrupted (the same
    // stop flag reaches the second training stage).
    let (o, ui) = run(&r, 2);
    assert_eq!(o, Outcome::Interrupted { stage: "sft".into(), step: 1 });
    assert!(ui.starts("== score: unchanged, kept (") && ui.starts("== prune: unchanged, kept ("));
    assert!(ui.has("== distill: resuming"));
    let ck = orlik_train::checkpoint::list(&r.output.join("distill/checkpoints")).unwrap();
    let steps: Vec<u64> = ck.iter().map(|c| c.0).collect();
    assert_eq!(steps, [4], "a finished run keeps its last checkpoint only");

    // Resumed again: SFT finishes, the eval and report are written.
    let (o, ui) = run(&r, 0);
    let Outcome::Finished { table } = o else { panic!("{o:?}") };
    assert!(table.contains("| parameters |"), "{table}");
    assert!(ui.has("== sft: resuming"));
    assert!(r.output.join("sft/final/config.json").is_file());
    assert!(r.output.join("report.md").is_file());

    // Nothing changed: every stage kept.
    let (o, ui) = run(&r, 0);
    assert!(matches!(o, Outcome::Finished { .. }));
    let kept = ui.0.lock().unwrap().iter().filter(|l| l.contains(": unchanged, kept (")).count();
    assert_eq!(kept, 6, "score, prune, distill, sft, eval, align-eval: {:?}", ui.0.lock().unwrap());
}
