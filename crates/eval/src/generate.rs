//! Sampling with a KV cache: greedy at temperature 0, else temperature + nucleus (top-p,
//! Holtzman et al. 2019). Deterministic for a given seed.

use crate::EvalError;
use orlik_model::infer::{Infer, Rows};
use rand::{rngs::StdRng, Rng, SeedableRng};

#[derive(Debug, Clone, Copy)]
pub struct GenOptions {
    pub max_new_tokens: usize,
    pub temperature: f64,
    pub top_p: f64,
    pub seed: u64,
}

/// Pick the next token from one row of logits.
pub fn sample(logits: &[f32], temperature: f64, top_p: f64, rng: &mut impl Rng) -> u32 {
    if temperature <= 0.0 {
        return argmax(logits);
    }
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let mut p: Vec<(u32, f64)> = logits
        .iter()
        .enumerate()
        .map(|(i, &l)| (i as u32, ((l as f64 - max) / temperature).exp()))
        .collect();
    let z: f64 = p.iter().map(|x| x.1).sum();
    let keep = nucleus(&mut p, z, top_p);
    let kept = &p[..keep];
    let total: f64 = kept.iter().map(|x| x.1).sum();
    let mut u = rng.random::<f64>() * total;
    for (id, w) in kept {
        if u < *w {
            return *id;
        }
        u -= w;
    }
    kept[kept.len() - 1].0
}

/// Puts the nucleus first in `p` (descending weight, ties by lower id) and returns its size:
/// the shortest prefix whose mass reaches `top_p`. Only the head is sorted: the best 64, then
/// 4× more while the mass falls short (sorting the whole vocabulary was 6% of `orlik generate`).
/// The order is total, so the prefix is the one a full sort gives.
fn nucleus(p: &mut [(u32, f64)], z: f64, top_p: f64) -> usize {
    let cmp = |a: &(u32, f64), b: &(u32, f64)| {
        b.1.partial_cmp(&a.1).unwrap_or(std::cmp::Ordering::Equal).then(a.0.cmp(&b.0))
    };
    let mut k = p.len().min(64);
    loop {
        if k < p.len() {
            p.select_nth_unstable_by(k - 1, cmp); // the best k first, in some order
        }
        p[..k].sort_by(cmp);
        let mut mass = 0.0;
        for (i, (_, w)) in p[..k].iter().enumerate() {
            mass += w / z;
            if mass >= top_p {
                return i + 1;
            }
        }
        if k == p.len() {
            return k;
        }
        k = (k * 4).min(p.len());
    }
}

/// One generated token and the two best logits of the row it was picked from: how close the
/// choice was (a greedy token whose margin is below the rounding of a lower-precision copy of the
/// model may legitimately differ there; `scripts/llamacpp_check.sh` uses it for f16).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Step {
    pub id: u32,
    /// The best logit of the row and its token.
    pub best: (u32, f32),
    /// The second best; `(best.0, best.1)` again when the vocabulary has one token.
    pub runner_up: (u32, f32),
}

impl Step {
    fn new(id: u32, logits: &[f32]) -> Self {
        let b = argmax(logits) as usize;
        let mut r = if b == 0 { 1.min(logits.len() - 1) } else { 0 };
        for (i, &x) in logits.iter().enumerate() {
            if i != b && x > logits[r] {
                r = i;
            }
        }
        Step { id, best: (b as u32, logits[b]), runner_up: (r as u32, logits[r]) }
    }
}

pub fn argmax(v: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best as u32
}

/// Generate after `prompt`; `on_token(step)` is called for each new token and may return false
/// to stop. Stops at any of `stop_ids`. Returns the new tokens.
pub fn generate(
    model: &dyn Infer,
    prompt: &[u32],
    stop_ids: &[u32],
    opts: &GenOptions,
    mut on_token: impl FnMut(&Step) -> bool,
) -> Result<Vec<u32>, EvalError> {
    if prompt.is_empty() {
        return Err(EvalError::Input("empty prompt".into()));
    }
    let mut rng = StdRng::seed_from_u64(opts.seed);
    let mut cache = model.new_cache();
    let mut out = Vec::new();
    let mut input = prompt.to_vec();
    for _ in 0..opts.max_new_tokens {
        let rows = Rows::new(&input, 1, input.len());
        let logits = model.last_logits(rows, Some(&mut cache))?; // (1, v)
        let last: Vec<f32> = logits.get(0)?.to_dtype(candle_core::DType::F32)?.to_vec1()?;
        let next = sample(&last, opts.temperature, opts.top_p, &mut rng);
        out.push(next);
        if stop_ids.contains(&next) || !on_token(&Step::new(next, &last)) {
            break;
        }
        input = vec![next];
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_and_nucleus() {
        let mut rng = StdRng::seed_from_u64(0);
        assert_eq!(sample(&[0.1, 3.0, 2.0], 0.0, 1.0, &mut rng), 1);
        // top_p tiny keeps only the best token, whatever the temperature
        for _ in 0..20 {
            assert_eq!(sample(&[0.1, 3.0, 2.9], 5.0, 1e-6, &mut rng), 1);
        }
        let mut seen = [0; 3];
        for _ in 0..300 {
            seen[sample(&[1.0, 1.0, 1.0], 1.0, 1.0, &mut rng) as usize] += 1;
        }
        assert!(seen.iter().all(|&c| c > 50), "{seen:?}");
    }

    /// The partially sorted nucleus is the prefix of a full sort, ties included, whether it is
    /// found among the first 64, after growing, or is the whole vocabulary.
    #[test]
    fn nucleus_is_the_full_sort_prefix() {
        let mut rng = StdRng::seed_from_u64(3);
        // Weights with many exact ties (quantised) and a long flat tail.
        let w: Vec<(u32, f64)> =
            (0..5000).map(|i| (i, (rng.random::<f64>() * 50.0).floor().exp2() + 1.0)).collect();
        let z: f64 = w.iter().map(|x| x.1).sum();
        let mut full = w.clone();
        full.sort_by(|a, b| b.1.partial_cmp(&a.1).unwrap().then(a.0.cmp(&b.0)));
        for top_p in [1e-9, 0.3, 0.9, 0.999, 1.0] {
            let mut p = w.clone();
            let keep = nucleus(&mut p, z, top_p);
            let mut mass = 0.0;
            let want = full.iter().position(|x| {
                mass += x.1 / z;
                mass >= top_p
            });
            assert_eq!(keep, want.map_or(full.len(), |i| i + 1), "top_p {top_p}");
            assert_eq!(&p[..keep], &full[..keep], "top_p {top_p}");
        }
    }

    #[test]
    fn step_names_the_two_best() {
        assert_eq!(
            Step::new(1, &[0.5, 3.0, 2.5, -1.0]),
            Step { id: 1, best: (1, 3.0), runner_up: (2, 2.5) }
        );
        // the best first: the runner-up search must not start from it
        assert_eq!(Step::new(0, &[4.0, 1.0, 2.0]).runner_up, (2, 2.0));
        assert_eq!(Step::new(0, &[4.0]).runner_up, (0, 4.0));
    }
}
