//! The CUDA inference executor against the candle model on the host, on tiny random models of
//! every architecture: logits, prefill + decode through the KV cache, a repeated cache, padding
//! with explicit positions, and the tapped forward with a layer left out. Needs an NVIDIA GPU:
//! ignored by default, `scripts/gpu-check.sh` runs it with `--ignored`.

#![allow(clippy::unwrap_used)] // tests unwrap: a failure is the test failing

use candle_core::{DType, Tensor};
use orlik_cuda::{device::probe, CudaModel, Gpu};
use orlik_model::infer::{Rows, Tap};
use orlik_model::init::random_weights;
use orlik_model::testing::tiny;
use orlik_model::{Config, Infer, Model, ModelOptions};
use serde_json::json;
use std::sync::Arc;

fn gpu() -> Arc<Gpu> {
    let found = probe().unwrap_or_else(|why| panic!("no usable GPU: {why}"));
    Arc::new(Gpu::open(&found[0]).unwrap_or_else(|e| panic!("{e}")))
}

fn configs() -> Vec<(&'static str, Config)> {
    vec![
        ("llama", tiny("LlamaForCausalLM", json!({"vocab_size": 40}))),
        (
            "llama+bias",
            tiny(
                "LlamaForCausalLM",
                json!({"vocab_size": 40, "attention_bias": true, "mlp_bias": true}),
            ),
        ),
        ("qwen2", tiny("Qwen2ForCausalLM", json!({"vocab_size": 40, "tie_word_embeddings": true}))),
        (
            "mistral-window",
            tiny("MistralForCausalLM", json!({"vocab_size": 40, "sliding_window": 4})),
        ),
        (
            "gemma3",
            tiny(
                "Gemma3ForCausalLM",
                json!({"vocab_size": 40, "layer_types": ["sliding_attention", "full_attention"],
                    "sliding_window": 3, "query_pre_attn_scalar": 5,
                    "rope_parameters": {"full_attention": {"rope_type": "default", "rope_theta": 1000.0},
                        "sliding_attention": {"rope_type": "default", "rope_theta": 10.0}}}),
            ),
        ),
    ]
}

fn host(t: &Tensor) -> Vec<f32> {
    t.to_dtype(DType::F32).unwrap().flatten_all().unwrap().to_vec1().unwrap()
}

fn close(what: &str, got: &[f32], want: &[f32], tol: f32) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    let scale = want.iter().fold(1f32, |a, x| a.max(x.abs()));
    let err = got.iter().zip(want).fold(0f32, |a, (x, y)| a.max((x - y).abs()));
    assert!(err <= tol * scale, "{what}: max error {err} > {tol} × {scale}");
    println!("{what}: max error {err:.2e} (scale {scale:.2})");
}

#[test]
#[ignore = "needs an NVIDIA GPU: scripts/gpu-check.sh runs these with --ignored"]
fn gpu_logits_cache_padding_and_taps_follow_the_host_model() {
    let g = gpu();
    for (name, cfg) in configs() {
        let w = random_weights(&cfg, 3, 0.5).unwrap();
        let cpu = Model::new(&cfg, &w, ModelOptions::default()).unwrap();
        let cuda = CudaModel::from_model(&cpu, g.clone()).unwrap();
        let v = cfg.vocab_size;
        // Two rows of 11 at once.
        let ids: Vec<u32> = (0..22).map(|i| (i * 7 + 3) % v as u32).collect();
        let want = host(&cpu.logits(Rows::new(&ids, 2, 11), None).unwrap());
        let got = host(&cuda.logits(Rows::new(&ids, 2, 11), None).unwrap());
        close(&format!("{name}: logits"), &got, &want, 1e-5);
        // Prefill 7, then decode one token at a time; then the same from a repeated cache.
        let row = &ids[..11];
        let whole = &want[..11 * v];
        let mut cache = cuda.new_cache();
        let pre = host(&cuda.logits(Rows::new(&row[..7], 1, 7), Some(&mut cache)).unwrap());
        close(&format!("{name}: prefill"), &pre, &whole[..7 * v], 1e-5);
        let mut two = cuda.repeat_cache(&cache, 2).unwrap();
        for (k, &id) in row[7..].iter().enumerate() {
            let step = host(&cuda.logits(Rows::new(&[id], 1, 1), Some(&mut cache)).unwrap());
            close(&format!("{name}: decode {k}"), &step, &whole[(7 + k) * v..(8 + k) * v], 1e-5);
            let both = host(&cuda.logits(Rows::new(&[id, id], 2, 1), Some(&mut two)).unwrap());
            close(&format!("{name}: repeated decode {k}"), &both[v..], &step, 1e-6);
        }
        // Left padding with explicit positions, as batched generation sends it.
        let key_valid = vec![vec![true; 6], vec![false, false, true, true, true, true]];
        let positions = vec![(0..6).collect::<Vec<u32>>(), vec![0, 0, 0, 1, 2, 3]];
        let pad_ids: Vec<u32> = vec![1, 5, 3, 9, 2, 7, 0, 0, 4, 4, 6, 8];
        let rows = Rows {
            ids: &pad_ids,
            b: 2,
            t: 6,
            key_valid: Some(&key_valid),
            positions: Some(&positions),
        };
        let want = host(&cpu.logits(rows, None).unwrap());
        let got = host(&cuda.logits(rows, None).unwrap());
        // Padded query rows are never read; compare the real ones.
        let real: Vec<usize> = (0..6).chain(8..12).collect();
        let pick = |x: &[f32]| {
            real.iter().flat_map(|&r| x[r * v..(r + 1) * v].to_vec()).collect::<Vec<_>>()
        };
        close(&format!("{name}: padded"), &pick(&got), &pick(&want), 1e-5);
        // The tapped forward with layer 0 left out: every tap, in order.
        let mut taps_cpu: Vec<(usize, Tap, Vec<f32>)> = Vec::new();
        let mut taps_gpu: Vec<(usize, Tap, Vec<f32>)> = Vec::new();
        let r = Rows::new(&ids, 2, 11);
        let hc = cpu
            .hidden_tapped(r, &[0], &mut |l, what, t| {
                taps_cpu.push((l, what, host(t)));
                Ok(())
            })
            .unwrap();
        let hg = cuda
            .hidden_tapped(r, &[0], &mut |l, what, t| {
                taps_gpu.push((l, what, host(t)));
                Ok(())
            })
            .unwrap();
        close(&format!("{name}: tapped hidden"), &host(&hg), &host(&hc), 1e-5);
        assert_eq!(taps_cpu.len(), taps_gpu.len(), "{name}: taps");
        for ((lc, wc, tc), (lg, wg, tg)) in taps_cpu.iter().zip(&taps_gpu) {
            assert_eq!((lc, wc), (lg, wg), "{name}: tap order");
            close(&format!("{name}: tap {lc} {wc:?}"), tg, tc, 1e-5);
        }
    }
}

/// The subset head (a trimmed student's tokens of a teacher's head) gives the whole head's
/// columns at those ids, tied and untied; an id past the vocabulary is an input error.
#[test]
#[ignore = "needs an NVIDIA GPU: scripts/gpu-check.sh runs these with --ignored"]
fn gpu_subset_head_is_the_whole_heads_columns() {
    let g = gpu();
    for (name, cfg) in configs() {
        let w = random_weights(&cfg, 5, 0.5).unwrap();
        let cpu = Model::new(&cfg, &w, ModelOptions::default()).unwrap();
        let cuda = CudaModel::from_model(&cpu, g.clone()).unwrap();
        let v = cfg.vocab_size;
        let ids: Vec<u32> = (0..12).map(|i| (i * 5 + 1) % v as u32).collect();
        let h = cuda.hidden(Rows::new(&ids, 2, 6), None).unwrap(); // (2, 6, hidden)
        let whole = host(&cuda.head(&h).unwrap());
        let keep: Vec<u32> = vec![39, 0, 7, 3, 22, 8, 15];
        let sub = cuda.head_subset(&keep).unwrap().expect("the CUDA model has a subset head");
        let got = sub(&h).unwrap();
        assert_eq!(got.dims(), &[2, 6, keep.len()], "{name}: subset head shape");
        let want: Vec<f32> = (0..12)
            .flat_map(|r| keep.iter().map(|&j| whole[r * v + j as usize]).collect::<Vec<_>>())
            .collect();
        close(&format!("{name}: subset head"), &host(&got), &want, 1e-6);
        let e = cuda.head_subset(&[v as u32]).err().expect("an id past the vocabulary");
        assert!(e.to_string().contains("vocab_size"), "{name}: {e}");
    }
}

#[test]
#[ignore = "needs an NVIDIA GPU: scripts/gpu-check.sh runs these with --ignored"]
fn bad_rows_are_input_errors_on_the_gpu_too() {
    let g = gpu();
    let cfg = tiny("LlamaForCausalLM", json!({"vocab_size": 40}));
    let cpu =
        Model::new(&cfg, &random_weights(&cfg, 1, 0.5).unwrap(), ModelOptions::default()).unwrap();
    let cuda = CudaModel::from_model(&cpu, g).unwrap();
    let e = cuda.hidden(Rows::new(&[1, 2, 3], 2, 2), None).unwrap_err().to_string();
    assert!(e.contains("3 ids for 2 rows of 2"), "{e}");
    let e = cuda.hidden(Rows::new(&[1, 99], 1, 2), None).unwrap_err().to_string();
    assert!(e.contains("token id 99 is outside the vocabulary (40)"), "{e}");
    let mut wrong = orlik_model::infer::Cache::new(0u8);
    let e = cuda.hidden(Rows::new(&[1, 2], 1, 2), Some(&mut wrong)).unwrap_err().to_string();
    assert!(e.contains("did not make it"), "{e}");
}
