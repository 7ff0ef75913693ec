//! Trainer invariants on a tiny random model: the chunked, hand-written lm_head backward gives the
//! same gradients as plain autograd through the whole model (CE and forward-KL, tied and untied
//! embeddings, several loss chunks), and every trainable tensor gets a non-zero gradient.

use crate::data::Packed;
use crate::losses::KdLoss;
use crate::trainer::{Split, StepRows, TeacherSource, Trainer};
use crate::{TrainConfig, TrainError};
use candle_core::{DType, Device, Tensor, Var, D};
use orlik_model::init::random_weights;
use orlik_model::llama::cross_entropy;
use orlik_model::{Config, Model, ModelOptions, Weights};

fn tiny(tied: bool) -> Config {
    tiny_arch(tied, "LlamaForCausalLM", "llama", "")
}

/// The tiny shape as another architecture, with extra config keys (`extra` starts with a comma).
fn tiny_arch(tied: bool, arch: &str, model_type: &str, extra: &str) -> Config {
    let patch = format!(
        r#"{{"model_type":"{model_type}","max_position_embeddings":64,"tie_word_embeddings":{tied}{extra}}}"#
    );
    orlik_model::testing::tiny(arch, serde_json::from_str(&patch).unwrap())
}

fn packed() -> Packed {
    let tokens: Vec<u32> = (0..2 * 7).map(|i| (i * 5 + 3) % 13).collect();
    Packed::from_tokens(tokens, 6, 14, 14)
}

/// Teacher rows from fixed logits (rows, vocab) at temperature t.
struct Fixed {
    logits: Vec<f32>,
    vocab: usize,
    t: f32,
}

impl TeacherSource for Fixed {
    fn prepare(
        &mut self,
        _: Split,
        _: &[usize],
        _: &[u32],
        _: usize,
        _: usize,
    ) -> Result<bool, TrainError> {
        Ok(true)
    }
    fn rows(&mut self, start: usize, n: usize) -> Result<StepRows, TrainError> {
        let z = &self.logits[start * self.vocab..(start + n) * self.vocab];
        let logp = z
            .chunks(self.vocab)
            .flat_map(|r| crate::losses::log_softmax(r, self.t))
            .map(|x| x as f32)
            .collect();
        Ok(StepRows::Full { vocab: self.vocab, logp })
    }
}

fn teacher_logits() -> Vec<f32> {
    (0..12 * 13).map(|i| ((i * 7 % 17) as f32 - 8.0) * 0.3).collect()
}

/// Reference gradients: autograd through the full model and the loss composed from candle ops.
fn reference(cfg: &Config, w: &Weights, names: &[String], kd: bool, t: f64) -> Vec<Vec<f32>> {
    let vars: Vec<Var> = names.iter().map(|n| Var::from_tensor(&w[n]).unwrap()).collect();
    let held: Weights =
        names.iter().cloned().zip(vars.iter().map(|v| v.as_tensor().clone())).collect();
    let m = Model::new(
        cfg,
        &held,
        ModelOptions { dtype: DType::F32, differentiable: true, half_weights: None },
    )
    .unwrap();
    let p = packed();
    let ids: Vec<u32> = (0..2).flat_map(|i| p.window(i)[..6].to_vec()).collect();
    let tg: Vec<u32> = (0..2).flat_map(|i| p.window(i)[1..].to_vec()).collect();
    let x = Tensor::from_vec(ids, (2, 6), &Device::Cpu).unwrap();
    let logits = m.forward(&x, None, None, None).unwrap(); // (2, 6, v)
    let loss = if kd {
        let zt = Tensor::from_vec(teacher_logits(), (2, 6, 13), &Device::Cpu).unwrap();
        let lt = orlik_model::ops::log_softmax_last(&(zt / t).unwrap()).unwrap();
        let ls = orlik_model::ops::log_softmax_last(&(logits / t).unwrap()).unwrap();
        let kl = (lt.exp().unwrap() * (lt - ls).unwrap()).unwrap().sum(D::Minus1).unwrap(); // (2, 6)
        (kl.mean_all().unwrap() * (t * t)).unwrap()
    } else {
        let tgt = Tensor::from_vec(tg, (2, 6), &Device::Cpu).unwrap();
        cross_entropy(&logits, &tgt, &Tensor::ones((2, 6), DType::F32, &Device::Cpu).unwrap())
            .unwrap()
    };
    let g = loss.backward().unwrap();
    vars.iter()
        .map(|v| g.get(v.as_tensor()).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap())
        .collect()
}

/// One micro-batch's gradients from the trainer against `reference`; returns whether the
/// trainer used the hand-written body backward.
fn check_against_autograd(cfg: &Config, kd: bool, ckpt: bool, autograd: bool, what: &str) -> bool {
    let w = random_weights(cfg, 3, 0.3).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let tc = TrainConfig {
        steps: Some(1),
        seq_len: 6,
        batch: 2,
        loss_chunk: 5,
        temperature: 2.0,
        loss: KdLoss::Fkl,
        checkpoint_layers: ckpt,
        ..Default::default()
    };
    let teacher: Option<Box<dyn TeacherSource>> = if kd {
        Some(Box::new(Fixed { logits: teacher_logits(), vocab: 13, t: 2.0 }))
    } else {
        None
    };
    let mut tr = Trainer::new(
        tc,
        cfg,
        w.clone(),
        packed(),
        None,
        teacher,
        tmp.path(),
        serde_json::json!({}),
        false,
    )
    .unwrap();
    if autograd {
        tr.use_autograd().unwrap();
    }
    let (_, grads) = tr.micro(Split::Train, &[0, 1], Some(1.0 / 12.0)).unwrap();
    let grads = grads.unwrap();
    let names = tr.names();
    let want = reference(cfg, &w, &names, kd, 2.0);
    for ((n, g), r) in names.iter().zip(&grads).zip(&want) {
        let scale = r.iter().fold(0f32, |m, x| m.max(x.abs())).max(1e-6);
        let err = g.iter().zip(r).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(
            err / scale < 1e-4,
            "{what} kd={kd} ckpt={ckpt} autograd={autograd} {n}: max err {err} (scale {scale})"
        );
        assert!(g.iter().any(|x| *x != 0.0), "{what} kd={kd}: {n} got no gradient");
    }
    tr.executor().contains("hand-written")
}

#[test]
fn chunked_lm_head_backward_equals_autograd_for_ce_and_kd_with_and_without_layer_checkpointing() {
    for (tied, kd, ckpt, autograd) in [
        (true, false, false, false),
        (true, true, false, false),
        (false, false, false, false),
        (false, true, false, false),
        (true, true, true, false),
        (false, false, true, false),
        (true, true, false, true),
        (false, false, false, true),
    ] {
        let hand =
            check_against_autograd(&tiny(tied), kd, ckpt, autograd, &format!("llama tied={tied}"));
        assert_eq!(
            hand, !autograd,
            "use_autograd selects the autograd path; checkpointing stays on the hand-written one"
        );
    }
}

/// The hand-written backward on the variants it covers besides plain Llama: Qwen2's q/k/v
/// biases, Qwen3's per-head q/k norms, Mistral's sliding window (3 < seq_len 6), Llama-3 RoPE scaling, Gemma 3's block
/// (a sliding and a global layer, each with its RoPE base).
#[test]
fn hand_written_backward_covers_biases_sliding_windows_and_rope_scaling() {
    let cases = [
        tiny_arch(false, "Qwen2ForCausalLM", "qwen2", ""),
        tiny_arch(false, "Qwen3ForCausalLM", "qwen3", ""),
        tiny_arch(true, "MistralForCausalLM", "mistral", r#","sliding_window":3"#),
        tiny_arch(
            true,
            "LlamaForCausalLM",
            "llama",
            r#","rope_scaling":{"rope_type":"llama3","factor":8.0,"low_freq_factor":1.0,"high_freq_factor":4.0,"original_max_position_embeddings":8}"#,
        ),
        tiny_arch(
            true,
            "Gemma3ForCausalLM",
            "gemma3_text",
            r#","layer_types":["sliding_attention","full_attention"],"sliding_window":3,"rope_local_base_freq":10.0"#,
        ),
    ];
    assert!(cases[0].qkv_bias() && cases[2].layer_window(0) == Some(3));
    assert!(cases[1].qk_norm() && !cases[1].qkv_bias() && !cases[1].norm_offset());
    for cfg in &cases {
        for kd in [false, true] {
            assert!(check_against_autograd(cfg, kd, false, false, &cfg.model_type));
        }
    }
}

#[test]
fn steps_reduce_the_loss_and_resume_checks_settings_and_restores_state() {
    let cfg = tiny(true);
    let w = random_weights(&cfg, 5, 0.3).unwrap();
    let tc = TrainConfig {
        steps: Some(8),
        seq_len: 6,
        batch: 1,
        lr: 3e-2,
        save_every: 4,
        ..Default::default()
    };
    let a = tempfile::tempdir().unwrap();
    let mut t = Trainer::new(
        tc.clone(),
        &cfg,
        w.clone(),
        packed(),
        None,
        None,
        a.path(),
        serde_json::json!({}),
        false,
    )
    .unwrap();
    t.set_quiet(true);
    t.run(None).unwrap();
    let rows = crate::curves::read(&t.metrics_path()).unwrap();
    let loss = |r: &serde_json::Value| r["loss"].as_f64().unwrap();
    assert!(loss(&rows[7]) < loss(&rows[0]), "{} -> {}", loss(&rows[0]), loss(&rows[7]));
    let full: Vec<Vec<f32>> = t
        .named_weights()
        .unwrap()
        .iter()
        .map(|(_, x)| x.flatten_all().unwrap().to_vec1().unwrap())
        .collect();
    drop(t);
    let e = Trainer::new(
        TrainConfig { lr: 1.0, ..tc.clone() },
        &cfg,
        w.clone(),
        packed(),
        None,
        None,
        a.path(),
        serde_json::json!({}),
        true,
    );
    let msg = e.err().unwrap().to_string();
    assert!(msg.contains("lr (0.03 -> 1.0)"), "changed key named: {msg}");
    let e = Trainer::new(
        tc.clone(),
        &cfg,
        w.clone(),
        packed(),
        None,
        None,
        a.path(),
        serde_json::json!({}),
        false,
    );
    assert!(
        e.err().unwrap().to_string().contains("--resume"),
        "existing run refused without --resume"
    );
    // Resuming a finished run loads the last checkpoint: exactly the final weights.
    let mut t2 =
        Trainer::new(tc, &cfg, w, packed(), None, None, a.path(), serde_json::json!({}), true)
            .unwrap();
    assert_eq!(t2.state().step, 8);
    let again: Vec<Vec<f32>> = t2
        .named_weights()
        .unwrap()
        .iter()
        .map(|(_, x)| x.flatten_all().unwrap().to_vec1().unwrap())
        .collect();
    assert_eq!(again, full);
    t2.set_quiet(true);
    assert_eq!(t2.run(None).unwrap(), crate::Outcome::Finished);
    assert_eq!(
        crate::checkpoint::list(&a.path().join("checkpoints")).unwrap().len(),
        1,
        "a finished run keeps its last checkpoint only"
    );
}

#[test]
fn non_finite_steps_are_skipped_then_the_run_stops_with_finite_weights_saved() {
    let cfg = tiny(true);
    let w = random_weights(&cfg, 7, 0.3).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let tc = TrainConfig {
        steps: Some(10),
        seq_len: 6,
        batch: 1,
        max_bad_steps: 3,
        ..Default::default()
    };
    let mut bad = teacher_logits();
    bad[5] = f32::NAN; // row 0 of window 0: every step that draws window 0 sees a NaN teacher
    let teacher: Box<dyn TeacherSource> = Box::new(Fixed { logits: bad, vocab: 13, t: 1.0 });
    // Both windows give the NaN row (row 0 of every micro-batch), so every step is non-finite.
    let mut t = Trainer::new(
        tc,
        &cfg,
        w.clone(),
        packed(),
        None,
        Some(teacher),
        tmp.path(),
        serde_json::json!({}),
        false,
    )
    .unwrap();
    t.set_quiet(true);
    let e = t.run(None).unwrap_err().to_string();
    assert!(e.contains("3 non-finite steps in a row"), "{e}");
    let rows = crate::curves::read(&t.metrics_path()).unwrap();
    assert_eq!(rows.len(), 3);
    assert!(rows.iter().all(|r| r["skipped"] == true));
    // Nothing was applied: the saved weights are the initial (finite) ones.
    let ck = crate::checkpoint::list(&tmp.path().join("checkpoints")).unwrap();
    let dir = &ck.last().unwrap().1;
    let saved = orlik_io::safetensors::Checkpoint::open(&dir.join("weights.safetensors")).unwrap();
    let name = "model.layers.0.mlp.up_proj.weight";
    let a = saved.tensor(name).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let b = w[name].flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert_eq!(a, b);
}

/// The token log-prob objective (alignment's path): right-padded rows of different lengths give
/// each row's own log-probabilities, and the hand-written backward of Σ c·logp equals autograd
/// through each unpadded row separately, with the body under autograd and hand-written.
#[test]
fn token_logprob_backward_equals_autograd_and_padding_changes_nothing() {
    use crate::exec::cpu::{CpuExecutor, Options};
    use crate::exec::Executor;
    use crate::seqlogp::{backward, forward_train, frozen, Rows};
    for (tied, hand) in [(true, false), (false, false), (true, true), (false, true)] {
        let cfg = tiny(tied);
        let w = random_weights(&cfg, 7, 0.3).unwrap();
        let rows = Rows {
            inputs: vec![vec![1, 4, 7, 2, 9], vec![3, 3, 8]],
            targets: vec![vec![4, 7, 2, 9, 11], vec![3, 8, 12]],
            pad: 0,
        };
        let coeff: Vec<Vec<f32>> = vec![vec![0.0, 0.0, -0.5, 0.25, -1.0], vec![0.7, 0.0, -0.3]];
        let opts = Options { checkpoint: false, autograd: !hand };
        let mut e = CpuExecutor::new(&cfg, w.clone(), opts).unwrap();
        assert_eq!(e.describe().contains("hand-written"), hand);
        let f = forward_train(&mut e, &rows, 3).unwrap();
        let logp = f.logp.clone();
        backward(&mut e, f, &coeff, 4).unwrap();
        let grads = e.grads_to_host().unwrap();
        let names = e.names().to_vec();
        // a frozen model's log-probabilities are the same
        let m = Model::new(
            &cfg,
            &w,
            ModelOptions { dtype: DType::F32, differentiable: false, half_weights: None },
        )
        .unwrap();
        let fl = frozen(&m, &rows, 2).unwrap();
        for (a, b) in fl.iter().flatten().zip(logp.iter().flatten()) {
            assert!((a - b).abs() < 1e-5, "frozen {a} vs training {b}");
        }
        // reference: each row alone, full logits, autograd
        let vars: Vec<Var> = names.iter().map(|n| Var::from_tensor(&w[n]).unwrap()).collect();
        let held: Weights =
            names.iter().cloned().zip(vars.iter().map(|v| v.as_tensor().clone())).collect();
        let m = Model::new(
            &cfg,
            &held,
            ModelOptions { dtype: DType::F32, differentiable: true, half_weights: None },
        )
        .unwrap();
        let mut total: Option<Tensor> = None;
        for (r, (inp, tgt)) in rows.inputs.iter().zip(&rows.targets).enumerate() {
            let x = Tensor::new(inp.as_slice(), &Device::Cpu).unwrap().unsqueeze(0).unwrap();
            let ls = orlik_model::ops::log_softmax_last(&m.forward(&x, None, None, None).unwrap())
                .unwrap()
                .squeeze(0)
                .unwrap(); // (t, v)
            let idx = Tensor::new(tgt.as_slice(), &Device::Cpu).unwrap().unsqueeze(1).unwrap();
            let lp = ls.gather(&idx, 1).unwrap().squeeze(1).unwrap(); // (t,)
            for (a, b) in lp.to_vec1::<f32>().unwrap().iter().zip(&logp[r]) {
                assert!((*a as f64 - b).abs() < 1e-4, "row {r}: logp {a} vs {b}");
            }
            let c = Tensor::new(coeff[r].as_slice(), &Device::Cpu).unwrap();
            let term = (lp * c).unwrap().sum_all().unwrap();
            total = Some(match total {
                Some(t) => (t + term).unwrap(),
                None => term,
            });
        }
        let g = total.unwrap().backward().unwrap();
        for ((n, got), v) in names.iter().zip(&grads).zip(&vars) {
            let want =
                g.get(v.as_tensor()).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let scale = want.iter().fold(0f32, |m, x| m.max(x.abs())).max(1e-6);
            let err = got.iter().zip(&want).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            assert!(
                err / scale < 1e-4,
                "tied={tied} hand={hand} {n}: max err {err} (scale {scale})"
            );
            assert!(got.iter().any(|x| *x != 0.0), "tied={tied} hand={hand}: {n} got no gradient");
        }
    }
}
