//! Parity with transformers: tiny random checkpoints written by `scripts/gen_fixtures.py`
//! (Llama with tied embeddings, Llama-3 RoPE scaling and attention bias; Mistral with a sliding
//! window shorter than the input, sharded; Qwen2 with q/k/v bias, head_dim != hidden/heads, bf16;
//! Gemma 3 text with sliding and global layers, two RoPE bases, q/k norms, GeGLU; Qwen3 with
//! per-head q/k RMSNorm and no bias), and the logits
//! transformers computed for a padded batch.

#![allow(clippy::unwrap_used)] // tests unwrap: a failure is the test failing

use candle_core::{DType, Tensor};
use orlik_io::{hfdir::HfModel, safetensors::Checkpoint};
use orlik_model::ModelOptions;
use std::path::PathBuf;

pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures").join(name)
}

/// max |a - b| / max |b| over the positions where `valid` is set.
fn rel_err(a: &Tensor, b: &Tensor, valid: &[Vec<bool>]) -> f32 {
    let a: Vec<Vec<Vec<f32>>> = a.to_vec3().unwrap();
    let b: Vec<Vec<Vec<f32>>> = b.to_vec3().unwrap();
    let (mut num, mut den) = (0f32, 0f32);
    for (r, row) in valid.iter().enumerate() {
        for (t, &ok) in row.iter().enumerate() {
            if ok {
                for (x, y) in a[r][t].iter().zip(&b[r][t]) {
                    num = num.max((x - y).abs());
                    den = den.max(y.abs());
                }
            }
        }
    }
    num / den
}

fn check(name: &str) {
    let dir = fixture(name);
    let hf = HfModel::open(&dir).unwrap();
    let model = hf.load(ModelOptions::default()).unwrap();
    let golden = Checkpoint::open(&dir.join("golden.safetensors")).unwrap();
    let ids = golden.tensor("input_ids").unwrap().to_dtype(DType::U32).unwrap();
    let mask: Vec<Vec<i64>> = golden.tensor("attention_mask").unwrap().to_vec2().unwrap();
    let valid: Vec<Vec<bool>> = mask.iter().map(|r| r.iter().map(|&m| m != 0).collect()).collect();
    let want = golden.tensor("logits").unwrap();
    let got = model.forward(&ids, Some(&valid), None, None).unwrap();
    let err = rel_err(&got, &want, &valid);
    eprintln!("{name}: max relative error {err:e}");
    assert!(err <= 1e-4, "{name}: max relative error {err:e} > 1e-4");
    // The differentiable (training) forward matches too.
    let m2 = hf
        .load(ModelOptions { dtype: DType::F32, differentiable: true, half_weights: None })
        .unwrap();
    let got2 = m2.forward(&ids, Some(&valid), None, None).unwrap();
    assert!(rel_err(&got2, &want, &valid) <= 1e-4, "{name}: differentiable forward");
}

#[test]
fn llama_matches_transformers() {
    check("llama");
}

#[test]
fn mistral_sliding_window_sharded_matches_transformers() {
    check("mistral");
}

#[test]
fn qwen2_bf16_matches_transformers() {
    check("qwen2");
}

#[test]
fn gemma3_local_global_layers_match_transformers() {
    check("gemma3");
}

#[test]
fn qwen3_qk_norms_match_transformers() {
    check("qwen3");
}
