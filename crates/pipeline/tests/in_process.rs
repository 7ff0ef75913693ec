//! The pipeline called in-process on the tiny converted model: a run interrupted inside
//! distillation and again inside SFT (one stop flag for every training stage) resumes each
//! time where it stopped, finishes, and a third run keeps every stage.

#![allow(clippy::unwrap_used)] // tests unwrap: a failure is the test failing

use orlik_pipeline::{Options, Outcome, Recipe, Ui};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

/// A Ui that keeps the notices.
#[derive(Default)]
struct Record(Mutex<Vec<String>>);

impl Ui for Record {
    fn notice(&self, msg: &str) {
        self.0.lock().unwrap().push(msg.to_string());
    }
    fn print(&self, _: &str) {}
    fn progress(&self, _: &str, _: usize, _: usize) {}
    fn progress_done(&self) {}
}

impl Record {
    fn has(&self, line: &str) -> bool {
        self.0.lock().unwrap().iter().any(|l| l == line)
    }
    fn starts(&self, prefix: &str) -> bool {
        self.0.lock().unwrap().iter().any(|l| l.starts_with(prefix))
    }
}

/// The tiny GGUF as ROOT/teacher, seeded text over words its vocabulary knows, SFT rows.
fn inputs(root: &Path) {
    let gguf =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/gguf/tiny-llama.gguf");
    let opts = orlik_io::hfdir::SaveOptions {
        dtype: candle_core::DType::F32,
        max_shard_bytes: u64::MAX,
        overwrite: false,
        kind: "convert",
    };
    orlik_io::convert::convert_gguf(&gguf, &root.join("teacher"), &opts, vec![], |_, _, _| {})
        .unwrap();
    let words = ["the", "theater", "then", "anthem", "in", "hearth", "heart", "earth", "at", "tea"];
    let mut x = 99u64;
    let mut text = |n: usize| orlik_model::testing::seeded_words(&words, n, &mut x);
    std::fs::write(root.join("train.txt"), text(2000)).unwrap();
    std::fs::write(root.join("val.txt"), text(300)).unwrap();
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

/// Run with a hook that raises `stop` after the `at`-th training step of this run (0: never).
fn run(r: &Recipe, at: u64) -> (Outcome, Record) {
    let ui = Record::default();
    let stop = AtomicBool::new(false);
    let steps = AtomicU64::new(0);
    let hook = |_: u64| {
        if steps.fetch_add(1, Ordering::SeqCst) + 1 == at {
            stop.store(true, Ordering::SeqCst);
        }
    };
    let o = Options {
        resume: false,
        force: false,
        stop: Some(&stop),
        after_step: Some(&hook),
        memory: orlik_train::mem::Gate::Available,
        ui: &ui,
    };
    (orlik_pipeline::run(r, &o).unwrap(), ui)
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
