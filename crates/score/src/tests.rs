//! Scores on tiny models with planted structure: a dead neuron, a dead head and an identity layer
//! must come out least important on their axis.

use crate::collect::collect;
use crate::{calibration_batches, ScoreOptions, Scores};
use candle_core::Tensor;
use orlik_model::init::random_weights;
use orlik_model::{Config, Model, ModelOptions, Weights};

fn cfg() -> Config {
    orlik_model::testing::tiny("LlamaForCausalLM", serde_json::json!({"num_hidden_layers": 3}))
}

fn zero_rows(w: &mut Weights, name: &str, rows: std::ops::Range<usize>) {
    let t = &w[name];
    let (r, c) = t.dims2().unwrap();
    let mut v: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
    for i in rows {
        v[i * c..(i + 1) * c].iter_mut().for_each(|x| *x = 0.0);
    }
    w.insert(name.into(), Tensor::from_vec(v, (r, c), &candle_core::Device::Cpu).unwrap());
}

#[test]
fn planted_dead_units_score_lowest_and_scores_round_trip() {
    let c = cfg();
    let mut w = random_weights(&c, 21, 0.3).unwrap();
    zero_rows(&mut w, "model.layers.0.mlp.up_proj.weight", 5..6); // neuron 5 of layer 0 is dead
    zero_rows(&mut w, "model.layers.1.self_attn.v_proj.weight", 6..12); // kv head 1 -> heads 2, 3 output 0
    for n in ["self_attn.o_proj.weight", "mlp.down_proj.weight"] {
        let t = w[&format!("model.layers.2.{n}")].zeros_like().unwrap();
        w.insert(format!("model.layers.2.{n}"), t); // layer 2 is the identity
    }
    let m = Model::new(&c, &w, ModelOptions::default()).unwrap();
    let docs: Vec<Vec<u32>> =
        (0..6).map(|d| (0..20).map(|i| ((i * 7 + d * 3) % 13) as u32).collect()).collect();
    let batches = calibration_batches(&docs, Some(2), 6, 16, 2).unwrap();
    let s = collect(&m, &batches, &ScoreOptions::default(), |_, _, _| {}).unwrap();
    let argmin =
        |v: &[f32]| v.iter().enumerate().min_by(|a, b| a.1.partial_cmp(b.1).unwrap()).unwrap().0;
    assert_eq!(s.mlp[0][5], 0.0);
    assert_eq!(argmin(&s.mlp[0]), 5);
    assert_eq!(s.heads[1][2], 0.0);
    assert_eq!(s.heads[1][3], 0.0);
    assert!(s.bi[2].abs() < 1e-5, "identity layer BI {}", s.bi[2]);
    assert!(s.loo_kl[2].abs() < 1e-5, "identity layer LOO KL {}", s.loo_kl[2]);
    assert!((s.loo_loss[2] - s.full_loss).abs() < 1e-4);
    assert!(s.bi[0] > 1e-3 && s.loo_kl[0] > 1e-4);
    assert_eq!(s.angular.len(), 3);
    assert_eq!(s.angular[0].len(), 3);
    assert_eq!(s.angular[2].len(), 1);
    assert_eq!(s.hidden.len(), 8);

    let d = tempfile::tempdir().unwrap();
    let meta = crate::ScoreMeta {
        format_version: crate::FORMAT_VERSION,
        model_sha256: "m".into(),
        data_sha256: "d".into(),
        settings: ScoreOptions::default(),
        samples: 6,
        seq_len: 16,
        tokens: s.tokens,
        full_loss: s.full_loss,
        num_hidden_layers: 3,
        compute_dtype: orlik_model::ComputeDtype::F32,
    };
    s.save(d.path(), &meta).unwrap();
    let (back, _) = Scores::load(d.path()).unwrap();
    assert_eq!(back, s);
}

/// Streaming equals in-memory scoring with the matrices in f32 and, both ways, in bf16 / f16.
#[test]
fn layer_by_layer_streaming_equals_in_memory_scoring() {
    use candle_core::DType;
    for (name, half) in [
        ("llama", None),
        ("qwen2", None),
        ("mistral", None),
        ("gemma3", None),
        ("qwen3", None),
        ("llama", Some(DType::BF16)),
        ("gemma3", Some(DType::F16)),
    ] {
        let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fixtures")
            .join(name);
        let hf = orlik_io::hfdir::HfModel::open(&dir).unwrap();
        let m = hf.load(ModelOptions::inference(half)).unwrap();
        let docs: Vec<Vec<u32>> =
            (0..8).map(|d| (0..30).map(|i| ((i * 5 + d * 11) % 64) as u32).collect()).collect();
        let batches = calibration_batches(&docs, Some(2), 6, 16, 2).unwrap();
        let opts = ScoreOptions { max_block: 2, ..ScoreOptions::default() };
        let a = collect(&m, &batches, &opts, |_, _, _| {}).unwrap();
        let single = &orlik_dist::Single;
        let b = crate::collect::collect_streaming_ranks(
            single,
            &hf,
            half,
            &batches,
            &opts,
            |_, _, _| {},
        )
        .unwrap();
        let close = |x: &[f32], y: &[f32], what: &str| {
            assert_eq!(x.len(), y.len(), "{name} {what}");
            for (p, q) in x.iter().zip(y) {
                let ok = (p - q).abs() <= 1e-4 * (1.0 + q.abs());
                assert!(ok, "{name} {half:?} {what}: {x:?} vs {y:?}");
            }
        };
        for l in 0..a.mlp.len() {
            close(&a.mlp[l], &b.mlp[l], "mlp");
            close(&a.heads[l], &b.heads[l], "heads");
        }
        close(&a.hidden, &b.hidden, "hidden");
        close(&a.bi, &b.bi, "bi");
        for n in 0..a.angular.len() {
            close(&a.angular[n], &b.angular[n], "angular");
        }
        close(&a.loo_kl, &b.loo_kl, "loo_kl");
        close(&a.loo_loss, &b.loo_loss, "loo_loss");
        assert!((a.full_loss - b.full_loss).abs() < 1e-4);
        assert_eq!(a.tokens, b.tokens);
    }
}
