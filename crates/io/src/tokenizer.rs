//! Build a Hugging Face `tokenizer.json` (plus `tokenizer_config.json`) from a GGUF's embedded
//! tokenizer, reproducing what transformers' own converters produce for the same model:
//! - `gpt2` (byte-level BPE): pre-tokenizer regex chosen by `tokenizer.ggml.pre`, merges as stored;
//! - `llama` (SentencePiece BPE): `▁` normaliser, byte fallback, and merges recovered from the
//!   piece scores as transformers' `SentencePieceExtractor` does (pairs whose concatenation is a
//!   piece, ordered by that piece's score, stable).

use crate::gguf::{GValue, Gguf};
use crate::IoError;
use serde_json::{json, Value};
use std::collections::HashMap;

// Pre-tokenizer regexes, as in llama.cpp's llama-vocab.cpp and the models' own tokenizer.json
// (GPT-2's own pattern is what ByteLevel with use_regex applies).
pub(crate) const QWEN2_RE: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
pub(crate) const LLAMA3_RE: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Token types in `tokenizer.ggml.token_type` (llama.cpp `llama_token_type`).
const TT_UNKNOWN: i64 = 2;
const TT_CONTROL: i64 = 3;
const TT_USER_DEFINED: i64 = 4;

pub struct BuiltTokenizer {
    pub tokenizer_json: Value,
    pub tokenizer_config: Value,
    pub bos_id: Option<u32>,
    pub eos_id: Option<u32>,
}

fn split(re: &str) -> Value {
    json!({"type": "Split", "pattern": {"Regex": re}, "behavior": "Isolated", "invert": false})
}
fn byte_level(use_regex: bool) -> Value {
    json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": use_regex})
}

fn strings(g: &Gguf, key: &str) -> Option<Vec<String>> {
    g.get(key)?.as_array()?.iter().map(|v| v.as_str().map(String::from)).collect()
}

pub fn from_gguf(g: &Gguf) -> Result<BuiltTokenizer, IoError> {
    let err = |msg: String| IoError::Tokenizer { path: g.path.clone(), msg };
    let model = g
        .get("tokenizer.ggml.model")
        .and_then(GValue::as_str)
        .ok_or_else(|| err("no tokenizer.ggml.model".into()))?;
    let tokens = strings(g, "tokenizer.ggml.tokens")
        .ok_or_else(|| err("no tokenizer.ggml.tokens".into()))?;
    let types: Vec<i64> = match g.get("tokenizer.ggml.token_type").and_then(GValue::as_array) {
        Some(a) => a.iter().map(|v| v.as_f64().map_or(1, |x| x as i64)).collect(),
        None => vec![1; tokens.len()],
    };
    if types.len() != tokens.len() {
        return Err(err(format!("{} token types for {} tokens", types.len(), tokens.len())));
    }
    let id = |k: &str| {
        g.get(k).and_then(GValue::as_u64).map(|x| x as u32).filter(|&x| (x as usize) < tokens.len())
    };
    let (bos, eos, unk) = (
        id("tokenizer.ggml.bos_token_id"),
        id("tokenizer.ggml.eos_token_id"),
        id("tokenizer.ggml.unknown_token_id"),
    );
    let pad = id("tokenizer.ggml.padding_token_id");
    let flag = |k: &str, d: bool| g.get(k).and_then(GValue::as_bool).unwrap_or(d);

    let mut vocab = serde_json::Map::new();
    for (i, t) in tokens.iter().enumerate() {
        // First id wins on duplicate strings, as in transformers' conversion.
        vocab.entry(t.clone()).or_insert(json!(i));
    }
    let added: Vec<Value> = tokens
        .iter()
        .enumerate()
        .filter(|(i, _)| matches!(types[*i], TT_CONTROL | TT_USER_DEFINED) || (model == "llama" && types[*i] == TT_UNKNOWN))
        .map(|(i, t)| {
            json!({"id": i, "content": t, "single_word": false, "lstrip": false, "rstrip": false,
                   "normalized": types[i] == TT_USER_DEFINED && model == "llama", "special": types[i] != TT_USER_DEFINED})
        })
        .collect();
    let add_bos = flag("tokenizer.ggml.add_bos_token", model == "llama");
    let add_eos = flag("tokenizer.ggml.add_eos_token", false);

    let (normalizer, pre, decoder, bpe) = match model {
        "gpt2" => {
            let merges = strings(g, "tokenizer.ggml.merges")
                .ok_or_else(|| err("byte-level BPE without tokenizer.ggml.merges".into()))?;
            let merges: Vec<Value> = merges
                .iter()
                .map(|m| {
                    let (a, b) = m.split_once(' ').unwrap_or((m.as_str(), ""));
                    json!([a, b])
                })
                .collect();
            let pre_name =
                g.get("tokenizer.ggml.pre").and_then(GValue::as_str).unwrap_or("default");
            let (normalizer, pre) = match pre_name {
                "default" | "gpt-2" => (Value::Null, byte_level(true)),
                "smollm" => (
                    Value::Null,
                    json!({"type": "Sequence", "pretokenizers": [
                        {"type": "Digits", "individual_digits": true}, byte_level(true)]}),
                ),
                "qwen2" => (
                    json!({"type": "NFC"}),
                    json!({"type": "Sequence", "pretokenizers": [split(QWEN2_RE), byte_level(false)]}),
                ),
                "llama-bpe" | "llama3" => (
                    Value::Null,
                    json!({"type": "Sequence", "pretokenizers": [split(LLAMA3_RE), byte_level(false)]}),
                ),
                other => {
                    return Err(err(format!(
                        "pre-tokenizer {other:?} is not supported (default, gpt-2, smollm, qwen2, llama-bpe)"
                    )))
                }
            };
            // Llama 3's tokenizer.json takes whole pre-tokens found in the vocabulary as they are.
            let ignore_merges = matches!(pre_name, "llama-bpe" | "llama3");
            let bpe = json!({"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": ignore_merges,
                "vocab": vocab, "merges": merges});
            let decoder = json!({"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true});
            (normalizer, pre, decoder, bpe)
        }
        "llama" => {
            let scores: Vec<f64> = match g.get("tokenizer.ggml.scores").and_then(GValue::as_array) {
                Some(a) => a.iter().map(|v| v.as_f64().unwrap_or(0.0)).collect(),
                None => {
                    return Err(
                        err("SentencePiece vocabulary without tokenizer.ggml.scores".into()),
                    )
                }
            };
            if scores.len() != tokens.len() {
                return Err(err(format!("{} scores for {} tokens", scores.len(), tokens.len())));
            }
            let merges = spm_merges(&tokens, &scores);
            let add_prefix = flag("tokenizer.ggml.add_space_prefix", true);
            let mut norm = vec![];
            if add_prefix {
                norm.push(json!({"type": "Prepend", "prepend": "▁"}));
            }
            norm.push(json!({"type": "Replace", "pattern": {"String": " "}, "content": "▁"}));
            let mut dec = vec![
                json!({"type": "Replace", "pattern": {"String": "▁"}, "content": " "}),
                json!({"type": "ByteFallback"}),
                json!({"type": "Fuse"}),
            ];
            if add_prefix {
                dec.push(json!({"type": "Strip", "content": " ", "start": 1, "stop": 0}));
            }
            let bpe = json!({"type": "BPE", "dropout": null, "unk_token": unk.map(|u| tokens[u as usize].clone()),
                "continuing_subword_prefix": null, "end_of_word_suffix": null, "fuse_unk": true,
                "byte_fallback": true, "ignore_merges": false, "vocab": vocab, "merges": merges});
            (
                json!({"type": "Sequence", "normalizers": norm}),
                Value::Null,
                json!({"type": "Sequence", "decoders": dec}),
                bpe,
            )
        }
        other => {
            return Err(err(format!("tokenizer model {other:?} is not supported (gpt2, llama)")))
        }
    };

    let tok = |i: Option<u32>| i.map(|i| tokens[i as usize].clone());
    let mut single = vec![];
    let mut special = serde_json::Map::new();
    if add_bos {
        if let Some(b) = bos {
            single.push(json!({"SpecialToken": {"id": tokens[b as usize], "type_id": 0}}));
            special.insert(
                tokens[b as usize].clone(),
                json!({"id": tokens[b as usize], "ids": [b], "tokens": [tokens[b as usize]]}),
            );
        }
    }
    single.push(json!({"Sequence": {"id": "A", "type_id": 0}}));
    if add_eos {
        if let Some(e) = eos {
            single.push(json!({"SpecialToken": {"id": tokens[e as usize], "type_id": 0}}));
            special.insert(
                tokens[e as usize].clone(),
                json!({"id": tokens[e as usize], "ids": [e], "tokens": [tokens[e as usize]]}),
            );
        }
    }
    let mut pair = single.clone();
    pair.extend(single.iter().map(|v| {
        let s = v.to_string().replace("\"id\":\"A\"", "\"id\":\"B\"");
        serde_json::from_str::<Value>(&s).unwrap_or(Value::Null)
    }));
    let post = if add_bos || add_eos {
        json!({"type": "TemplateProcessing", "single": single, "pair": pair, "special_tokens": special})
    } else if model == "gpt2" {
        json!({"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true})
    } else {
        Value::Null
    };
    let tokenizer_json = json!({"version": "1.0", "truncation": null, "padding": null, "added_tokens": added,
        "normalizer": normalizer, "pre_tokenizer": pre, "post_processor": post, "decoder": decoder, "model": bpe});

    let mut cfg = serde_json::Map::new();
    cfg.insert("tokenizer_class".into(), json!("PreTrainedTokenizerFast"));
    cfg.insert("add_bos_token".into(), json!(add_bos));
    cfg.insert("add_eos_token".into(), json!(add_eos));
    cfg.insert("clean_up_tokenization_spaces".into(), json!(false));
    for (k, v) in [
        ("bos_token", tok(bos)),
        ("eos_token", tok(eos)),
        ("unk_token", tok(unk)),
        ("pad_token", tok(pad)),
    ] {
        if let Some(v) = v {
            cfg.insert(k.into(), json!(v));
        }
    }
    if let Some(t) = g.get("tokenizer.chat_template").and_then(GValue::as_str) {
        cfg.insert("chat_template".into(), json!(t));
    }
    if let Some(n) = g
        .get(&format!(
            "{}.context_length",
            g.get("general.architecture").and_then(GValue::as_str).unwrap_or("")
        ))
        .and_then(GValue::as_u64)
    {
        cfg.insert("model_max_length".into(), json!(n));
    }
    // Prove the result loads before anyone writes it.
    let text = tokenizer_json.to_string();
    tokenizers::Tokenizer::from_bytes(text.as_bytes())
        .map_err(|e| err(format!("built tokenizer does not load: {e}")))?;
    Ok(BuiltTokenizer {
        tokenizer_json,
        tokenizer_config: Value::Object(cfg),
        bos_id: bos,
        eos_id: eos,
    })
}

/// Merges of a SentencePiece BPE vocabulary: every split of a piece into two pieces, ordered by
/// the merged piece's score (descending, stable in id order); within a piece by (left, right) id.
pub fn spm_merges(tokens: &[String], scores: &[f64]) -> Vec<Value> {
    let ids: HashMap<&str, usize> =
        tokens.iter().enumerate().rev().map(|(i, t)| (t.as_str(), i)).collect();
    let mut merges: Vec<(f64, usize, usize, usize)> = Vec::new(); // (score, order, left, right)
    let mut order = 0;
    for (pi, piece) in tokens.iter().enumerate() {
        if ids.get(piece.as_str()) != Some(&pi) {
            continue; // duplicate string: only its first id is in the vocab
        }
        let mut local: Vec<(usize, usize)> = Vec::new();
        for (cut, _) in piece.char_indices().skip(1) {
            if let (Some(&l), Some(&r)) = (ids.get(&piece[..cut]), ids.get(&piece[cut..])) {
                local.push((l, r));
            }
        }
        local.sort();
        for (l, r) in local {
            merges.push((scores[pi], order, l, r));
            order += 1;
        }
    }
    merges.sort_by(|a, b| {
        b.0.partial_cmp(&a.0).unwrap_or(std::cmp::Ordering::Equal).then(a.1.cmp(&b.1))
    });
    merges.into_iter().map(|(_, _, l, r)| json!([tokens[l], tokens[r]])).collect()
}

/// sha256 of a tokenizer's vocabulary (token string -> id, in id order, added tokens included):
/// two tokenizers with the same hash map every token string to the same id.
pub fn vocab_sha256(tok: &tokenizers::Tokenizer) -> String {
    use sha2::{Digest, Sha256};
    let mut v: Vec<(String, u32)> = tok.get_vocab(true).into_iter().collect();
    v.sort_by_key(|(_, id)| *id);
    let mut h = Sha256::new();
    for (s, id) in v {
        h.update(id.to_le_bytes());
        h.update((s.len() as u32).to_le_bytes());
        h.update(s.as_bytes());
    }
    format!("{:x}", h.finalize())
}

/// How a student's vocabulary sits in the teacher's: `None` when they are the same id for id;
/// otherwise, for each student id, the teacher id of the same token string (a student made by
/// `orlik trim-vocab` from the teacher). Distillation and agreement then compare on the
/// student's vocabulary: the teacher's logits at those ids, renormalised over them. The error
/// names a student token the teacher lacks.
pub fn id_map(
    teacher: (&orlik_model::Config, &tokenizers::Tokenizer),
    student: (&orlik_model::Config, &tokenizers::Tokenizer),
) -> Result<Option<Vec<u32>>, String> {
    if same_vocab(teacher, student).is_ok() {
        return Ok(None);
    }
    let mut map = Vec::with_capacity(student.0.vocab_size);
    for id in 0..student.0.vocab_size as u32 {
        let s = student.1.id_to_token(id).ok_or_else(|| {
            format!(
                "student id {id} has no token string (vocab_size {} > tokenizer)",
                student.0.vocab_size
            )
        })?;
        let t = teacher.1.token_to_id(&s).ok_or_else(|| {
            format!("student token {s:?} (id {id}) is not in the teacher's vocabulary: vocabularies are mapped by token string, so the student's must be a subset of the teacher's")
        })?;
        if t as usize >= teacher.0.vocab_size {
            return Err(format!(
                "teacher id {t} of {s:?} is beyond its vocab_size {}",
                teacher.0.vocab_size
            ));
        }
        map.push(t);
    }
    Ok(Some(map))
}

/// Whether two models share their vocabulary id for id; the error says where they differ.
pub fn same_vocab(
    a: (&orlik_model::Config, &tokenizers::Tokenizer),
    b: (&orlik_model::Config, &tokenizers::Tokenizer),
) -> Result<(), String> {
    if a.0.vocab_size != b.0.vocab_size {
        return Err(format!(
            "teacher vocab_size {} != student vocab_size {}",
            a.0.vocab_size, b.0.vocab_size
        ));
    }
    if vocab_sha256(a.1) != vocab_sha256(b.1) {
        let (tv, sv) = (a.1.get_vocab(true), b.1.get_vocab(true));
        let diff = tv
            .iter()
            .find(|(s, id)| sv.get(*s) != Some(id))
            .map(|(s, id)| format!("{s:?} is {id} in the teacher, {:?} in the student", sv.get(s)));
        return Err(format!(
            "teacher and student tokenizers differ ({})",
            diff.unwrap_or_else(|| "different sizes".into())
        ));
    }
    Ok(())
}
