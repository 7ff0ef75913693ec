//! Llama-3 RoPE scaling both ways: the per-pair frequency factors llama.cpp stores as the
//! `rope_freqs.weight` tensor (convert_hf_to_gguf.py, LlamaModel.generate_extra_tensors), and
//! the `rope_scaling` parameters they came from.
//!
//! The factors only determine `original_max_position_embeddings / low_freq_factor` and
//! `original_max_position_embeddings / high_freq_factor` (the two wavelength bounds), so the
//! inversion tries, in order: the parameters orlik's export records (`orlik.rope_scaling`),
//! Llama 3.x's published ones (low 1, high 4, original 8192), low 1 / high 4 with the original
//! context solved from the blended pairs, and a two-parameter fit with low 1. The first whose
//! factors equal the stored ones (to f32 rounding) is taken; none is an error naming the factors.

use orlik_model::config::Llama3Scaling;
use serde_json::{json, Value};

/// Factors for `head_dim / 2` rotary pairs at RoPE base `base`.
pub fn factors(s: &Llama3Scaling, head_dim: usize, base: f64) -> Vec<f32> {
    let low_wavelen = s.original_max_position_embeddings / s.low_freq_factor;
    let high_wavelen = s.original_max_position_embeddings / s.high_freq_factor;
    (0..head_dim / 2)
        .map(|i| {
            let wavelen = wavelength(i, head_dim, base);
            let f = if wavelen < high_wavelen {
                1.0
            } else if wavelen > low_wavelen {
                s.factor
            } else {
                let smooth = (s.original_max_position_embeddings / wavelen - s.low_freq_factor)
                    / (s.high_freq_factor - s.low_freq_factor);
                1.0 / ((1.0 - smooth) / s.factor + smooth)
            };
            f as f32
        })
        .collect()
}

fn wavelength(i: usize, head_dim: usize, base: f64) -> f64 {
    // llama.cpp computes the frequencies in f32 (torch.float32), then the wavelength in f64
    let freq = 1.0 / (base as f32).powf((2 * i) as f32 / head_dim as f32);
    2.0 * std::f64::consts::PI / freq as f64
}

fn same(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() <= 1e-5 * x.abs().max(1.0))
}

/// The `rope_scaling` value whose factors are `stored` (`Ok(None)`: all ones, no scaling).
pub fn invert(
    stored: &[f32],
    head_dim: usize,
    base: f64,
    recorded: Option<&str>,
) -> Result<Option<Value>, String> {
    if stored.len() != head_dim / 2 {
        return Err(format!(
            "rope_freqs has {} factors, head_dim {head_dim} needs {}",
            stored.len(),
            head_dim / 2
        ));
    }
    if stored.iter().all(|&f| f == 1.0) {
        return Ok(None);
    }
    let factor = stored.iter().fold(1f32, |m, &f| m.max(f)) as f64;
    let mut tries: Vec<Llama3Scaling> = Vec::new();
    if let Some(s) = recorded.and_then(|r| serde_json::from_str::<Value>(r).ok()) {
        let f = |k: &str| s.get(k).and_then(Value::as_f64);
        if let (Some(factor), Some(low), Some(high), Some(orig)) = (
            f("factor"),
            f("low_freq_factor"),
            f("high_freq_factor"),
            f("original_max_position_embeddings"),
        ) {
            tries.push(Llama3Scaling {
                factor,
                low_freq_factor: low,
                high_freq_factor: high,
                original_max_position_embeddings: orig,
            });
        }
    }
    let canon = |orig: f64| Llama3Scaling {
        factor,
        low_freq_factor: 1.0,
        high_freq_factor: 4.0,
        original_max_position_embeddings: orig,
    };
    tries.push(canon(8192.0));
    // Blended pairs: smooth s = (1/f - 1/F) / (1 - 1/F) = (L / wavelen - low) / (high - low).
    let blended: Vec<(f64, f64)> = stored
        .iter()
        .enumerate()
        .filter(|(_, &f)| f > 1.0 && (f as f64) < factor * (1.0 - 1e-6))
        .map(|(i, &f)| {
            let s = (1.0 / f as f64 - 1.0 / factor) / (1.0 - 1.0 / factor);
            (s, wavelength(i, head_dim, base))
        })
        .collect();
    if !blended.is_empty() {
        // low 1, high 4: L = wavelen (3 s + 1), averaged over the pairs
        let l =
            blended.iter().map(|(s, w)| w * (3.0 * s + 1.0)).sum::<f64>() / blended.len() as f64;
        tries.push(canon(l.round()));
        tries.push(canon(l));
    }
    if blended.len() >= 2 {
        // low 1: s (high - 1) = L / wavelen - 1, linear in (high, L): least squares
        let (mut a11, mut a12, mut a22, mut b1, mut b2) = (0.0, 0.0, 0.0, 0.0, 0.0);
        for (s, w) in &blended {
            let (x1, x2, y) = (*s, -1.0 / w, s - 1.0);
            a11 += x1 * x1;
            a12 += x1 * x2;
            a22 += x2 * x2;
            b1 += x1 * y;
            b2 += x2 * y;
        }
        let det = a11 * a22 - a12 * a12;
        if det.abs() > 1e-30 {
            let high = (b1 * a22 - b2 * a12) / det;
            let orig = (a11 * b2 - a12 * b1) / det;
            tries.push(Llama3Scaling {
                factor,
                low_freq_factor: 1.0,
                high_freq_factor: high,
                original_max_position_embeddings: orig,
            });
        }
    }
    let hit = tries.into_iter().find(|s| same(&factors(s, head_dim, base), stored));
    match hit {
        Some(s) => Ok(Some(
            json!({"rope_type": "llama3", "factor": s.factor, "low_freq_factor": s.low_freq_factor,
            "high_freq_factor": s.high_freq_factor, "original_max_position_embeddings": s.original_max_position_embeddings}),
        )),
        None => Err(format!(
            "rope_freqs factors {stored:?} fit no known RoPE scaling (Llama 3's llama3 formula)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llama_3_factors_invert_to_parameters_that_regenerate_them() {
        // Llama 3.1 8B (factor 8, base 500000, head_dim 128) and 3.2 (factor 32).
        for factor in [8.0, 32.0] {
            let s = Llama3Scaling {
                factor,
                low_freq_factor: 1.0,
                high_freq_factor: 4.0,
                original_max_position_embeddings: 8192.0,
            };
            let f = factors(&s, 128, 500_000.0);
            assert!(f.iter().any(|&x| x > 1.0 && (x as f64) < factor), "some pairs blend");
            let v = invert(&f, 128, 500_000.0, None).unwrap().unwrap();
            assert_eq!(v["original_max_position_embeddings"], 8192.0);
            assert_eq!(v["factor"], factor);
        }
        // Other parameters (low 1, high 2, original 4096): found by the fit, same factors.
        let s = Llama3Scaling {
            factor: 4.0,
            low_freq_factor: 1.0,
            high_freq_factor: 2.0,
            original_max_position_embeddings: 4096.0,
        };
        let f = factors(&s, 128, 10_000.0);
        let v = invert(&f, 128, 10_000.0, None).unwrap().unwrap();
        let back = Llama3Scaling {
            factor: v["factor"].as_f64().unwrap(),
            low_freq_factor: v["low_freq_factor"].as_f64().unwrap(),
            high_freq_factor: v["high_freq_factor"].as_f64().unwrap(),
            original_max_position_embeddings: v["original_max_position_embeddings"]
                .as_f64()
                .unwrap(),
        };
        assert!(same(&factors(&back, 128, 10_000.0), &f));
        assert_eq!(invert(&[1.0; 4], 8, 10_000.0, None).unwrap(), None);
        let e = invert(&[1.0, 3.0, 1.5, 2.0], 8, 10_000.0, None).unwrap_err();
        assert!(
            e.contains("fit no known RoPE scaling") && e.contains("[1.0, 3.0, 1.5, 2.0]"),
            "{e}"
        );
    }
}
