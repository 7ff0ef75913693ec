//! GRPO's objective on a batch of sampled completions, from per-token log-probabilities, and the
//! task that trains with it.

use crate::reward::Reward;
use crate::rollout::{sample_group, SampleOptions};
use crate::AlignError;
use orlik_model::Infer;
use orlik_train::runner::{Micro, Task};
use orlik_train::seqlogp::{self, Rows};
use orlik_train::Executor;
use rand::{rngs::StdRng, SeedableRng};

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
            let var = if g.len() > 1 {
                g.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / (n - 1.0)
            } else {
                0.0
            };
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

/// One GRPO prompt: its ids, the text they came from, the reference answer and the raw row
/// (given to an external reward command).
pub struct PromptRow {
    pub ids: Vec<u32>,
    pub text: String,
    pub answer: String,
    pub row: serde_json::Value,
}

/// Group Relative Policy Optimization on prompts with verifiable rewards. Each micro-batch
/// samples `group` completions per prompt from the current weights, scores them, and takes one
/// gradient step on the clipped objective (one update per rollout, so the ratio starts at 1 and
/// `clip_fraction` is 0; ε matters with stale rollouts, which this loop does not make).
pub struct GrpoTask<'a> {
    pub prompts: Vec<PromptRow>,
    pub rewards: Vec<Reward>,
    pub sampling: SampleOptions,
    pub options: GrpoOptions,
    /// Frozen reference for the KL term (only when β > 0).
    pub reference: Option<Box<dyn Infer>>,
    pub tokenizer: &'a tokenizers::Tokenizer,
    pub stop: Vec<u32>,
    pub seed: u64,
    pub chunk: usize,
    /// Completions written to OUT/samples.jsonl every `log_every` steps (0 = never).
    pub samples: Option<std::path::PathBuf>,
    pub log_every: u64,
}

impl Task for GrpoTask<'_> {
    type Error = AlignError;

    fn units(&self) -> usize {
        self.prompts.len()
    }

    fn micro(
        &mut self,
        e: &mut dyn Executor,
        units: &[usize],
        step: u64,
        scale: f32,
    ) -> Result<Micro, AlignError> {
        // Sampling runs on a copy of the current weights (the inference path).
        let policy = e.infer()?;
        let g = self.sampling.group.max(1);
        let mut rows = Rows {
            inputs: Vec::new(),
            targets: Vec::new(),
            pad: self.stop.first().copied().unwrap_or(0),
        };
        let (mut rewards, mut lens) = (Vec::new(), Vec::new());
        let mut log = Vec::new();
        for &u in units {
            let pr = &self.prompts[u];
            let mut rng = StdRng::seed_from_u64(
                self.seed
                    ^ (step + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)
                    ^ (u as u64).wrapping_mul(0xD1B5_4A32_D192_ED03),
            );
            let group =
                sample_group(policy.as_ref(), &pr.ids, &self.stop, &self.sampling, &mut rng)?;
            for c in group {
                let text = self
                    .tokenizer
                    .decode(&c, true)
                    .map_err(|e| AlignError::Data(format!("tokenizer: {e}")))?;
                let mut r = 0.0;
                for rw in &self.rewards {
                    r += rw.score(&pr.text, &text, &pr.answer, &pr.row)?;
                }
                if self.log_every > 0 && step.is_multiple_of(self.log_every) {
                    // step numbered as in metrics.jsonl: the optimizer step this rollout feeds
                    log.push(serde_json::json!({"step": step + 1, "prompt": u, "completion": text, "reward": r}));
                }
                rewards.push(r);
                lens.push(c.len());
                let seq: Vec<u32> = pr.ids.iter().chain(c.iter()).copied().collect();
                rows.inputs.push(seq[..seq.len() - 1].to_vec());
                rows.targets.push(seq[1..].to_vec());
            }
        }
        if self.samples.is_some() && self.log_every > 0 && step.is_multiple_of(self.log_every) {
            self.write_samples(&log)?;
        }
        let adv = advantages(&rewards, g, self.options.dr_grpo);
        let f = seqlogp::forward_train(e, &rows, self.chunk)?;
        let refs = match &self.reference {
            Some(m) => Some(seqlogp::frozen(m.as_ref(), &rows, self.chunk)?),
            None => None,
        };
        // log-probabilities of the completion tokens only
        let plen: Vec<usize> =
            units.iter().flat_map(|&u| std::iter::repeat_n(self.prompts[u].ids.len(), g)).collect();
        let comp = |l: &Vec<f64>, k: usize| l[plen[k] - 1..].to_vec();
        let news: Vec<Vec<f64>> = f.logp.iter().enumerate().map(|(k, l)| comp(l, k)).collect();
        let refv: Option<Vec<Vec<f64>>> =
            refs.map(|r| r.iter().enumerate().map(|(k, l)| comp(l, k)).collect());
        let cs: Vec<Completion> = (0..news.len())
            .map(|k| Completion {
                new: &news[k],
                old: &news[k],
                reference: refv.as_ref().map(|r| r[k].as_slice()),
                advantage: adv[k],
            })
            .collect();
        let out = grpo_loss(&cs, &self.options);
        let coeff: Vec<Vec<f32>> = out
            .grads
            .iter()
            .enumerate()
            .map(|(k, gr)| {
                let mut c = vec![0f32; plen[k] - 1];
                c.extend(gr.iter().map(|&x| x as f32 * scale));
                c
            })
            .collect();
        seqlogp::backward(e, f, &coeff, self.chunk)?;
        let n = rewards.len() as f64;
        let mean = rewards.iter().sum::<f64>() / n;
        let std = (rewards.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / n).sqrt();
        Ok(Micro {
            loss: out.loss,
            tokens: lens.iter().sum::<usize>() as u64,
            metrics: vec![
                ("reward_mean", mean),
                ("reward_std", std),
                ("kl", out.kl),
                ("completion_length", lens.iter().sum::<usize>() as f64 / n),
                ("clip_fraction", out.clip_fraction),
            ],
        })
    }

    fn on_resume(&mut self, step: u64) -> Result<(), AlignError> {
        if let (Some(p), true) = (&self.samples, orlik_dist::is_root()) {
            orlik_train::curves::truncate(p, step)?;
        }
        Ok(())
    }

    fn curves(&self) -> &'static [&'static str] {
        &["reward_mean", "completion_length"]
    }
}

impl GrpoTask<'_> {
    /// Append this micro-batch's completions to samples.jsonl. Under data parallel every rank
    /// calls it at the same micro-batches (the step decides) and rank 0 writes every rank's
    /// rows, in rank order.
    fn write_samples(&self, log: &[serde_json::Value]) -> Result<(), AlignError> {
        let Some(path) = &self.samples else { return Ok(()) };
        let mut lines = String::new();
        for row in log {
            lines += &row.to_string();
            lines.push('\n');
        }
        let world = orlik_dist::world();
        let all = if world.size() > 1 {
            world.gather_bytes(lines.as_bytes()).map_err(orlik_train::TrainError::from)?
        } else {
            lines.into_bytes()
        };
        if orlik_dist::is_root() {
            for line in String::from_utf8_lossy(&all).lines() {
                let row: serde_json::Value = serde_json::from_str(line)
                    .map_err(|e| AlignError::Data(format!("a rank's sample row: {e}")))?;
                orlik_train::curves::append(path, &row)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values and gradients from PyTorch autograd (scripts/gen_align_reference.py).
    #[test]
    fn matches_pytorch_reference() {
        let v: serde_json::Value =
            serde_json::from_str(include_str!("../../../tests/fixtures/align_losses.json"))
                .unwrap();
        let cases = v["grpo"].as_array().unwrap();
        assert!(cases.len() >= 4);
        let mut any_clipped = false;
        let vec = |x: &serde_json::Value| -> Vec<f64> {
            x.as_array().unwrap().iter().map(|y| y.as_f64().unwrap()).collect()
        };
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
                .map(|i| Completion {
                    new: &news[i],
                    old: &olds[i],
                    reference: Some(&refs[i]),
                    advantage: adv[i],
                })
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
            assert!(
                (out.loss - want).abs() <= 1e-9 * (1.0 + want.abs()),
                "{c}: loss {} vs {want}",
                out.loss
            );
            for (g, w) in out.grads.iter().zip(c["grads"].as_array().unwrap()) {
                for (a, b) in g.iter().zip(vec(w)) {
                    assert!((a - b).abs() <= 1e-9 * (1.0 + b.abs()), "grad {a} vs {b}");
                }
            }
        }
        assert!(
            any_clipped,
            "the reference must exercise both the clipped and the unclipped branch"
        );
    }

    #[test]
    fn equal_rewards_give_zero_advantage() {
        assert_eq!(advantages(&[1.0, 1.0, 0.0, 1.0], 2, false)[..2], [0.0, 0.0]);
        let a = advantages(&[1.0, 0.0], 2, true);
        assert_eq!(a, vec![0.5, -0.5]);
    }
}
