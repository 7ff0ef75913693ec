//! Distillation and language-model losses as pure functions of one row of logits, returning the
//! loss and its gradient with respect to the student's logits (no autograd graph over the
//! vocabulary: the trainer pushes the gradient back through lm_head itself, chunk by chunk, so
//! full-vocabulary KD over 49k tokens fits in memory).
//!
//! The teacher side of a row is a distribution over *buckets*: either every token (full
//! vocabulary) or the teacher's top-k tokens plus one tail bucket holding the remaining mass
//! (so the remainder is not ignored: the student's tail bucket is the sum of its probabilities
//! outside the top-k). With u = z / T, s = softmax(u), S_b the student mass of bucket b and
//! a_b = S_b · dL/dS_b, the chain rule through softmax gives
//!     dL/du_j = (s_j / S_b(j)) · a_b(j) − s_j · Σ_b a_b,
//! and the temperature convention of Hinton et al. (2015) scales the loss by T², so
//! dL/dz = T · dL/du.
//!
//! - forward KL (teacher‖student): Σ P_b log(P_b / S_b),                 a_b = −P_b
//! - reverse KL (student‖teacher): Σ S_b log(S_b / P_b),                 a_b = S_b (log S_b − log P_b + 1)
//! - generalised JSD(β) (Agarwal et al. 2024, GKD): with M = β P + (1 − β) S,
//!   β KL(P‖M) + (1 − β) KL(S‖M),                                        a_b = (1 − β) S_b log(S_b / M_b)
//! - cross-entropy on the true next token at temperature 1 (optional mix, weight w).
//!
//! Checked against PyTorch autograd by `scripts/gen_loss_reference.py` (tests/fixtures/losses.json).

use serde::{Deserialize, Serialize};

/// Which divergence to minimise.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KdLoss {
    Fkl,
    Rkl,
    Jsd,
}

impl std::str::FromStr for KdLoss {
    type Err = String;
    fn from_str(s: &str) -> Result<KdLoss, String> {
        match s {
            "fkl" => Ok(KdLoss::Fkl),
            "rkl" => Ok(KdLoss::Rkl),
            "jsd" => Ok(KdLoss::Jsd),
            _ => Err(format!("unknown loss {s:?} (fkl, rkl, jsd)")),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct KdSpec {
    pub loss: KdLoss,
    pub temperature: f32,
    /// β of the generalised JSD (0 < β < 1).
    pub beta: f32,
    /// Weight of the cross-entropy term added to the KD term.
    pub ce_weight: f32,
}

/// The teacher's distribution for one position, at the distillation temperature.
#[derive(Debug, Clone, Copy)]
pub enum TeacherRow<'a> {
    /// Log-probabilities over the whole vocabulary.
    Full(&'a [f32]),
    /// Top-k token ids, their log-probabilities, and the probability mass of all other tokens.
    TopK { ids: &'a [u32], logp: &'a [f32], tail: f32 },
}

/// Loss terms of one row (unweighted).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RowLoss {
    /// The KD divergence, T²-scaled.
    pub kd: f64,
    /// Cross-entropy of the true next token (T = 1); 0 when there is no target.
    pub ce: f64,
}

/// Smallest teacher probability used inside logarithms where the teacher may give a bucket zero
/// mass (reverse KL would be infinite): e^-69 ≈ 1e-30.
const LOG_FLOOR: f64 = -69.0;

/// log-softmax of `z / t` in f64 (one implementation for every crate: `orlik_model::prob`).
pub use orlik_model::prob::log_softmax;

/// Top-k of log-probabilities (descending, ties by lower id) and the mass of the rest.
pub fn top_k(logp: &[f64], k: usize) -> (Vec<u32>, Vec<f32>, f32) {
    let mut idx: Vec<u32> = (0..logp.len() as u32).collect();
    let k = k.min(logp.len());
    let cmp = |a: &u32, b: &u32| logp[*b as usize].total_cmp(&logp[*a as usize]).then(a.cmp(b));
    if k < idx.len() {
        idx.select_nth_unstable_by(k, cmp);
        idx.truncate(k);
    }
    idx.sort_by(cmp);
    let mut is_in = vec![false; logp.len()];
    for &i in &idx {
        is_in[i as usize] = true;
    }
    // Sum the rest directly rather than 1 - inside, which cancels catastrophically.
    let tail: f64 = logp.iter().zip(&is_in).filter(|(_, &i)| !i).map(|(l, _)| l.exp()).sum();
    let lp = idx.iter().map(|&i| logp[i as usize] as f32).collect();
    (idx, lp, tail as f32)
}

/// Per-bucket divergence term and a_b = S_b · dL/dS_b, from log S_b and log P_b and the
/// probabilities themselves, s = e^ls and p = e^lp (the caller has them from vectorised
/// exponentials: two libm calls per vocabulary entry here were a tenth of a KD step).
fn bucket(loss: KdLoss, beta: f64, (ls, s): (f64, f64), (lp, p): (f64, f64)) -> (f64, f64) {
    match loss {
        KdLoss::Fkl => {
            let term = if p > 0.0 { p * (lp - ls) } else { 0.0 };
            (term, -p)
        }
        KdLoss::Rkl => {
            if s == 0.0 {
                return (0.0, 0.0);
            }
            let lp = lp.max(LOG_FLOOR);
            (s * (ls - lp), s * (ls - lp + 1.0))
        }
        KdLoss::Jsd => {
            let m = beta * p + (1.0 - beta) * s;
            if m == 0.0 {
                return (0.0, 0.0);
            }
            let lm = m.ln();
            let tp = if p > 0.0 { beta * p * (lp - lm) } else { 0.0 };
            let ts = if s > 0.0 { (1.0 - beta) * s * (ls - lm) } else { 0.0 };
            (tp + ts, if s > 0.0 { (1.0 - beta) * s * (ls - lm) } else { 0.0 })
        }
    }
}

/// Loss of one row of student logits `z` (vocab) against the teacher row and the optional true
/// next token; writes dL/dz (already multiplied by `scale`) into `grad`.
///
/// One exponential per vocabulary entry on the student side: e_j = exp(u_j − max u) is kept (in
/// `grad`, before it is overwritten) and every student quantity derives from it; sums are f64.
pub fn row_loss(
    z: &[f32],
    teacher: Option<TeacherRow>,
    target: Option<u32>,
    spec: &KdSpec,
    scale: f32,
    grad: &mut [f32],
) -> RowLoss {
    let v = z.len();
    let t = spec.temperature as f64;
    let inv_t = 1.0 / spec.temperature;
    let beta = spec.beta as f64;
    let max = z.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x * inv_t));
    grad.iter_mut().zip(z).for_each(|(e, &x)| *e = x * inv_t);
    let zsum = orlik_model::cpu::kernels::exp_shifted(grad, max) as f64; // e_j = exp(u_j − max u)
    let log_z = zsum.ln() + max as f64; // u_j - log_z = log s_j
    let inv_zsum = 1.0 / zsum;
    let mut out = RowLoss::default();
    // dL/dz_j = T · (c_j − s_j · Σa) for the KD part, with c_j set per bucket kind below.
    let mut kd_sum_a = 0f64;
    let mut bucket_terms: Vec<(usize, f64)> = Vec::new(); // top-k: (token, a_b)
    let mut tail_factor = 0f64; // top-k: a_tail / S_tail, applied to tokens outside the top-k
    let mut in_k: Vec<bool> = Vec::new();
    let mut full_a: Vec<f32> = Vec::new();
    if let Some(teacher) = teacher {
        let mut kd = 0.0;
        match teacher {
            TeacherRow::Full(lp) => {
                full_a = vec![0f32; v];
                let mut p = lp.to_vec();
                orlik_model::cpu::kernels::exp_shifted(&mut p, 0.0); // the teacher's probabilities
                for j in 0..v {
                    let ls = (z[j] * inv_t) as f64 - log_z;
                    let s = grad[j] as f64 * inv_zsum;
                    let (term, aj) = bucket(spec.loss, beta, (ls, s), (lp[j] as f64, p[j] as f64));
                    kd += term;
                    full_a[j] = aj as f32;
                    kd_sum_a += aj;
                }
            }
            TeacherRow::TopK { ids, logp, tail } => {
                in_k = vec![false; v];
                for (&id, &lp) in ids.iter().zip(logp) {
                    let j = id as usize;
                    in_k[j] = true;
                    let ls = (z[j] * inv_t) as f64 - log_z;
                    let s = grad[j] as f64 * inv_zsum;
                    let (term, aj) =
                        bucket(spec.loss, beta, (ls, s), (lp as f64, (lp as f64).exp()));
                    kd += term;
                    bucket_terms.push((j, aj));
                    kd_sum_a += aj;
                }
                // Student tail mass, summed directly (no cancellation): Σ_{j∉K} e_j / Z.
                let rest: f64 =
                    grad.iter().zip(&in_k).filter(|(_, &k)| !k).map(|(&e, _)| e as f64).sum();
                let ls_tail =
                    if rest > 0.0 { rest.ln() + max as f64 - log_z } else { f64::NEG_INFINITY };
                let lp_tail = if tail > 0.0 { (tail as f64).ln() } else { f64::NEG_INFINITY };
                let (term, a_tail) = if rest <= 0.0 && tail <= 0.0 {
                    (0.0, 0.0)
                } else {
                    bucket(spec.loss, beta, (ls_tail, rest * inv_zsum), (lp_tail, tail as f64))
                };
                kd += term;
                kd_sum_a += a_tail;
                tail_factor = if rest > 0.0 { a_tail / (rest * inv_zsum) } else { 0.0 };
            }
        }
        out.kd = kd * t * t;
    }
    // CE at temperature 1: s¹ = softmax(z); equal to s when T = 1.
    let ce_w = spec.ce_weight as f64;
    let (ce_max, ce_log_z) = if spec.temperature == 1.0 {
        (max, log_z)
    } else {
        let m = z.iter().fold(f32::NEG_INFINITY, |a, &x| a.max(x));
        (m, z.iter().map(|&x| ((x - m) as f64).exp()).sum::<f64>().ln() + m as f64)
    };
    if let Some(y) = target {
        out.ce = ce_log_z - z[y as usize] as f64;
    }
    let has_teacher = teacher.is_some();
    let ce_on = target.is_some() && ce_w != 0.0;
    let sc = scale as f64;
    for j in 0..v {
        let s = grad[j] as f64 * inv_zsum;
        let mut g = 0.0;
        if has_teacher {
            let c = if !full_a.is_empty() {
                full_a[j] as f64
            } else if in_k[j] {
                0.0 // set below from bucket_terms
            } else {
                s * tail_factor
            };
            g = t * (c - s * kd_sum_a);
        }
        if ce_on {
            let s1 = if spec.temperature == 1.0 {
                s
            } else {
                ((z[j] - ce_max) as f64).exp() / (ce_log_z - ce_max as f64).exp()
            };
            g += ce_w * s1;
        }
        grad[j] = (g * sc) as f32;
    }
    for (j, aj) in bucket_terms {
        grad[j] += (t * aj * sc) as f32;
    }
    if ce_on {
        if let Some(y) = target {
            grad[y as usize] -= (ce_w * sc) as f32;
        }
    }
    out
}

/// The total a row contributes: KD + w · CE (or CE alone when there is no teacher).
pub fn total(r: &RowLoss, spec: &KdSpec, has_teacher: bool) -> f64 {
    if has_teacher {
        r.kd + spec.ce_weight as f64 * r.ce
    } else {
        r.ce
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(loss: KdLoss, t: f32) -> KdSpec {
        KdSpec { loss, temperature: t, beta: 0.5, ce_weight: 0.0 }
    }

    fn numeric(z: &[f32], f: &dyn Fn(&[f32]) -> f64) -> Vec<f64> {
        (0..z.len())
            .map(|j| {
                let h = 1e-3f32;
                let mut a = z.to_vec();
                a[j] += h;
                let mut b = z.to_vec();
                b[j] -= h;
                (f(&a) - f(&b)) / (2.0 * h as f64)
            })
            .collect()
    }

    #[test]
    fn gradients_match_finite_differences_for_every_loss_full_and_topk() {
        let z: Vec<f32> = (0..7).map(|i| ((i * 37 % 11) as f32 - 5.0) * 0.4).collect();
        let zt: Vec<f32> = (0..7).map(|i| ((i * 13 % 7) as f32 - 3.0) * 0.6).collect();
        for loss in [KdLoss::Fkl, KdLoss::Rkl, KdLoss::Jsd] {
            for t in [1.0f32, 2.0] {
                let mut sp = spec(loss, t);
                sp.ce_weight = 0.3;
                let lp: Vec<f32> = log_softmax(&zt, t).iter().map(|&x| x as f32).collect();
                let (ids, tlp, tail) = top_k(&log_softmax(&zt, t), 3);
                for row in [TeacherRow::Full(&lp), TeacherRow::TopK { ids: &ids, logp: &tlp, tail }]
                {
                    let mut g = vec![0f32; 7];
                    row_loss(&z, Some(row), Some(2), &sp, 1.0, &mut g);
                    let f = |zz: &[f32]| {
                        let mut gg = vec![0f32; 7];
                        total(&row_loss(zz, Some(row), Some(2), &sp, 1.0, &mut gg), &sp, true)
                    };
                    for (a, b) in g.iter().zip(numeric(&z, &f)) {
                        assert!((*a as f64 - b).abs() < 2e-3, "{loss:?} T={t} {row:?}: {a} vs {b}");
                    }
                }
            }
        }
    }

    #[test]
    fn topk_with_every_token_equals_full_and_identical_rows_give_zero() {
        let z: Vec<f32> = (0..9).map(|i| (i as f32 * 0.7).sin() * 3.0).collect();
        let zt: Vec<f32> = (0..9).map(|i| (i as f32 * 0.3).cos() * 2.0).collect();
        for loss in [KdLoss::Fkl, KdLoss::Rkl, KdLoss::Jsd] {
            let sp = spec(loss, 1.5);
            let lp64 = log_softmax(&zt, 1.5);
            let lp: Vec<f32> = lp64.iter().map(|&x| x as f32).collect();
            let (ids, tlp, tail) = top_k(&lp64, 9);
            assert_eq!(tail, 0.0);
            let (mut g1, mut g2) = (vec![0f32; 9], vec![0f32; 9]);
            let a = row_loss(&z, Some(TeacherRow::Full(&lp)), None, &sp, 1.0, &mut g1);
            let b = row_loss(
                &z,
                Some(TeacherRow::TopK { ids: &ids, logp: &tlp, tail }),
                None,
                &sp,
                1.0,
                &mut g2,
            );
            assert!((a.kd - b.kd).abs() < 1e-6, "{loss:?}");
            for (x, y) in g1.iter().zip(&g2) {
                assert!((x - y).abs() < 1e-6);
            }
            let own: Vec<f32> = log_softmax(&z, 1.5).iter().map(|&x| x as f32).collect();
            let c = row_loss(&z, Some(TeacherRow::Full(&own)), None, &sp, 1.0, &mut g1);
            assert!(c.kd.abs() < 1e-6 && g1.iter().all(|x| x.abs() < 1e-6), "{loss:?} {c:?}");
        }
    }
}

#[cfg(test)]
mod reference {
    use super::*;

    /// Every case of tests/fixtures/losses.json (PyTorch autograd, float64; generated by
    /// scripts/gen_loss_reference.py): loss value and gradient.
    #[test]
    fn losses_and_gradients_match_pytorch() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures/losses.json");
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let cases = v["cases"].as_array().unwrap();
        assert_eq!(cases.len(), 24);
        let f32s = |x: &serde_json::Value| {
            x.as_array().unwrap().iter().map(|y| y.as_f64().unwrap() as f32).collect::<Vec<f32>>()
        };
        for c in cases {
            let spec = KdSpec {
                loss: c["loss"].as_str().unwrap().parse().unwrap(),
                temperature: c["temperature"].as_f64().unwrap() as f32,
                beta: c["beta"].as_f64().unwrap() as f32,
                ce_weight: c["ce_weight"].as_f64().unwrap() as f32,
            };
            let zs = f32s(&c["z_student"]);
            let lt = log_softmax(&f32s(&c["z_teacher"]), spec.temperature);
            let full: Vec<f32> = lt.iter().map(|&x| x as f32).collect();
            let k = c["topk"].as_u64().unwrap() as usize;
            let (ids, tlp, tail) = top_k(&lt, k);
            let row = if k == 0 {
                TeacherRow::Full(&full)
            } else {
                TeacherRow::TopK { ids: &ids, logp: &tlp, tail }
            };
            let mut g = vec![0f32; zs.len()];
            let r = row_loss(
                &zs,
                Some(row),
                Some(c["target"].as_u64().unwrap() as u32),
                &spec,
                1.0,
                &mut g,
            );
            let want = c["kd"].as_f64().unwrap();
            assert!(
                (r.kd - want).abs() <= 1e-5 * want.abs().max(1.0),
                "{c}: kd {} vs {want}",
                r.kd
            );
            assert!((r.ce - c["ce"].as_f64().unwrap()).abs() < 1e-5);
            for (a, b) in g.iter().zip(f32s(&c["grad"])) {
                assert!((a - b).abs() < 2e-5, "{}: grad {a} vs {b}", c["loss"]);
            }
        }
    }
}
