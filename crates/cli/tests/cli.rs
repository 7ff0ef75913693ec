//! End-to-end: the `orlik` binary on tiny fixtures. Convert a GGUF, inspect, generate, eval ppl;
//! and bad input gives a one-line error, a non-zero exit, no panic, nothing half-written.

#![allow(clippy::unwrap_used)] // tests unwrap: a failure is the test failing

use std::path::Path;

mod common;
use common::{fails, fixtures, ok};

fn converted(tmp: &Path) -> String {
    let out = tmp.join("tiny");
    let gguf = fixtures().join("gguf/tiny-llama.gguf");
    ok(&[
        "convert",
        gguf.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--max-shard-size",
        "30KB",
    ]);
    out.to_str().unwrap().to_string()
}

#[test]
fn convert_inspect_generate_ppl() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = converted(tmp.path());
    assert!(Path::new(&dir).join("orlik.json").exists(), "provenance recorded");
    let v: serde_json::Value = serde_json::from_str(&ok(&["inspect", &dir, "--json"])).unwrap();
    assert_eq!(v["architecture"], "LlamaForCausalLM");
    assert_eq!(v["head_dim"], 8);
    let p = &v["parameters"];
    let sum: u64 = ["embeddings", "attention", "mlp", "norms", "lm_head"]
        .iter()
        .map(|k| p[k].as_u64().unwrap())
        .sum();
    assert_eq!(p["total"].as_u64().unwrap(), sum);
    assert_eq!(p["embeddings"], 64 * 32);
    assert!(ok(&["inspect", &dir]).contains("total"));
    // tied embeddings are counted once
    let v: serde_json::Value = serde_json::from_str(&ok(&[
        "inspect",
        fixtures().join("llama").to_str().unwrap(),
        "--json",
    ]))
    .unwrap();
    assert_eq!(v["parameters"]["lm_head"], "tied to embeddings");

    let g = ok(&["generate", &dir, "--prompt", "the", "--max-new-tokens", "5", "--seed", "3"]);
    assert!(g.starts_with("the"));
    assert_eq!(
        g,
        ok(&["generate", &dir, "--prompt", "the", "--max-new-tokens", "5", "--seed", "3"]),
        "seeded"
    );
    // --json: greedy picks the best logit of every row; the text is what streaming prints.
    let greedy =
        ["generate", &dir, "--prompt", "the", "--max-new-tokens", "6", "--temperature", "0"];
    let streamed = ok(&greedy);
    let v: serde_json::Value =
        serde_json::from_str(&ok(&[&greedy[..], &["--json"]].concat())).unwrap();
    let steps = v["steps"].as_array().unwrap();
    assert!(!steps.is_empty() && steps.len() <= 6);
    for s in steps {
        assert_eq!(s["id"], s["best"][0]);
        assert!(s["best"][1].as_f64().unwrap() >= s["runner_up"][1].as_f64().unwrap());
        assert_ne!(s["best"][0], s["runner_up"][0]);
    }
    let text = v["text"].as_str().unwrap();
    assert_eq!(streamed.trim_end_matches('\n'), format!("the{text}"));
    assert_eq!(steps.last().unwrap()["chars"].as_u64().unwrap() as usize, text.chars().count());

    let text = tmp.path().join("t.txt");
    std::fs::write(&text, "the theater then the anthem ".repeat(20)).unwrap();
    let v: serde_json::Value = serde_json::from_str(&ok(&[
        "eval",
        "ppl",
        &dir,
        "--text",
        text.to_str().unwrap(),
        "--context",
        "16",
        "--json",
    ]))
    .unwrap();
    for k in ["tokens", "nll", "ppl", "bits_per_byte", "tokens_per_s"] {
        assert!(v[k].is_number(), "{k} missing: {v}");
    }
    let nll = v["nll"].as_f64().unwrap();
    assert!((v["ppl"].as_f64().unwrap() - nll.exp()).abs() < 1e-9);
    // stride < context scores the same tokens (every token but the first)
    let v2: serde_json::Value = serde_json::from_str(&ok(&[
        "eval",
        "ppl",
        &dir,
        "--text",
        text.to_str().unwrap(),
        "--context",
        "16",
        "--stride",
        "8",
        "--json",
    ]))
    .unwrap();
    assert!(v2["tokens"].as_u64() > v["tokens"].as_u64());
    // The matrices held in bf16 / f16: the same windows, bits/byte within the weights'
    // rounding of the f32 model's (the converted model is f32: auto means f32, recorded).
    assert_eq!(v["compute_dtype"], "f32");
    for dt in ["bf16", "f16"] {
        let ppl = ["eval", "ppl", &dir, "--text", text.to_str().unwrap(), "--context", "16"];
        let h: serde_json::Value =
            serde_json::from_str(&ok(&[&ppl[..], &["--json", "--compute-dtype", dt]].concat()))
                .unwrap();
        assert_eq!(h["compute_dtype"], dt);
        assert_eq!(h["tokens"], v["tokens"]);
        let (a, b) = (v["bits_per_byte"].as_f64().unwrap(), h["bits_per_byte"].as_f64().unwrap());
        assert!((a - b).abs() <= 1e-2 * a, "{dt}: {b} bits/byte vs f32 {a}");
    }
    let bad = ["eval", "ppl", &dir, "--text", text.to_str().unwrap(), "--compute-dtype", "fp8"];
    fails(&bad, &["--compute-dtype", "fp8", "bf16"]);
}

#[test]
fn bad_input_is_a_one_line_error() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = converted(tmp.path());
    let t = |name: &str, bytes: &[u8]| {
        let p = tmp.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        p.to_str().unwrap().to_string()
    };
    let empty = t("empty.txt", b"  \n");
    fails(&["eval", "ppl", &dir, "--text", &empty], &["empty.txt", "empty text"]);
    let latin2 = t("latin2.txt", b"za\xbf\xf3\xb3\xe6 g\xea\xb6l\xb1 ja\xbc\xf1");
    fails(&["eval", "ppl", &dir, "--text", &latin2], &["latin2.txt", "not UTF-8"]);
    fails(&["eval", "ppl", &dir, "--text", "/nonexistent.txt"], &["/nonexistent.txt"]);
    // converting onto an existing directory is refused, and it is left alone
    let gguf = fixtures().join("gguf/tiny-llama.gguf");
    fails(
        &["convert", gguf.to_str().unwrap(), "-o", &dir],
        &["already holds a `convert` output", "--force"],
    );
    assert!(Path::new(&dir).join("config.json").exists());
    // corrupt GGUF, unknown architecture, truncated safetensors, missing dir
    let bad = t("bad.gguf", b"GGUF\x03\x00\x00\x00\xff\xff");
    let out = tmp.path().join("never");
    fails(&["convert", &bad, "-o", out.to_str().unwrap()], &["bad.gguf", "corrupt GGUF"]);
    assert!(!out.exists());
    let arch = tmp.path().join("arch");
    std::fs::create_dir(&arch).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(fixtures().join("llama").join(f), arch.join(f)).unwrap();
    }
    let cfg = std::fs::read_to_string(arch.join("config.json"))
        .unwrap()
        .replace("LlamaForCausalLM", "FalconForCausalLM");
    std::fs::write(arch.join("config.json"), cfg).unwrap();
    fails(&["inspect", arch.to_str().unwrap()], &["FalconForCausalLM", "config.json"]);
    let trunc = tmp.path().join("trunc");
    std::fs::create_dir(&trunc).unwrap();
    std::fs::copy(fixtures().join("llama/config.json"), trunc.join("config.json")).unwrap();
    let st = std::fs::read(fixtures().join("llama/model.safetensors")).unwrap();
    std::fs::write(trunc.join("model.safetensors"), &st[..st.len() / 2]).unwrap();
    fails(&["inspect", trunc.to_str().unwrap()], &["model.safetensors", "model."]);
    fails(&["generate", "/no/such/model", "--prompt", "x"], &["/no/such/model"]);
    fails(&["generate", &dir, "--prompt", "x", "--top-p", "0"], &["--top-p"]);
}

#[test]
fn score_prune_and_reapply_plan() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = converted(tmp.path());
    let data = tmp.path().join("cal.txt");
    let para = "the theater then the anthem in the hearth\n\n".repeat(40);
    std::fs::write(&data, &para).unwrap();
    let scores = tmp.path().join("scores");
    let s = scores.to_str().unwrap();
    let report = ok(&[
        "score",
        &dir,
        "--data",
        data.to_str().unwrap(),
        "--samples",
        "4",
        "--seq-len",
        "16",
        "--batch",
        "2",
        "-o",
        s,
    ]);
    assert!(report.contains("block influence"));
    for f in ["scores.safetensors", "scores.json", "report.md", "orlik.json"] {
        assert!(scores.join(f).exists(), "{f}");
    }
    for f in ["depth.png", "heads.png", "mlp.png", "hidden.png"] {
        let b = std::fs::read(scores.join(f)).unwrap();
        assert_eq!(&b[..8], b"\x89PNG\r\n\x1a\n", "{f} is not a PNG");
        assert!(report.contains(f), "report links {f}");
    }
    let a = tmp.path().join("a");
    let out = ok(&[
        "prune",
        &dir,
        "--scores",
        s,
        "--layers",
        "1",
        "--ffn",
        "24",
        "--heads",
        "2",
        "--kv-heads",
        "1",
        "-o",
        a.to_str().unwrap(),
    ]);
    assert!(out.contains("layers 2->1"), "{out}");
    let v: serde_json::Value =
        serde_json::from_str(&ok(&["inspect", a.to_str().unwrap(), "--json"])).unwrap();
    assert_eq!(
        (
            v["num_hidden_layers"].as_u64(),
            v["intermediate_size"].as_u64(),
            v["num_key_value_heads"].as_u64()
        ),
        (Some(1), Some(24), Some(1))
    );
    assert_eq!(v["head_dim"], 8);
    assert!(a.join("tokenizer.json").exists() && a.join("prune_plan.json").exists());
    // the plan re-applied to a sibling checkpoint gives a bit-identical result
    let b = tmp.path().join("b");
    ok(&[
        "prune",
        &dir,
        "--plan",
        a.join("prune_plan.json").to_str().unwrap(),
        "-o",
        b.to_str().unwrap(),
    ]);
    assert_eq!(
        std::fs::read(a.join("model.safetensors")).unwrap(),
        std::fs::read(b.join("model.safetensors")).unwrap()
    );
    // baselines at the same dims, and bad requests
    for imp in ["magnitude", "random"] {
        let o = tmp.path().join(imp);
        ok(&[
            "prune",
            &dir,
            "--importance",
            imp,
            "--layers",
            "1",
            "--ffn",
            "24",
            "-o",
            o.to_str().unwrap(),
        ]);
    }
    fails(
        &["prune", &dir, "--layers", "1", "-o", tmp.path().join("c").to_str().unwrap()],
        &["--scores"],
    );
    fails(
        &[
            "prune",
            &dir,
            "--scores",
            s,
            "--ffn",
            "999",
            "-o",
            tmp.path().join("c").to_str().unwrap(),
        ],
        &["--ffn 999"],
    );
    fails(
        &[
            "prune",
            &dir,
            "--scores",
            s,
            "--hidden",
            "30",
            "-o",
            tmp.path().join("c").to_str().unwrap(),
        ],
        &["not a multiple"],
    );
    fails(
        &[
            "prune",
            &dir,
            "--scores",
            s,
            "--layers",
            "5",
            "-o",
            tmp.path().join("c").to_str().unwrap(),
        ],
        &["--layers 5"],
    );
    fails(
        &[
            "prune",
            &dir,
            "--scores",
            "/no/scores",
            "--layers",
            "1",
            "-o",
            tmp.path().join("c").to_str().unwrap(),
        ],
        &["/no/scores"],
    );
    // scores of another checkpoint (same shapes, weights stored in f16) are refused
    let other = tmp.path().join("other");
    let gguf = fixtures().join("gguf/tiny-llama.gguf");
    ok(&["convert", gguf.to_str().unwrap(), "-o", other.to_str().unwrap(), "--dtype", "f16"]);
    fails(
        &[
            "prune",
            other.to_str().unwrap(),
            "--scores",
            s,
            "--layers",
            "1",
            "-o",
            tmp.path().join("c").to_str().unwrap(),
        ],
        &["another checkpoint"],
    );
    assert!(!tmp.path().join("c").exists());
}

#[test]
fn params_budget_search() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = converted(tmp.path());
    let data = tmp.path().join("cal.txt");
    std::fs::write(&data, "the theater then the anthem in the hearth\n\n".repeat(40)).unwrap();
    let d = data.to_str().unwrap();
    let out = tmp.path().join("p");
    let table = ok(&[
        "prune",
        &dir,
        "--importance",
        "magnitude",
        "--params",
        "0.7",
        "--multiple",
        "8",
        "--tolerance",
        "0.05",
        "--data",
        d,
        "--proxy-samples",
        "2",
        "--seq-len",
        "16",
        "--export-candidates",
        "2",
        "-o",
        out.to_str().unwrap(),
    ]);
    assert!(table.contains("rank") && table.contains("KL"), "{table}");
    let c: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("candidates.json")).unwrap())
            .unwrap();
    let cands = c["candidates"].as_array().unwrap();
    assert!(!cands.is_empty());
    let budget = c["budget"].as_f64().unwrap();
    for x in cands {
        assert!((x["params"].as_f64().unwrap() - budget).abs() <= 0.05 * budget);
    }
    assert!(cands[0]["plan"].is_object());
    // the written model has the best candidate's parameter count
    let v: serde_json::Value =
        serde_json::from_str(&ok(&["inspect", out.to_str().unwrap(), "--json"])).unwrap();
    assert_eq!(v["parameters"]["total"], cands[0]["params"]);
    fails(
        &[
            "prune",
            &dir,
            "--importance",
            "magnitude",
            "--params",
            "2000000000",
            "--data",
            d,
            "-o",
            tmp.path().join("x").to_str().unwrap(),
        ],
        &["at most the model's"],
    );
    fails(
        &[
            "prune",
            &dir,
            "--importance",
            "magnitude",
            "--params",
            "0.7",
            "-o",
            tmp.path().join("x").to_str().unwrap(),
        ],
        &["--data"],
    );
}

/// `orlik ... | head`: output into a closed pipe ends the command quietly (no panic, no
/// backtrace), as for any Unix tool.
#[test]
fn a_closed_stdout_ends_the_command_without_a_panic() {
    use std::process::{Command, Stdio};
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("hf");
    let gguf = fixtures().join("gguf/tiny-llama.gguf");
    ok(&["convert", gguf.to_str().unwrap(), "-o", dir.to_str().unwrap()]);
    let mut child = Command::new(env!("CARGO_BIN_EXE_orlik"))
        .args(["inspect", dir.to_str().unwrap(), "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take()); // the reader goes away before anything is printed
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked") && !err.contains("Broken pipe"), "{err}");
    // 141 = 128 + SIGPIPE, as a shell reports a Unix tool ended by a closed pipe (0 when the
    // output fit in the pipe before the reader left)
    assert!(matches!(out.status.code(), Some(141) | Some(0)), "{:?}: {err}", out.status);
}
