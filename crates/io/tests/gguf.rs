//! GGUF import against `scripts/gen_gguf_fixture.py`: dequantisation of every supported type equals
//! the `gguf` package's reference code, llama.cpp's Q/K permutation is undone exactly, and corrupt
//! or unsupported files are named errors.

#![allow(clippy::unwrap_used)] // tests unwrap: a failure is the test failing

use candle_core::DType;
use orlik_io::gguf::Gguf;
use orlik_io::hfdir::{HfModel, SaveOptions};
use orlik_io::safetensors::Checkpoint;
use std::fs;
use std::path::PathBuf;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/gguf")
}

fn max_abs_diff(a: &candle_core::Tensor, b: &candle_core::Tensor) -> f32 {
    let a: Vec<f32> = a.flatten_all().unwrap().to_vec1().unwrap();
    let b: Vec<f32> = b.flatten_all().unwrap().to_vec1().unwrap();
    assert_eq!(a.len(), b.len());
    a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

#[test]
fn k_quants_dequantize_like_the_reference() {
    let g = Gguf::open(&dir().join("kquants.gguf")).unwrap();
    let golden = Checkpoint::open(&dir().join("golden.safetensors")).unwrap();
    for ty in ["Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"] {
        let name = format!("quant.{ty}");
        let got = g.dequantize(g.tensor_info(&name).unwrap()).unwrap();
        let want = golden.tensor(&name).unwrap();
        assert_eq!(got.dims(), want.dims(), "{ty}");
        let d = max_abs_diff(&got, &want);
        assert!(d <= 1e-5, "{ty}: max abs diff {d}");
    }
}

#[test]
fn convert_unpermutes_and_dequantizes_every_model_tensor() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("hf");
    let opts =
        SaveOptions { dtype: DType::F32, max_shard_bytes: 30_000, overwrite: false, kind: "test" };
    let rep = orlik_io::convert::convert_gguf(
        &dir().join("tiny-llama.gguf"),
        &out,
        &opts,
        vec![],
        |_, _, _| {},
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(!rep.tied);
    assert!(out.join("model.safetensors.index.json").exists(), "max_shard_size honoured");
    let hf = HfModel::open(&out).unwrap();
    assert_eq!(
        (hf.config.num_attention_heads, hf.config.num_kv_heads(), hf.config.head_dim()),
        (4, 2, 8)
    );
    let golden = Checkpoint::open(&dir().join("golden.safetensors")).unwrap();
    let mut checked = 0;
    for info in hf.checkpoint.infos() {
        let got = hf.checkpoint.tensor(&info.name).unwrap();
        let want = golden.tensor(&info.name).unwrap();
        let d = max_abs_diff(&got, &want);
        assert!(d <= 1e-6, "{}: max abs diff {d}", info.name);
        checked += 1;
    }
    assert_eq!(checked, 1 + 2 * 9 + 2); // embeddings, 2 layers x 9, norm, lm_head
    hf.load(orlik_model::ModelOptions::default()).unwrap();
    let tok = hf.tokenizer().unwrap();
    let ids = tok.encode("the cat", false).unwrap().get_ids().to_vec();
    assert_eq!(tok.decode(&ids, false).unwrap(), "the cat");
    // an existing output is refused and left alone
    let e = orlik_io::convert::convert_gguf(
        &dir().join("tiny-llama.gguf"),
        &out,
        &opts,
        vec![],
        |_, _, _| {},
    );
    assert!(e.is_err_and(|e| e.to_string().contains("already exists")));
}

#[test]
fn corrupt_and_unsupported_gguf_are_named_errors() {
    let src = fs::read(dir().join("kquants.gguf")).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let write = |name: &str, bytes: &[u8]| {
        let p = tmp.path().join(name);
        fs::write(&p, bytes).unwrap();
        p
    };
    let msg = |p: &PathBuf| match Gguf::open(p) {
        Ok(_) => panic!("{} opened", p.display()),
        Err(e) => e.to_string(),
    };

    let p = write("magic.gguf", &[b"GGUX".as_slice(), &src[4..]].concat());
    assert!(msg(&p).contains("not a GGUF file"));

    let mut b = src.clone();
    b[4..8].copy_from_slice(&1u32.to_le_bytes());
    let p = write("v1.gguf", &b);
    assert!(msg(&p).contains("unsupported GGUF version 1"));

    let mut b = src.clone();
    b[24..32].copy_from_slice(&(1u64 << 60).to_le_bytes()); // first key's length
    let p = write("strlen.gguf", &b);
    let e = msg(&p);
    assert!(e.contains("corrupt GGUF") && e.contains("runs past the end"), "{e}");

    let p = write("trunc.gguf", &src[..src.len() / 2]);
    let e = msg(&p);
    assert!(e.contains("corrupt GGUF") && e.contains("truncated"), "{e}");

    let p = write("tiny.gguf", &src[..10]);
    assert!(msg(&p).contains("corrupt GGUF"));

    // unsupported quant type: patch quant.Q2_K's type id to 16 (IQ2_XXS)
    let name = b"quant.Q2_K";
    let at = src.windows(name.len()).position(|w| w == name).unwrap() + name.len();
    let nd = u32::from_le_bytes(src[at..at + 4].try_into().unwrap()) as usize;
    let ty_at = at + 4 + 8 * nd;
    let mut b = src.clone();
    b[ty_at..ty_at + 4].copy_from_slice(&16u32.to_le_bytes());
    let p = write("iq.gguf", &b);
    let g = Gguf::open(&p).unwrap();
    let e = g.dequantize(g.tensor_info("quant.Q2_K").unwrap()).unwrap_err().to_string();
    assert!(e.contains("quant.Q2_K") && e.contains("IQ2_XXS") && e.contains("unsupported"), "{e}");

    // not a GGUF at all for convert; and an HF dir that is not there
    let e = match orlik_io::convert::convert_gguf(
        &tmp.path().join("nope.gguf"),
        &tmp.path().join("o"),
        &SaveOptions {
            dtype: DType::F32,
            max_shard_bytes: u64::MAX,
            overwrite: false,
            kind: "test",
        },
        vec![],
        |_, _, _| {},
    ) {
        Ok(_) => panic!("converted a missing file"),
        Err(e) => e.to_string(),
    };
    assert!(e.contains("nope.gguf"), "{e}");
    assert!(HfModel::open(&tmp.path().join("o")).is_err());
}

/// Gemma 3 as llama.cpp stores it (scripts/gen_gguf_gemma_fixture.py): llama.cpp names, norm
/// weights shifted by +1, no Q/K permutation, SentencePiece vocabulary without a space prefix.
#[test]
fn convert_gemma3_maps_names_unshifts_norms_and_derives_the_config() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("hf");
    let opts = SaveOptions {
        dtype: DType::F32,
        max_shard_bytes: 2_000_000_000,
        overwrite: false,
        kind: "test",
    };
    let rep = orlik_io::convert::convert_gguf(
        &dir().join("tiny-gemma3.gguf"),
        &out,
        &opts,
        vec![],
        |_, _, _| {},
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(rep.tied);
    let hf = HfModel::open(&out).unwrap();
    let c = &hf.config;
    assert_eq!(c.arch(), orlik_model::Arch::Gemma3);
    assert_eq!(c.activation(), "gelu_pytorch_tanh");
    assert_eq!(c.sliding_window, Some(4));
    // llama.cpp's rule: every 6th layer global, so all 3 tiny layers slide; local base 10000
    assert_eq!((0..3).map(|i| c.layer_window(i)).collect::<Vec<_>>(), vec![Some(4); 3]);
    assert_eq!(c.rope_for("full_attention").unwrap(), (1_000_000.0, 1.0));
    assert_eq!(c.rope_for("sliding_attention").unwrap(), (10_000.0, 1.0));
    assert!((c.attn_scale() - 1.0 / 8f64.sqrt()).abs() < 1e-12, "query_pre_attn_scalar = head_dim");
    let reference = HfModel::open(&dir().join("../gemma3")).unwrap();
    let mut checked = 0;
    for info in reference.checkpoint.infos() {
        let want = reference.checkpoint.tensor(&info.name).unwrap();
        let got = hf.checkpoint.tensor(&info.name).unwrap_or_else(|e| panic!("{}: {e}", info.name));
        let d = max_abs_diff(&got, &want);
        assert!(d <= 1e-6, "{}: max abs diff {d}", info.name);
        checked += 1;
    }
    assert_eq!(checked, hf.checkpoint.infos().count());
    hf.load(orlik_model::ModelOptions::default()).unwrap();
    let tok = hf.tokenizer().unwrap();
    let enc = tok.encode("the an\n", true).unwrap();
    assert_eq!(
        enc.get_tokens(),
        ["<bos>", "t", "he", "▁an", "<0x0A>"],
        "no space prefix, byte fallback"
    );
    assert_eq!(tok.decode(enc.get_ids(), true).unwrap(), "the an\n");
}
