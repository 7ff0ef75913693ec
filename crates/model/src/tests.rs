//! Model-core invariants on tiny random models: finite-difference gradient check for every
//! parameter kind, non-zero gradients for every tensor, KV-cache and padding equivalences, and
//! fused (inference) vs composed (training) forward agreement.

use crate::init::random_weights;
use crate::llama::cross_entropy;
use crate::{Config, KvCache, Model, ModelOptions, Weights};
use candle_core::{DType, Device, Tensor, Var};

/// The shared tiny shape (`crate::testing`) with vocabulary 11 and the extra keys `extra`
/// (a JSON object's members, starting with a comma).
fn tiny(arch: &str, extra: &str) -> Config {
    let patch = format!("{{\"vocab_size\":11{extra}}}");
    crate::testing::tiny(arch, serde_json::from_str(&patch).unwrap())
}

/// Tiny Gemma 3: a sliding layer (window 3 < 6 tokens) and a global one, different RoPE bases,
/// query_pre_attn_scalar != head_dim.
fn tiny_gemma() -> Config {
    tiny(
        "Gemma3ForCausalLM",
        r#","layer_types":["sliding_attention","full_attention"],"sliding_window":3,"query_pre_attn_scalar":5,
        "rope_parameters":{"full_attention":{"rope_type":"default","rope_theta":1000.0},"sliding_attention":{"rope_type":"default","rope_theta":10.0}}"#,
    )
}

fn ids() -> Tensor {
    Tensor::new(&[[1u32, 5, 3, 9, 2, 7], [4, 4, 0, 10, 6, 8]], &Device::Cpu).unwrap()
}

fn loss_of(cfg: &Config, w: &Weights, dtype: DType) -> Tensor {
    let m = Model::new(cfg, w, ModelOptions { dtype, differentiable: true, half_weights: None })
        .unwrap();
    let x = ids();
    let inp = x.narrow(1, 0, 5).unwrap();
    let tgt = x.narrow(1, 1, 5).unwrap();
    let logits = m.forward(&inp, None, None, None).unwrap();
    let ones = Tensor::ones((2, 5), dtype, &Device::Cpu).unwrap();
    cross_entropy(&logits, &tgt, &ones).unwrap()
}

fn f64_weights(cfg: &Config, seed: u64) -> Weights {
    random_weights(cfg, seed, 0.3)
        .unwrap()
        .into_iter()
        .map(|(k, v)| (k, v.to_dtype(DType::F64).unwrap()))
        .collect()
}

/// Central differences in f64 against autograd, a few coordinates of every tensor.
fn gradcheck(cfg: &Config) {
    let w = f64_weights(cfg, 7);
    let vars: Vec<(String, Var)> =
        w.iter().map(|(k, v)| (k.clone(), Var::from_tensor(v).unwrap())).collect();
    let wv: Weights = vars.iter().map(|(k, v)| (k.clone(), v.as_tensor().clone())).collect();
    let loss = loss_of(cfg, &wv, DType::F64);
    let grads = loss.backward().unwrap();
    let eps = 1e-6;
    for (name, var) in &vars {
        let g = grads.get(var.as_tensor()).unwrap_or_else(|| panic!("no gradient for {name}"));
        let g: Vec<f64> = g.flatten_all().unwrap().to_vec1().unwrap();
        let base: Vec<f64> = w[name].flatten_all().unwrap().to_vec1().unwrap();
        let n = base.len();
        for &idx in &[0, n / 2, n - 1] {
            let eval = |delta: f64| {
                let mut v = base.clone();
                v[idx] += delta;
                let mut w2 = w.clone();
                w2.insert(name.clone(), Tensor::from_vec(v, w[name].dims(), &Device::Cpu).unwrap());
                loss_of(cfg, &w2, DType::F64).to_scalar::<f64>().unwrap()
            };
            let num = (eval(eps) - eval(-eps)) / (2.0 * eps);
            let err = (num - g[idx]).abs() / (num.abs() + g[idx].abs()).max(1e-3);
            assert!(err < 1e-5, "{name}[{idx}]: numeric {num:e} vs autograd {:e}", g[idx]);
        }
    }
}

#[test]
fn gradcheck_llama_with_all_biases_untied() {
    gradcheck(&tiny("LlamaForCausalLM", r#","attention_bias":true,"mlp_bias":true"#));
}

#[test]
fn gradcheck_qwen2_tied_llama3_rope() {
    gradcheck(&tiny(
        "Qwen2ForCausalLM",
        r#","tie_word_embeddings":true,"rope_scaling":{"rope_type":"llama3","factor":8.0,
        "low_freq_factor":1.0,"high_freq_factor":4.0,"original_max_position_embeddings":8}"#,
    ));
}

#[test]
fn gradcheck_mistral_sliding_window() {
    gradcheck(&tiny("MistralForCausalLM", r#","sliding_window":3"#));
}

#[test]
fn gradcheck_gemma3_norms_geglu_two_rope_kinds() {
    let cfg = tiny_gemma();
    assert!(cfg.tie_word_embeddings, "Gemma ties embeddings by default");
    gradcheck(&cfg);
}

#[test]
fn every_parameter_gets_nonzero_gradient_in_f32() {
    for cfg in [tiny("Qwen2ForCausalLM", r#","sliding_window":3"#), tiny_gemma()] {
        nonzero_gradients(&cfg);
    }
}

fn nonzero_gradients(cfg: &Config) {
    let cfg = cfg.clone();
    let w = random_weights(&cfg, 3, 0.3).unwrap();
    let vars: Vec<(String, Var)> =
        w.iter().map(|(k, v)| (k.clone(), Var::from_tensor(v).unwrap())).collect();
    let wv: Weights = vars.iter().map(|(k, v)| (k.clone(), v.as_tensor().clone())).collect();
    let grads = loss_of(&cfg, &wv, DType::F32).backward().unwrap();
    for (name, var) in &vars {
        let g = grads.get(var.as_tensor()).unwrap_or_else(|| panic!("no gradient for {name}"));
        let s: f32 = g.abs().unwrap().sum_all().unwrap().to_scalar().unwrap();
        assert!(s > 0.0, "zero gradient for {name}");
    }
}

fn max_abs(a: &Tensor, b: &Tensor) -> f32 {
    (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar().unwrap()
}

#[test]
fn fused_inference_equals_differentiable_forward() {
    for cfg in [tiny("MistralForCausalLM", r#","sliding_window":3"#), tiny_gemma()] {
        let w = random_weights(&cfg, 5, 0.3).unwrap();
        let a = Model::new(&cfg, &w, ModelOptions::default())
            .unwrap()
            .forward(&ids(), None, None, None)
            .unwrap();
        let b = Model::new(
            &cfg,
            &w,
            ModelOptions { dtype: DType::F32, differentiable: true, half_weights: None },
        )
        .unwrap()
        .forward(&ids(), None, None, None)
        .unwrap();
        assert!(max_abs(&a, &b) < 1e-5, "{:?}", cfg.arch());
    }
}

#[test]
fn kv_cache_incremental_equals_full_forward() {
    for cfg in [
        tiny("MistralForCausalLM", r#","sliding_window":3"#),
        tiny("Qwen2ForCausalLM", ""),
        tiny_gemma(),
    ] {
        let w = random_weights(&cfg, 9, 0.3).unwrap();
        let m = Model::new(&cfg, &w, ModelOptions::default()).unwrap();
        let full = m.forward(&ids(), None, None, None).unwrap(); // (2, 6, v)
        let mut cache = KvCache::new();
        let first =
            m.forward(&ids().narrow(1, 0, 3).unwrap(), None, None, Some(&mut cache)).unwrap();
        let mut parts = vec![first];
        for p in 3..6 {
            parts.push(
                m.forward(&ids().narrow(1, p, 1).unwrap(), None, None, Some(&mut cache)).unwrap(),
            );
        }
        assert_eq!(cache.len(), 6);
        let inc = Tensor::cat(&parts, 1).unwrap();
        assert!(max_abs(&full, &inc) < 1e-5, "{:?}", cfg.arch());
    }
}

#[test]
fn left_padding_with_mask_and_positions_equals_unpadded() {
    let cfg = tiny("LlamaForCausalLM", "");
    let w = random_weights(&cfg, 11, 0.3).unwrap();
    let m = Model::new(&cfg, &w, ModelOptions::default()).unwrap();
    let short = Tensor::new(&[[5u32, 3, 9]], &Device::Cpu).unwrap();
    let alone = m.forward(&short, None, None, None).unwrap(); // (1, 3, v)
                                                              // Batch: row 0 is the short sequence left-padded by 2; row 1 is unrelated.
    let batch = Tensor::new(&[[0u32, 0, 5, 3, 9], [1, 2, 3, 4, 5]], &Device::Cpu).unwrap();
    let valid = vec![vec![false, false, true, true, true], vec![true; 5]];
    let pos = vec![vec![0, 0, 0, 1, 2], vec![0, 1, 2, 3, 4]];
    let out = m.forward(&batch, Some(&valid), Some(&pos), None).unwrap();
    let row0 = out.narrow(0, 0, 1).unwrap().narrow(1, 2, 3).unwrap();
    assert!(max_abs(&alone, &row0) < 1e-5);
    let row1 = m.forward(&batch.narrow(0, 1, 1).unwrap(), None, None, None).unwrap();
    assert!(max_abs(&row1, &out.narrow(0, 1, 1).unwrap()) < 1e-5);
}

#[test]
fn shape_errors_name_the_tensor() {
    let cfg = tiny("LlamaForCausalLM", "");
    let mut w = random_weights(&cfg, 1, 0.3).unwrap();
    w.insert(
        "model.layers.1.mlp.up_proj.weight".into(),
        Tensor::zeros((12, 9), DType::F32, &Device::Cpu).unwrap(),
    );
    let e = Model::new(&cfg, &w, ModelOptions::default()).unwrap_err().to_string();
    assert!(
        e.contains("model.layers.1.mlp.up_proj.weight")
            && e.contains("[12, 8]")
            && e.contains("[12, 9]"),
        "{e}"
    );
    w.remove("model.layers.1.mlp.up_proj.weight");
    let e = Model::new(&cfg, &w, ModelOptions::default()).unwrap_err().to_string();
    assert!(e.contains("missing tensor model.layers.1.mlp.up_proj.weight"), "{e}");
    let mut w = random_weights(&cfg, 1, 0.3).unwrap();
    w.insert(
        "model.layers.2.mlp.up_proj.weight".into(),
        Tensor::zeros(3, DType::F32, &Device::Cpu).unwrap(),
    );
    let e = Model::new(&cfg, &w, ModelOptions::default()).unwrap_err().to_string();
    assert!(e.contains("unexpected tensor model.layers.2.mlp.up_proj.weight"), "{e}");
}

#[test]
fn blocked_fused_attention_equals_masked_composed_attention_on_long_inputs() {
    // 300 tokens span three query blocks; the window (50) makes early key blocks invisible;
    // row 0 is left-padded, and a cached prefix exercises a non-zero offset.
    let cfg = tiny("MistralForCausalLM", r#","sliding_window":50"#);
    let w = random_weights(&cfg, 13, 0.3).unwrap();
    let fused = Model::new(&cfg, &w, ModelOptions::default()).unwrap();
    let slow = Model::new(
        &cfg,
        &w,
        ModelOptions { dtype: DType::F32, differentiable: true, half_weights: None },
    )
    .unwrap();
    let n = 300;
    let ids: Vec<u32> = (0..2 * n).map(|i| (i * 7 % 11) as u32).collect();
    let x = Tensor::from_vec(ids, (2, n), &Device::Cpu).unwrap();
    let mut valid = vec![vec![true; n]; 2];
    for v in valid[0].iter_mut().take(20) {
        *v = false;
    }
    let a = fused.forward(&x, Some(&valid), None, None).unwrap();
    let b = slow.forward(&x, Some(&valid), None, None).unwrap();
    // compare non-padding query rows
    assert!(max_abs(&a.narrow(1, 20, n - 20).unwrap(), &b.narrow(1, 20, n - 20).unwrap()) < 1e-4);
    for (cfg_extra, split) in [(r#","sliding_window":50"#, 170), ("", 129)] {
        let cfg = tiny("MistralForCausalLM", cfg_extra);
        let m = Model::new(&cfg, &w, ModelOptions::default()).unwrap();
        let full = m.forward(&x, None, None, None).unwrap();
        let mut cache = KvCache::new();
        let p1 = m.forward(&x.narrow(1, 0, split).unwrap(), None, None, Some(&mut cache)).unwrap();
        let p2 = m
            .forward(&x.narrow(1, split, n - split).unwrap(), None, None, Some(&mut cache))
            .unwrap();
        assert!(max_abs(&full, &Tensor::cat(&[p1, p2], 1).unwrap()) < 1e-4, "{cfg_extra}");
    }
}

/// The free RoPE tables (executors without a candle model) are the f32 model's, bit for bit,
/// for one table (Llama) and two (Gemma 3's global and sliding bases).
#[test]
fn free_rope_tables_equal_the_models() {
    for cfg in [tiny("LlamaForCausalLM", ""), tiny_gemma()] {
        let w = random_weights(&cfg, 1, 0.5).unwrap();
        let m = Model::new(&cfg, &w, ModelOptions::default()).unwrap();
        let want = m.rope_tables_flat(37).unwrap();
        let got = crate::llama::rope_tables_f32(&cfg, 37).unwrap();
        assert_eq!(got.len(), if cfg.arch() == crate::Arch::Gemma3 { 2 } else { 1 });
        assert_eq!(got, want);
    }
}
