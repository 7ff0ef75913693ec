//! The tiny model every crate's tests build on, described once: vocabulary 13, hidden 8, MLP 12,
//! 2 layers, 4 query heads over 2 KV heads of width 6, RoPE base 100. A test changes what it
//! needs through `patch` (config keys replaced or added), e.g. `json!({"tie_word_embeddings":
//! true})` or Gemma 3's `layer_types`.

use crate::Config;
use serde_json::{json, Value};

/// The HF `model_type` of an architecture name.
fn model_type(arch: &str) -> &'static str {
    match arch {
        "LlamaForCausalLM" => "llama",
        "MistralForCausalLM" => "mistral",
        "Gemma3ForCausalLM" => "gemma3_text",
        "Qwen2ForCausalLM" => "qwen2",
        "Qwen3ForCausalLM" => "qwen3",
        _ => "unknown",
    }
}

/// The tiny config of `arch` (an HF architecture name) as config.json would hold it.
pub fn tiny_json(arch: &str, patch: Value) -> Value {
    let mut v = json!({
        "architectures": [arch], "model_type": model_type(arch), "vocab_size": 13,
        "hidden_size": 8, "intermediate_size": 12, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 6,
        "rms_norm_eps": 1e-5, "rope_theta": 100.0,
    });
    if let (Some(base), Value::Object(p)) = (v.as_object_mut(), patch) {
        base.extend(p);
    }
    v
}

/// The tiny config of `arch`, parsed (panics on a patch that makes it invalid: tests only).
#[allow(clippy::unwrap_used)]
pub fn tiny(arch: &str, patch: Value) -> Config {
    Config::from_json_str(&tiny_json(arch, patch).to_string(), "tiny").unwrap()
}

/// `n` words drawn from `words` by a seeded LCG (state `x`, advanced), in paragraphs of 9: text
/// over a tiny tokenizer's vocabulary, the same on every machine.
pub fn seeded_words(words: &[&str], n: usize, x: &mut u64) -> String {
    let mut s = String::new();
    for i in 0..n {
        *x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        s.push_str(words[(*x >> 33) as usize % words.len()]);
        s.push_str(if i % 9 == 8 { "\n\n" } else { " " });
    }
    s
}
