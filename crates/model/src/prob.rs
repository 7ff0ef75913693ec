//! Log-softmax and KL divergence, written once for every crate: over one row of logits on host
//! slices (f64 sums: the trainer's losses, the evaluator's agreement, the teacher cache) and over
//! the last dimension of a tensor (the scorer and the pruning proxy). The KD losses with their
//! gradients build on these in `orlik_train::losses`.

use candle_core::{Result, Tensor, D};

/// log Σ_j exp(z_j / t), shifted by the row's maximum so that no term overflows. The
/// exponentials are f32 and vectorised (`cpu::kernels::exp_shifted`, within 2 ulp), summed in
/// f32 lanes over blocks of 1024 and the blocks in f64: a vocabulary-wide row costs one SIMD
/// pass instead of one libm call per entry (this was most of `eval ppl`'s time after lm_head).
pub fn logsumexp(z: &[f32], t: f32) -> f64 {
    const BLOCK: usize = 1024;
    let inv = 1.0 / t;
    let max = z.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x * inv));
    let mut buf = [0f32; BLOCK];
    let mut sum = 0f64;
    for c in z.chunks(BLOCK) {
        let b = &mut buf[..c.len()];
        b.iter_mut().zip(c).for_each(|(o, &x)| *o = x * inv);
        sum += crate::cpu::kernels::exp_shifted(b, max) as f64;
    }
    sum.ln() + max as f64
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
        assert!((total - 1.0).abs() < 1e-6); // f32 exponentials inside logsumexp
                                             // A vocabulary-sized row against the same sum in f64 throughout.
        let big: Vec<f32> = (0..49_157).map(|i| ((i as f32) * 0.37).sin() * 12.0).collect();
        for t in [1.0f32, 2.0, 0.7] {
            let max = big.iter().fold(f64::NEG_INFINITY, |m, &x| m.max(x as f64 / t as f64));
            let sum: f64 = big.iter().map(|&x| (x as f64 / t as f64 - max).exp()).sum();
            let (got, want) = (logsumexp(&big, t), sum.ln() + max);
            assert!((got - want).abs() < 1e-6 * want.abs().max(1.0), "t {t}: {got} vs {want}");
        }
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
