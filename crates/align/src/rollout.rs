//! Sampling G completions of one prompt in one batch: the prompt is prefilled once, its KV cache
//! repeated G times, then all G rows decode together (temperature + top-p, `orlik_eval`'s
//! sampler). A row that reached a stop token keeps decoding padding that is thrown away.

use crate::AlignError;
use candle_core::DType;
use orlik_eval::generate::sample;
use orlik_model::infer::{Infer, Rows};
use rand::rngs::StdRng;

#[derive(Debug, Clone, Copy)]
pub struct SampleOptions {
    pub group: usize,
    pub max_new_tokens: usize,
    pub temperature: f64,
    pub top_p: f64,
}

/// G completions of `prompt`; each ends with its stop token when it produced one.
pub fn sample_group(
    model: &dyn Infer,
    prompt: &[u32],
    stop: &[u32],
    o: &SampleOptions,
    rng: &mut StdRng,
) -> Result<Vec<Vec<u32>>, AlignError> {
    if prompt.is_empty() {
        return Err(AlignError::Data("empty prompt".into()));
    }
    let g = o.group.max(1);
    let mut cache = model.new_cache();
    let logits = model.last_logits(Rows::new(prompt, 1, prompt.len()), Some(&mut cache))?; // (1, v)
    let last: Vec<f32> = logits.get(0)?.to_dtype(DType::F32)?.to_vec1()?;
    let mut cache = model.repeat_cache(&cache, g)?;
    let mut out: Vec<Vec<u32>> = vec![Vec::new(); g];
    let mut done = vec![false; g];
    let mut rows: Vec<Vec<f32>> = vec![last; g];
    let pad = stop.first().copied().unwrap_or(0);
    for _ in 0..o.max_new_tokens {
        let mut next = Vec::with_capacity(g);
        for r in 0..g {
            if done[r] {
                next.push(pad);
                continue;
            }
            let id = sample(&rows[r], o.temperature, o.top_p, rng);
            out[r].push(id);
            done[r] = stop.contains(&id);
            next.push(id);
        }
        if done.iter().all(|&d| d) || out.iter().all(|c| c.len() >= o.max_new_tokens) {
            break;
        }
        let l = model.last_logits(Rows::new(&next, g, 1), Some(&mut cache))?; // (g, v)
        let l = l.to_dtype(DType::F32)?;
        rows = l.to_vec2()?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use orlik_model::init::random_weights;
    use orlik_model::{Model, ModelOptions};
    use rand::SeedableRng;

    /// At temperature 0 every row of the batched group is exactly the single-row greedy
    /// generation (the repeated cache and the batched decode change nothing).
    #[test]
    fn batched_group_equals_single_greedy_generation() {
        let cfg = orlik_model::testing::tiny(
            "LlamaForCausalLM",
            serde_json::json!({"vocab_size": 23, "hidden_size": 16, "intermediate_size": 24,
                "head_dim": 4, "max_position_embeddings": 64, "tie_word_embeddings": true}),
        );
        let w = random_weights(&cfg, 3, 1.0).unwrap();
        let m = Model::new(
            &cfg,
            &w,
            ModelOptions { dtype: DType::F32, differentiable: false, half_weights: None },
        )
        .unwrap();
        let prompt = [1u32, 5, 9, 2];
        let go = orlik_eval::generate::GenOptions {
            max_new_tokens: 12,
            temperature: 0.0,
            top_p: 1.0,
            seed: 0,
        };
        let want = orlik_eval::generate::generate(&m, &prompt, &[], &go, |_| true).unwrap();
        let o = SampleOptions { group: 3, max_new_tokens: 12, temperature: 0.0, top_p: 1.0 };
        let got = sample_group(&m, &prompt, &[], &o, &mut StdRng::seed_from_u64(0)).unwrap();
        assert_eq!(got, vec![want.clone(); 3]);
        // sampling: rows differ, and stop tokens end rows
        let o = SampleOptions { group: 6, max_new_tokens: 20, temperature: 1.5, top_p: 1.0 };
        let s = sample_group(&m, &prompt, &[7], &o, &mut StdRng::seed_from_u64(1)).unwrap();
        assert!(s.iter().any(|r| r != &s[0]), "{s:?}");
        for r in &s {
            assert!(r.iter().position(|&t| t == 7).is_none_or(|i| i == r.len() - 1), "{r:?}");
        }
    }
}
