//! GRPO's objective on a batch of sampled completions, from per-token log-probabilities.

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GrpoOptions {
    /// Ratio clip below 1: 1 − eps_low.
    pub eps_low: f64,
    /// Ratio clip above 1: 1 + eps_high (DAPO's "clip higher"; = eps_low for plain GRPO).
    pub eps_high: f64,
    /// Weight of the k3 KL estimate to the reference (0 = none, the default of recent recipes).
    pub beta: f64,
    /// Dr. GRPO: advantages not divided by the group's std, and every completion's token sum
    /// divided by the constant `max_len` instead of its own length.
    pub dr_grpo: bool,
    pub max_len: usize,
}

/// Advantages of `rewards` laid out as consecutive groups of `group` samples of one prompt:
/// r − mean(group), divided by (std(group) + 1e-4) unless `dr_grpo` (unbiased std, as TRL).
pub fn advantages(rewards: &[f64], group: usize, dr_grpo: bool) -> Vec<f64> {
    rewards
        .chunks(group.max(1))
        .flat_map(|g| {
            let n = g.len() as f64;
            let mean = g.iter().sum::<f64>() / n;
            let var = if g.len() > 1 { g.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / (n - 1.0) } else { 0.0 };
            let scale = if dr_grpo { 1.0 } else { var.sqrt() + 1e-4 };
            g.iter().map(move |r| (r - mean) / scale)
        })
        .collect()
}

/// One completion: its tokens' log-probabilities under the policy being trained (`new`), the
/// policy that sampled it (`old`), optionally the reference, and its advantage.
pub struct Completion<'a> {
    pub new: &'a [f64],
    pub old: &'a [f64],
    pub reference: Option<&'a [f64]>,
    pub advantage: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct GrpoOut {
    pub loss: f64,
    /// dloss / d new[t], per completion.
    pub grads: Vec<Vec<f64>>,
    /// Mean k3 KL estimate per token (0 without a reference).
    pub kl: f64,
    /// Fraction of tokens whose clipped term was the active one.
    pub clip_fraction: f64,
}

/// Mean over completions of the per-completion token average (or Dr. GRPO's sum / max_len) of
/// −min(ρ A, clip(ρ) A) + β k3, with ρ = exp(new − old), k3 = exp(ref − new) − (ref − new) − 1.
pub fn grpo_loss(cs: &[Completion], o: &GrpoOptions) -> GrpoOut {
    let (mut loss, mut kl_sum, mut clipped, mut tokens) = (0.0, 0.0, 0usize, 0usize);
    let mut grads = Vec::with_capacity(cs.len());
    let n = cs.len().max(1) as f64;
    for c in cs {
        let len = c.new.len();
        let norm = if o.dr_grpo { o.max_len.max(1) as f64 } else { len.max(1) as f64 };
        let mut g = vec![0.0; len];
        for t in 0..len {
            let ratio = (c.new[t] - c.old[t]).exp();
            let clip = ratio.clamp(1.0 - o.eps_low, 1.0 + o.eps_high);
            let (a, b) = (ratio * c.advantage, clip * c.advantage);
            // the unclipped term carries the gradient unless the clipped one is strictly smaller
            let (obj, d) = if b < a { (b, 0.0) } else { (a, c.advantage * ratio) };
            clipped += usize::from(b < a);
            let mut per = -obj;
            let mut dt = -d;
            if let (Some(r), true) = (c.reference, o.beta != 0.0) {
                let x = r[t] - c.new[t];
                let k3 = x.exp() - x - 1.0;
                per += o.beta * k3;
                dt += o.beta * (1.0 - x.exp());
                kl_sum += k3;
            } else if let Some(r) = c.reference {
                let x = r[t] - c.new[t];
                kl_sum += x.exp() - x - 1.0;
            }
            loss += per / norm / n;
            g[t] = dt / norm / n;
            tokens += 1;
        }
        grads.push(g);
    }
    let t = tokens.max(1) as f64;
    GrpoOut { loss, grads, kl: kl_sum / t, clip_fraction: clipped as f64 / t }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values and gradients from PyTorch autograd (scripts/gen_align_reference.py).
    #[test]
    fn matches_pytorch_reference() {
        let v: serde_json::Value = serde_json::from_str(include_str!("../../../tests/fixtures/align_losses.json")).unwrap();
        let cases = v["grpo"].as_array().unwrap();
        assert!(cases.len() >= 4);
        let mut any_clipped = false;
        let vec = |x: &serde_json::Value| -> Vec<f64> { x.as_array().unwrap().iter().map(|y| y.as_f64().unwrap()).collect() };
        for c in cases {
            let rewards = vec(&c["rewards"]);
            let dr = c["dr_grpo"].as_bool().unwrap();
            let adv = advantages(&rewards, c["group"].as_u64().unwrap() as usize, dr);
            for (a, b) in adv.iter().zip(vec(&c["advantages"])) {
                assert!((a - b).abs() < 1e-9, "{c}: advantage {a} vs {b}");
            }
            let news: Vec<Vec<f64>> = c["new"].as_array().unwrap().iter().map(vec).collect();
            let olds: Vec<Vec<f64>> = c["old"].as_array().unwrap().iter().map(vec).collect();
            let refs: Vec<Vec<f64>> = c["ref"].as_array().unwrap().iter().map(vec).collect();
            let cs: Vec<Completion> = (0..news.len())
                .map(|i| Completion { new: &news[i], old: &olds[i], reference: Some(&refs[i]), advantage: adv[i] })
                .collect();
            let o = GrpoOptions {
                eps_low: c["eps_low"].as_f64().unwrap(),
                eps_high: c["eps_high"].as_f64().unwrap(),
                beta: c["beta"].as_f64().unwrap(),
                dr_grpo: dr,
                max_len: c["max_len"].as_u64().unwrap() as usize,
            };
            let out = grpo_loss(&cs, &o);
            any_clipped |= out.clip_fraction > 0.0 && out.clip_fraction < 1.0;
            let want = c["loss"].as_f64().unwrap();
            assert!((out.loss - want).abs() <= 1e-9 * (1.0 + want.abs()), "{c}: loss {} vs {want}", out.loss);
            for (g, w) in out.grads.iter().zip(c["grads"].as_array().unwrap()) {
                for (a, b) in g.iter().zip(vec(w)) {
                    assert!((a - b).abs() <= 1e-9 * (1.0 + b.abs()), "grad {a} vs {b}");
                }
            }
        }
        assert!(any_clipped, "the reference must exercise both the clipped and the unclipped branch");
    }

    #[test]
    fn equal_rewards_give_zero_advantage() {
        assert_eq!(advantages(&[1.0, 1.0, 0.0, 1.0], 2, false)[..2], [0.0, 0.0]);
        let a = advantages(&[1.0, 0.0], 2, true);
        assert_eq!(a, vec![0.5, -0.5]);
    }
}
