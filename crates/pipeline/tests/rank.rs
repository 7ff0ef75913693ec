//! The search stage (`search.rank_by = "kd:TOKENS"`) on the tiny converted model: prune's best
//! candidates are ranked by short distillation, the winner is distilled; a run interrupted
//! inside the ranking resumes and ends with the very numbers and model of an uninterrupted one.

#![allow(clippy::unwrap_used)] // tests unwrap: a failure is the test failing

use orlik_pipeline::{Outcome, Recipe};
use std::path::Path;

mod common;
use common::run;

fn inputs(root: &Path) {
    let tiny = root.join("tiny");
    common::convert("tiny-llama.gguf", &tiny);
    // Four layers (the tiny GGUF has two): the shortlist holds one shape per layer count, and
    // two rounds need three candidates.
    let mut cfg = orlik_io::hfdir::HfModel::open(&tiny).unwrap().config;
    cfg.num_hidden_layers = 4;
    let mut w: Vec<_> =
        orlik_model::init::random_weights(&cfg, 5, 0.3).unwrap().into_iter().collect();
    w.sort_by(|a, b| a.0.cmp(&b.0));
    let f32 = candle_core::DType::F32;
    orlik_train::lm::save_final(&tiny, &cfg, &w, &root.join("teacher"), f32).unwrap();
    common::texts(root, 7, 2000, 300);
}

fn recipe(root: &Path, out: &str) -> Recipe {
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
tolerance = 0.1
[search]
rank_by = "kd:64"
candidates = 3
topk = 8
val_tokens = 64
[distill]
steps = 2
seq_len = 16
batch = 2
save_every = 1
eval_every = 0
val_tokens = 64
[eval]
context = 32
speed = false
agree_tokens = 64
"#,
        p("teacher"),
        p(out),
        p("train.txt"),
        p("val.txt"),
    );
    Recipe::parse(&text, "test.toml", &[]).unwrap().resolve().unwrap()
}

fn ranking(out: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(out.join("search/rank.json")).unwrap()).unwrap()
}

#[test]
fn candidates_ranked_by_short_distillation_resume_to_the_same_winner_and_model() {
    let tmp = tempfile::tempdir().unwrap();
    inputs(tmp.path());

    let whole = recipe(tmp.path(), "whole");
    let (o, ui) = run(&whole, 0);
    assert!(matches!(o, Outcome::Finished { .. }), "{o:?}");
    let a = ranking(&whole.output);
    // 3 candidates x 64 tokens (2 steps of 32), then the better 2 to 128 tokens (4 steps)
    let rounds: Vec<(u64, u64)> = a["rounds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["entrants"].as_u64().unwrap(), r["tokens"].as_u64().unwrap()))
        .collect();
    assert_eq!(rounds, [(3, 64), (2, 128)]);
    assert_eq!(a["steps"], serde_json::json!([2, 4]));
    let kl: Vec<Vec<f64>> = serde_json::from_value(a["kl"].clone()).unwrap();
    let lens: Vec<usize> = kl.iter().map(Vec::len).collect();
    assert_eq!(lens.iter().filter(|&&n| n == 3).count(), 2, "two went on: {kl:?}");
    assert_eq!(lens.iter().filter(|&&n| n == 2).count(), 1, "one out after round 1: {kl:?}");
    assert!(kl.iter().flatten().all(|k| k.is_finite() && *k >= 0.0), "{kl:?}");
    // training lowered every candidate's KL
    assert!(kl.iter().all(|k| k[1] < k[0]), "{kl:?}");
    let w = a["winner"].as_u64().unwrap() as usize;
    assert_eq!(kl[w].len(), 3, "the winner trained in every round");
    assert!(kl.iter().filter(|k| k.len() == 3).all(|k| k[2] >= kl[w][2]));
    // only the rounds' records are kept, not their checkpoints
    for i in 1..=3 {
        let c = whole.output.join(format!("search/cand-{i}"));
        assert!(c.join("metrics.jsonl").is_file() && !c.join("checkpoints").exists());
    }
    let report = std::fs::read_to_string(whole.output.join("report.md")).unwrap();
    assert!(report.contains("## Candidates ranked after short distillation"), "{report}");
    assert!(report.contains("**winner**") && report.contains("the ranking"), "{report}");
    let said = ui.0.lock().unwrap().join("\n");
    assert!(said.contains("ranking 3 candidates by short distillation: 2 rounds (3 x 64 tokens, 2 x 128 tokens), 320 tokens in all"), "{said}");
    // the distilled student is the winner's
    let student = a["entries"][w]["model"].as_str().unwrap();
    let rec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(whole.output.join("distill/run.json")).unwrap())
            .unwrap();
    assert_eq!(rec["run"]["student"].as_str(), Some(student), "{rec}");

    // Interrupted at the 5th training step: inside the second candidate's first round.
    let parts = recipe(tmp.path(), "parts");
    let (o, _) = run(&parts, 5);
    assert!(matches!(&o, Outcome::Interrupted { stage, .. } if stage == "search"), "{o:?}");
    assert!(ranking(&parts.output)["winner"].is_null());
    let (o, ui) = run(&parts, 0);
    assert!(matches!(o, Outcome::Finished { .. }), "{o:?}");
    assert!(ui.0.lock().unwrap().iter().any(|l| l == "== search: resuming"));
    let b = ranking(&parts.output);
    assert_eq!((&a["kl"], &a["winner"]), (&b["kl"], &b["winner"]), "same numbers, same winner");
    let bytes = |o: &Path| std::fs::read(o.join("final/model.safetensors")).unwrap();
    assert!(bytes(&whole.output) == bytes(&parts.output), "the same distilled model");
}
