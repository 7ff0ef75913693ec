//! Qwen3 through every stage from the command line: the transformers-made fixture
//! (`scripts/gen_fixtures.py`, per-head q/k RMSNorm, head_dim 16 != hidden / heads) with a
//! byte-level tokenizer of the same vocabulary, scored, pruned, distilled from itself unpruned,
//! SFT-, DPO- and GRPO-trained, exported to GGUF and converted back.

#![allow(clippy::unwrap_used)] // tests unwrap: a failure is the test failing

use serde_json::{json, Value};
use std::path::Path;

mod common;
use common::ok;

fn jsonl(path: &Path, rows: &[Value]) -> String {
    std::fs::write(path, rows.iter().map(|r| format!("{r}\n")).collect::<String>()).unwrap();
    path.to_str().unwrap().to_string()
}

#[test]
fn qwen3_scores_prunes_distills_aligns_and_exports() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    common::tiny_teacher_and_text(root, 31);
    let q = root.join("qwen3");
    std::fs::create_dir(&q).unwrap();
    let fx = common::fixtures().join("qwen3");
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(fx.join(f), q.join(f)).unwrap();
    }
    for f in ["tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(root.join("teacher").join(f), q.join(f)).unwrap();
    }
    let p = |n: &str| root.join(n).to_str().unwrap().to_string();
    let (qs, data, val) = (q.to_str().unwrap().to_string(), p("train.txt"), p("val.txt"));
    let args = ["--data", &data, "--samples", "4", "--seq-len", "16", "--batch", "2"];
    ok(&[&["score", qs.as_str()][..], &args, &["-o", &p("scores")]].concat());
    let out = ok(&[
        "prune",
        &qs,
        "--scores",
        &p("scores"),
        "--heads",
        "2",
        "--kv-heads",
        "1",
        "--ffn",
        "24",
        "-o",
        &p("pruned"),
    ]);
    assert!(out.contains("heads 4->2"), "{out}");
    let cfg: Value =
        serde_json::from_slice(&std::fs::read(root.join("pruned/config.json")).unwrap()).unwrap();
    assert_eq!(
        (cfg["architectures"][0].as_str(), cfg["head_dim"].as_u64()),
        (Some("Qwen3ForCausalLM"), Some(16))
    );
    let shared = ["--steps", "2", "--batch", "2", "--seq-len", "8"];
    ok(&[
        &[
            "distill",
            "--teacher",
            qs.as_str(),
            "--student",
            &p("pruned"),
            "--data",
            &data,
            "--val",
            &val,
        ][..],
        &shared,
        &["-o", &p("kd")],
    ]
    .concat());
    assert!(root.join("kd/final/model.safetensors").is_file());
    let convs: Vec<Value> = (0..8)
        .map(|i| json!({"messages": [{"role": "user", "content": (["the hat", "tea at"][i % 2])}, {"role": "assistant", "content": "the earth"}]}))
        .collect();
    let sft = jsonl(&root.join("sft.jsonl"), &convs);
    ok(&["sft", &p("kd/final"), "--data", &sft, "--steps", "2", "--batch", "2", "-o", &p("sft")]);
    let prefs: Vec<Value> = (0..8)
        .map(|i| json!({"prompt": (["the", "tea"][i % 2]), "chosen": "hat", "rejected": "in"}))
        .collect();
    let dpo = jsonl(&root.join("dpo.jsonl"), &prefs);
    ok(&["dpo", &p("sft/final"), "--data", &dpo, "--steps", "2", "--batch", "2", "-o", &p("dpo")]);
    // GRPO: sampled groups with the KV cache, then the policy-gradient step on Qwen3's q/k norms
    let prompts: Vec<Value> = (0..4).map(|i| json!({"prompt": (["the", "tea"][i % 2])})).collect();
    let grpo = jsonl(&root.join("grpo.jsonl"), &prompts);
    let g = [
        "grpo",
        &p("dpo/final"),
        "--prompts",
        &grpo,
        "--reward",
        "regex:a",
        "--group",
        "4",
        "--max-new-tokens",
        "4",
        "--steps",
        "2",
        "--batch",
        "2",
        "--max-len",
        "32",
        "--max-prompt",
        "8",
        "-o",
        &p("grpo"),
    ];
    ok(&g);
    let r = common::rows(&p("grpo"));
    assert_eq!(r.len(), 2, "{r:?}");
    for x in &r {
        let (m, kl) = (x["reward_mean"].as_f64().unwrap(), x["kl"].as_f64().unwrap());
        assert!((0.0..=1.0).contains(&m) && kl.is_finite(), "{x}");
    }
    // the weights moved: GRPO's final differs from its starting point
    assert_ne!(
        std::fs::read(root.join("grpo/final/model.safetensors")).unwrap(),
        std::fs::read(root.join("dpo/final/model.safetensors")).unwrap()
    );
    // GGUF (llama.cpp's qwen3: attn_q_norm / attn_k_norm per layer) and back.
    ok(&["export", &p("grpo/final"), "--gguf", &p("q.gguf"), "--type", "f32"]);
    ok(&["convert", &p("q.gguf"), "-o", &p("back")]);
    let back: Value =
        serde_json::from_slice(&std::fs::read(root.join("back/config.json")).unwrap()).unwrap();
    assert_eq!(back["architectures"][0], "Qwen3ForCausalLM");
    assert_eq!(
        (back["num_attention_heads"].as_u64(), back["head_dim"].as_u64()),
        (Some(2), Some(16))
    );
    let gen = ok(&[
        "generate",
        &p("back"),
        "--prompt",
        "the",
        "--max-new-tokens",
        "4",
        "--temperature",
        "0",
    ]);
    assert!(gen.starts_with("the"), "{gen}");
}
