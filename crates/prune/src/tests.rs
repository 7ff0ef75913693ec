//! Invariance tests: keeping everything is the identity; a pruned model computes exactly what the
//! dense model computes with the dropped units masked (their output columns zeroed).

use crate::{apply, Plan};
use candle_core::{Device, Tensor};
use orlik_model::init::random_weights;
use orlik_model::{Config, Model, ModelOptions, Weights};

/// The shared tiny shape (`orlik_model::testing`) with 3 layers and the extra keys `extra` (a
/// JSON object's members, starting with a comma).
fn tiny(arch: &str, extra: &str) -> Config {
    let patch = format!("{{\"num_hidden_layers\":3{extra}}}");
    orlik_model::testing::tiny(arch, serde_json::from_str(&patch).unwrap())
}

fn configs() -> Vec<Config> {
    vec![
        tiny("LlamaForCausalLM", r#","attention_bias":true,"mlp_bias":true"#),
        tiny("Qwen2ForCausalLM", r#","tie_word_embeddings":true"#),
        // Qwen3: per-head q/k norms (over head_dim, shared by the heads: kept whole when heads go).
        tiny("Qwen3ForCausalLM", ""),
        // Gemma 3 with explicit layer kinds, and with transformers 4.x's periodic pattern (layer 1
        // global): dropping layer 1 must keep layer 2 a sliding layer.
        tiny(
            "Gemma3ForCausalLM",
            r#","sliding_window":3,"query_pre_attn_scalar":5,
            "layer_types":["sliding_attention","full_attention","sliding_attention"]"#,
        ),
        tiny(
            "Gemma3ForCausalLM",
            r#","sliding_window":3,"sliding_window_pattern":2,"rope_local_base_freq":10.0"#,
        ),
    ]
}

fn logits(cfg: &Config, w: &Weights) -> Tensor {
    let ids = Tensor::new(&[[1u32, 5, 3, 9, 2, 7], [4, 12, 0, 10, 6, 8]], &Device::Cpu).unwrap();
    Model::new(cfg, w, ModelOptions::default()).unwrap().forward(&ids, None, None, None).unwrap()
}

fn max_abs(a: &Tensor, b: &Tensor) -> f32 {
    (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar().unwrap()
}

/// Zero columns `cols` of a 2-D weight (and nothing else).
fn zero_cols(w: &mut Weights, name: &str, cols: &[usize]) {
    let t = &w[name];
    let (r, c) = t.dims2().unwrap();
    let mut v: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
    for i in 0..r {
        for &j in cols {
            v[i * c + j] = 0.0;
        }
    }
    w.insert(name.into(), Tensor::from_vec(v, (r, c), &Device::Cpu).unwrap());
}

fn zero(w: &mut Weights, name: &str) {
    if let Some(t) = w.get(name) {
        let z = t.zeros_like().unwrap();
        w.insert(name.into(), z);
    }
}

#[test]
fn keeping_everything_is_bit_identical() {
    for cfg in configs() {
        let w = random_weights(&cfg, 1, 0.3).unwrap();
        let (c2, w2) = apply(&cfg, &w, &Plan::identity(&cfg)).unwrap();
        assert_eq!(c2.num_hidden_layers, cfg.num_hidden_layers);
        for (k, v) in &w {
            let a: Vec<f32> = v.flatten_all().unwrap().to_vec1().unwrap();
            let b: Vec<f32> = w2[k].flatten_all().unwrap().to_vec1().unwrap();
            assert_eq!(a, b, "{k}");
        }
        let (a, b) = (logits(&cfg, &w), logits(&c2, &w2));
        assert_eq!(max_abs(&a, &b), 0.0);
    }
}

#[test]
fn pruned_mlp_equals_masked_neurons() {
    for cfg in configs() {
        let w = random_weights(&cfg, 2, 0.3).unwrap();
        let mut plan = Plan::identity(&cfg);
        let keep = [vec![0, 2, 3, 5, 8, 11], vec![1, 2, 4, 6, 7, 10], vec![0, 1, 2, 3, 4, 5]];
        plan.mlp = keep.to_vec();
        let (c2, w2) = apply(&cfg, &w, &plan).unwrap();
        assert_eq!(c2.intermediate_size, 6);
        let mut masked = w.clone();
        for (l, k) in keep.iter().enumerate() {
            let drop: Vec<usize> = (0..12).filter(|j| !k.contains(j)).collect();
            zero_cols(&mut masked, &format!("model.layers.{l}.mlp.down_proj.weight"), &drop);
        }
        assert!(max_abs(&logits(&c2, &w2), &logits(&cfg, &masked)) < 1e-5);
    }
}

#[test]
fn pruned_heads_and_kv_groups_equal_masked_heads() {
    for cfg in configs() {
        let w = random_weights(&cfg, 3, 0.3).unwrap();
        let hd = cfg.head_dim();
        // Layer 0: one query head per group (heads 1 and 2); layers 1-2: drop KV group 1 (heads 2, 3)
        // and, in layer 2, keep group 1 instead.
        let mut plan = Plan::identity(&cfg);
        plan.heads = vec![vec![1, 2], vec![0, 1], vec![2, 3]];
        plan.kv_heads = vec![vec![0, 1], vec![0], vec![1]];
        assert!(apply(&cfg, &w, &plan).is_err(), "layers must keep the same number of KV groups");
        plan.heads = vec![vec![0, 1], vec![0, 1], vec![2, 3]];
        plan.kv_heads = vec![vec![0], vec![0], vec![1]];
        let (c2, w2) = apply(&cfg, &w, &plan).unwrap();
        assert_eq!((c2.num_attention_heads, c2.num_kv_heads(), c2.head_dim()), (2, 1, hd));
        let mut masked = w.clone();
        for (l, keep) in plan.heads.iter().enumerate() {
            let drop: Vec<usize> =
                (0..4).filter(|h| !keep.contains(h)).flat_map(|h| h * hd..(h + 1) * hd).collect();
            zero_cols(&mut masked, &format!("model.layers.{l}.self_attn.o_proj.weight"), &drop);
        }
        assert!(max_abs(&logits(&c2, &w2), &logits(&cfg, &masked)) < 1e-5);

        let mut plan = Plan::identity(&cfg);
        plan.heads = vec![vec![1, 2]; 3];
        let (c3, w3) = apply(&cfg, &w, &plan).unwrap();
        let mut masked = w.clone();
        for l in 0..3 {
            let drop: Vec<usize> = [0, 3].iter().flat_map(|h| h * hd..(h + 1) * hd).collect();
            zero_cols(&mut masked, &format!("model.layers.{l}.self_attn.o_proj.weight"), &drop);
        }
        assert!(max_abs(&logits(&c3, &w3), &logits(&cfg, &masked)) < 1e-5);
    }
}

#[test]
fn dropped_layer_equals_identity_block() {
    for cfg in configs() {
        let w = random_weights(&cfg, 4, 0.3).unwrap();
        let mut plan = Plan::identity(&cfg);
        plan.layers = vec![0, 2];
        plan.mlp.pop();
        plan.kv_heads.pop();
        plan.heads.pop();
        let (c2, w2) = apply(&cfg, &w, &plan).unwrap();
        assert_eq!(c2.num_hidden_layers, 2);
        // A block whose o_proj and down_proj (and their biases) are zero adds nothing to the residual.
        let mut masked = w.clone();
        for n in [
            "self_attn.o_proj.weight",
            "self_attn.o_proj.bias",
            "mlp.down_proj.weight",
            "mlp.down_proj.bias",
        ] {
            zero(&mut masked, &format!("model.layers.1.{n}"));
        }
        assert!(max_abs(&logits(&c2, &w2), &logits(&cfg, &masked)) < 1e-5);
    }
}

#[test]
fn hidden_pruning_gives_a_consistent_loadable_model() {
    for cfg in configs() {
        let w = random_weights(&cfg, 5, 0.3).unwrap();
        let mut plan = Plan::identity(&cfg);
        plan.hidden = vec![0, 2, 3, 6, 7];
        let e = apply(&cfg, &w, &plan).unwrap_err().to_string();
        assert!(e.contains("not a multiple of 4 attention heads"), "{e}");
        plan.heads = vec![vec![0, 2]; 3];
        plan.kv_heads = vec![vec![0, 1]; 3];
        plan.hidden = vec![0, 2, 3, 6];
        let (c2, w2) = apply(&cfg, &w, &plan).unwrap();
        assert_eq!(c2.hidden_size, 4);
        assert_eq!(
            c2.head_dim,
            Some(6),
            "head_dim written explicitly (4 / 2 heads would be wrong)"
        );
        let l = logits(&c2, &w2);
        assert_eq!(l.dims(), &[2, 6, 13]);
        // embeddings keep exactly the selected columns
        let e: Vec<Vec<f32>> = w2["model.embed_tokens.weight"].to_vec2().unwrap();
        let src: Vec<Vec<f32>> = w["model.embed_tokens.weight"].to_vec2().unwrap();
        assert_eq!(e[4], plan.hidden.iter().map(|&j| src[4][j]).collect::<Vec<_>>());
    }
}

#[test]
fn plan_json_round_trip_and_validation_errors() {
    let cfg = configs().remove(0);
    let plan = Plan::identity(&cfg);
    let back = Plan::from_json(&plan.to_json(), "p.json").unwrap();
    assert_eq!(back, plan);
    let bad = plan.to_json().replace("\"layers\"", "\"layerz\"");
    assert!(Plan::from_json(&bad, "p.json").unwrap_err().to_string().contains("p.json"));
    let mut p = plan.clone();
    p.mlp[1] = vec![3, 2, 1];
    let e = p.validate(&cfg).unwrap_err().to_string();
    assert!(e.contains("layer 1 mlp") && e.contains("ascending"), "{e}");
    let mut p = plan.clone();
    p.heads[0] = vec![0, 1, 2];
    p.kv_heads[0] = vec![0, 1];
    let e = p.validate(&cfg).unwrap_err().to_string();
    assert!(e.contains("same number") || e.contains("uniform"), "{e}");
    let mut other = cfg.clone();
    other.intermediate_size = 16;
    assert!(plan.validate(&other).unwrap_err().to_string().contains("made for"));
}

#[test]
fn build_plans_from_importance_at_exact_dims() {
    use crate::select::{build, DepthMethod, Importance, Target};
    let cfg = configs().remove(0);
    let w = random_weights(&cfg, 6, 0.3).unwrap();
    let t = Target {
        layers: Some(2),
        hidden: Some(6),
        heads: Some(2),
        kv_heads: Some(1),
        ffn: Some(8),
    };
    for imp in [Importance::magnitude(&cfg, &w).unwrap(), Importance::random(&cfg, 1)] {
        let plan = build(&cfg, &imp, &t, DepthMethod::Bi).unwrap();
        let (c2, w2) = apply(&cfg, &w, &plan).unwrap();
        assert_eq!(
            (
                c2.num_hidden_layers,
                c2.hidden_size,
                c2.num_attention_heads,
                c2.num_kv_heads(),
                c2.intermediate_size
            ),
            (2, 6, 2, 1, 8)
        );
        assert_eq!(logits(&c2, &w2).dims(), &[2, 6, 13]);
    }
    // block depth: drop the contiguous pair with the smallest angular distance
    let mut imp = Importance::random(&cfg, 2);
    imp.angular = vec![vec![0.5, 0.4, 0.6], vec![0.3, 0.1]];
    let plan =
        build(&cfg, &imp, &Target { layers: Some(1), ..Default::default() }, DepthMethod::Block)
            .unwrap();
    assert_eq!(plan.layers, vec![0]);
    let e = build(&cfg, &imp, &Target { heads: Some(3), ..Default::default() }, DepthMethod::Bi)
        .unwrap_err();
    assert!(e.to_string().contains("multiple of"), "{e}");
    let e = build(&cfg, &imp, &Target { ffn: Some(99), ..Default::default() }, DepthMethod::Bi)
        .unwrap_err();
    assert!(e.to_string().contains("--ffn 99"), "{e}");
}

#[test]
fn gqa_9_heads_3_groups_and_mqa_head_pruning_equals_masking() {
    let cases = [
        // SmolLM2-like 9 query heads over 3 KV groups: keep two heads per group
        (
            tiny(
                "LlamaForCausalLM",
                r#","num_hidden_layers":2,"hidden_size":18,"num_attention_heads":9,
            "num_key_value_heads":3,"head_dim":4,"tie_word_embeddings":true"#,
            ),
            vec![0, 1, 3, 4, 6, 7],
            vec![0, 1, 2],
        ),
        // MQA: one KV head shared by 4 query heads
        (
            tiny("Qwen2ForCausalLM", r#","num_hidden_layers":2,"num_key_value_heads":1"#),
            vec![0, 2],
            vec![0],
        ),
    ];
    for (cfg, heads, kv) in cases {
        let w = random_weights(&cfg, 8, 0.3).unwrap();
        let hd = cfg.head_dim();
        let mut plan = Plan::identity(&cfg);
        plan.heads = vec![heads.clone(); 2];
        plan.kv_heads = vec![kv.clone(); 2];
        let (c2, w2) = apply(&cfg, &w, &plan).unwrap();
        assert_eq!(c2.num_attention_heads, heads.len());
        let mut masked = w.clone();
        let drop: Vec<usize> = (0..cfg.num_attention_heads)
            .filter(|h| !heads.contains(h))
            .flat_map(|h| h * hd..(h + 1) * hd)
            .collect();
        for l in 0..2 {
            zero_cols(&mut masked, &format!("model.layers.{l}.self_attn.o_proj.weight"), &drop);
        }
        assert!(
            max_abs(&logits(&c2, &w2), &logits(&cfg, &masked)) < 1e-5,
            "{}",
            cfg.num_attention_heads
        );
    }
}

/// The streaming cut from stored bytes gives the loaded tensor's cut exactly, in every float
/// dtype, for 1-D and 2-D tensors, rows only, columns only (in runs and alone), both, and none;
/// an index outside the shape is an error.
#[test]
fn cutting_stored_bytes_equals_cutting_the_loaded_tensor() {
    use crate::slice::{cut, cut_stored, SliceSpec};
    use candle_core::DType;
    let dev = &Device::Cpu;
    let base = Tensor::randn(0f32, 1.0, (7, 10), dev).unwrap();
    let spec = |rows: Option<Vec<usize>>, cols: Option<Vec<usize>>| SliceSpec {
        name: "w".into(),
        shape: vec![],
        src: "w".into(),
        rows,
        cols,
    };
    let specs = [
        spec(None, None),
        spec(Some(vec![0, 2, 3, 6]), None),
        spec(None, Some(vec![1, 2, 3, 5, 8, 9])),
        spec(Some(vec![6, 1]), Some(vec![0, 4, 5, 9])),
        spec(Some(vec![]), Some(vec![3])),
    ];
    for dt in [DType::F32, DType::F16, DType::BF16, DType::F64] {
        for t in [base.to_dtype(dt).unwrap(), base.get(2).unwrap().to_dtype(dt).unwrap()] {
            let bytes = orlik_io::safetensors::tensor_bytes(&t, dt).unwrap();
            for s in &specs {
                if t.rank() == 1 && s.cols.is_some() {
                    continue;
                }
                let want = cut(&t, s).unwrap();
                let got = cut_stored(&bytes, t.dims(), dt, s).unwrap();
                assert_eq!((got.dims(), got.dtype()), (want.dims(), want.dtype()), "{dt:?} {s:?}");
                let (g, w) =
                    (got.to_dtype(DType::F64).unwrap(), want.to_dtype(DType::F64).unwrap());
                let (g, w): (Vec<f64>, Vec<f64>) = (
                    g.flatten_all().unwrap().to_vec1().unwrap(),
                    w.flatten_all().unwrap().to_vec1().unwrap(),
                );
                assert_eq!(g, w, "{dt:?} {s:?}");
            }
        }
        let bad = spec(Some(vec![7]), None);
        let bytes = orlik_io::safetensors::tensor_bytes(&base, DType::F32).unwrap();
        assert!(cut_stored(&bytes, &[7, 10], DType::F32, &bad).is_err());
        assert!(cut_stored(&bytes[1..], &[7, 10], DType::F32, &spec(None, None)).is_err());
    }
}
