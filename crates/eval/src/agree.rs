//! How closely a student follows its teacher on text: per-token KL(teacher ‖ student) of the
//! next-token distributions and top-1 agreement (both predict the same most likely token). The two
//! models share a vocabulary, or the student's is a subset of the teacher's (`orlik trim-vocab`):
//! then the teacher reads the same token strings by its own ids and its distribution is taken
//! over the student's tokens (its logits at those ids, renormalised), as distillation does.

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

/// Compare over consecutive windows of `context` tokens of `ids` (student ids; the last window
/// may be shorter); at most `max_tokens` positions (0 = all). `map`: each student id's teacher
/// id when the vocabularies differ (`orlik_io::tokenizer::id_map`). `progress(done, total)`
/// after each window.
pub fn agreement(
    teacher: &dyn Infer,
    student: &dyn Infer,
    ids: &[u32],
    map: Option<&[u32]>,
    context: usize,
    max_tokens: usize,
    mut progress: impl FnMut(usize, usize),
) -> Result<Agreement, EvalError> {
    if let Some(m) = map {
        if m.len() != student.config().vocab_size {
            return Err(EvalError::Input(format!(
                "vocabulary map of {} ids for a student vocab_size {}",
                m.len(),
                student.config().vocab_size
            )));
        }
    } else if teacher.config().vocab_size != student.config().vocab_size {
        return Err(EvalError::Input(format!(
            "teacher vocab_size {} != student vocab_size {}",
            teacher.config().vocab_size,
            student.config().vocab_size
        )));
    }
    if context == 0 || ids.is_empty() {
        return Err(EvalError::Input("no tokens to compare (empty text or context 0)".into()));
    }
    // A trimmed student's tokens only of the teacher's head, where its executor can (a ninth of
    // Gemma's 262k-token head for a 30k student); else the whole head, then the columns.
    let sub = match map {
        Some(m) => teacher.head_subset(m)?,
        None => None,
    };
    let n = if max_tokens == 0 { ids.len() } else { ids.len().min(max_tokens) };
    let (mut kl, mut agree, mut count) = (0.0, 0usize, 0usize);
    let mut s = 0;
    while s < n {
        let e = (s + context).min(n);
        let rows = Rows::new(&ids[s..e], 1, e - s);
        let t_ids: Vec<u32> = match map {
            Some(m) => ids[s..e].iter().map(|&i| m[i as usize]).collect(),
            None => ids[s..e].to_vec(),
        };
        let t_rows = Rows::new(&t_ids, 1, e - s);
        // (t, student vocab): the teacher's logits of the student's tokens
        let lt = match (&sub, map) {
            (Some(head), _) => head(&teacher.hidden(t_rows, None)?)?.squeeze(0)?,
            (None, _) => teacher.logits(t_rows, None)?.squeeze(0)?, // (t, teacher vocab)
        };
        let mut lt = lt.to_dtype(DType::F32)?.to_vec2::<f32>()?;
        if let (None, Some(m)) = (&sub, map) {
            lt = lt.iter().map(|r| m.iter().map(|&j| r[j as usize]).collect()).collect();
        }
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

    /// A student that is the teacher with part of its vocabulary (embedding and lm_head rows
    /// of the kept ids, as `orlik trim-vocab` makes) agrees with it completely through the map:
    /// the teacher reads the same tokens by its own ids, its logits are taken at the kept ids.
    #[test]
    fn a_vocabulary_subset_of_the_teacher_agrees_with_it_through_the_map() {
        use orlik_model::{Model, ModelOptions};
        let cfg = orlik_model::testing::tiny(
            "LlamaForCausalLM",
            serde_json::json!({"num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 4,
                "tie_word_embeddings": false}),
        );
        let w = orlik_model::init::random_weights(&cfg, 4, 0.5).unwrap();
        let teacher = Model::new(&cfg, &w, ModelOptions::default()).unwrap();
        let keep: Vec<u32> = vec![0, 2, 3, 5, 7, 8, 11, 12];
        let idx = candle_core::Tensor::new(keep.as_slice(), &candle_core::Device::Cpu).unwrap();
        let mut sw = w.clone();
        for n in ["model.embed_tokens.weight", "lm_head.weight"] {
            sw.insert(n.into(), w[n].index_select(&idx, 0).unwrap());
        }
        let mut scfg = cfg.clone();
        scfg.vocab_size = keep.len();
        let student = Model::new(&scfg, &sw, ModelOptions::default()).unwrap();
        let ids: Vec<u32> = vec![1, 4, 0, 7, 2, 6, 3, 5, 1];
        let a = agreement(&teacher, &student, &ids, Some(&keep), 4, 0, |_, _| {}).unwrap();
        assert_eq!((a.tokens, a.top1), (9, 1.0));
        assert!(a.kl < 1e-6, "{a:?}");
        let e = agreement(&teacher, &student, &ids, None, 4, 0, |_, _| {}).unwrap_err();
        assert!(e.to_string().contains("vocab_size"), "{e}");
        // A teacher whose executor has no subset head: its whole head, then the columns, the
        // same figures as the subset head's.
        let whole = agreement(&NoSubset(&teacher), &student, &ids, Some(&keep), 4, 0, |_, _| {});
        let whole = whole.unwrap();
        assert_eq!((whole.tokens, whole.top1), (a.tokens, a.top1));
        assert!((whole.kl - a.kl).abs() < 1e-9, "{whole:?} vs {a:?}");
    }

    /// A model without [`Infer::head_subset`] (as an executor that has none).
    struct NoSubset<'a>(&'a orlik_model::Model);

    impl Infer for NoSubset<'_> {
        fn config(&self) -> &orlik_model::Config {
            self.0.config()
        }
        fn new_cache(&self) -> orlik_model::infer::Cache {
            self.0.new_cache()
        }
        fn repeat_cache(
            &self,
            c: &orlik_model::infer::Cache,
            n: usize,
        ) -> Result<orlik_model::infer::Cache, orlik_model::ModelError> {
            self.0.repeat_cache(c, n)
        }
        fn hidden(
            &self,
            rows: Rows,
            cache: Option<&mut orlik_model::infer::Cache>,
        ) -> Result<candle_core::Tensor, orlik_model::ModelError> {
            self.0.hidden(rows, cache)
        }
        fn head(
            &self,
            h: &candle_core::Tensor,
        ) -> Result<candle_core::Tensor, orlik_model::ModelError> {
            self.0.head(h)
        }
        fn hidden_tapped(
            &self,
            rows: Rows,
            skip: &[usize],
            tap: orlik_model::infer::LayerTap,
        ) -> Result<candle_core::Tensor, orlik_model::ModelError> {
            self.0.hidden_tapped(rows, skip, tap)
        }
    }

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
