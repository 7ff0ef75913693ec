//! The test matrix of the training paths: architecture (Llama, Llama with every bias and GeGLU,
//! Qwen2 with q/k/v biases, Mistral with a sliding window, Gemma 3) × path (the CPU flat-buffer
//! executor's hand-written body, candle autograd, autograd with layer checkpointing), at a shape where every gemm of the hand-written
//! path takes the multi-threaded branch (m · n · k ≥ 2^15, `cpu/kernels.rs`), run on pools of 1 and 2
//! threads. Every path must give the same loss and every gradient as plain autograd through the
//! whole model; the same path on the same thread count must repeat itself bit for bit (the
//! bit-identical resume relies on it); and the inference forward (fused ops) must give the
//! training forward's logits.

use crate::data::Packed;
use crate::trainer::{Split, Trainer};
use crate::TrainConfig;
use candle_core::{DType, Device, Tensor};
use orlik_model::init::random_weights;
use orlik_model::{Config, Model, ModelOptions};

const B: usize = 2;
const T: usize = 32;

/// hidden 64, 4 heads of 16 (2 KV), MLP 128, vocab 96, 2 layers: the body's gemms are at least
/// (64 tokens) × 64 × 64 = 2^18 multiply-adds.
fn config(arch: &str, extra: serde_json::Value) -> Config {
    let mut patch = serde_json::json!({
        "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4,
        "num_key_value_heads": 2, "head_dim": 16, "vocab_size": 96, "num_hidden_layers": 2,
        "max_position_embeddings": 64, "tie_word_embeddings": false,
    });
    if let (Some(p), serde_json::Value::Object(e)) = (patch.as_object_mut(), extra) {
        p.extend(e);
    }
    orlik_model::testing::tiny(arch, patch)
}

fn packed() -> Packed {
    let n = B * (T + 1);
    let tokens: Vec<u32> = (0..n as u32).map(|i| (i * 37 + 11) % 96).collect();
    Packed::from_tokens(tokens, T, n, n)
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Run {
    Fast,
    /// The CPU executor keeping each layer's input only.
    FastCheckpointed,
    Autograd,
    /// candle autograd with checkpointing (a block the CPU executor cannot run).
    Checkpointed,
}

/// CE loss and every gradient of one micro-batch on `run`, inside a pool of `threads`.
fn grads(cfg: &Config, run: Run, threads: usize) -> (f64, Vec<Vec<f32>>) {
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
    pool.install(|| {
        let tmp = tempfile::tempdir().unwrap();
        let tc = TrainConfig {
            steps: Some(1),
            seq_len: T,
            batch: B,
            loss_chunk: 24,
            checkpoint_layers: matches!(run, Run::Checkpointed | Run::FastCheckpointed),
            ..Default::default()
        };
        let w = random_weights(cfg, 5, 0.2).unwrap();
        let json = serde_json::json!({});
        let mut tr =
            Trainer::new(tc, cfg, w, packed(), None, None, tmp.path(), json, false).unwrap();
        if matches!(run, Run::Autograd | Run::Checkpointed) {
            tr.use_autograd().unwrap();
        }
        let fast = matches!(run, Run::Fast | Run::FastCheckpointed);
        let hand = tr.executor().contains("hand-written");
        assert_eq!(hand, fast, "{run:?} on {}", cfg.model_type);
        let (sums, g) = tr.micro(Split::Train, &[0, 1], Some(1.0)).unwrap();
        (sums.ce(), g.unwrap())
    })
}

fn assert_close(what: &str, a: &[Vec<f32>], b: &[Vec<f32>]) {
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        let scale = y.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
        let err = x.iter().zip(y).fold(0f32, |m, (p, q)| m.max((p - q).abs()));
        assert!(err / scale < 2e-4, "{what}: tensor {i}: max error {err} of {scale}");
        assert!(x.iter().any(|v| *v != 0.0), "{what}: tensor {i} has no gradient");
    }
}

/// Llama; Llama with o_proj and MLP biases and GeGLU; Qwen2 (q/k/v biases); Mistral with a
/// window below the sequence; Gemma 3 with a sliding and a global layer, two RoPE bases and
/// query_pre_attn_scalar ≠ head_dim.
fn archs() -> Vec<Config> {
    vec![
        config("LlamaForCausalLM", serde_json::json!({})),
        config("Qwen2ForCausalLM", serde_json::json!({})),
        config(
            "LlamaForCausalLM",
            serde_json::json!({"attention_bias": true, "mlp_bias": true,
                "hidden_act": "gelu_pytorch_tanh"}),
        ),
        config("MistralForCausalLM", serde_json::json!({"sliding_window": 8})),
        config(
            "Gemma3ForCausalLM",
            serde_json::json!({"layer_types": ["sliding_attention", "full_attention"], "sliding_window": 8,
                "query_pre_attn_scalar": 12, "rope_parameters": {
                    "full_attention": {"rope_type": "default", "rope_theta": 1000.0},
                    "sliding_attention": {"rope_type": "default", "rope_theta": 10.0}}}),
        ),
    ]
}

#[test]
fn every_path_gives_autograds_loss_and_gradients_at_multithreaded_shapes_on_1_and_2_threads() {
    let all = archs();
    assert!(
        all[1].qkv_bias()
            && all[2].mlp_bias()
            && all[3].layer_window(0) == Some(8)
            && all[4].layer_window(0) == Some(8)
    );
    // the smallest gemm of the body (k_proj: tokens × KV width × hidden) is past the
    // multi-threaded branch's 2^15 (kernels.rs)
    let c = &all[0];
    assert!(B * T * c.num_kv_heads() * c.head_dim() * c.hidden_size >= 1 << 15);
    for cfg in all {
        assert_eq!(orlik_model::GradModel::unsupported(&cfg), None, "{}", cfg.model_type);
        let (want_loss, want) = grads(&cfg, Run::Autograd, 1);
        let runs = [Run::Fast, Run::FastCheckpointed, Run::Checkpointed];
        for threads in [1, 2] {
            for &run in runs.iter().chain([Run::Autograd].iter()) {
                let what = format!("{} {run:?} {threads} thread(s)", cfg.model_type);
                let (loss, g) = grads(&cfg, run, threads);
                assert!(
                    (loss - want_loss).abs() <= 1e-5 * want_loss.abs(),
                    "{what}: loss {loss} vs {want_loss}"
                );
                assert_close(&what, &g, &want);
                // The same path on the same thread count repeats itself bit for bit.
                let (loss2, g2) = grads(&cfg, run, threads);
                assert!(loss2 == loss && g2 == g, "{what}: not deterministic");
                if run == Run::FastCheckpointed {
                    // re-running a layer's forward in the backward gives the same numbers
                    let (lf, gf) = grads(&cfg, Run::Fast, threads);
                    assert!(lf == loss && gf == g, "{what}: differs from the path without");
                }
            }
        }
    }
}

#[test]
fn the_inference_forward_gives_the_training_forwards_logits() {
    for cfg in archs() {
        let w = random_weights(&cfg, 5, 0.2).unwrap();
        let p = packed();
        let ids: Vec<u32> =
            (0..p.windows()).flat_map(|i| p.window(i).to_vec()).take(B * T).collect();
        let x = Tensor::from_vec(ids, (B, T), &Device::Cpu).unwrap();
        let logits = |differentiable: bool| -> Vec<f32> {
            let m = Model::new(
                &cfg,
                &w,
                ModelOptions { dtype: DType::F32, differentiable, half_weights: None },
            )
            .unwrap();
            m.forward(&x, None, None, None).unwrap().flatten_all().unwrap().to_vec1().unwrap()
        };
        let (fused, graph) = (logits(false), logits(true));
        let scale = graph.iter().fold(0f32, |m, v| m.max(v.abs()));
        let err = fused.iter().zip(&graph).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(
            err <= 1e-4 * scale,
            "{}: fused vs differentiable logits differ by {err} (of {scale})",
            cfg.model_type
        );
    }
}
