//! AdamW (Loshchilov & Hutter 2019: decoupled weight decay, bias-corrected moments, PyTorch's
//! update order), learning-rate schedules and global-norm clipping, on f32 master weights held
//! as plain vectors so the update is in place and the state is trivially checkpointed.

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    /// Linear warmup, then cosine decay to `min_lr` at the last step.
    Cosine,
    /// Warmup-Stable-Decay (Hu et al. 2024, MiniCPM): warmup, constant, then a linear decay to
    /// `min_lr` over the last `wsd_decay` fraction of the steps.
    Wsd,
    /// Linear warmup, then constant.
    Constant,
}

impl std::str::FromStr for Schedule {
    type Err = String;
    fn from_str(s: &str) -> Result<Schedule, String> {
        match s {
            "cosine" => Ok(Schedule::Cosine),
            "wsd" => Ok(Schedule::Wsd),
            "constant" => Ok(Schedule::Constant),
            _ => Err(format!("unknown schedule {s:?} (cosine, wsd, constant)")),
        }
    }
}

/// Learning rate for optimizer step `step` (0-based) of `total`.
pub fn lr_at(
    schedule: Schedule,
    step: u64,
    total: u64,
    warmup: u64,
    lr: f64,
    min_lr: f64,
    wsd_decay: f64,
) -> f64 {
    if step < warmup {
        return lr * (step + 1) as f64 / warmup as f64;
    }
    let span = total.saturating_sub(warmup).max(1);
    let progress = ((step - warmup) as f64 / span as f64).min(1.0);
    match schedule {
        Schedule::Constant => lr,
        Schedule::Cosine => {
            min_lr + 0.5 * (lr - min_lr) * (1.0 + (std::f64::consts::PI * progress).cos())
        }
        Schedule::Wsd => {
            let decay_steps = ((total as f64) * wsd_decay).round().max(1.0) as u64;
            let start = total.saturating_sub(decay_steps).max(warmup);
            if step < start {
                lr
            } else {
                let p = (step - start + 1) as f64 / (total - start).max(1) as f64;
                lr + (min_lr - lr) * p.min(1.0)
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

/// One parameter's optimizer state.
#[derive(Debug, Clone)]
pub struct Slot {
    pub w: Vec<f32>,
    pub m: Vec<f32>,
    pub v: Vec<f32>,
    /// Weight decay applies to matrices (dim ≥ 2), not to norms and biases (nanoGPT, torchtune).
    pub decay: bool,
}

/// AdamW step `t` (1-based) on every slot with gradients `grads` (same order), learning rate `lr`.
pub fn adamw_step(slots: &mut [Slot], grads: &[Vec<f32>], lr: f64, t: u64, c: &AdamWConfig) {
    let bc1 = 1.0 - c.beta1.powi(t as i32);
    let bc2 = 1.0 - c.beta2.powi(t as i32);
    let (b1, b2) = (c.beta1 as f32, c.beta2 as f32);
    let step = (lr / bc1) as f32;
    let bc2_sqrt = bc2.sqrt() as f32;
    let eps = c.eps as f32;
    for (s, g) in slots.iter_mut().zip(grads) {
        let shrink = if s.decay { (1.0 - lr * c.weight_decay) as f32 } else { 1.0 };
        // Chunks are independent elementwise work: the result does not depend on the split.
        s.w.par_chunks_mut(1 << 14)
            .zip(s.m.par_chunks_mut(1 << 14))
            .zip(s.v.par_chunks_mut(1 << 14))
            .zip(g.par_chunks(1 << 14))
            .for_each(|(((w, m), v), g)| {
                for i in 0..w.len() {
                    let gi = g[i];
                    m[i] = b1 * m[i] + (1.0 - b1) * gi;
                    v[i] = b2 * v[i] + (1.0 - b2) * gi * gi;
                    let denom = v[i].sqrt() / bc2_sqrt + eps;
                    w[i] = w[i] * shrink - step * m[i] / denom;
                }
            });
    }
}

/// Global L2 norm of all gradients (f64 accumulation, fixed order: deterministic).
pub fn global_norm(grads: &[Vec<f32>]) -> f64 {
    grads.iter().map(|g| sum_squares(g)).sum::<f64>().sqrt()
}

/// Elements per block of [`sum_squares`] (and per task of [`clip`]).
const BLOCK: usize = 1 << 16;

/// Σ x² of one gradient tensor in f64 (a term of [`global_norm`], in its order): blocks of
/// [`BLOCK`] elements in parallel, each summed in 8 interleaved lanes, the lanes and then the
/// blocks added in order, so the result depends on the data only, never on the thread count.
/// (One running sum was a chain of dependent f64 additions: about a third of an update step.)
pub fn sum_squares(g: &[f32]) -> f64 {
    let block = |b: &[f32]| {
        let mut lanes = [0f64; 8];
        let mut chunks = b.chunks_exact(8);
        for c in &mut chunks {
            for (l, &x) in lanes.iter_mut().zip(c) {
                *l += (x as f64) * (x as f64);
            }
        }
        for (l, &x) in lanes.iter_mut().zip(chunks.remainder()) {
            *l += (x as f64) * (x as f64);
        }
        lanes.iter().sum::<f64>()
    };
    let mut parts = Vec::with_capacity(g.len().div_ceil(BLOCK));
    g.par_chunks(BLOCK).map(block).collect_into_vec(&mut parts);
    parts.iter().sum()
}

/// Scale gradients so their global norm is at most `max` (no-op when max ≤ 0).
pub fn clip(grads: &mut [Vec<f32>], norm: f64, max: f64) {
    if max > 0.0 && norm > max {
        let f = (max / (norm + 1e-6)) as f32;
        for g in grads.iter_mut() {
            g.par_chunks_mut(BLOCK).for_each(|b| b.iter_mut().for_each(|x| *x *= f));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adamw_matches_pytorch_formula_by_hand() {
        // torch.optim.AdamW(lr=0.1, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01), two steps
        // on w = [1, -2] with gradients [0.5, 0.1] then [-0.2, 0.3]; values computed by hand
        // from the documented update (decay first, then the bias-corrected Adam step).
        let c = AdamWConfig { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.01 };
        let mut s =
            vec![Slot { w: vec![1.0, -2.0], m: vec![0.0; 2], v: vec![0.0; 2], decay: true }];
        adamw_step(&mut s, &[vec![0.5, 0.1]], 0.1, 1, &c);
        // step 1: m̂ = g, v̂ = g², update = lr·sign(g) (up to eps)
        assert!((s[0].w[0] - (1.0 * 0.999 - 0.1)).abs() < 1e-6, "{:?}", s[0].w);
        assert!((s[0].w[1] - (-2.0 * 0.999 - 0.1)).abs() < 1e-6);
        adamw_step(&mut s, &[vec![-0.2, 0.3]], 0.1, 2, &c);
        let m = 0.9 * 0.05 + 0.1 * -0.2; // 0.025
        let v = 0.999 * 0.00025 + 0.001 * 0.04; // 0.00028975
        let mh = m / (1.0 - 0.81);
        let vh = v / (1.0 - 0.999f64.powi(2));
        let want = (0.899f64) * 0.999 - 0.1 * mh / (vh.sqrt() + 1e-8);
        assert!((s[0].w[0] as f64 - want).abs() < 1e-5, "{} vs {want}", s[0].w[0]);
    }

    #[test]
    fn schedules_warm_up_then_reach_min_lr_at_the_end() {
        for sch in [Schedule::Cosine, Schedule::Wsd] {
            assert!((lr_at(sch, 0, 100, 10, 1.0, 0.1, 0.2) - 0.1).abs() < 1e-12);
            assert!((lr_at(sch, 9, 100, 10, 1.0, 0.1, 0.2) - 1.0).abs() < 1e-12);
            assert!((lr_at(sch, 99, 100, 10, 1.0, 0.1, 0.2) - 0.1).abs() < 0.01, "{sch:?}");
        }
        assert_eq!(lr_at(Schedule::Wsd, 79, 100, 10, 1.0, 0.1, 0.2), 1.0);
        assert!(lr_at(Schedule::Wsd, 80, 100, 10, 1.0, 0.1, 0.2) < 1.0);
        assert_eq!(lr_at(Schedule::Constant, 99, 100, 10, 1.0, 0.1, 0.2), 1.0);
        let mid = lr_at(Schedule::Cosine, 55, 100, 10, 1.0, 0.0, 0.2);
        assert!((mid - 0.5).abs() < 1e-9, "{mid}");
    }

    #[test]
    fn clipping_bounds_the_global_norm() {
        let mut g = vec![vec![3.0, 0.0], vec![4.0]];
        let n = global_norm(&g);
        assert_eq!(n, 5.0);
        clip(&mut g, n, 1.0);
        assert!((global_norm(&g) - 1.0).abs() < 1e-5);
    }

    /// The blocked sum of squares equals the f64 definition within rounding, and the same bits
    /// in thread pools of every size.
    #[test]
    fn sum_squares_is_exact_enough_and_independent_of_the_thread_count() {
        for n in [0usize, 1, 7, 8, 9, BLOCK - 1, BLOCK, 3 * BLOCK + 5] {
            let g: Vec<f32> = (0..n).map(|i| ((i as f32) * 0.37).sin() * 3.0).collect();
            let want: f64 = g.iter().map(|&x| (x as f64) * (x as f64)).sum();
            let got = sum_squares(&g);
            assert!((got - want).abs() <= 1e-12 * want.max(1.0), "n {n}: {got} vs {want}");
            for threads in [1, 2, 3, 5] {
                let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
                assert_eq!(pool.install(|| sum_squares(&g)).to_bits(), got.to_bits(), "n {n}");
            }
        }
    }
}
