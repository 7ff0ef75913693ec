//! `orlik trim-vocab` on the tiny byte-level BPE (Llama GGUF) and SentencePiece-style (Gemma 3
//! GGUF) models: the corpus tokenizes to the same token strings, other text still tokenizes and
//! round-trips, special tokens survive a corpus that never uses them, the corpus log-likelihood
//! does not drop, the trimmed model can be scored and pruned, and bad input is refused.

#![allow(clippy::unwrap_used)] // tests unwrap: a failure is the test failing

use serde_json::Value;
use std::path::Path;

mod common;
use common::{fails, fixtures, ok};

fn convert(gguf: &str, out: &Path) -> String {
    let o = out.to_str().unwrap().to_string();
    ok(&["convert", fixtures().join("gguf").join(gguf).to_str().unwrap(), "-o", &o]);
    o
}

fn tokenizer(dir: &str) -> tokenizers::Tokenizer {
    tokenizers::Tokenizer::from_file(Path::new(dir).join("tokenizer.json")).unwrap()
}

fn total_nll(model: &str, text: &str) -> f64 {
    let v: Value = serde_json::from_str(&ok(&[
        "eval",
        "ppl",
        model,
        "--text",
        text,
        "--context",
        "64",
        "--json",
    ]))
    .unwrap();
    v["total_nll"].as_f64().unwrap()
}

#[test]
fn trimmed_tokenizers_keep_the_corpus_tokens_and_still_cover_other_text() {
    let tmp = tempfile::tempdir().unwrap();
    let corpus = tmp.path().join("corpus.txt");
    std::fs::write(
        &corpus,
        "the theater then anthem\n\nin the hearth at a tea\n\nthe heart of the earth\n",
    )
    .unwrap();
    let c = corpus.to_str().unwrap();
    for gguf in ["tiny-llama.gguf", "tiny-gemma3.gguf"] {
        let orig = convert(gguf, &tmp.path().join(format!("{gguf}-hf")));
        let out = tmp.path().join(format!("{gguf}-trim")).to_str().unwrap().to_string();
        let text = ok(&["trim-vocab", &orig, "--data", c, "-o", &out]);
        assert!(text.contains("identical tokenization, checked"), "{text}");
        let report: Value =
            serde_json::from_slice(&std::fs::read(Path::new(&out).join("trim.json")).unwrap())
                .unwrap();
        let (before, after) =
            (report["vocab_before"].as_u64().unwrap(), report["vocab_after"].as_u64().unwrap());
        assert!(after < before, "{gguf}: {report}");
        assert!(report["parameters_after"].as_u64() < report["parameters_before"].as_u64());
        let (t0, t1) = (tokenizer(&orig), tokenizer(&out));
        let body = std::fs::read_to_string(&corpus).unwrap();
        assert_eq!(
            t0.encode(body.as_str(), true).unwrap().get_tokens(),
            t1.encode(body.as_str(), true).unwrap().get_tokens(),
            "{gguf}"
        );
        // Special tokens survive though the corpus never uses them.
        for special in t0.get_added_tokens_decoder().values() {
            assert!(
                t1.token_to_id(&special.content).is_some(),
                "{gguf}: {} dropped",
                special.content
            );
        }
        // Other text still tokenizes (byte fallback / byte-level alphabet) and decodes to what
        // the original decodes it to (the tiny vocabularies lack most bytes, so that is not
        // always the input itself; with all 256 byte tokens, as real models have, it is).
        for other in ["zebra quartz 123 ąę", "hat tea"] {
            let (e0, e1) = (t0.encode(other, false).unwrap(), t1.encode(other, false).unwrap());
            assert!(!e1.get_ids().is_empty());
            assert_eq!(
                t1.decode(e1.get_ids(), false).unwrap(),
                t0.decode(e0.get_ids(), false).unwrap(),
                "{gguf}: {other}"
            );
        }
        assert_eq!(
            t1.decode(t1.encode("hat tea", false).unwrap().get_ids(), false).unwrap(),
            "hat tea",
            "{gguf}"
        );
        // Renormalising over fewer tokens never lowers a corpus token's probability.
        let (a, b) = (total_nll(&orig, c), total_nll(&out, c));
        assert!(b <= a + 1e-6, "{gguf}: corpus NLL {a} -> {b}");
        // A trimmed model goes through the other stages.
        let scores = tmp.path().join(format!("{gguf}-scores")).to_str().unwrap().to_string();
        ok(&[
            "score",
            &out,
            "--data",
            c,
            "--samples",
            "2",
            "--seq-len",
            "8",
            "--batch",
            "2",
            "-o",
            &scores,
        ]);
        let pruned = tmp.path().join(format!("{gguf}-pruned")).to_str().unwrap().to_string();
        ok(&["prune", &out, "--scores", &scores, "--ffn", "24", "-o", &pruned]);
        assert_eq!(tokenizer(&pruned).get_vocab_size(true), t1.get_vocab_size(true));
    }
}

#[test]
fn bad_trim_input_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let corpus = tmp.path().join("corpus.txt");
    std::fs::write(&corpus, "the tea\n").unwrap();
    let c = corpus.to_str().unwrap();
    let orig = convert("tiny-gemma3.gguf", &tmp.path().join("hf"));
    let keep = tmp.path().join("keep.txt");
    std::fs::write(&keep, "▁t\nnot-a-token\n").unwrap();
    let out = tmp.path().join("o").to_str().unwrap().to_string();
    fails(
        &["trim-vocab", &orig, "--data", c, "--keep", keep.to_str().unwrap(), "-o", &out],
        &["--keep names 1 token(s)", "\"not-a-token\""],
    );
    // an unsupported tokenizer model
    let tj = Path::new(&orig).join("tokenizer.json");
    let mut v: Value = serde_json::from_slice(&std::fs::read(&tj).unwrap()).unwrap();
    v["model"]["type"] = Value::String("WordPiece".into());
    std::fs::write(&tj, serde_json::to_vec(&v).unwrap()).unwrap();
    fails(
        &["trim-vocab", &orig, "--data", c, "-o", &out],
        &["\"WordPiece\" is not supported", "supported: BPE"],
    );
    assert!(!Path::new(&out).exists());
}

/// Distillation into a trimmed student maps the vocabularies by token string: a student trimmed
/// from the teacher itself starts at KL 0 (the teacher renormalised over the kept tokens is
/// exactly the student's distribution); the reverse direction (student tokens the teacher lacks)
/// is refused before any compute.
#[test]
fn distillation_into_a_trimmed_student_uses_the_shared_vocabulary() {
    let tmp = tempfile::tempdir().unwrap();
    let corpus = tmp.path().join("corpus.txt");
    std::fs::write(&corpus, "the theater then anthem in the hearth at a tea\n\n".repeat(30))
        .unwrap();
    let c = corpus.to_str().unwrap();
    let teacher = convert("tiny-gemma3.gguf", &tmp.path().join("hf"));
    let student = tmp.path().join("trim").to_str().unwrap().to_string();
    ok(&["trim-vocab", &teacher, "--data", c, "-o", &student]);
    let out = tmp.path().join("kd").to_str().unwrap().to_string();
    ok(&[
        "distill",
        "--teacher",
        &teacher,
        "--student",
        &student,
        "--data",
        c,
        "--steps",
        "2",
        "--seq-len",
        "8",
        "--batch",
        "2",
        "-o",
        &out,
    ]);
    let first: Value = serde_json::from_str(
        std::fs::read_to_string(Path::new(&out).join("metrics.jsonl"))
            .unwrap()
            .lines()
            .next()
            .unwrap(),
    )
    .unwrap();
    assert!(first["kl"].as_f64().unwrap().abs() < 1e-5, "{first}");
    let out2 = tmp.path().join("kd2").to_str().unwrap().to_string();
    fails(
        &[
            "distill",
            "--teacher",
            &student,
            "--student",
            &teacher,
            "--data",
            c,
            "--steps",
            "1",
            "-o",
            &out2,
        ],
        &["is not in the teacher's vocabulary"],
    );
}

/// A teacher cache in a trimmed student's vocabulary (`teacher-cache --student`) trains the
/// student as the online teacher does at the same top-k: the same losses step by step (up to
/// the last bits of batching the teacher's windows differently). A cache in the teacher's own
/// vocabulary is refused for that student, naming the fix.
#[test]
fn a_cache_in_the_trimmed_students_vocabulary_trains_as_the_online_teacher() {
    let tmp = tempfile::tempdir().unwrap();
    let p = |n: &str| tmp.path().join(n).to_str().unwrap().to_string();
    std::fs::write(p("c.txt"), "the theater then anthem in the hearth at a tea\n\n".repeat(30))
        .unwrap();
    let teacher = convert("tiny-gemma3.gguf", &tmp.path().join("hf"));
    let (student, text) = (p("trim"), p("c.txt"));
    ok(&["trim-vocab", &teacher, "--data", &text, "-o", &student]);
    let common = ["--seq-len", "8", "--topk", "8"];
    let cache = |name: &str, extra: &[&str]| {
        let mut a = vec!["teacher-cache", "--teacher", &teacher, "--data", &text];
        a.extend_from_slice(extra);
        a.extend_from_slice(&common);
        let out = p(name);
        a.extend_from_slice(&["--batch", "2", "-o", &out]);
        ok(&a);
        out
    };
    let mine = cache("cache-s", &["--student", &student]);
    let losses = |extra: &[&str], name: &str| -> Vec<f64> {
        let out = p(name);
        let mut a = vec!["distill", "--teacher", &teacher, "--student", &student];
        a.extend_from_slice(&["--data", &text, "--steps", "3", "--batch", "2"]);
        a.extend_from_slice(extra);
        a.extend_from_slice(&common);
        a.extend_from_slice(&["-o", &out]);
        ok(&a);
        std::fs::read_to_string(Path::new(&out).join("metrics.jsonl"))
            .unwrap()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).unwrap()["loss"].as_f64())
            .collect()
    };
    let online = losses(&[], "kd-online");
    let cached = losses(&["--teacher-cache", &mine], "kd-cache");
    assert_eq!(online.len(), 3);
    for (a, b) in online.iter().zip(&cached) {
        assert!((a - b).abs() <= 1e-5 * a.abs().max(1.0), "online {online:?} vs cache {cached:?}");
    }
    let theirs = cache("cache-t", &[]);
    fails(
        &[
            "distill",
            "--teacher",
            &teacher,
            "--student",
            &student,
            "--data",
            &p("c.txt"),
            "--steps",
            "1",
            "--teacher-cache",
            &theirs,
            "--seq-len",
            "8",
            "--topk",
            "8",
            "-o",
            &p("kd-bad"),
        ],
        &["another tokenizer vocabulary", "--student"],
    );
}
