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

/// `f` of the f32 values of `t` in row-major order: read in place where `t` is a contiguous f32
/// tensor on the CPU, else copied out first. Saves `eval ppl` a 50 MB copy per (256, 49152) chunk
/// of logits; its speed did not change measurably (2026-12-07, 3 alternating runs), the copy was
/// not where its time goes.
pub fn with_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Result<R> {
    {
        let (storage, layout) = t.storage_and_layout();
        let cpu = match &*storage {
            candle_core::Storage::Cpu(candle_core::CpuStorage::F32(v)) => Some(v),
            _ => None,
        };
        if let (Some(v), Some((a, b))) = (cpu, layout.contiguous_offsets()) {
            return Ok(f(&v[a..b]));
        }
    }
    let v = t.to_dtype(candle_core::DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    Ok(f(&v))
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
    /// In place or copied (strided, another dtype), the same values in the same order.
    #[test]
    fn with_f32_sees_the_values_in_row_major_order() {
        let dev = &candle_core::Device::Cpu;
        let t = Tensor::arange(0f32, 12.0, dev).unwrap().reshape((3, 4)).unwrap();
        let want: Vec<f32> = (0..12).map(|i| i as f32).collect();
        assert_eq!(super::with_f32(&t, |v| v.to_vec()).unwrap(), want);
        // a narrowed view: offsets into the shared storage
        let row = t.narrow(0, 1, 2).unwrap();
        assert_eq!(super::with_f32(&row, |v| v.to_vec()).unwrap(), want[4..].to_vec());
        // strided (transposed) and bf16: copied out, still row-major
        let tt = t.t().unwrap();
        let got = super::with_f32(&tt, |v| v.to_vec()).unwrap();
        assert_eq!(got, vec![0., 4., 8., 1., 5., 9., 2., 6., 10., 3., 7., 11.]);
        let b = t.to_dtype(candle_core::DType::BF16).unwrap();
        assert_eq!(super::with_f32(&b, |v| v.to_vec()).unwrap(), want);
    }

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
