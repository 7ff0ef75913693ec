//! A recipe with `[trim]` on the tiny Gemma 3 model: the vocabulary is trimmed to the training
//! text first, the trimmed model is scored, pruned and distilled from the original teacher (its
//! logits at the kept tokens), and the eval compares all four, agreement included.

#![allow(clippy::unwrap_used)] // tests unwrap: a failure is the test failing

use orlik_pipeline::{Options, Outcome, Recipe};
use serde_json::Value;
use std::path::Path;

mod common;

fn json(p: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
}

#[test]
fn a_trimmed_student_is_scored_pruned_distilled_from_the_original_and_compared_with_it() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    common::convert("tiny-gemma3.gguf", &root.join("teacher"));
    common::texts(root, 11, 1500, 200);
    let p = |n: &str| root.join(n).display().to_string();
    let recipe = format!(
        r#"teacher = "{}"
output = "{}"
data = ["{}"]
val = ["{}"]
[trim]
[score]
samples = 4
seq_len = 16
[prune]
params = 0.7
proxy_samples = 2
seq_len = 16
multiple = 8
tolerance = 0.1
[distill]
steps = 2
seq_len = 16
batch = 2
eval_every = 0
val_tokens = 64
[eval]
context = 32
speed = false
agree_tokens = 64
"#,
        p("teacher"),
        p("out"),
        p("train.txt"),
        p("val.txt"),
    );
    let r = Recipe::parse(&recipe, "test.toml", &[]).unwrap().resolve().unwrap();
    assert_eq!(r.trim.as_ref().unwrap().data, r.data, "trims on the training text by default");
    let o = Options {
        resume: false,
        force: false,
        stop: None,
        after_step: None,
        memory: orlik_train::mem::Gate::Available,
        ui: &orlik_pipeline::Quiet,
    };
    let Outcome::Finished { table } = orlik_pipeline::run(&r, &o).unwrap() else { panic!() };
    let out = &r.output;
    let vocab = |d: &str| json(&out.join(d).join("config.json"))["vocab_size"].as_u64().unwrap();
    let full = json(&root.join("teacher/config.json"))["vocab_size"].as_u64().unwrap();
    assert!(vocab("trimmed") < full, "{} of {full}", vocab("trimmed"));
    assert_eq!(vocab("pruned"), vocab("trimmed"));
    assert_eq!(vocab("final"), vocab("trimmed"));
    let run = json(&out.join("distill/run.json"));
    assert_eq!(run["run"]["teacher"].as_str(), Some(p("teacher").as_str()), "the original teaches");
    let ev = json(&out.join("eval.json"));
    let names: Vec<&str> =
        ev["models"].as_array().unwrap().iter().map(|m| m["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["teacher", "trimmed", "pruned", "distilled"]);
    for m in &ev["models"].as_array().unwrap()[1..] {
        let (kl, top1) = (m["kl"].as_f64().unwrap(), m["top1"].as_f64().unwrap());
        assert!(kl.is_finite() && kl >= 0.0 && (0.0..=1.0).contains(&top1), "{m}");
    }
    // The trimmed model without any training predicts the kept tokens as the teacher does.
    let trimmed = &ev["models"][1];
    assert!(trimmed["kl"].as_f64().unwrap() < 1e-4, "{trimmed}");
    assert!(table.contains("| trimmed |"), "{table}");
    let gap = table.lines().find(|l| l.starts_with("| pruned→teacher gap closed")).unwrap();
    let cells: Vec<&str> = gap.split('|').map(str::trim).collect();
    assert_eq!(cells[2..4], ["—", "—"], "no gap figure for teacher and trimmed: {gap}");
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(report.contains("vocabulary was **trimmed** to the tokens of"), "{report}");
}

/// A `[trim]` input inside OUT is an input like the others: the run is refused before any work,
/// even with --force, and the file is still there.
#[test]
fn a_trim_input_inside_the_output_is_refused_even_with_force() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    common::convert("tiny-gemma3.gguf", &root.join("teacher"));
    common::texts(root, 11, 200, 50);
    std::fs::create_dir(root.join("out")).unwrap();
    std::fs::write(root.join("out/keep.txt"), "the\n").unwrap();
    let p = |n: &str| root.join(n).display().to_string();
    let recipe = format!(
        "teacher = \"{}\"\noutput = \"{}\"\ndata = [\"{}\"]\nval = [\"{}\"]\n[trim]\nkeep = \"{}\"\n[prune]\nparams = 0.7\n",
        p("teacher"),
        p("out"),
        p("train.txt"),
        p("val.txt"),
        p("out/keep.txt"),
    );
    let r = Recipe::parse(&recipe, "test.toml", &[]).unwrap().resolve().unwrap();
    let o = Options {
        resume: false,
        force: true,
        stop: None,
        after_step: None,
        memory: orlik_train::mem::Gate::Available,
        ui: &orlik_pipeline::Quiet,
    };
    let e = orlik_pipeline::run(&r, &o).unwrap_err().to_string();
    assert!(e.contains("the output contains the input") && e.contains("keep.txt"), "{e}");
    assert!(root.join("out/keep.txt").is_file());
}
