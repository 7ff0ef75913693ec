//! The CUDA training executor against the CPU executor, on the same weights and rows, for five
//! architectures (Llama, Llama with every bias and GeGLU, tied Qwen2, Mistral with a window,
//! Gemma 3): CE loss, every parameter's gradient, one AdamW step, token log-probabilities and
//! their backward; on the GPU alone: layer checkpointing gives the same bits, a run repeats
//! itself bit for bit, and a checkpoint round trip restores the same bits. Needs an NVIDIA GPU:
//! ignored by default, `scripts/gpu-check.sh` runs it with `--ignored`.

#![allow(clippy::unwrap_used)] // tests unwrap: a failure is the test failing

use orlik_model::init::random_weights;
use orlik_model::Config;
use orlik_train::exec::{cpu, cuda::CudaExecutor, Executor, LmLoss};
use orlik_train::losses::{KdLoss, KdSpec};
use orlik_train::TrainConfig;
use serde_json::json;

const B: usize = 2;
const T: usize = 24;

fn config(arch: &str, extra: serde_json::Value) -> Config {
    let mut patch = json!({
        "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4,
        "num_key_value_heads": 2, "head_dim": 16, "vocab_size": 96, "num_hidden_layers": 2,
        "max_position_embeddings": 64, "tie_word_embeddings": false,
    });
    if let (Some(p), serde_json::Value::Object(e)) = (patch.as_object_mut(), extra) {
        p.extend(e);
    }
    orlik_model::testing::tiny(arch, patch)
}

fn configs() -> Vec<(&'static str, Config)> {
    vec![
        ("llama", config("LlamaForCausalLM", json!({}))),
        (
            "llama+bias+geglu",
            config(
                "LlamaForCausalLM",
                json!({"attention_bias": true, "mlp_bias": true, "hidden_act": "gelu_pytorch_tanh"}),
            ),
        ),
        ("qwen2-tied", config("Qwen2ForCausalLM", json!({"tie_word_embeddings": true}))),
        ("mistral-window", config("MistralForCausalLM", json!({"sliding_window": 7}))),
        (
            "gemma3",
            config(
                "Gemma3ForCausalLM",
                json!({"layer_types": ["sliding_attention", "full_attention"], "sliding_window": 5,
                    "query_pre_attn_scalar": 16, "tie_word_embeddings": true}),
            ),
        ),
    ]
}

fn gpu_info() -> orlik_cuda::GpuInfo {
    orlik_cuda::device::probe().unwrap_or_else(|why| panic!("no usable GPU: {why}")).remove(0)
}

fn rows() -> (Vec<u32>, Vec<u32>) {
    let ids: Vec<u32> = (0..(B * T) as u32).map(|i| (i * 37 + 11) % 96).collect();
    let targets: Vec<u32> = (0..(B * T) as u32).map(|i| (i * 53 + 5) % 96).collect();
    (ids, targets)
}

/// CE over the rows with gradient scale 1 / rows; the loss sums.
fn ce_step(e: &mut dyn Executor, ids: &[u32], targets: &[u32]) -> (f64, usize) {
    let acts = e.forward(ids, B, T, true).unwrap();
    let spec = KdSpec { loss: KdLoss::Fkl, temperature: 1.0, beta: 0.5, ce_weight: 1.0 };
    let loss =
        LmLoss { targets, spec, teacher: None, chunk: 17, grad_scale: Some(1.0 / (B * T) as f32) };
    let s = e.lm_loss(acts, loss).unwrap();
    (s.ce, s.rows)
}

fn close(what: &str, got: &[f32], want: &[f32], tol: f32) {
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
    let err = got.iter().zip(want).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(err <= tol * scale, "{what}: max error {err:e} > {tol:e} × {scale:e}");
}

fn open_both(cfg: &Config, tc: &TrainConfig) -> (Box<dyn Executor>, CudaExecutor) {
    let w = random_weights(cfg, 5, 0.2).unwrap();
    let c = cpu::CpuExecutor::new(cfg, w.clone(), cpu::Options::default()).unwrap();
    let g = CudaExecutor::new(cfg, w, &gpu_info(), tc.checkpoint_layers).unwrap();
    (Box::new(c), g)
}

#[test]
#[ignore = "needs an NVIDIA GPU: scripts/gpu-check.sh runs these with --ignored"]
fn loss_gradients_and_an_adamw_step_follow_the_cpu_executor() {
    let (ids, targets) = rows();
    let tc = TrainConfig { steps: Some(1), clip: 0.5, ..Default::default() };
    for (name, cfg) in configs() {
        let (mut c, mut g) = open_both(&cfg, &tc);
        assert!(g.describe().starts_with("cuda: "), "{}", g.describe());
        let (ce_c, n_c) = ce_step(c.as_mut(), &ids, &targets);
        let (ce_g, n_g) = ce_step(&mut g, &ids, &targets);
        assert_eq!(n_c, n_g);
        assert!((ce_c - ce_g).abs() <= 1e-5 * ce_c.abs(), "{name}: CE {ce_g} vs {ce_c}");
        let (gc, gg) = (c.grads_to_host().unwrap(), g.grads_to_host().unwrap());
        assert_eq!(c.names(), g.names(), "{name}: the same tensor order");
        for ((n, a), b) in c.names().iter().zip(&gg).zip(&gc) {
            close(&format!("{name}: grad {n}"), a, b, 1e-4);
        }
        let (nc, ng) =
            (c.update(1e-2, 1, &tc, true).unwrap(), g.update(1e-2, 1, &tc, true).unwrap());
        assert!((nc - ng).abs() <= 1e-5 * nc, "{name}: gradient norm {ng} vs {nc}");
        for ((n, wc), (_, wg)) in c.weights().unwrap().iter().zip(g.weights().unwrap().iter()) {
            let (a, b) = (
                wg.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                wc.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            );
            close(&format!("{name}: weight {n} after AdamW"), &a, &b, 1e-4);
        }
        // The gradient was zeroed by the update.
        assert!(g.grads_to_host().unwrap().iter().all(|x| x.iter().all(|&v| v == 0.0)), "{name}");
        // Token log-probabilities and the backward of Σ coeff · log p.
        let coeff: Vec<f32> =
            (0..B * T).map(|i| if i % 3 == 0 { 0.0 } else { 0.5 - (i % 5) as f32 * 0.2 }).collect();
        let a = c.forward(&ids, B, T, true).unwrap();
        let lp_c = c.token_logp(&a, &targets, 13).unwrap();
        c.token_logp_backward(a, &targets, &coeff, 13).unwrap();
        let a = g.forward(&ids, B, T, true).unwrap();
        let lp_g = g.token_logp(&a, &targets, 13).unwrap();
        g.token_logp_backward(a, &targets, &coeff, 13).unwrap();
        for (x, y) in lp_g.iter().zip(&lp_c) {
            assert!((x - y).abs() <= 1e-4 * (1.0 + y.abs()), "{name}: log p {x} vs {y}");
        }
        for ((n, a), b) in
            c.names().iter().zip(&g.grads_to_host().unwrap()).zip(&c.grads_to_host().unwrap())
        {
            close(&format!("{name}: log-p grad {n}"), a, b, 1e-4);
        }
    }
}

#[test]
#[ignore = "needs an NVIDIA GPU: scripts/gpu-check.sh runs these with --ignored"]
fn checkpointing_repeats_and_checkpoints_give_the_same_bits() {
    let (ids, targets) = rows();
    for (name, cfg) in configs() {
        let w = random_weights(&cfg, 5, 0.2).unwrap();
        let mut plain = CudaExecutor::new(&cfg, w.clone(), &gpu_info(), false).unwrap();
        let mut again = CudaExecutor::new(&cfg, w.clone(), &gpu_info(), false).unwrap();
        let mut ck = CudaExecutor::new(&cfg, w, &gpu_info(), true).unwrap();
        let a = ce_step(&mut plain, &ids, &targets);
        assert_eq!(a, ce_step(&mut again, &ids, &targets), "{name}: a repeat");
        assert_eq!(a, ce_step(&mut ck, &ids, &targets), "{name}: checkpointed");
        let g = plain.grads_to_host().unwrap();
        assert_eq!(g, again.grads_to_host().unwrap(), "{name}: repeat gradients");
        assert_eq!(g, ck.grads_to_host().unwrap(), "{name}: checkpointed gradients");
        // A step, a checkpoint, a load into a fresh executor: the same bits, and the next step
        // the same on both.
        let tc = TrainConfig { steps: Some(2), ..Default::default() };
        plain.update(1e-2, 1, &tc, true).unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let state = orlik_train::checkpoint::State::fresh(3);
        plain.save(tmp.path(), &state).unwrap();
        let w0 = random_weights(&cfg, 9, 0.2).unwrap();
        let mut loaded = CudaExecutor::new(&cfg, w0, &gpu_info(), false).unwrap();
        assert_eq!(loaded.load_latest(tmp.path()).unwrap(), Some(state), "{name}");
        let (wa, wb) = (plain.weights().unwrap(), loaded.weights().unwrap());
        for ((n, x), (_, y)) in wa.iter().zip(&wb) {
            let (x, y) = (
                x.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                y.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            );
            assert_eq!(x, y, "{name}: {n} after load");
        }
        let s1 = ce_step(&mut plain, &ids, &targets);
        assert_eq!(s1, ce_step(&mut loaded, &ids, &targets), "{name}: step after load");
        plain.update(1e-2, 2, &tc, true).unwrap();
        loaded.update(1e-2, 2, &tc, true).unwrap();
        assert_eq!(plain.grads_to_host().unwrap(), loaded.grads_to_host().unwrap());
        let (wa, wb) = (plain.weights().unwrap(), loaded.weights().unwrap());
        for ((n, x), (_, y)) in wa.iter().zip(&wb) {
            let (x, y) = (
                x.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                y.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            );
            assert_eq!(x, y, "{name}: {n} after the resumed step (moments restored)");
        }
    }
}
