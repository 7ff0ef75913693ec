//! A Hugging Face tokenizer (`tokenizer.json` + `tokenizer_config.json`) as GGUF tokenizer
//! metadata, the inverse of [`crate::tokenizer::from_gguf`]:
//! - byte-level BPE -> `tokenizer.ggml.model = "gpt2"`, its merges, and the `tokenizer.ggml.pre`
//!   name llama.cpp knows for the pre-tokenizer (refused when it matches none);
//! - SentencePiece-style BPE (byte fallback, `▁` for spaces) -> `"llama"`, with piece scores
//!   made from the merge order (a piece's score is minus the rank of the first merge that makes
//!   it), so llama.cpp's highest-score-first merging takes the merges in the order HF's BPE does.
//!
//! Token types are llama.cpp's (`llama_token_type`): normal, unknown, control (special added
//! tokens), user-defined (other added tokens), unused (padding rows), byte (`<0xNN>`).

use crate::gguf::GValue;
use crate::tokenizer::{LLAMA3_RE, QWEN2_RE};
use serde_json::Value;

/// GGUF metadata entries.
pub type Metadata = Vec<(String, GValue)>;
/// Token strings by id, their llama.cpp types, and the ids of special added tokens.
type Vocabulary = (Vec<String>, Vec<i32>, Vec<u32>);

const TT_NORMAL: i32 = 1;
const TT_UNKNOWN: i32 = 2;
const TT_CONTROL: i32 = 3;
const TT_USER_DEFINED: i32 = 4;
const TT_UNUSED: i32 = 5;
const TT_BYTE: i32 = 6;

/// GGUF tokenizer metadata for a tokenizer whose embedding has `rows` rows (tokens past the
/// tokenizer's own are written as unused `[PAD{i}]` pieces, as llama.cpp's converter does).
/// `config_ids` are config.json's (bos, eos, pad) ids, used where tokenizer_config names none.
pub fn metadata(
    tok: &Value,
    tok_cfg: &Value,
    chat_template: Option<String>,
    rows: usize,
    config_ids: [Option<u32>; 3],
) -> Result<(Metadata, &'static str), String> {
    let model = &tok["model"];
    if model["type"].as_str() != Some("BPE") {
        return Err(format!(
            "tokenizer.json: model type {} is not supported (BPE: byte-level or SentencePiece-style)",
            model["type"]
        ));
    }
    let spm = model["byte_fallback"].as_bool() == Some(true);
    let (tokens, mut types, special) = vocabulary(tok, rows)?;
    let id_of = |s: &str| tokens.iter().position(|t| t == s).map(|i| i as u32);
    let mut out: Vec<(String, GValue)> = Vec::new();
    let mut put = |k: &str, v: GValue| out.push((k.to_string(), v));
    let merges = merge_list(model)?;
    let kind = if spm {
        put("tokenizer.ggml.model", GValue::Str("llama".into()));
        put("tokenizer.ggml.pre", GValue::Str("default".into()));
        let scores = spm_scores(&tokens, &merges);
        for (i, t) in tokens.iter().enumerate() {
            if types[i] == TT_NORMAL && is_byte_piece(t) {
                types[i] = TT_BYTE;
            }
        }
        if let Some(u) = model["unk_token"].as_str().and_then(id_of) {
            types[u as usize] = TT_UNKNOWN;
        }
        put("tokenizer.ggml.add_space_prefix", GValue::Bool(prepends_space(&tok["normalizer"])));
        put("tokenizer.ggml.scores", GValue::Array(scores.into_iter().map(GValue::F32).collect()));
        "SentencePiece BPE"
    } else {
        put("tokenizer.ggml.model", GValue::Str("gpt2".into()));
        put("tokenizer.ggml.pre", GValue::Str(pre_name(&tok["pre_tokenizer"])?.into()));
        put(
            "tokenizer.ggml.merges",
            GValue::Array(merges.iter().map(|(a, b)| GValue::Str(format!("{a} {b}"))).collect()),
        );
        "byte-level BPE"
    };
    put("tokenizer.ggml.tokens", GValue::Array(tokens.iter().cloned().map(GValue::Str).collect()));
    put("tokenizer.ggml.token_type", GValue::Array(types.into_iter().map(GValue::I32).collect()));
    let named = |k: &str| -> Option<u32> {
        let v = &tok_cfg[k];
        let s = v.as_str().or_else(|| v["content"].as_str())?;
        id_of(s)
    };
    let ids = [
        ("tokenizer.ggml.bos_token_id", named("bos_token").or(config_ids[0])),
        ("tokenizer.ggml.eos_token_id", named("eos_token").or(config_ids[1])),
        ("tokenizer.ggml.unknown_token_id", named("unk_token")),
        ("tokenizer.ggml.padding_token_id", named("pad_token").or(config_ids[2])),
    ];
    for (k, id) in ids {
        if let Some(id) = id {
            put(k, GValue::U32(id));
        }
    }
    let (add_bos, add_eos) = added_specials(tok, tok_cfg, &special);
    put("tokenizer.ggml.add_bos_token", GValue::Bool(add_bos));
    put("tokenizer.ggml.add_eos_token", GValue::Bool(add_eos));
    if let Some(t) = chat_template {
        put("tokenizer.chat_template", GValue::Str(t));
    }
    Ok((out, kind))
}

/// Token strings by id (the model's vocabulary and the added tokens), their types, and which
/// ids are special added tokens; ids without a token and rows past the tokenizer are padding.
fn vocabulary(tok: &Value, rows: usize) -> Result<Vocabulary, String> {
    let vocab =
        tok["model"]["vocab"].as_object().ok_or("tokenizer.json: model.vocab is not an object")?;
    let mut pairs: Vec<(usize, String, i32)> = Vec::with_capacity(vocab.len());
    for (s, id) in vocab {
        let id = id.as_u64().ok_or(format!("tokenizer.json: vocab id of {s:?} is not a number"))?;
        pairs.push((id as usize, s.clone(), TT_NORMAL));
    }
    let mut special = Vec::new();
    for a in tok["added_tokens"].as_array().into_iter().flatten() {
        let (Some(id), Some(s)) = (a["id"].as_u64(), a["content"].as_str()) else {
            return Err(format!("tokenizer.json: added token without id or content: {a}"));
        };
        let sp = a["special"].as_bool().unwrap_or(false);
        if sp {
            special.push(id as u32);
        }
        pairs.push((id as usize, s.to_string(), if sp { TT_CONTROL } else { TT_USER_DEFINED }));
    }
    let n = pairs.iter().map(|p| p.0 + 1).max().unwrap_or(0);
    if n > rows {
        return Err(format!(
            "the tokenizer has ids up to {} but the embedding has {rows} rows",
            n - 1
        ));
    }
    let mut tokens: Vec<Option<String>> = vec![None; rows];
    let mut types = vec![TT_UNUSED; rows];
    for (id, s, ty) in pairs {
        // An added token can restate a vocabulary entry: the added token's type wins.
        if tokens[id].is_none() || ty != TT_NORMAL {
            tokens[id] = Some(s);
            types[id] = ty;
        }
    }
    let tokens = tokens
        .into_iter()
        .enumerate()
        .map(|(i, t)| t.unwrap_or_else(|| format!("[PAD{i}]")))
        .collect();
    Ok((tokens, types, special))
}

/// Merges in rank order; tokenizers writes them as "a b" strings (< 0.20) or [a, b] pairs.
fn merge_list(model: &Value) -> Result<Vec<(String, String)>, String> {
    let Some(list) = model["merges"].as_array() else { return Ok(vec![]) };
    list.iter()
        .map(|m| match m {
            Value::String(s) => s
                .split_once(' ')
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .ok_or(format!("tokenizer.json: merge {s:?} is not two pieces")),
            Value::Array(p) if p.len() == 2 => match (p[0].as_str(), p[1].as_str()) {
                (Some(a), Some(b)) => Ok((a.to_string(), b.to_string())),
                _ => Err(format!("tokenizer.json: merge {m} is not two strings")),
            },
            _ => Err(format!("tokenizer.json: merge {m} is not a pair")),
        })
        .collect()
}

/// Piece scores from merge ranks: the piece the first merge makes scores 0, the next -1, ...;
/// pieces no merge makes (characters, bytes, special tokens) score below every merged piece.
fn spm_scores(tokens: &[String], merges: &[(String, String)]) -> Vec<f32> {
    let ids: std::collections::HashMap<&str, usize> =
        tokens.iter().enumerate().rev().map(|(i, t)| (t.as_str(), i)).collect();
    let mut score = vec![None; tokens.len()];
    for (rank, (a, b)) in merges.iter().enumerate() {
        if let Some(&i) = ids.get(format!("{a}{b}").as_str()) {
            score[i].get_or_insert(-(rank as f32));
        }
    }
    let floor = -(merges.len() as f32) - 1.0;
    score.into_iter().map(|s| s.unwrap_or(floor)).collect()
}

fn is_byte_piece(t: &str) -> bool {
    t.len() == 6
        && t.starts_with("<0x")
        && t.ends_with('>')
        && t[3..5].chars().all(|c| c.is_ascii_hexdigit())
}

/// Whether the normaliser prepends `▁` (SentencePiece's add_dummy_prefix).
fn prepends_space(norm: &Value) -> bool {
    let one = |n: &Value| n["type"] == "Prepend" && n["prepend"] == "▁";
    one(norm) || norm["normalizers"].as_array().is_some_and(|v| v.iter().any(one))
}

/// The llama.cpp pre-tokenizer name (`tokenizer.ggml.pre`) for a byte-level pre-tokenizer.
fn pre_name(pre: &Value) -> Result<&'static str, String> {
    let steps: Vec<&Value> = match pre["type"].as_str() {
        Some("Sequence") => pre["pretokenizers"].as_array().into_iter().flatten().collect(),
        _ => vec![pre],
    };
    let ty = |v: &Value| v["type"].as_str().unwrap_or("").to_string();
    let shape: Vec<String> = steps.iter().map(|v| ty(v)).collect();
    let regex = |v: &Value| v["pattern"]["Regex"].as_str().map(String::from);
    let name = match shape.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["ByteLevel"] if steps[0]["use_regex"] != false => Some("gpt-2"),
        ["Digits", "ByteLevel"] if steps[0]["individual_digits"] == true => Some("smollm"),
        ["Split", "ByteLevel"] => match regex(steps[0]).as_deref() {
            Some(r) if r == QWEN2_RE => Some("qwen2"),
            Some(r) if r == LLAMA3_RE => Some("llama-bpe"),
            _ => None,
        },
        _ => None,
    };
    name.ok_or(format!(
        "tokenizer.json: pre-tokenizer {} matches none llama.cpp names here (gpt-2, smollm, qwen2, llama-bpe)",
        serde_json::to_string(pre).unwrap_or_default().chars().take(200).collect::<String>()
    ))
}

/// Whether encoding adds BOS / EOS: tokenizer_config's flags, else the post-processor's template.
fn added_specials(tok: &Value, cfg: &Value, special: &[u32]) -> (bool, bool) {
    let single = tok["post_processor"]["single"].as_array().cloned().unwrap_or_default();
    let is_special = |v: &Value| v.get("SpecialToken").is_some();
    let template_bos = single.first().is_some_and(is_special) && !special.is_empty();
    let template_eos = single.len() > 1 && single.last().is_some_and(is_special);
    (
        cfg["add_bos_token"].as_bool().unwrap_or(template_bos),
        cfg["add_eos_token"].as_bool().unwrap_or(template_eos),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn scores_follow_the_merge_order_and_bytes_are_typed() {
        let tok = json!({"model": {"type": "BPE", "byte_fallback": true, "unk_token": "<unk>",
            "vocab": {"<unk>": 0, "<0x41>": 1, "a": 2, "b": 3, "ab": 4, "abb": 5, "bb": 6},
            "merges": [["a", "b"], ["b", "b"], ["ab", "b"], ["a", "bb"]]},
            "added_tokens": [{"id": 0, "content": "<unk>", "special": true}, {"id": 7, "content": "<eot>", "special": true}],
            "normalizer": {"type": "Sequence", "normalizers": [{"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]},
            "post_processor": null});
        let cfg = json!({"add_bos_token": true, "eos_token": "<eot>"});
        let (m, kind) = metadata(&tok, &cfg, Some("{{x}}".into()), 9, [None; 3]).unwrap();
        assert_eq!(kind, "SentencePiece BPE");
        let get = |k: &str| m.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()).unwrap();
        let f = |v: GValue| {
            v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect::<Vec<_>>()
        };
        // "abb" is made by rank 2 first ("ab"+"b"), so it scores -2; unmerged pieces -5.
        assert_eq!(
            f(get("tokenizer.ggml.scores")),
            [-5.0, -5.0, -5.0, -5.0, 0.0, -2.0, -1.0, -5.0, -5.0]
        );
        assert_eq!(
            f(get("tokenizer.ggml.token_type")),
            [2.0, 6.0, 1.0, 1.0, 1.0, 1.0, 1.0, 3.0, 5.0]
        );
        assert_eq!(get("tokenizer.ggml.eos_token_id"), GValue::U32(7));
        assert_eq!(get("tokenizer.ggml.add_space_prefix"), GValue::Bool(false));
        assert_eq!(get("tokenizer.ggml.add_bos_token"), GValue::Bool(true));
        assert_eq!(get("tokenizer.chat_template"), GValue::Str("{{x}}".into()));
        assert_eq!(
            get("tokenizer.ggml.tokens").as_array().unwrap()[8],
            GValue::Str("[PAD8]".into())
        );
    }

    #[test]
    fn unknown_pre_tokenizers_and_short_embeddings_are_refused_by_name() {
        let tok = json!({"model": {"type": "BPE", "vocab": {"a": 0, "b": 1}, "merges": []},
            "pre_tokenizer": {"type": "Whitespace"}, "added_tokens": []});
        let e = metadata(&tok, &json!({}), None, 2, [None; 3]).unwrap_err();
        assert!(e.contains("pre-tokenizer") && e.contains("Whitespace"), "{e}");
        let e = metadata(&tok, &json!({}), None, 1, [None; 3]).unwrap_err();
        assert!(e.contains("ids up to 1 but the embedding has 1 rows"), "{e}");
    }
}
