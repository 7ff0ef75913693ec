//! DPO-family losses on one preference pair, from summed sequence log-probabilities.

use crate::AlignError;
use orlik_train::runner::{Micro, Task};
use orlik_train::seqlogp::{self, Rows};
use orlik_train::Executor;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum DpoLoss {
    Sigmoid,
    Ipo,
    Dpop,
}

/// Log-probabilities of the chosen (w) and rejected (l) answers under the policy and reference.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Pair {
    pub policy_chosen: f64,
    pub policy_rejected: f64,
    pub ref_chosen: f64,
    pub ref_rejected: f64,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DpoOut {
    pub loss: f64,
    /// dloss / d policy_chosen, dloss / d policy_rejected
    pub grad_chosen: f64,
    pub grad_rejected: f64,
    /// β (log π − log π_ref) of each answer: the implicit rewards DPO reports.
    pub reward_chosen: f64,
    pub reward_rejected: f64,
}

/// log σ(x), stable for large |x|.
fn log_sigmoid(x: f64) -> f64 {
    if x >= 0.0 {
        -(-x).exp().ln_1p()
    } else {
        x - x.exp().ln_1p()
    }
}

fn sigmoid(x: f64) -> f64 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

/// The loss of one pair. `lambda` is DPO-P's weight (ignored by the others).
pub fn dpo(p: &Pair, kind: DpoLoss, beta: f64, lambda: f64) -> DpoOut {
    let (cw, cl) = (p.policy_chosen - p.ref_chosen, p.policy_rejected - p.ref_rejected);
    let h = cw - cl;
    let (loss, g_w, g_l) = match kind {
        DpoLoss::Sigmoid => {
            // d/dh −log σ(βh) = −β σ(−βh)
            let d = -beta * sigmoid(-beta * h);
            (-log_sigmoid(beta * h), d, -d)
        }
        DpoLoss::Ipo => {
            let r = h - 1.0 / (2.0 * beta);
            (r * r, 2.0 * r, -2.0 * r)
        }
        DpoLoss::Dpop => {
            let gap = p.ref_chosen - p.policy_chosen; // > 0 when the chosen answer lost likelihood
            let penalty = lambda * gap.max(0.0);
            let z = beta * (h - penalty);
            let d = -beta * sigmoid(-z); // d loss / d (h − penalty)
                                         // d(h − penalty)/d π_w = 1 + λ [gap > 0]; d/d π_l = −1
            let dw = d * (1.0 + if gap > 0.0 { lambda } else { 0.0 });
            (-log_sigmoid(z), dw, -d)
        }
    };
    DpoOut {
        loss,
        grad_chosen: g_w,
        grad_rejected: g_l,
        reward_chosen: beta * cw,
        reward_rejected: beta * cl,
    }
}

/// Each pair's [chosen, rejected] summed log-probabilities, the training forward they came from
/// (None: no gradient asked for), and the answer-token masks of its rows.
pub type PairForward = (Vec<[f64; 2]>, Option<seqlogp::Forward>, Vec<Vec<bool>>);

/// One tokenised preference pair: the prompt and the two answers.
pub struct PairIds {
    pub prompt: Vec<u32>,
    pub chosen: Vec<u32>,
    pub rejected: Vec<u32>,
}

impl PairIds {
    /// Rows (inputs, targets) and response masks of the chosen and rejected sequences.
    fn rows(&self) -> [(Vec<u32>, Vec<u32>, Vec<bool>); 2] {
        [&self.chosen, &self.rejected].map(|ans| {
            let seq: Vec<u32> = self.prompt.iter().chain(ans.iter()).copied().collect();
            let mask = (1..seq.len()).map(|j| j >= self.prompt.len()).collect();
            (seq[..seq.len() - 1].to_vec(), seq[1..].to_vec(), mask)
        })
    }
}

/// Summed log-probabilities of each pair's chosen and rejected answers under `e`'s weights;
/// `grad` keeps the forward for a backward.
pub fn sequence_logps(
    e: &mut dyn Executor,
    pairs: &[PairIds],
    idx: &[usize],
    pad: u32,
    chunk: usize,
    grad: bool,
) -> Result<PairForward, AlignError> {
    let mut rows = Rows { inputs: Vec::new(), targets: Vec::new(), pad };
    let mut masks = Vec::new();
    for &i in idx {
        for (inp, tgt, m) in pairs[i].rows() {
            rows.inputs.push(inp);
            rows.targets.push(tgt);
            masks.push(m);
        }
    }
    let (logp, f) = if grad {
        let f = seqlogp::forward_train(e, &rows, chunk)?;
        (f.logp.clone(), Some(f))
    } else {
        (seqlogp::logp(e, &rows, chunk)?, None)
    };
    let sums = seqlogp::masked_sums(&logp, &masks);
    Ok((sums.chunks(2).map(|c| [c[0], c[1]]).collect(), f, masks))
}

/// DPO training on fixed pairs against cached reference log-probabilities.
pub struct DpoTask {
    pub pairs: Vec<PairIds>,
    /// Reference log π_ref(chosen), log π_ref(rejected) per pair.
    pub reference: Vec<[f64; 2]>,
    pub kind: DpoLoss,
    pub beta: f64,
    pub lambda: f64,
    pub pad: u32,
    pub chunk: usize,
}

impl Task for DpoTask {
    type Error = AlignError;

    fn units(&self) -> usize {
        self.pairs.len()
    }

    fn micro(
        &mut self,
        e: &mut dyn Executor,
        units: &[usize],
        _step: u64,
        scale: f32,
    ) -> Result<Micro, AlignError> {
        let (lp, f, masks) = sequence_logps(e, &self.pairs, units, self.pad, self.chunk, true)?;
        let f = f.ok_or_else(|| AlignError::Data("internal: no training forward".into()))?;
        let n = units.len() as f64;
        let (mut loss, mut rc, mut rr, mut acc, mut tokens) = (0.0, 0.0, 0.0, 0.0, 0u64);
        let mut coeff = Vec::with_capacity(masks.len());
        for (k, &u) in units.iter().enumerate() {
            let [rw, rl] = self.reference[u];
            let pair = Pair {
                policy_chosen: lp[k][0],
                policy_rejected: lp[k][1],
                ref_chosen: rw,
                ref_rejected: rl,
            };
            let o = dpo(&pair, self.kind, self.beta, self.lambda);
            loss += o.loss / n;
            rc += o.reward_chosen / n;
            rr += o.reward_rejected / n;
            acc += f64::from(u8::from(o.reward_chosen > o.reward_rejected)) / n;
            for (g, m) in [o.grad_chosen, o.grad_rejected].iter().zip(&masks[2 * k..2 * k + 2]) {
                tokens += m.iter().filter(|&&b| b).count() as u64;
                coeff.push(
                    m.iter()
                        .map(|&b| if b { (*g / n) as f32 * scale } else { 0.0 })
                        .collect::<Vec<f32>>(),
                );
            }
        }
        seqlogp::backward(e, f, &coeff, self.chunk)?;
        Ok(Micro {
            loss,
            tokens,
            metrics: vec![
                ("rewards_chosen", rc),
                ("rewards_rejected", rr),
                ("rewards_margin", rc - rr),
                ("rewards_accuracy", acc),
            ],
        })
    }

    fn curves(&self) -> &'static [&'static str] {
        &["rewards_accuracy", "rewards_margin"]
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
        let cases = v["dpo"].as_array().unwrap();
        assert!(cases.len() >= 9);
        for c in cases {
            let f = |k: &str| c[k].as_f64().unwrap();
            let p = Pair {
                policy_chosen: f("pc"),
                policy_rejected: f("pr"),
                ref_chosen: f("rc"),
                ref_rejected: f("rr"),
            };
            let kind: DpoLoss = serde_json::from_value(c["loss_type"].clone()).unwrap();
            let o = dpo(&p, kind, f("beta"), f("lambda"));
            for (got, want, what) in [
                (o.loss, f("loss"), "loss"),
                (o.grad_chosen, f("grad_pc"), "grad_pc"),
                (o.grad_rejected, f("grad_pr"), "grad_pr"),
            ] {
                assert!(
                    (got - want).abs() <= 1e-9 * (1.0 + want.abs()),
                    "{c}: {what} {got} vs {want}"
                );
            }
        }
    }

    #[test]
    fn dpop_equals_dpo_when_the_chosen_answer_gains_likelihood() {
        let p = Pair {
            policy_chosen: -10.0,
            policy_rejected: -12.0,
            ref_chosen: -11.0,
            ref_rejected: -11.5,
        };
        let (a, b) = (dpo(&p, DpoLoss::Sigmoid, 0.1, 0.0), dpo(&p, DpoLoss::Dpop, 0.1, 50.0));
        assert_eq!(a, b);
        let lost = Pair { policy_chosen: -12.0, ..p };
        assert!(
            dpo(&lost, DpoLoss::Dpop, 0.1, 50.0).loss > dpo(&lost, DpoLoss::Sigmoid, 0.1, 0.0).loss
        );
    }
}
