//! Vocabulary trimming: keep the tokens a language uses and drop the rest from `tokenizer.json`
//! (vocab and merges, ids renumbered), from the embedding and from lm_head.
//!
//! What is kept: every token the corpus uses at least `min_count` times, every special / added
//! token, the byte fallback tokens (`<0x00>`..`<0xFF>`) or the byte-level alphabet (the 256 base
//! symbols of GPT-2-style BPE), the tokens the user names, and the *merge closure*: every token
//! the BPE algorithm passes through while building a kept token. That closure is what makes
//! the trimmed tokenizer produce exactly the original tokens on the corpus: inside a final token's
//! span BPE applies the same merges as on the token's string alone (a merge across the span's
//! edge would have made a longer token), so simulating BPE on each kept token's string lists every
//! intermediate; every merge applied on the corpus then has its inputs and output kept, and the
//! kept merges keep their relative order, so the lowest-ranked applicable merge is the same at
//! every step. Text outside the corpus still tokenizes: unknown characters fall back to bytes.

use crate::PruneError;
use serde_json::{json, Map, Value};
use std::collections::{BTreeSet, HashMap};

fn err(m: impl Into<String>) -> PruneError {
    PruneError::Plan(m.into())
}

/// The BPE parts of a `tokenizer.json`.
pub struct Bpe {
    pub vocab: HashMap<String, u32>,
    pub merges: Vec<(String, String)>,
    pub byte_fallback: bool,
    /// GPT-2 style byte-level alphabet in use (ByteLevel pre-tokenizer or decoder).
    pub byte_level: bool,
    pub added: Vec<(u32, String)>,
}

fn merge_pair(m: &Value) -> Option<(String, String)> {
    match m {
        Value::String(s) => s.split_once(' ').map(|(a, b)| (a.to_string(), b.to_string())),
        Value::Array(a) if a.len() == 2 => {
            Some((a[0].as_str()?.to_string(), a[1].as_str()?.to_string()))
        }
        _ => None,
    }
}

fn mentions_byte_level(v: &Value) -> bool {
    match v {
        Value::Object(o) => {
            o.get("type").and_then(Value::as_str) == Some("ByteLevel")
                || o.values().any(mentions_byte_level)
        }
        Value::Array(a) => a.iter().any(mentions_byte_level),
        _ => false,
    }
}

impl Bpe {
    pub fn from_json(tj: &Value) -> Result<Bpe, PruneError> {
        let model = tj.get("model").ok_or_else(|| err("tokenizer.json has no model"))?;
        let ty = model.get("type").and_then(Value::as_str).unwrap_or("BPE");
        if ty != "BPE" {
            return Err(err(format!(
                "tokenizer model {ty:?} is not supported by trim-vocab (supported: BPE — byte-level like GPT-2/SmolLM2/Qwen2, or SentencePiece-style with byte fallback like Llama 2/Gemma; not Unigram, WordPiece or WordLevel)"
            )));
        }
        let vocab: HashMap<String, u32> = model
            .get("vocab")
            .and_then(Value::as_object)
            .ok_or_else(|| err("tokenizer.json model.vocab missing"))?
            .iter()
            .map(|(k, v)| {
                Ok((
                    k.clone(),
                    v.as_u64().ok_or_else(|| err(format!("vocab id of {k:?} is not a number")))?
                        as u32,
                ))
            })
            .collect::<Result<_, PruneError>>()?;
        let merges = model
            .get("merges")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .map(|m| merge_pair(m).ok_or_else(|| err(format!("bad merge {m}"))))
                    .collect::<Result<Vec<_>, _>>()
            })
            .transpose()?
            .unwrap_or_default();
        let added = tj
            .get("added_tokens")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|t| {
                        Some((
                            t.get("id")?.as_u64()? as u32,
                            t.get("content")?.as_str()?.to_string(),
                        ))
                    })
                    .collect()
            })
            .unwrap_or_default();
        Ok(Bpe {
            vocab,
            merges,
            byte_fallback: model.get("byte_fallback").and_then(Value::as_bool).unwrap_or(false),
            byte_level: mentions_byte_level(tj.get("pre_tokenizer").unwrap_or(&Value::Null))
                || mentions_byte_level(tj.get("decoder").unwrap_or(&Value::Null)),
            added,
        })
    }

    /// Every token BPE produces while building `token` from its characters (the characters, the
    /// intermediates, the token itself), by replaying merges in rank order.
    pub fn closure_of(&self, token: &str, ranks: &HashMap<(&str, &str), usize>) -> Vec<String> {
        let mut syms: Vec<String> = token.chars().map(String::from).collect();
        let mut out: Vec<String> =
            syms.iter().filter(|s| self.vocab.contains_key(*s)).cloned().collect();
        loop {
            let best = (0..syms.len().saturating_sub(1))
                .filter_map(|i| {
                    ranks.get(&(syms[i].as_str(), syms[i + 1].as_str())).map(|&r| (r, i))
                })
                .min();
            let Some((_, i)) = best else { break };
            let merged = format!("{}{}", syms[i], syms[i + 1]);
            syms.splice(i..i + 2, [merged.clone()]);
            out.push(merged);
        }
        out
    }
}

/// Which old ids to keep (sorted ascending: new id = position).
#[derive(Debug, Clone, PartialEq)]
pub struct VocabPlan {
    pub keep: Vec<u32>,
    /// Why tokens were kept: used by the corpus, special/added, bytes, --keep, merge closure.
    pub used: usize,
    pub special: usize,
    pub bytes: usize,
    pub requested: usize,
    pub closure: usize,
}

/// The GPT-2 byte-level alphabet: the 256 characters bytes map to.
fn byte_level_alphabet() -> Vec<String> {
    let mut bs: Vec<u32> =
        (b'!' as u32..=b'~' as u32).chain(0xA1..=0xAC).chain(0xAE..=0xFF).collect();
    let mut cs = bs.clone();
    let mut n = 0;
    for b in 0..256u32 {
        if !bs.contains(&b) {
            bs.push(b);
            cs.push(256 + n);
            n += 1;
        }
    }
    cs.into_iter().filter_map(char::from_u32).map(String::from).collect()
}

/// Plan a trim from per-id usage counts of the corpus.
pub fn plan(
    bpe: &Bpe,
    counts: &[u64],
    min_count: u64,
    keep: &[String],
) -> Result<VocabPlan, PruneError> {
    let n = bpe.vocab.len().max(bpe.added.iter().map(|a| a.0 as usize + 1).max().unwrap_or(0));
    let by_id: HashMap<u32, &str> = bpe.vocab.iter().map(|(k, &v)| (v, k.as_str())).collect();
    let mut kept: BTreeSet<u32> = BTreeSet::new();
    let add = |ids: &mut dyn Iterator<Item = u32>, kept: &mut BTreeSet<u32>| {
        ids.filter(|&i| kept.insert(i)).count()
    };
    let special = add(&mut bpe.added.iter().map(|a| a.0), &mut kept);
    if special == 0 {
        return Err(err("the tokenizer declares no special tokens (added_tokens): refusing to trim a vocabulary whose control tokens cannot be identified"));
    }
    let byte_names: Vec<String> = if bpe.byte_fallback {
        (0..256).map(|b| format!("<0x{b:02X}>")).collect()
    } else if bpe.byte_level {
        byte_level_alphabet()
    } else {
        Vec::new()
    };
    let bytes = add(&mut byte_names.iter().filter_map(|b| bpe.vocab.get(b).copied()), &mut kept);
    let used = add(
        &mut counts
            .iter()
            .enumerate()
            .filter(|(_, &c)| c >= min_count.max(1))
            .map(|(i, _)| i as u32),
        &mut kept,
    );
    let unknown: Vec<&String> = keep.iter().filter(|k| !bpe.vocab.contains_key(*k)).collect();
    if !unknown.is_empty() {
        let shown: Vec<String> = unknown.iter().take(5).map(|s| format!("{s:?}")).collect();
        return Err(err(format!(
            "--keep names {} token(s) not in the vocabulary: {}",
            unknown.len(),
            shown.join(", ")
        )));
    }
    let requested = add(&mut keep.iter().filter_map(|k| bpe.vocab.get(k).copied()), &mut kept);
    // The closure of what the text uses or the user asked for (special and byte tokens are
    // never built by merges).
    let core: Vec<u32> = counts
        .iter()
        .enumerate()
        .filter(|(_, &c)| c >= min_count.max(1))
        .map(|(i, _)| i as u32)
        .chain(keep.iter().filter_map(|k| bpe.vocab.get(k).copied()))
        .collect();
    let ranks: HashMap<(&str, &str), usize> =
        bpe.merges.iter().enumerate().map(|(r, (a, b))| ((a.as_str(), b.as_str()), r)).collect();
    let mut closure = 0;
    for id in core {
        if let Some(tok) = by_id.get(&id) {
            for t in bpe.closure_of(tok, &ranks) {
                if let Some(&j) = bpe.vocab.get(&t) {
                    closure += usize::from(kept.insert(j));
                }
            }
        }
    }
    if let Some(&bad) = kept.iter().find(|&&i| i as usize >= n) {
        return Err(err(format!("token id {bad} is outside the vocabulary ({n})")));
    }
    Ok(VocabPlan { keep: kept.into_iter().collect(), used, special, bytes, requested, closure })
}

/// old id -> new id
pub fn id_map(plan: &VocabPlan) -> HashMap<u32, u32> {
    plan.keep.iter().enumerate().map(|(new, &old)| (old, new as u32)).collect()
}

/// Rewrite ids inside a post-processor (TemplateProcessing `special_tokens[*].ids`, Roberta/Bert
/// `sep`/`cls` pairs), recursively for Sequence processors.
fn remap_processor(v: &mut Value, map: &HashMap<u32, u32>) -> Result<(), PruneError> {
    match v {
        Value::Object(o) => {
            for key in ["sep", "cls"] {
                if let Some(Value::Array(pair)) = o.get_mut(key) {
                    if let Some(id) = pair.get(1).and_then(Value::as_u64) {
                        pair[1] = json!(map.get(&(id as u32)).ok_or_else(|| err(format!(
                            "post-processor {key} id {id} was dropped"
                        )))?);
                    }
                }
            }
            if let Some(Value::Object(st)) = o.get_mut("special_tokens") {
                for (name, t) in st.iter_mut() {
                    if let Some(Value::Array(ids)) = t.get_mut("ids") {
                        for x in ids.iter_mut() {
                            let id = x.as_u64().unwrap_or(u64::MAX) as u32;
                            *x = json!(map.get(&id).ok_or_else(|| err(format!(
                                "post-processor token {name} (id {id}) was dropped"
                            )))?);
                        }
                    }
                }
            }
            for (k, x) in o.iter_mut() {
                if k != "special_tokens" {
                    remap_processor(x, map)?;
                }
            }
        }
        Value::Array(a) => {
            for x in a {
                remap_processor(x, map)?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// The trimmed `tokenizer.json`: vocab renumbered, merges whose two inputs and result are all
/// kept (in their original order), added tokens and post-processor ids renumbered.
pub fn trim_tokenizer(tj: &Value, bpe: &Bpe, plan: &VocabPlan) -> Result<Value, PruneError> {
    let map = id_map(plan);
    let mut out = tj.clone();
    let vocab: Map<String, Value> = bpe
        .vocab
        .iter()
        .filter_map(|(k, v)| map.get(v).map(|n| (k.clone(), *n)))
        .collect::<Vec<_>>()
        .into_iter()
        .map(|(k, n)| (k, json!(n)))
        .collect();
    let kept_str = |s: &str| bpe.vocab.get(s).is_some_and(|id| map.contains_key(id));
    let merges: Vec<Value> = bpe
        .merges
        .iter()
        .filter(|(a, b)| kept_str(a) && kept_str(b) && kept_str(&format!("{a}{b}")))
        .map(|(a, b)| json!([a, b]))
        .collect();
    let model = out
        .get_mut("model")
        .and_then(Value::as_object_mut)
        .ok_or_else(|| err("tokenizer.json has no model"))?;
    // serde_json without preserve_order sorts keys; transformers reads the map by value.
    model.insert("vocab".into(), Value::Object(vocab));
    model.insert("merges".into(), Value::Array(merges));
    if let Some(Value::Array(added)) = out.get_mut("added_tokens") {
        for t in added.iter_mut() {
            let id = t.get("id").and_then(Value::as_u64).unwrap_or(u64::MAX) as u32;
            let new =
                map.get(&id).ok_or_else(|| err(format!("added token id {id} was dropped")))?;
            t["id"] = json!(new);
        }
    }
    if let Some(pp) = out.get_mut("post_processor") {
        remap_processor(pp, &map)?;
    }
    Ok(out)
}

/// Renumber `added_tokens_decoder` of tokenizer_config.json (keys are ids).
pub fn trim_tokenizer_config(tc: &Value, plan: &VocabPlan) -> Value {
    let map = id_map(plan);
    let mut out = tc.clone();
    if let Some(Value::Object(dec)) = out.get_mut("added_tokens_decoder") {
        let renamed: Map<String, Value> = dec
            .iter()
            .filter_map(|(k, v)| {
                k.parse::<u32>()
                    .ok()
                    .and_then(|id| map.get(&id))
                    .map(|n| (n.to_string(), v.clone()))
            })
            .collect();
        *dec = renamed;
    }
    out
}

/// Renumber token-id fields (`bos_token_id`, `eos_token_id`, `pad_token_id`, ...: an id or a list)
/// of a config.json / generation_config.json object; ids that were dropped are an error.
pub fn remap_id_fields(v: &mut Map<String, Value>, plan: &VocabPlan) -> Result<(), PruneError> {
    let map = id_map(plan);
    for (k, x) in v.iter_mut().filter(|(k, _)| k.ends_with("_token_id")) {
        let one = |y: &Value| -> Result<Value, PruneError> {
            let id = y.as_u64().ok_or_else(|| err(format!("{k} is not an id")))? as u32;
            Ok(json!(map.get(&id).ok_or_else(|| err(format!("{k} {id} was dropped")))?))
        };
        let new = match &*x {
            Value::Null => Value::Null,
            Value::Array(a) => Value::Array(a.iter().map(one).collect::<Result<_, _>>()?),
            y => one(y)?,
        };
        *x = new;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tj() -> Value {
        json!({
            "added_tokens": [{"id": 0, "content": "<s>", "special": true}],
            "post_processor": {"type": "TemplateProcessing", "single": [], "pair": [],
                "special_tokens": {"<s>": {"id": "<s>", "ids": [0], "tokens": ["<s>"]}}},
            "model": {"type": "BPE", "byte_fallback": true,
                "vocab": {"<s>": 0, "<0x41>": 1, "a": 2, "b": 3, "c": 4, "ab": 5, "abc": 6, "bc": 7, "ca": 8},
                "merges": ["a b", ["ab", "c"], "b c", "c a"]}
        })
    }

    #[test]
    fn closure_replays_merges_in_rank_order() {
        let b = Bpe::from_json(&tj()).unwrap();
        let ranks: HashMap<(&str, &str), usize> =
            b.merges.iter().enumerate().map(|(r, (x, y))| ((x.as_str(), y.as_str()), r)).collect();
        assert_eq!(b.closure_of("abc", &ranks), ["a", "b", "c", "ab", "abc"]);
    }

    #[test]
    fn plan_keeps_used_special_bytes_and_closure_and_renumbers() {
        let b = Bpe::from_json(&tj()).unwrap();
        let mut counts = vec![0u64; 9];
        counts[6] = 3; // "abc" used: needs a, b, c, ab
        let p = plan(&b, &counts, 1, &[]).unwrap();
        assert_eq!(p.keep, vec![0, 1, 2, 3, 4, 5, 6]);
        assert_eq!((p.special, p.bytes, p.used, p.closure), (1, 1, 1, 4));
        let t = trim_tokenizer(&tj(), &b, &p).unwrap();
        assert_eq!(t["model"]["vocab"]["abc"], 6);
        assert_eq!(
            t["model"]["merges"],
            json!([["a", "b"], ["ab", "c"]]),
            "merges with a dropped token go"
        );
        assert_eq!(t["post_processor"]["special_tokens"]["<s>"]["ids"], json!([0]));
        let e = plan(&b, &counts, 1, &["zz".to_string()]).unwrap_err().to_string();
        assert!(e.contains("\"zz\"") && e.contains("not in the vocabulary"), "{e}");
        let mut cfg = json!({"bos_token_id": 0, "eos_token_id": [0], "pad_token_id": null})
            .as_object()
            .unwrap()
            .clone();
        remap_id_fields(&mut cfg, &p).unwrap();
        assert_eq!(cfg["eos_token_id"], json!([0]));
    }

    #[test]
    fn unsupported_models_and_missing_specials_are_named() {
        let mut u = tj();
        u["model"]["type"] = json!("Unigram");
        let e = Bpe::from_json(&u).err().unwrap().to_string();
        assert!(e.contains("\"Unigram\"") && e.contains("supported: BPE"), "{e}");
        let mut n = tj();
        n["added_tokens"] = json!([]);
        let b = Bpe::from_json(&n).unwrap();
        assert!(plan(&b, &[1; 9], 1, &[]).unwrap_err().to_string().contains("no special tokens"));
    }
}
