//! Multiple choice by log-likelihood (the lm-evaluation-harness recipe): each choice is scored as
//! the sum of log p(choice tokens | prompt); the prediction is the best choice, raw and after
//! dividing by the choice's UTF-8 length in bytes ("acc_norm", which removes the bias towards
//! short answers). Input: the EXAMS JSONL shape, one question per line:
//! `{"question": {"stem", "choices": [{"label", "text"}...]}, "answerKey"}`.

use crate::EvalError;
use orlik_model::infer::{Infer, Rows};
use serde::{Deserialize, Serialize};
use std::path::Path;

#[derive(Debug, Clone, PartialEq)]
pub struct Question {
    pub id: String,
    pub stem: String,
    /// (label, text)
    pub choices: Vec<(String, String)>,
    /// Index into `choices`.
    pub answer: usize,
}

#[derive(Deserialize)]
struct RawChoice {
    label: String,
    text: String,
}
#[derive(Deserialize)]
struct RawStem {
    stem: String,
    choices: Vec<RawChoice>,
}
#[derive(Deserialize)]
struct RawRow {
    #[serde(default)]
    id: Option<String>,
    question: RawStem,
    #[serde(rename = "answerKey")]
    answer_key: String,
}

/// Parse EXAMS-style JSONL; a malformed row is an error naming the file and line.
pub fn parse_jsonl(text: &str, origin: &str) -> Result<Vec<Question>, EvalError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let at = |m: String| EvalError::Input(format!("{origin}:{}: {m}", i + 1));
        let r: RawRow =
            serde_json::from_str(line).map_err(|e| at(format!("not an EXAMS row ({e})")))?;
        if r.question.choices.len() < 2 {
            return Err(at(format!(
                "{} choice(s); at least 2 are needed",
                r.question.choices.len()
            )));
        }
        let answer =
            r.question.choices.iter().position(|c| c.label == r.answer_key).ok_or_else(|| {
                at(format!("answerKey {:?} is not one of the choice labels", r.answer_key))
            })?;
        out.push(Question {
            id: r.id.unwrap_or_else(|| format!("line{}", i + 1)),
            stem: r.question.stem,
            choices: r.question.choices.into_iter().map(|c| (c.label, c.text)).collect(),
            answer,
        });
    }
    if out.is_empty() {
        return Err(EvalError::Input(format!("{origin}: no questions")));
    }
    Ok(out)
}

pub fn load(path: &Path) -> Result<Vec<Question>, EvalError> {
    parse_jsonl(&crate::read_text(path)?, &path.display().to_string())
}

/// The Polish prompt; each choice is scored as the continuation `" " + text`.
pub fn prompt(q: &Question) -> String {
    format!("Pytanie: {}\nOdpowiedź:", q.stem.trim())
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct McResult {
    pub questions: usize,
    pub accuracy: f64,
    /// Accuracy when each choice's log-likelihood is divided by its length in bytes.
    pub accuracy_norm: f64,
    /// Accuracy of guessing uniformly: mean of 1 / choices.
    pub chance: f64,
    /// Choices whose prompt + continuation was cut from the left to fit the context.
    pub truncated: usize,
}

/// Index of the largest value (the first on ties).
fn best(v: &[f64]) -> usize {
    let mut b = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[b] {
            b = i;
        }
    }
    b
}

/// Log-likelihood of each continuation after its context, one forward per question: the rows
/// (context + choice) are right-padded, which a causal model never sees.
/// Returns (sum log p per choice, whether the row was truncated).
fn score_question(
    model: &dyn Infer,
    ctx: &[u32],
    conts: &[Vec<u32>],
    max_len: usize,
) -> Result<Vec<(f64, bool)>, EvalError> {
    let rows: Vec<(Vec<u32>, usize, bool)> = conts
        .iter()
        .map(|c| {
            let mut r: Vec<u32> = ctx.iter().chain(c.iter()).copied().collect();
            let cut = r.len().saturating_sub(max_len);
            r.drain(..cut);
            (r, c.len().min(max_len - 1), cut > 0)
        })
        .collect();
    let t = rows.iter().map(|r| r.0.len()).max().unwrap_or(0);
    let b = rows.len();
    let mut ids = vec![0u32; b * t];
    for (i, (r, _, _)) in rows.iter().enumerate() {
        ids[i * t..i * t + r.len()].copy_from_slice(r);
    }
    let hidden = model.hidden(Rows::new(&ids, b, t), None)?; // (b, t, h)
    let mut out = Vec::with_capacity(b);
    for (i, (r, n, cut)) in rows.iter().enumerate() {
        // Positions r.len()-n-1 .. r.len()-1 predict the n continuation tokens.
        let start = r.len() - n - 1;
        let h = hidden.get(i)?.narrow(0, start, *n)?.unsqueeze(0)?; // (1, n, h)
        let logits = model.head(&h)?.squeeze(0)?.to_dtype(candle_core::DType::F32)?; // (n, vocab)
        let rows_v: Vec<Vec<f32>> = logits.to_vec2()?;
        let mut ll = 0.0;
        for (k, row) in rows_v.iter().enumerate() {
            let target = r[start + 1 + k] as usize;
            ll += row[target] as f64 - orlik_model::prob::logsumexp(row, 1.0);
        }
        out.push((ll, *cut));
    }
    Ok(out)
}

/// Score every question; `progress(done, total)` after each.
pub fn evaluate(
    model: &dyn Infer,
    tok: &tokenizers::Tokenizer,
    questions: &[Question],
    max_len: usize,
    mut progress: impl FnMut(usize, usize),
) -> Result<McResult, EvalError> {
    if max_len < 2 {
        return Err(EvalError::Input(format!("context {max_len} is too short")));
    }
    let enc = |s: &str, special: bool| -> Result<Vec<u32>, EvalError> {
        Ok(tok
            .encode(s, special)
            .map_err(|e| EvalError::Input(format!("tokenizer: {e}")))?
            .get_ids()
            .to_vec())
    };
    let (mut right, mut right_norm, mut chance, mut truncated) = (0usize, 0usize, 0.0, 0usize);
    for (qi, q) in questions.iter().enumerate() {
        let ctx = enc(&prompt(q), true)?;
        let conts = q
            .choices
            .iter()
            .map(|(_, t)| enc(&format!(" {}", t.trim()), false))
            .collect::<Result<Vec<_>, _>>()?;
        if conts.iter().any(Vec::is_empty) {
            return Err(EvalError::Input(format!("question {}: a choice has no tokens", q.id)));
        }
        let scored = score_question(model, &ctx, &conts, max_len)?;
        let raw: Vec<f64> = scored.iter().map(|s| s.0).collect();
        let norm: Vec<f64> = raw
            .iter()
            .zip(&q.choices)
            .map(|(l, (_, t))| l / (t.trim().len().max(1) as f64))
            .collect();
        right += usize::from(best(&raw) == q.answer);
        right_norm += usize::from(best(&norm) == q.answer);
        chance += 1.0 / q.choices.len() as f64;
        truncated += scored.iter().filter(|s| s.1).count();
        progress(qi + 1, questions.len());
    }
    let n = questions.len().max(1) as f64;
    Ok(McResult {
        questions: questions.len(),
        accuracy: right as f64 / n,
        accuracy_norm: right_norm as f64 / n,
        chance: chance / n,
        truncated,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};
    use orlik_model::Model;

    const ROW: &str = r#"{"id": "q1", "question": {"stem": "2 + 2 =", "choices": [{"text": "3", "label": "A"}, {"text": "4", "label": "B"}]}, "answerKey": "B"}"#;

    #[test]
    fn parses_exams_rows_and_names_bad_lines() {
        let qs = parse_jsonl(&format!("{ROW}\n\n{ROW}\n"), "t.jsonl").unwrap();
        assert_eq!(qs.len(), 2);
        assert_eq!(qs[0].answer, 1);
        assert_eq!(qs[0].choices[0], ("A".to_string(), "3".to_string()));
        assert_eq!(prompt(&qs[0]), "Pytanie: 2 + 2 =\nOdpowiedź:");
        let e = parse_jsonl(&format!("{ROW}\n{{\"question\": 1}}\n"), "t.jsonl")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("t.jsonl:2: not an EXAMS row"), "{e}");
        let e =
            parse_jsonl(&ROW.replace("\"answerKey\": \"B\"", "\"answerKey\": \"E\""), "t.jsonl")
                .unwrap_err()
                .to_string();
        assert!(e.contains("t.jsonl:1: answerKey \"E\""), "{e}");
        assert!(parse_jsonl("\n", "e.jsonl").unwrap_err().to_string().contains("no questions"));
    }

    /// Scoring choices together (right-padded in one batch) equals scoring each alone, and equals
    /// the sum of log-softmax entries of a plain forward: padding never leaks into the result.
    #[test]
    fn batched_choice_scores_equal_single_row_log_likelihoods() {
        let cfg = orlik_model::testing::tiny(
            "LlamaForCausalLM",
            serde_json::json!({"num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 4}),
        );
        let w = orlik_model::init::random_weights(&cfg, 3, 0.5).unwrap();
        let m = Model::new(&cfg, &w, orlik_model::ModelOptions::default()).unwrap();
        let ctx = [1u32, 4, 7];
        let conts = vec![vec![2u32], vec![5, 6, 11, 3], vec![9, 9]];
        let together = score_question(&m, &ctx, &conts, 64).unwrap();
        for (c, got) in conts.iter().zip(&together) {
            let alone = score_question(&m, &ctx, std::slice::from_ref(c), 64).unwrap()[0];
            assert!((alone.0 - got.0).abs() < 1e-5, "{alone:?} vs {got:?}");
            let row: Vec<u32> = ctx.iter().chain(c).copied().collect();
            let x = Tensor::new(row.as_slice(), &Device::Cpu).unwrap().unsqueeze(0).unwrap();
            let logits: Vec<Vec<f32>> =
                m.forward(&x, None, None, None).unwrap().squeeze(0).unwrap().to_vec2().unwrap();
            let mut want = 0.0;
            for k in 0..c.len() {
                let r = &logits[ctx.len() - 1 + k];
                let lse = r.iter().map(|&v| (v as f64).exp()).sum::<f64>().ln();
                want += r[c[k] as usize] as f64 - lse;
            }
            assert!((want - got.0).abs() < 1e-4, "{want} vs {}", got.0);
            assert!(!got.1);
        }
        // cut from the left to fit: flagged, and scored on what remains
        let cut = score_question(&m, &ctx, &conts[1..2], 5).unwrap();
        assert!(cut[0].1);
    }

    #[test]
    fn best_takes_the_first_maximum() {
        assert_eq!(best(&[-3.0, -1.0, -1.0, -2.0]), 1);
        assert_eq!(best(&[0.5]), 0);
    }
}
