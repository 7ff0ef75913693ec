//! Log-softmax and KL divergence, written once for every crate: over one row of logits on host
//! slices (f64 sums: the trainer's losses, the evaluator's agreement, the teacher cache) and over
//! the last dimension of a tensor (the scorer and the pruning proxy). The KD losses with their
//! gradients build on these in `orlik_train::losses`.

use candle_core::{Result, Tensor, D};

/// log Σ_j exp(z_j / t), in f64, shifted by the row's maximum so that no term overflows.
pub fn logsumexp(z: &[f32], t: f32) -> f64 {
    let t = t as f64;
    let max = z.iter().fold(f64::NEG_INFINITY, |m, &x| m.max(x as f64 / t));
    z.iter().map(|&x| (x as f64 / t - max).exp()).sum::<f64>().ln() + max
}

/// log-softmax of `z / t`, in f64.
pub fn log_softmax(z: &[f32], t: f32) -> Vec<f64> {
    let lse = logsumexp(z, t);
    let t = t as f64;
    z.iter().map(|&x| x as f64 / t - lse).collect()
}

/// KL(p ‖ q) = Σ p (log p − log q) from the two rows' log-probabilities.
pub fn kl(log_p: &[f64], log_q: &[f64]) -> f64 {
    log_p.iter().zip(log_q).map(|(&a, &b)| a.exp() * (a - b)).sum()
}

/// KL(p ‖ q) over the last dimension of two log-probability tensors of one shape (…, vocab):
/// the result drops that dimension.
pub fn kl_last(log_p: &Tensor, log_q: &Tensor) -> Result<Tensor> {
    (log_p.exp()? * (log_p - log_q)?)?.sum(D::Minus1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn log_softmax_normalises_and_kl_matches_its_definition() {
        let z = [1.0f32, -2.0, 0.5, 3.0];
        let lp = log_softmax(&z, 2.0);
        let total: f64 = lp.iter().map(|x| x.exp()).sum();
        assert!((total - 1.0).abs() < 1e-12);
        // log-softmax at t = 2 is the log-softmax of z / 2
        let halved: Vec<f32> = z.iter().map(|x| x / 2.0).collect();
        for (a, b) in lp.iter().zip(log_softmax(&halved, 1.0)) {
            assert!((a - b).abs() < 1e-12);
        }
        // no overflow on large logits
        assert!(logsumexp(&[1e30, 1e30], 1.0).is_finite());
        let lq = log_softmax(&[0.0, 0.0, 0.0, 0.0], 1.0);
        assert_eq!(kl(&lp, &lp), 0.0);
        let by_hand: f64 = lp.iter().map(|&a| a.exp() * (a - (0.25f64).ln())).sum();
        assert!((kl(&lp, &lq) - by_hand).abs() < 1e-12 && by_hand > 0.0);
        let row = |l: &[f64]| {
            let v: Vec<f32> = l.iter().map(|&x| x as f32).collect();
            Tensor::from_vec(v, (1, 4), &Device::Cpu).unwrap()
        };
        let t: Vec<f32> = kl_last(&row(&lp), &row(&lq)).unwrap().to_vec1().unwrap();
        assert!((t[0] as f64 - by_hand).abs() < 1e-6);
    }
}
