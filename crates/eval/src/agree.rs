//! How closely a student follows its teacher on text: per-token KL(teacher ‖ student) of the
//! next-token distributions and top-1 agreement (both predict the same most likely token). The two
//! models must share a vocabulary (the caller checks the tokenizers).

use crate::generate::argmax;
use crate::EvalError;
use candle_core::DType;
use orlik_model::infer::{Infer, Rows};
use orlik_model::prob::log_softmax;
use serde::Serialize;

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Agreement {
    /// Positions compared.
    pub tokens: usize,
    /// Mean KL(teacher ‖ student) per token, nats.
    pub kl: f64,
    /// Fraction of positions where the argmax tokens agree.
    pub top1: f64,
}

/// KL(p ‖ q) and whether the argmaxes agree, for one position's teacher and student logits.
pub fn compare_row(teacher: &[f32], student: &[f32]) -> (f64, bool) {
    let (lp, lq) = (log_softmax(teacher, 1.0), log_softmax(student, 1.0));
    let kl = orlik_model::prob::kl(&lp, &lq);
    (kl.max(0.0), argmax(teacher) == argmax(student))
}

/// Compare over consecutive windows of `context` tokens of `ids` (the last may be shorter); at
/// most `max_tokens` positions (0 = all). `progress(done, total)` after each window.
pub fn agreement(
    teacher: &dyn Infer,
    student: &dyn Infer,
    ids: &[u32],
    context: usize,
    max_tokens: usize,
    mut progress: impl FnMut(usize, usize),
) -> Result<Agreement, EvalError> {
    if teacher.config().vocab_size != student.config().vocab_size {
        return Err(EvalError::Input(format!(
            "teacher vocab_size {} != student vocab_size {}",
            teacher.config().vocab_size,
            student.config().vocab_size
        )));
    }
    if context == 0 || ids.is_empty() {
        return Err(EvalError::Input("no tokens to compare (empty text or context 0)".into()));
    }
    let n = if max_tokens == 0 { ids.len() } else { ids.len().min(max_tokens) };
    let (mut kl, mut agree, mut count) = (0.0, 0usize, 0usize);
    let mut s = 0;
    while s < n {
        let e = (s + context).min(n);
        let rows = Rows::new(&ids[s..e], 1, e - s);
        let lt = teacher.logits(rows, None)?.squeeze(0)?.to_dtype(DType::F32)?.to_vec2::<f32>()?; // (t, vocab)
        let ls = student.logits(rows, None)?.squeeze(0)?.to_dtype(DType::F32)?.to_vec2::<f32>()?;
        for (a, b) in lt.iter().zip(&ls) {
            let (k, same) = compare_row(a, b);
            kl += k;
            agree += usize::from(same);
            count += 1;
        }
        progress(e, n);
        s = e;
    }
    if !kl.is_finite() {
        return Err(EvalError::NonFinite(format!("KL(teacher || student) ({kl})")));
    }
    Ok(Agreement {
        tokens: count,
        kl: kl / count.max(1) as f64,
        top1: agree as f64 / count.max(1) as f64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kl_of_a_row_with_itself_is_zero_and_matches_the_definition() {
        let p = [1.0f32, 2.0, 0.5, -1.0];
        let (k, same) = compare_row(&p, &p);
        assert!(k.abs() < 1e-12 && same);
        let q = [2.0f32, 0.0, 0.5, -1.0];
        let (k, same) = compare_row(&p, &q);
        let sm = |v: &[f32]| {
            let z: f64 = v.iter().map(|&x| (x as f64).exp()).sum();
            v.iter().map(|&x| (x as f64).exp() / z).collect::<Vec<_>>()
        };
        let (pp, qq) = (sm(&p), sm(&q));
        let want: f64 = pp.iter().zip(&qq).map(|(a, b)| a * (a / b).ln()).sum();
        // The log-normalisers come from f32 exponentials (prob::logsumexp): ~1e-7 relative.
        assert!((k - want).abs() < 1e-6, "{k} vs {want}");
        assert!(!same);
    }
}
