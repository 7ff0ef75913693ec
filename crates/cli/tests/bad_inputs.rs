//! The bad-input catalogue: every case runs the `orlik` binary on a broken input or a dangerous
//! output and asserts exit status 1 (never 101 or a signal), one line on stderr naming the file /
//! tensor / key / flag and what is wrong, inputs byte-identical afterwards, and no output that
//! looks complete. Kill cases (SIGKILL at several moments of convert / prune / trim-vocab /
//! teacher-cache / distill) assert no complete-looking output, untouched inputs, and that the
//! next run succeeds and cleans up after the killed one.

#![allow(clippy::unwrap_used)] // tests unwrap: a failure is the test failing

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

mod common;
use common::{fixtures, ok, orlik, tiny_teacher_and_text};

/// Every file under `paths` (recursively) with its bytes.
fn snapshot(paths: &[&Path]) -> BTreeMap<PathBuf, Vec<u8>> {
    fn walk(p: &Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) {
        if p.is_dir() {
            for e in std::fs::read_dir(p).unwrap().flatten() {
                walk(&e.path(), out);
            }
        } else if p.is_file() {
            out.insert(p.to_path_buf(), std::fs::read(p).unwrap());
        }
    }
    let mut out = BTreeMap::new();
    for p in paths {
        walk(p, &mut out);
    }
    out
}

/// An output "looks complete" when it holds anything besides orlik's claim marker.
fn looks_complete(out: &Path) -> bool {
    out.is_file()
        || std::fs::read_dir(out)
            .map(|d| d.flatten().any(|e| e.file_name() != ".orlik-output.json"))
            .unwrap_or(false)
}

/// One case: `args` fails with exit 1 and one line containing every needle; `watch` is unchanged
/// and `out` (a path that did not exist before) is not left looking complete.
fn case(name: &str, args: &[&str], needles: &[&str], watch: &[&Path], out: Option<&Path>) {
    let before = snapshot(watch);
    let existed = out.map(|o| o.exists());
    let o = orlik(args);
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert_eq!(o.status.code(), Some(1), "[{name}] {args:?}: exit {:?}: {err}", o.status);
    assert!(!err.contains("panicked"), "[{name}] panicked: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "[{name}] not one line: {err}");
    for n in needles {
        assert!(err.contains(n), "[{name}] {err:?} lacks {n:?}");
    }
    assert!(before == snapshot(watch), "[{name}] an input changed");
    if let (Some(out), Some(false)) = (out, existed) {
        assert!(
            !looks_complete(out),
            "[{name}] left a complete-looking output at {}",
            out.display()
        );
    }
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A copy of `src` (a directory of files) at `dst`, with `edit` applied to file `name`.
fn variant(src: &Path, dst: &Path, name: &str, edit: impl FnOnce(Vec<u8>) -> Vec<u8>) -> PathBuf {
    std::fs::create_dir_all(dst).unwrap();
    for e in std::fs::read_dir(src).unwrap().flatten() {
        if e.path().is_file() && e.file_name() != ".orlik-output.json" {
            std::fs::copy(e.path(), dst.join(e.file_name())).unwrap();
        }
    }
    let p = dst.join(name);
    let bytes = std::fs::read(&p).unwrap_or_default();
    std::fs::write(&p, edit(bytes)).unwrap();
    dst.to_path_buf()
}

/// A safetensors file split into (header JSON text, data bytes).
fn st_split(b: &[u8]) -> (String, Vec<u8>) {
    let n = u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
    (String::from_utf8(b[8..8 + n].to_vec()).unwrap(), b[8 + n..].to_vec())
}

fn st_join(header: &str, data: &[u8]) -> Vec<u8> {
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(data);
    out
}

/// Set tensor `name`'s element `i` (f32 storage) to `v`.
fn poke_f32(b: Vec<u8>, name: &str, i: usize, v: f32) -> Vec<u8> {
    let (h, mut data) = st_split(&b);
    let j: serde_json::Value = serde_json::from_str(&h).unwrap();
    assert_eq!(j[name]["dtype"], "F32", "fixture stores f32");
    let start = j[name]["data_offsets"][0].as_u64().unwrap() as usize + 4 * i;
    data[start..start + 4].copy_from_slice(&v.to_le_bytes());
    st_join(&h, &data)
}

fn edit_header(b: Vec<u8>, f: impl FnOnce(&mut serde_json::Value)) -> Vec<u8> {
    let (h, data) = st_split(&b);
    let mut j: serde_json::Value = serde_json::from_str(&h).unwrap();
    f(&mut j);
    st_join(&serde_json::to_string(&j).unwrap(), &data)
}

fn edit_json(b: Vec<u8>, f: impl FnOnce(&mut serde_json::Value)) -> Vec<u8> {
    let mut j: serde_json::Value = serde_json::from_slice(&b).unwrap();
    f(&mut j);
    serde_json::to_vec_pretty(&j).unwrap()
}

fn replace_once(b: Vec<u8>, from: &[u8], to: &[u8]) -> Vec<u8> {
    assert_eq!(from.len(), to.len());
    let i = b
        .windows(from.len())
        .position(|w| w == from)
        .unwrap_or_else(|| panic!("{:?} not in file", String::from_utf8_lossy(from)));
    let mut b = b;
    b[i..i + to.len()].copy_from_slice(to);
    b
}

#[test]
fn corrupt_safetensors_shards_and_configs_are_refused_with_their_name() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    tiny_teacher_and_text(t, 1);
    let m = t.join("teacher");
    let v = |n: &str, file: &str, edit: Box<dyn FnOnce(Vec<u8>) -> Vec<u8>>| {
        variant(&m, &t.join(n), file, edit)
    };
    let st = "model.safetensors";
    let q = "model.layers.0.self_attn.q_proj.weight";
    let k = "model.layers.0.self_attn.k_proj.weight";
    let inspect = |name: &str, dir: &Path, needles: &[&str]| {
        case(name, &["inspect", s(dir)], needles, &[dir], None)
    };

    // safetensors
    let d = v("trunc", st, Box::new(|b| b[..b.len() - 100].to_vec()));
    inspect("truncated data", &d, &[st, "truncated"]);
    let d = v("tiny", st, Box::new(|_| b"abc".to_vec()));
    inspect("shorter than a header length", &d, &[st, "not even a header length"]);
    let d = v(
        "hdrlen",
        st,
        Box::new(|mut b| {
            b[..8].copy_from_slice(&(1u64 << 40).to_le_bytes());
            b
        }),
    );
    inspect("absurd header length", &d, &[st, "header too large"]);
    let d = v(
        "hdrpast",
        st,
        Box::new(|mut b| {
            let n = b.len() as u64;
            b[..8].copy_from_slice(&n.to_le_bytes());
            b
        }),
    );
    inspect("header past the end", &d, &[st, "truncated: header says"]);
    let d = v(
        "notjson",
        st,
        Box::new(|b| {
            let (h, data) = st_split(&b);
            st_join(&"!".repeat(h.len()), &data)
        }),
    );
    inspect("header not JSON", &d, &[st, "not a JSON object"]);
    let d = v(
        "dupname",
        st,
        Box::new(|b| {
            let (h, data) = st_split(&b);
            let j: serde_json::Value = serde_json::from_str(&h).unwrap();
            let entry = serde_json::to_string(&j["model.norm.weight"]).unwrap();
            st_join(&format!("{{\"model.norm.weight\":{entry},{}", &h[1..]), &data)
        }),
    );
    inspect("duplicate tensor name", &d, &[st, "duplicate tensor model.norm.weight"]);
    let d = v(
        "dtype",
        st,
        Box::new(|b| edit_header(b, |j| j["model.norm.weight"]["dtype"] = "I8".into())),
    );
    inspect("unsupported dtype", &d, &[st, "model.norm.weight", "dtype I8"]);
    let d = v(
        "shape",
        st,
        Box::new(|b| edit_header(b, |j| j["model.norm.weight"]["shape"] = serde_json::json!([3]))),
    );
    inspect("shape disagrees with offsets", &d, &[st, "model.norm.weight", "needs"]);
    let d = v(
        "overlap",
        st,
        Box::new(|b| {
            edit_header(b, |j| {
                let o = j["model.norm.weight"]["data_offsets"].clone();
                j[q]["data_offsets"] = serde_json::json!([
                    o[0],
                    o[0].as_u64().unwrap()
                        + j[q]["shape"][0].as_u64().unwrap()
                            * j[q]["shape"][1].as_u64().unwrap()
                            * 4
                ]);
            })
        }),
    );
    inspect("overlapping data_offsets", &d, &[st, "overlap tensor", "aliasing"]);
    let d = v(
        "trailing",
        st,
        Box::new(|mut b| {
            b.extend_from_slice(&[0u8; 64]);
            b
        }),
    );
    inspect("bytes after the last tensor", &d, &[st, "64 bytes after the last tensor"]);
    let d = v("nan-q", st, Box::new(move |b| poke_f32(b, q, 5, f32::NAN)));
    inspect("NaN in q_proj", &d, &[st, q, "1 non-finite"]);
    let d = v("nan-k", st, Box::new(move |b| poke_f32(b, k, 0, f32::NAN)));
    inspect("NaN in k_proj", &d, &[k, "non-finite"]);
    let d =
        v("inf-emb", st, Box::new(|b| poke_f32(b, "model.embed_tokens.weight", 7, f32::INFINITY)));
    inspect("infinity in the embeddings", &d, &["model.embed_tokens.weight", "inf"]);
    let nan = t.join("nan-q");
    let text = t.join("val.txt");
    case(
        "ppl on a NaN model",
        &["eval", "ppl", s(&nan), "--text", s(&text)],
        &[q, "non-finite"],
        &[&nan],
        None,
    );
    let out = t.join("nan-scores");
    case(
        "score a NaN model",
        &["score", s(&nan), "--data", s(&text), "--samples", "2", "--seq-len", "8", "-o", s(&out)],
        &[q, "non-finite"],
        &[&nan],
        Some(&out),
    );
    let out = t.join("nan-pruned");
    case(
        "prune a NaN model by magnitude",
        &["prune", s(&nan), "--importance", "magnitude", "--layers", "1", "-o", s(&out)],
        &[q, "non-finite"],
        &[&nan],
        Some(&out),
    );
    // streaming (random importance): no checking pass first; each kept tensor is checked as it
    // is read, and the output directory is not left behind
    let out = t.join("nan-pruned-stream");
    case(
        "prune a NaN model, streaming",
        &["prune", s(&nan), "--importance", "random", "--ffn", "24", "-o", s(&out)],
        &[q, "non-finite"],
        &[&nan],
        Some(&out),
    );
    let out = t.join("nan-kd");
    case(
        "distill from a NaN teacher",
        &[
            "distill",
            "--teacher",
            s(&nan),
            "--student",
            s(&m),
            "--data",
            s(&text),
            "--steps",
            "1",
            "-o",
            s(&out),
        ],
        &[q, "non-finite"],
        &[&nan, &m],
        Some(&out),
    );

    // finite weights whose products overflow: the computed results are refused, never printed
    let huge = v(
        "huge",
        st,
        Box::new(|b| {
            let mut b = b;
            // the final norm's weights scale every logit past f32's range: inf - inf = NaN
            for i in 0..32 {
                b = poke_f32(b, "model.norm.weight", i, 3e38);
            }
            b
        }),
    );
    case(
        "ppl on an overflowing model",
        &["eval", "ppl", s(&huge), "--text", s(&text)],
        &["not finite"],
        &[&huge],
        None,
    );
    let out = t.join("huge-scores");
    case(
        "score an overflowing model",
        &["score", s(&huge), "--data", s(&text), "--samples", "2", "--seq-len", "8", "-o", s(&out)],
        &["importance score", "non-finite values"],
        &[&huge],
        Some(&out),
    );

    // config.json
    let cfg = |n: &str, f: Box<dyn FnOnce(&mut serde_json::Value)>| {
        v(n, "config.json", Box::new(move |b| edit_json(b, f)))
    };
    for (n, key, val, want) in [
        ("eps0", "rms_norm_eps", serde_json::json!(0.0), "rms_norm_eps"),
        ("epsneg", "rms_norm_eps", serde_json::json!(-1e-5), "rms_norm_eps"),
        ("theta0", "rope_theta", serde_json::json!(0.0), "rope_theta"),
        ("thetaneg", "rope_theta", serde_json::json!(-10000.0), "rope_theta"),
        ("eos", "eos_token_id", serde_json::json!(99999), "eos_token_id"),
        ("bosneg", "bos_token_id", serde_json::json!(-1), "bos_token_id"),
        ("eoslist", "eos_token_id", serde_json::json!([1, 70000]), "eos_token_id"),
        (
            "layers-flip",
            "num_hidden_layers",
            serde_json::json!(2_u64 + (1 << 24)),
            "num_hidden_layers",
        ),
        ("layers-more", "num_hidden_layers", serde_json::json!(3), "missing tensor model.layers.2"),
        ("hidden0", "hidden_size", serde_json::json!(0), "hidden_size"),
        ("heads", "num_attention_heads", serde_json::json!(3), "num_attention_heads"),
        ("maxpos0", "max_position_embeddings", serde_json::json!(0), "max_position_embeddings"),
        ("window0", "sliding_window", serde_json::json!(0), "sliding_window"),
        ("act", "hidden_act", serde_json::json!("relu"), "relu"),
        ("vocabstr", "vocab_size", serde_json::json!("many"), "vocab_size"),
        ("arch", "architectures", serde_json::json!(["FalconForCausalLM"]), "FalconForCausalLM"),
    ] {
        let d = cfg(n, Box::new(move |j| j[key] = val));
        let file = if n == "layers-more" { n } else { "config.json" };
        inspect(&format!("config {n}"), &d, &[file, want]);
    }
    let d = v("cfgjson", "config.json", Box::new(|b| b[..b.len() / 2].to_vec()));
    inspect("config.json cut in half", &d, &["config.json"]);
    let d = v("nocfg", "config.json", Box::new(|b| b));
    std::fs::remove_file(d.join("config.json")).unwrap();
    inspect("config.json missing", &d, &["config.json", "missing"]);

    // shard indexes (the 5-shard Mistral fixture)
    let mi = fixtures().join("mistral");
    let idx = "model.safetensors.index.json";
    let sv = |n: &str, f: Box<dyn FnOnce(&mut serde_json::Value)>| {
        variant(&mi, &t.join(n), idx, Box::new(move |b| edit_json(b, f)))
    };
    let first =
        |j: &serde_json::Value| j["weight_map"].as_object().unwrap().keys().next().unwrap().clone();
    let d = sv(
        "ix-missing",
        Box::new(move |j| {
            let k = first(j);
            j["weight_map"][k] = "model-00009-of-00005.safetensors".into();
        }),
    );
    inspect(
        "index names a missing shard",
        &d,
        &[idx, "model-00009-of-00005.safetensors", "missing"],
    );
    let d = sv(
        "ix-dotdot",
        Box::new(move |j| {
            let k = first(j);
            j["weight_map"][k] = "../mistral/model-00001-of-00005.safetensors".into();
        }),
    );
    inspect(
        "index points outside the directory",
        &d,
        &[idx, "not a file name inside the model directory"],
    );
    let d = sv(
        "ix-abs",
        Box::new(move |j| {
            let k = first(j);
            j["weight_map"][k] = "/etc/passwd".into();
        }),
    );
    inspect("index with an absolute path", &d, &[idx, "/etc/passwd"]);
    let d = sv(
        "ix-nomap",
        Box::new(|j| {
            j.as_object_mut().unwrap().remove("weight_map");
        }),
    );
    inspect("index without weight_map", &d, &[idx, "weight_map"]);
    let d = variant(&mi, &t.join("ix-json"), idx, |b| b[..10].to_vec());
    inspect("index not JSON", &d, &[idx]);
    let d = variant(&mi, &t.join("ix-dup"), "model-00002-of-00005.safetensors", |b| {
        let (h, data) = st_split(&b);
        let j: serde_json::Value = serde_json::from_str(&h).unwrap();
        let name = j.as_object().unwrap().keys().find(|k| *k != "__metadata__").unwrap().clone();
        let shard1 =
            std::fs::read(fixtures().join("mistral/model-00001-of-00005.safetensors")).unwrap();
        let (h1, _) = st_split(&shard1);
        let j1: serde_json::Value = serde_json::from_str(&h1).unwrap();
        let other = j1.as_object().unwrap().keys().find(|k| *k != "__metadata__").unwrap().clone();
        let mut j = j;
        let e = j.as_object_mut().unwrap().remove(&name).unwrap();
        j[other] = e;
        st_join(&serde_json::to_string(&j).unwrap(), &data)
    });
    inspect(
        "one tensor in two shards",
        &d,
        &[
            "duplicate tensor",
            "model-00001-of-00005.safetensors",
            "model-00002-of-00005.safetensors",
        ],
    );
}

#[test]
fn corrupt_gguf_files_are_refused_without_unbounded_memory() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let src = std::fs::read(fixtures().join("gguf/tiny-llama.gguf")).unwrap();
    let mut n = 0;
    let mut conv = |name: &str, bytes: Vec<u8>, needles: &[&str]| {
        n += 1;
        let p = t.join(format!("g{n}.gguf"));
        std::fs::write(&p, bytes).unwrap();
        let out = t.join(format!("g{n}-out"));
        let mut needles = needles.to_vec();
        let file = format!("g{n}.gguf");
        needles.push(&file);
        case(name, &["convert", s(&p), "-o", s(&out)], &needles, &[&p], Some(&out));
        assert!(!out.exists(), "[{name}] output created");
    };
    conv("bad magic", replace_once(src.clone(), b"GGUF", b"GGUX"), &["not a GGUF file"]);
    let mut b = src.clone();
    b[4..8].copy_from_slice(&7u32.to_le_bytes());
    conv("unknown version", b, &["unsupported GGUF version 7"]);
    conv("truncated in the tensor data", src[..src.len() - 1000].to_vec(), &["runs past the end"]);
    conv("truncated in the metadata", src[..200].to_vec(), &["corrupt GGUF", "runs past the end"]);
    let mut b = src.clone();
    b[8..16].copy_from_slice(&(1u64 << 40).to_le_bytes());
    conv("absurd tensor count", b, &["larger than the file"]);
    let mut b = src.clone();
    b[16..24].copy_from_slice(&(1u64 << 40).to_le_bytes());
    conv("absurd metadata count", b, &["larger than the file"]);
    // A flipped byte in block_count (u32 after its key and type): refused fast, small memory.
    let key = b"llama.block_count";
    let i = src.windows(key.len()).position(|w| w == key).unwrap() + key.len();
    let mut b = src.clone();
    b[i + 4..i + 8].copy_from_slice(&(2u32 + (1 << 24)).to_le_bytes());
    let t0 = std::time::Instant::now();
    conv("flipped block_count", b, &["block_count"]);
    assert!(t0.elapsed() < Duration::from_secs(5), "block_count check took {:?}", t0.elapsed());
    conv(
        "duplicate tensor name",
        replace_once(src.clone(), b"blk.0.attn_q.weight", b"blk.0.attn_k.weight"),
        &["blk.0.attn_k.weight", "twice"],
    );
    conv(
        "duplicate metadata key",
        replace_once(src.clone(), b"tokenizer.ggml.bos_token_id", b"tokenizer.ggml.eos_token_id"),
        &["tokenizer.ggml.eos_token_id", "twice"],
    );
    conv("empty file", Vec::new(), &["shorter than the magic"]);
    let dir = t.join("adir.gguf");
    std::fs::create_dir(&dir).unwrap();
    case(
        "a directory as GGUF",
        &["convert", s(&dir), "-o", s(&t.join("o"))],
        &["adir.gguf"],
        &[],
        Some(&t.join("o")),
    );
}

#[test]
fn bad_data_options_plans_recipes_and_runs_are_refused_before_any_work() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    tiny_teacher_and_text(t, 2);
    let (m, train, val) = (t.join("teacher"), t.join("train.txt"), t.join("val.txt"));
    let w = |name: &str, bytes: &[u8]| {
        let p = t.join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    };
    let o = t.join("out");
    let ins: [&Path; 3] = [&m, &train, &val];
    let run =
        |name: &str, args: &[&str], needles: &[&str]| case(name, args, needles, &ins, Some(&o));

    // tokenizer.json
    let nt = variant(&m, &t.join("notok"), "tokenizer.json", |b| b);
    std::fs::remove_file(nt.join("tokenizer.json")).unwrap();
    run(
        "tokenizer.json missing",
        &["score", s(&nt), "--data", s(&train), "-o", s(&o)],
        &["tokenizer.json", "missing"],
    );
    let bt = variant(&m, &t.join("badtok"), "tokenizer.json", |b| b[..b.len() / 3].to_vec());
    run(
        "tokenizer.json cut",
        &["score", s(&bt), "--data", s(&train), "-o", s(&o)],
        &["tokenizer.json"],
    );

    // text data
    let empty = w("empty.txt", b" \n\n ");
    let latin2 = w("latin2.txt", b"za\xbf\xf3\xb3\xe6 g\xea\xb6l\xb1");
    run(
        "data missing",
        &["score", s(&m), "--data", "/no/such.txt", "-o", s(&o)],
        &["/no/such.txt"],
    );
    run("data empty", &["score", s(&m), "--data", s(&empty), "-o", s(&o)], &["empty.txt"]);
    run(
        "data not UTF-8",
        &["score", s(&m), "--data", s(&latin2), "-o", s(&o)],
        &["latin2.txt", "UTF-8"],
    );
    run(
        "train data not UTF-8",
        &["train", s(&m), "--data", s(&latin2), "--steps", "1", "-o", s(&o)],
        &["latin2.txt", "UTF-8"],
    );
    let short = w("short.txt", b"the tea");
    run(
        "data shorter than a window",
        &["train", s(&m), "--data", s(&short), "--steps", "1", "--seq-len", "64", "-o", s(&o)],
        &["short.txt"],
    );

    // score / teacher-cache / prune options
    run(
        "score --seq-len 0",
        &["score", s(&m), "--data", s(&train), "--seq-len", "0", "-o", s(&o)],
        &["--seq-len 0"],
    );
    run(
        "score --samples 0",
        &["score", s(&m), "--data", s(&train), "--samples", "0", "-o", s(&o)],
        &["--samples 0"],
    );
    run(
        "score --batch 0",
        &["score", s(&m), "--data", s(&train), "--batch", "0", "-o", s(&o)],
        &["--batch 0"],
    );
    run(
        "teacher-cache --seq-len 0",
        &["teacher-cache", "--teacher", s(&m), "--data", s(&train), "--seq-len", "0", "-o", s(&o)],
        &["--seq-len 0"],
    );
    run(
        "teacher-cache --topk 0",
        &["teacher-cache", "--teacher", s(&m), "--data", s(&train), "--topk", "0", "-o", s(&o)],
        &["--topk 0"],
    );
    run(
        "teacher-cache --temperature nan",
        &[
            "teacher-cache",
            "--teacher",
            s(&m),
            "--data",
            s(&train),
            "--temperature",
            "NaN",
            "-o",
            s(&o),
        ],
        &["--temperature"],
    );
    for (p, want) in [
        ("1.5", "whole number"),
        ("NaN", "fraction"),
        ("0", "fraction"),
        ("-3", "fraction"),
        ("inf", "fraction"),
    ] {
        run(
            &format!("prune --params {p}"),
            &["prune", s(&m), &format!("--params={p}"), "--data", s(&train), "-o", s(&o)],
            &["--params", want],
        );
    }
    run(
        "prune --params --seq-len 0",
        &["prune", s(&m), "--params", "0.5", "--data", s(&train), "--seq-len", "0", "-o", s(&o)],
        &["--seq-len 0"],
    );
    run(
        "prune --layers 0",
        &["prune", s(&m), "--importance", "magnitude", "--layers", "0", "-o", s(&o)],
        &["--layers 0"],
    );
    run(
        "prune --importance bogus",
        &["prune", s(&m), "--importance", "bogus", "--layers", "1", "-o", s(&o)],
        &["bogus"],
    );
    run("prune without scores", &["prune", s(&m), "--layers", "1", "-o", s(&o)], &["--scores"]);
    let plan = w("plan.json", b"{\"format\": ");
    run("plan not JSON", &["prune", s(&m), "--plan", s(&plan), "-o", s(&o)], &["plan.json"]);
    let plan2 = w("plan2.json", b"{\"layers\": [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]}");
    run(
        "plan for another model",
        &["prune", s(&m), "--plan", s(&plan2), "-o", s(&o)],
        &["plan2.json"],
    );
    run(
        "a bad flag exits 1",
        &["score", s(&m), "--data", s(&train), "--seq-len", "many", "-o", s(&o)],
        &["--seq-len"],
    );

    // recipes and --set
    let r = |name: &str, text: &str| {
        w(name, text.replace("TEACHER", s(&m)).replace("TRAIN", s(&train)).as_bytes())
    };
    let base = "teacher = \"TEACHER\"\ndata = [\"TRAIN\"]\nval = [\"TRAIN\"]\noutput = \"OUT\"\n[prune]\nparams = 0.5\n";
    let rp = r("unknown.toml", &format!("{base}[distill]\nlearning_rate = 1\n"));
    run("recipe unknown key", &["run", s(&rp), "-o", s(&o)], &["unknown.toml", "learning_rate"]);
    let rp = r("type.toml", &base.replace("params = 0.5", "params = \"half\""));
    run("recipe wrong type", &["run", s(&rp), "-o", s(&o)], &["type.toml", "params"]);
    let rp = r("ok.toml", base);
    run(
        "--set bad budget, before scoring",
        &["run", s(&rp), "--set", "prune.params=1.5", "-o", s(&o)],
        &["prune.params", "whole number"],
    );
    run(
        "--set without =",
        &["run", s(&rp), "--set", "prune.params", "-o", s(&o)],
        &["--set", "key=value"],
    );
    run("--set unknown key", &["run", s(&rp), "--set", "prune.bogus=1", "-o", s(&o)], &["bogus"]);
    run(
        "--set score.seq_len=0",
        &["run", s(&rp), "--set", "score.seq_len=0", "-o", s(&o)],
        &["score", "seq_len"],
    );
    run(
        "compress --params NaN",
        &["compress", s(&m), "--params", "NaN", "--data", s(&train), "--val", s(&val), "-o", s(&o)],
        &["prune.params"],
    );

    // trainer options and --resume
    run(
        "train --lr 0",
        &["train", s(&m), "--data", s(&train), "--steps", "1", "--lr", "0", "-o", s(&o)],
        &["lr"],
    );
    run(
        "train --batch 0",
        &["train", s(&m), "--data", s(&train), "--steps", "1", "--batch", "0", "-o", s(&o)],
        &["batch"],
    );
    run(
        "train --clip nan",
        &["train", s(&m), "--data", s(&train), "--steps", "1", "--clip", "NaN", "-o", s(&o)],
        &["clip"],
    );
    run(
        "train --resume, nothing there",
        &[
            "train",
            s(&m),
            "--data",
            s(&train),
            "--steps",
            "1",
            "--seq-len",
            "16",
            "--resume",
            "-o",
            s(&o),
        ],
        &["run.json"],
    );
    let cfgf = w("train.toml", b"steps = 1\nlearning_rate = 3\n");
    run(
        "train --config unknown key",
        &["train", s(&m), "--data", s(&train), "--config", s(&cfgf), "-o", s(&o)],
        &["train.toml", "learning_rate"],
    );
    let run1 = t.join("run1");
    ok(&[
        "train",
        s(&m),
        "--data",
        s(&train),
        "--steps",
        "2",
        "--batch",
        "2",
        "--seq-len",
        "16",
        "-o",
        s(&run1),
    ]);
    case(
        "train --resume with other settings",
        &[
            "train",
            s(&m),
            "--data",
            s(&train),
            "--steps",
            "2",
            "--batch",
            "4",
            "--seq-len",
            "16",
            "--resume",
            "-o",
            s(&run1),
        ],
        &["batch"],
        &[&m, &train, &run1],
        None,
    );
    case(
        "train into its own run without --force",
        &[
            "train",
            s(&m),
            "--data",
            s(&train),
            "--steps",
            "2",
            "--batch",
            "2",
            "--seq-len",
            "16",
            "-o",
            s(&run1),
        ],
        &["already holds", "--force"],
        &[&m, &train, &run1],
        None,
    );

    // alignment JSONL
    let jl = |name: &str, text: &str| w(name, text.as_bytes());
    let sft = |name: &str, data: &Path, needles: &[&str]| {
        case(name, &["sft", s(&m), "--data", s(data), "-o", s(&o)], needles, &[&m, data], Some(&o))
    };
    let d = jl("notjson.jsonl", "{\"messages\": [}\n");
    sft("sft row not JSON", &d, &["notjson.jsonl", "1"]);
    let d = jl("nomsg.jsonl", "{\"text\": \"x\"}\n");
    sft("sft row without messages", &d, &["nomsg.jsonl", "messages"]);
    let d = jl("noasst.jsonl", "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}]}\n");
    sft("sft conversation without assistant", &d, &["noasst.jsonl", "assistant"]);
    let d = jl("emptyrows.jsonl", "");
    sft("sft empty file", &d, &["emptyrows.jsonl"]);
    let d = jl("norej.jsonl", "{\"prompt\": \"a\", \"chosen\": \"b\"}\n");
    case(
        "dpo row without rejected",
        &["dpo", s(&m), "--data", s(&d), "-o", s(&o)],
        &["norej.jsonl", "rejected"],
        &[&m, &d],
        Some(&o),
    );
    let d = jl("grpo.jsonl", "{\"prompt\": \"2+2\", \"answer\": \"4\"}\n");
    case(
        "grpo --group 1",
        &["grpo", s(&m), "--prompts", s(&d), "--reward", "numeric", "--group", "1", "-o", s(&o)],
        &["--group"],
        &[&m, &d],
        Some(&o),
    );
    case(
        "grpo unknown reward",
        &["grpo", s(&m), "--prompts", s(&d), "--reward", "vibes", "-o", s(&o)],
        &["vibes"],
        &[&m, &d],
        Some(&o),
    );
}

#[test]
fn outputs_never_overwrite_inputs_or_someone_elses_files() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    tiny_teacher_and_text(t, 3);
    let (m, train) = (t.join("teacher"), t.join("train.txt"));
    let ins: [&Path; 2] = [&m, &train];
    let g = |name: &str, args: &[&str], needles: &[&str]| case(name, args, needles, &ins, None);
    for (flag, extra) in [("", vec![]), ("--force", vec!["--force"])] {
        let f = |v: &[&str]| -> Vec<String> {
            v.iter().map(|x| x.to_string()).chain(extra.iter().map(|x| x.to_string())).collect()
        };
        let run = |name: &str, v: &[&str], needles: &[&str]| {
            let a = f(v);
            g(&format!("{name} {flag}"), &a.iter().map(String::as_str).collect::<Vec<_>>(), needles)
        };
        run(
            "train -o MODEL",
            &["train", s(&m), "--data", s(&train), "--steps", "1", "-o", s(&m)],
            &["is the input", "teacher"],
        );
        run(
            "distill -o TEACHER",
            &[
                "distill",
                "--teacher",
                s(&m),
                "--student",
                s(&m),
                "--data",
                s(&train),
                "--steps",
                "1",
                "-o",
                s(&m),
            ],
            &["is the input"],
        );
        run(
            "score -o MODEL",
            &["score", s(&m), "--data", s(&train), "-o", s(&m)],
            &["is the input"],
        );
        run(
            "score -o containing the model",
            &["score", s(&m), "--data", s(&train), "-o", s(t)],
            &["contains the input"],
        );
        run(
            "train -o inside the model",
            &["train", s(&m), "--data", s(&train), "--steps", "1", "-o", s(&m.join("run"))],
            &["is inside the input"],
        );
        run(
            "train -o the data file",
            &["train", s(&m), "--data", s(&train), "--steps", "1", "-o", s(&train)],
            &["is the input", "train.txt"],
        );
        run(
            "prune -o MODEL",
            &["prune", s(&m), "--importance", "magnitude", "--layers", "1", "-o", s(&m)],
            &["is the input"],
        );
        run(
            "trim-vocab -o MODEL",
            &["trim-vocab", s(&m), "--data", s(&train), "-o", s(&m)],
            &["is the input"],
        );
        run(
            "teacher-cache -o MODEL",
            &["teacher-cache", "--teacher", s(&m), "--data", s(&train), "-o", s(&m)],
            &["is the input"],
        );
        run("sft -o MODEL", &["sft", s(&m), "--data", s(&train), "-o", s(&m)], &["is the input"]);
        run(
            "compress -o containing the data",
            &[
                "compress",
                s(&m),
                "--params",
                "0.5",
                "--data",
                s(&train),
                "--val",
                s(&train),
                "-o",
                s(t),
            ],
            &["contains the input"],
        );
    }
    // through a symbolic link to the model
    let link = t.join("link");
    std::os::unix::fs::symlink(&m, &link).unwrap();
    g(
        "train -o LINK-TO-MODEL --force",
        &["train", s(&m), "--data", s(&train), "--steps", "1", "--force", "-o", s(&link)],
        &["is the input"],
    );
    // the MC task file of a pipeline run lies in the output
    let out = t.join("pipe");
    std::fs::create_dir(&out).unwrap();
    let mc = out.join("tasks.jsonl");
    std::fs::write(&mc, "{}\n").unwrap();
    case(
        "compress with mc_tasks inside OUT",
        &[
            "compress",
            s(&m),
            "--params",
            "0.5",
            "--data",
            s(&train),
            "--val",
            s(&train),
            "--mc-tasks",
            s(&mc),
            "--force",
            "-o",
            s(&out),
        ],
        &["contains the input", "tasks.jsonl"],
        &[&m, &train, &mc],
        None,
    );
    // someone else's directory, with and without --force
    let mine = t.join("mine");
    std::fs::create_dir(&mine).unwrap();
    std::fs::write(mine.join("thesis.tex"), b"years of work").unwrap();
    for extra in [None, Some("--force")] {
        let mut a = vec!["train", s(&m), "--data", s(&train), "--steps", "1", "-o", s(&mine)];
        a.extend(extra);
        case(
            "train into a foreign directory",
            &a,
            &["did not write", "thesis.tex"],
            &[&m, &train, &mine],
            None,
        );
        let mut a = vec![
            "compress",
            s(&m),
            "--params",
            "0.5",
            "--data",
            s(&train),
            "--val",
            s(&train),
            "-o",
            s(&mine),
        ];
        a.extend(extra);
        case(
            "compress into a foreign directory",
            &a,
            &["did not write", "thesis.tex"],
            &[&m, &train, &mine],
            None,
        );
        let gguf = fixtures().join("gguf/tiny-llama.gguf");
        let mut a = vec!["convert", s(&gguf), "-o", s(&mine)];
        a.extend(extra);
        case("convert into a foreign directory", &a, &["did not write"], &[&mine], None);
    }
    let file = t.join("notes.txt");
    std::fs::write(&file, b"mine").unwrap();
    case(
        "score -o a file",
        &["score", s(&m), "--data", s(&train), "--force", "-o", s(&file)],
        &["is a file"],
        &[&m, &file],
        None,
    );
    // a chart never overwrites a file that is not a chart
    let run1 = t.join("run1");
    ok(&[
        "train",
        s(&m),
        "--data",
        s(&train),
        "--steps",
        "2",
        "--batch",
        "2",
        "--seq-len",
        "16",
        "-o",
        s(&run1),
    ]);
    case(
        "curves --output over a text file",
        &["curves", s(&run1), "--output", s(&file)],
        &["notes.txt", "not a PNG"],
        &[&file, &run1],
        None,
    );
    case(
        "curves --output over a run's metrics",
        &["curves", s(&run1), "--output", s(&run1.join("metrics.jsonl"))],
        &["metrics.jsonl", "not a PNG"],
        &[&run1],
        None,
    );
    // another command's output is not replaced by --force
    let scores = t.join("scores");
    ok(&[
        "score",
        s(&m),
        "--data",
        s(&train),
        "--samples",
        "2",
        "--seq-len",
        "8",
        "-o",
        s(&scores),
    ]);
    case(
        "prune --force over score's output",
        &[
            "prune",
            s(&m),
            "--importance",
            "magnitude",
            "--layers",
            "1",
            "--force",
            "-o",
            s(&scores),
        ],
        &["another command", "orlik score"],
        &[&m, &scores],
        None,
    );
    case(
        "score again without --force",
        &["score", s(&m), "--data", s(&train), "-o", s(&scores)],
        &["already holds", "--force"],
        &[&m, &scores],
        None,
    );
    ok(&[
        "score",
        s(&m),
        "--data",
        s(&train),
        "--samples",
        "2",
        "--seq-len",
        "8",
        "--force",
        "-o",
        s(&scores),
    ]);
    // a read-only place (even root cannot create directories in /proc)
    case(
        "output on a read-only filesystem",
        &[
            "score",
            s(&m),
            "--data",
            s(&train),
            "--samples",
            "2",
            "--seq-len",
            "8",
            "-o",
            "/proc/orlik-out",
        ],
        &["/proc"],
        &[&m],
        None,
    );
}

/// Run `args` and SIGKILL it after `ms` milliseconds (or let it finish first).
fn kill_after(args: &[&str], ms: u64) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_orlik"))
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(ms));
    let _ = child.kill();
    let _ = child.wait();
}

/// Leftovers of a killed writer in `dir` (temp or old directories beside the outputs).
fn leftovers(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n.contains(".orlik-tmp-") || n.contains(".orlik-old-"))
        .collect()
}

#[test]
fn killed_writers_leave_nothing_complete_looking_and_the_next_run_succeeds() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    tiny_teacher_and_text(t, 4);
    let (m, train, val) = (t.join("teacher"), t.join("train.txt"), t.join("val.txt"));
    let gguf = fixtures().join("gguf/tiny-llama.gguf");
    let work = t.join("work");
    std::fs::create_dir(&work).unwrap();
    let o = |n: &str| work.join(n);
    let commands: Vec<(&str, Vec<String>, PathBuf)> = vec![
        (
            "convert",
            vec!["convert".into(), s(&gguf).into(), "-o".into(), s(&o("conv")).into()],
            o("conv"),
        ),
        (
            "prune",
            vec![
                "prune".into(),
                s(&m).into(),
                "--importance".into(),
                "magnitude".into(),
                "--layers".into(),
                "1".into(),
                "--ffn".into(),
                "24".into(),
                "-o".into(),
                s(&o("pruned")).into(),
            ],
            o("pruned"),
        ),
        (
            "trim-vocab",
            vec![
                "trim-vocab".into(),
                s(&m).into(),
                "--data".into(),
                s(&val).into(),
                "-o".into(),
                s(&o("trim")).into(),
            ],
            o("trim"),
        ),
        (
            "teacher-cache",
            vec![
                "teacher-cache".into(),
                "--teacher".into(),
                s(&m).into(),
                "--data".into(),
                s(&train).into(),
                "--seq-len".into(),
                "16".into(),
                "--topk".into(),
                "4".into(),
                "--shard-windows".into(),
                "8".into(),
                "-o".into(),
                s(&o("cache")).into(),
            ],
            o("cache"),
        ),
        (
            "distill",
            vec![
                "distill".into(),
                "--teacher".into(),
                s(&m).into(),
                "--student".into(),
                s(&m).into(),
                "--data".into(),
                s(&train).into(),
                "--steps".into(),
                "6".into(),
                "--batch".into(),
                "2".into(),
                "--seq-len".into(),
                "16".into(),
                "--save-every".into(),
                "2".into(),
                "-o".into(),
                s(&o("kd")).into(),
            ],
            o("kd"),
        ),
    ];
    let inputs = snapshot(&[&m, &train, &val, &gguf]);
    for (name, args, out) in &commands {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        for ms in [0, 3, 10, 25, 60, 150] {
            kill_after(&args, ms);
            // A complete-looking output must be a complete one: the model opens (or the cache /
            // run can be continued by the next run).
            if out.join("config.json").exists() {
                ok(&["inspect", s(out)]);
            }
            if out.join("final").exists() {
                ok(&["inspect", s(&out.join("final"))]);
            }
            assert!(
                inputs == snapshot(&[&m, &train, &val, &gguf]),
                "[{name} killed at {ms} ms] an input changed"
            );
            // The next run succeeds: a fresh one, a resumed one, or a replacement of a finished one.
            let mut next = args.clone();
            let resumable =
                *name == "distill" && out.join("run.json").exists() && !out.join("final").exists();
            if resumable {
                next.push("--resume");
            } else if out.exists() && *name != "teacher-cache" {
                next.push("--force");
            }
            let r = orlik(&next);
            assert!(
                r.status.success(),
                "[{name} killed at {ms} ms] next run {next:?} failed: {}",
                String::from_utf8_lossy(&r.stderr)
            );
            assert!(
                leftovers(&work).is_empty(),
                "[{name} killed at {ms} ms] leftovers after the next run: {:?}",
                leftovers(&work)
            );
            std::fs::remove_dir_all(out).unwrap();
        }
    }
}

#[test]
#[ignore = "mounts a 256 KiB tmpfs (needs root and CAP_SYS_ADMIN); .ci/run runs it where it can"]
fn a_full_disk_is_a_one_line_error_and_leaves_no_output() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    tiny_teacher_and_text(t, 5);
    let mnt = t.join("small");
    std::fs::create_dir(&mnt).unwrap();
    let st = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=256k", "tmpfs", s(&mnt)])
        .status()
        .unwrap();
    assert!(st.success(), "mount failed");
    // Fill it but for a few KB, so that the output cannot fit.
    std::fs::write(mnt.join("filler"), vec![0u8; 200 * 1024]).unwrap();
    let gguf = fixtures().join("gguf/tiny-llama.gguf");
    let out = mnt.join("conv");
    let o = orlik(&["convert", s(&gguf), "-o", s(&out)]);
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    let left = leftovers(&mnt);
    let _ = Command::new("umount").arg(s(&mnt)).status();
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.contains("No space left on device"), "{err}");
    assert!(!out.exists(), "output left on a full disk");
    assert!(left.is_empty(), "temp files left: {left:?}");
}
