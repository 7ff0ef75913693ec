//! GGUF export: `convert(export(M)) == M` (f32, bit for bit, config and tokenizer included; Gemma's
//! norms to half an ulp of 1 + w, as llama.cpp stores them) for every architecture's fixture, block quantisation byte-equal to the `gguf` package's reference
//! (`scripts/gen_quant_fixture.py`), and what llama.cpp cannot represent refused by name.
//! Whether llama.cpp itself loads and runs the files is `scripts/llamacpp_check.sh` (in `.ci/run`).

#![allow(clippy::unwrap_used)] // tests unwrap: a failure is the test failing

use candle_core::DType;
use orlik_io::export::{run, GgufType};
use orlik_io::gguf::{GValue, Gguf};
use orlik_io::hfdir::{HfModel, SaveOptions};
use orlik_model::Config;
use std::fs;
use std::path::{Path, PathBuf};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

fn opts() -> SaveOptions {
    SaveOptions { dtype: DType::F32, max_shard_bytes: 1 << 30, overwrite: false, kind: "convert" }
}

fn convert(gguf: &Path, out: &Path) {
    orlik_io::convert::convert_gguf(gguf, out, &opts(), vec![], |_, _, _| {})
        .unwrap_or_else(|e| panic!("{e}"));
}

/// Everything in a config that changes what the model computes.
fn model_fields(c: &Config) -> String {
    let windows: Vec<_> = (0..c.num_hidden_layers).map(|i| c.layer_window(i)).collect();
    let rope = if c.norm_offset() {
        format!("{:?} {:?}", c.rope_for("full_attention"), c.rope_for("sliding_attention"))
    } else {
        format!("{} {:?}", c.rope_theta(), c.llama3_scaling())
    };
    format!(
        "{:?} v{} h{} i{} l{} q{} kv{} d{} eps{} tie{} bias{}{}{} win{:?} rope {} scale{}",
        c.architectures,
        c.vocab_size,
        c.hidden_size,
        c.intermediate_size,
        c.num_hidden_layers,
        c.num_attention_heads,
        c.num_kv_heads(),
        c.head_dim(),
        c.rms_norm_eps,
        c.tie_word_embeddings,
        c.qkv_bias(),
        c.o_bias(),
        c.mlp_bias(),
        windows,
        rope,
        c.attn_scale()
    )
}

/// Export `dir` as f32, convert it back, and compare weights (bit for bit), the model's config
/// and the tokenizer.
fn round_trip(dir: &Path, tmp: &Path) {
    let g = tmp.join("m.gguf");
    let rep = run(dir, &g, GgufType::F32, false, |_, _, _| {}).unwrap_or_else(|e| panic!("{e}"));
    assert!(rep.fallbacks.is_empty());
    let back = tmp.join("back");
    convert(&g, &back);
    let (a, b) = (HfModel::open(dir).unwrap(), HfModel::open(&back).unwrap());
    assert_eq!(model_fields(&a.config), model_fields(&b.config), "{}", dir.display());
    let mut names: Vec<&str> = a.checkpoint.infos().map(|t| t.name.as_str()).collect();
    names.sort();
    let mut back_names: Vec<&str> = b.checkpoint.infos().map(|t| t.name.as_str()).collect();
    back_names.sort();
    assert_eq!(names, back_names);
    for n in names {
        let x = a.checkpoint.tensor(n).unwrap().to_dtype(DType::F32).unwrap();
        let y = b.checkpoint.tensor(n).unwrap();
        assert_eq!(x.dims(), y.dims(), "{n}");
        let (x, y): (Vec<f32>, Vec<f32>) = (
            x.flatten_all().unwrap().to_vec1().unwrap(),
            y.flatten_all().unwrap().to_vec1().unwrap(),
        );
        if a.config.norm_offset() && n.ends_with("norm.weight") {
            // llama.cpp stores Gemma's norms as 1 + w in f32: w comes back within half an ulp
            // of 1 + w (2^-24 |1 + w|), not bit for bit.
            for (p, q) in x.iter().zip(&y) {
                assert!((p - q).abs() <= (1.0 + p).abs() * 2f32.powi(-24), "{n}: {p} vs {q}");
            }
            continue;
        }
        assert!(x.iter().zip(&y).all(|(p, q)| p.to_bits() == q.to_bits()), "{n} differs");
    }
    let tok = |d: &Path| {
        serde_json::from_str::<serde_json::Value>(
            &fs::read_to_string(d.join("tokenizer.json")).unwrap(),
        )
        .unwrap()
    };
    assert_eq!(tok(dir), tok(&back), "tokenizer.json of {}", dir.display());
}

/// A copy of an HF fixture with the tokenizer files of a converted GGUF fixture (same vocabulary
/// size, 64) and optional config edits.
fn fixture_with_tokenizer(
    name: &str,
    tok_from: &Path,
    tmp: &Path,
    edit: impl Fn(&mut serde_json::Value),
) -> PathBuf {
    let d = tmp.join(name);
    fs::create_dir_all(&d).unwrap();
    for e in fs::read_dir(fixtures().join(name)).unwrap() {
        let p = e.unwrap().path();
        if p.file_name().unwrap() != "golden.safetensors" {
            fs::copy(&p, d.join(p.file_name().unwrap())).unwrap();
        }
    }
    let mut cfg: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(d.join("config.json")).unwrap()).unwrap();
    edit(&mut cfg);
    fs::write(d.join("config.json"), serde_json::to_string_pretty(&cfg).unwrap()).unwrap();
    for f in ["tokenizer.json", "tokenizer_config.json"] {
        fs::copy(tok_from.join(f), d.join(f)).unwrap();
    }
    d
}

#[test]
fn export_then_convert_is_the_identity_for_every_architecture() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    // Converted GGUF fixtures: byte-level BPE (tiny-llama) and SentencePiece (tiny-gemma3).
    let (llama_hf, gemma_hf) = (t.join("tiny-llama"), t.join("tiny-gemma3"));
    convert(&fixtures().join("gguf/tiny-llama.gguf"), &llama_hf);
    convert(&fixtures().join("gguf/tiny-gemma3.gguf"), &gemma_hf);
    for (i, d) in [&llama_hf, &gemma_hf].into_iter().enumerate() {
        let w = t.join(format!("rt{i}"));
        fs::create_dir(&w).unwrap();
        round_trip(d, &w);
    }
    // HF fixtures of each architecture (Gemma with llama.cpp's attention scale, 1/sqrt(head_dim)).
    for (name, tok) in [
        ("llama", &llama_hf),
        ("qwen2", &llama_hf),
        ("mistral", &llama_hf),
        ("gemma3", &gemma_hf),
        ("qwen3", &llama_hf),
    ] {
        let d = fixture_with_tokenizer(name, tok, t, |c| {
            if name == "gemma3" {
                c["query_pre_attn_scalar"] = serde_json::json!(8);
            }
        });
        let w = t.join(format!("rt-{name}"));
        fs::create_dir(&w).unwrap();
        round_trip(&d, &w);
        let g = Gguf::open(&w.join("m.gguf")).unwrap();
        let arch = g.get("general.architecture").and_then(GValue::as_str).unwrap().to_string();
        // Mistral is llama.cpp's llama; so is this Qwen2 (heads x head_dim 64 != hidden 32, which
        // llama.cpp's qwen2 cannot hold)
        assert_eq!(
            arch,
            if matches!(name, "mistral" | "qwen2") { "llama" } else { name },
            "{name}"
        );
        assert_eq!(
            g.get(&format!("{arch}.attention.key_length")).and_then(GValue::as_u64),
            Some(if name.starts_with("qwen") { 16 } else { 8 })
        );
    }
}

#[test]
fn block_quantisation_is_byte_equal_to_the_reference() {
    let ck = orlik_io::safetensors::Checkpoint::open(&fixtures().join("gguf/quants.safetensors"))
        .unwrap();
    let (x, xk) = (ck.tensor("input").unwrap(), ck.tensor("input_k").unwrap());
    // Q4_K and Q6_K: ggml's own bytes (llama-quantize's), 256-value super-blocks
    for (name, ty) in [("Q8_0", 8u32), ("Q4_0", 2), ("Q5_0", 6), ("Q4_K", 12), ("Q6_K", 14)] {
        let x = if name.ends_with("_K") { &xk } else { &x };
        let want: Vec<u8> = ck.tensor(name).unwrap().to_vec1().unwrap();
        let got = orlik_io::gguf_write::encode(x, ty).unwrap();
        assert_eq!(got.len(), want.len(), "{name}");
        let first = got.iter().zip(&want).position(|(a, b)| a != b);
        assert_eq!(first, None, "{name}: first differing byte");
    }
}

#[test]
fn quantised_export_stores_norms_f32_and_falls_back_per_tensor() {
    let tmp = tempfile::tempdir().unwrap();
    let hf = tmp.path().join("tiny");
    convert(&fixtures().join("gguf/tiny-llama.gguf"), &hf);
    // Rows of 32 (hidden) are whole Q8_0 / Q5_0 blocks but not Q4_K's 256; rows of 48 (ffn_down's
    // input, intermediate 48) are whole blocks of none, and fall back to F16.
    for (ty, matrix) in [(GgufType::Q8_0, "Q8_0"), (GgufType::Q4K, "Q5_0"), (GgufType::F16, "F16")]
    {
        let g = tmp.path().join(format!("{}.gguf", ty.name()));
        let rep = run(&hf, &g, ty, false, |_, _, _| {}).unwrap();
        assert_eq!(rep.fallbacks.is_empty(), ty == GgufType::F16, "{ty:?}");
        let f = Gguf::open(&g).unwrap();
        for t in &f.tensors {
            let name = orlik_io::gguf::ggml_type_name(t.ty);
            let want = match (t.ne.len(), t.ne[0]) {
                (1, _) => "F32",
                (_, 48) => "F16",
                // the output matrix at Q6_K, as llama.cpp's quantiser does; rows of 32 -> Q8_0
                _ if t.name == "output.weight" && ty == GgufType::Q4K => "Q8_0",
                // Q4_K_M's extra bits (Q6_K) for attn_v / ffn_down of the last eighth of the
                // 2 layers (layer 1); rows of 32 -> Q8_0
                _ if t.name == "blk.1.attn_v.weight" && ty == GgufType::Q4K => "Q8_0",
                _ => matrix,
            };
            assert!(name.starts_with(want), "{ty:?} {}: {name}", t.name);
            // every tensor dequantises (what llama.cpp reads is a valid block stream)
            f.dequantize(t).unwrap();
        }
    }
    // --force replaces an earlier GGUF, never another file
    let g = tmp.path().join("f16.gguf");
    assert!(run(&hf, &g, GgufType::F16, false, |_, _, _| {})
        .unwrap_err()
        .to_string()
        .contains("--force"));
    run(&hf, &g, GgufType::F16, true, |_, _, _| {}).unwrap();
    let other = tmp.path().join("notes.txt");
    fs::write(&other, "mine").unwrap();
    let e = run(&hf, &other, GgufType::F16, true, |_, _, _| {}).unwrap_err().to_string();
    assert!(e.contains("not a GGUF file"), "{e}");
    assert_eq!(fs::read_to_string(&other).unwrap(), "mine");
    let e =
        run(&hf, &hf.join("x.gguf"), GgufType::F16, false, |_, _, _| {}).unwrap_err().to_string();
    assert!(e.contains("inside the model directory"), "{e}");
}

#[test]
fn what_llama_cpp_cannot_represent_is_refused_and_licences_travel() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let gemma_hf = t.join("g");
    convert(&fixtures().join("gguf/tiny-gemma3.gguf"), &gemma_hf);
    // The gemma3 fixture's query_pre_attn_scalar (12) is not llama.cpp's 1/sqrt(head_dim = 8).
    let d = fixture_with_tokenizer("gemma3", &gemma_hf, t, |_| {});
    let e = run(&d, &t.join("g.gguf"), GgufType::F32, false, |_, _, _| {}).unwrap_err().to_string();
    assert!(e.contains("config.json") && e.contains("query_pre_attn_scalar"), "{e}");
    assert!(!t.join("g.gguf").exists());
    let d = fixture_with_tokenizer("llama", &t.join("g"), t, |c| {
        c["rope_scaling"] = serde_json::json!({"rope_type": "yarn", "factor": 4.0});
    });
    let e = run(&d, &t.join("y.gguf"), GgufType::F32, false, |_, _, _| {}).unwrap_err().to_string();
    assert!(e.contains("\"yarn\""), "{e}");
    // Llama-3 RoPE scaling is a rope_freqs tensor, which only llama.cpp's llama graph reads:
    // Qwen3 with it is refused (Qwen2 would be stored as llama).
    let d = fixture_with_tokenizer("qwen3", &t.join("g"), t, |c| {
        c["rope_scaling"] = serde_json::json!({"rope_type": "llama3", "factor": 8.0,
            "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 16});
    });
    let e = run(&d, &t.join("q.gguf"), GgufType::F32, false, |_, _, _| {}).unwrap_err().to_string();
    assert!(e.contains("qwen3 graph reads no rope_freqs"), "{e}");
    // Licence files beside the GGUF, named in general.license.
    fs::write(gemma_hf.join("GEMMA_TERMS.html"), "Gemma Terms of Use").unwrap();
    let out = t.join("gemma.gguf");
    let rep = run(&gemma_hf, &out, GgufType::F16, false, |_, _, _| {}).unwrap();
    assert_eq!(rep.licences, vec![t.join("gemma.GEMMA_TERMS.html")]);
    assert_eq!(fs::read_to_string(t.join("gemma.GEMMA_TERMS.html")).unwrap(), "Gemma Terms of Use");
    let g = Gguf::open(&out).unwrap();
    assert_eq!(g.get("general.license").and_then(GValue::as_str), Some("gemma"));
    // Re-export over the same files: allowed (same terms); a user's file of that name with other
    // contents is never replaced, and nothing is written.
    run(&gemma_hf, &out, GgufType::F16, true, |_, _, _| {}).unwrap();
    let other = t.join("other.gguf");
    fs::write(t.join("other.GEMMA_TERMS.html"), "my notes").unwrap();
    let e = run(&gemma_hf, &other, GgufType::F16, false, |_, _, _| {}).unwrap_err().to_string();
    assert!(
        e.contains("other.GEMMA_TERMS.html") && e.contains("exists with other contents"),
        "{e}"
    );
    assert_eq!(fs::read_to_string(t.join("other.GEMMA_TERMS.html")).unwrap(), "my notes");
    assert!(!other.exists());
}

#[test]
fn llama_3_rope_freqs_of_a_foreign_gguf_import_as_rope_scaling() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let tok = t.join("tok");
    convert(&fixtures().join("gguf/tiny-llama.gguf"), &tok);
    // The llama fixture has Llama-3 scaling (factor 8, low 1, high 4, original 16, base 500).
    let d = fixture_with_tokenizer("llama", &tok, t, |_| {});
    let ours = t.join("ours.gguf");
    run(&d, &ours, GgufType::F32, false, |_, _, _| {}).unwrap();
    // The same file as another tool writes it: no orlik.* keys, only rope_freqs.weight.
    let g = Gguf::open(&ours).unwrap();
    assert!(g.tensor_info("rope_freqs.weight").is_some());
    let meta: Vec<(String, GValue)> = g
        .metadata
        .iter()
        .filter(|(k, _)| !k.starts_with("orlik."))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let tensors: Vec<orlik_io::gguf_write::OutTensor> = g
        .tensors
        .iter()
        .map(|x| orlik_io::gguf_write::OutTensor {
            name: x.name.clone(),
            ne: x.ne.clone(),
            ty: x.ty,
        })
        .collect();
    let foreign = t.join("foreign.gguf");
    orlik_io::gguf_write::write(
        &foreign,
        &meta,
        &tensors,
        |i| Ok(orlik_io::gguf_write::encode(&g.dequantize(&g.tensors[i]).unwrap(), 0).unwrap()),
        |_, _, _| {},
    )
    .unwrap();
    let back = t.join("back");
    convert(&foreign, &back);
    let (a, b) = (HfModel::open(&d).unwrap().config, HfModel::open(&back).unwrap().config);
    let s = b.llama3_scaling().unwrap().expect("rope_scaling restored");
    let f = |c: &Config, s| orlik_io::rope_freqs::factors(&s, c.head_dim(), c.rope_theta());
    assert_eq!(f(&a, a.llama3_scaling().unwrap().unwrap()), f(&b, s));
    assert_eq!((s.factor, s.original_max_position_embeddings), (8.0, 16.0));
}
