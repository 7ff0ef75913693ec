//! Deterministic random weights (tests, and training from scratch): a pure function of the seed,
//! independent of thread count and platform.

use crate::{Config, Weights};
use candle_core::{Device, Result, Tensor};

/// SplitMix64 (Steele et al. 2014): tiny, fast, good enough for initialisation.
pub struct SplitMix64(pub u64);

impl SplitMix64 {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// `n` values uniform in [-scale, scale).
pub fn uniform_vec(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut r = SplitMix64(seed);
    (0..n).map(|_| ((r.next_f64() * 2.0 - 1.0) as f32) * scale).collect()
}

/// Random weights for `cfg`: matrices uniform with std `std`, norm weights around 1 (as applied:
/// Gemma stores them zero-centred and applies 1 + w, so its stored values are around 0).
pub fn random_weights(cfg: &Config, seed: u64, std: f32) -> Result<Weights> {
    let scale = std * 3f32.sqrt(); // uniform[-a, a] has std a/sqrt(3)
    let mut w = Weights::new();
    for (i, (name, shape)) in cfg.expected_tensors().into_iter().enumerate() {
        let n: usize = shape.iter().product();
        let s = seed.wrapping_mul(1_000_003).wrapping_add(i as u64);
        let v = if name.ends_with("norm.weight") {
            let centre = if cfg.norm_offset() { 0.0 } else { 1.0 };
            uniform_vec(n, s, 0.1).into_iter().map(|x| centre + x).collect()
        } else {
            uniform_vec(n, s, scale)
        };
        w.insert(name, Tensor::from_vec(v, shape, &Device::Cpu)?);
    }
    Ok(w)
}

/// Deterministic ids in [0, vocab): the same formula the PyTorch side of the benchmark uses.
pub fn bench_ids(n: usize, vocab: usize) -> Vec<u32> {
    (0..n).map(|i| ((i as u64 * 2_654_435_761 + 12_345) % vocab as u64) as u32).collect()
}
