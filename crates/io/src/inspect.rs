//! `orlik inspect`: what a checkpoint is, from its config and safetensors headers only (no weights
//! are read, so it is instant on any size).

use crate::hfdir::HfModel;
use crate::IoError;
use serde_json::json;
use std::collections::BTreeMap;
use std::path::Path;

/// Component of a parameter by HF name.
pub fn component(name: &str) -> &'static str {
    if name.contains("embed_tokens") {
        "embeddings"
    } else if name.contains("norm") {
        "norms"
    } else if name.contains("self_attn") {
        "attention"
    } else if name.contains(".mlp.") {
        "mlp"
    } else if name.starts_with("lm_head") {
        "lm_head"
    } else {
        "other"
    }
}

/// The checkpoint at `path` described: as a JSON document, or as the lines a person reads.
pub fn run(path: &Path, as_json: bool) -> Result<String, IoError> {
    let hf = HfModel::open(path)?;
    let c = &hf.config;
    let mut counts: BTreeMap<&str, u64> = BTreeMap::new();
    for t in hf.checkpoint.infos() {
        *counts.entry(component(&t.name)).or_default() += t.shape.iter().product::<usize>() as u64;
    }
    let total: u64 = counts.values().sum(); // tied lm_head is not stored, so counted once
    let dtypes: Vec<&str> =
        hf.stored_dtypes().iter().map(|d| crate::safetensors::dtype_name(*d)).collect();
    let windows: Vec<Option<usize>> = (0..c.num_hidden_layers).map(|i| c.layer_window(i)).collect();
    let v = json!({
        "path": path.display().to_string(),
        "architecture": c.architectures[0],
        "model_type": c.model_type,
        "num_hidden_layers": c.num_hidden_layers,
        "hidden_size": c.hidden_size,
        "intermediate_size": c.intermediate_size,
        "num_attention_heads": c.num_attention_heads,
        "num_key_value_heads": c.num_kv_heads(),
        "head_dim": c.head_dim(),
        "vocab_size": c.vocab_size,
        "max_position_embeddings": c.max_position_embeddings,
        "rope_theta": c.rope_theta(),
        "rms_norm_eps": c.rms_norm_eps,
        "tie_word_embeddings": c.tie_word_embeddings,
        "qkv_bias": c.qkv_bias(),
        "sliding_window_layers": windows.iter().filter(|w| w.is_some()).count(),
        "sliding_window": c.sliding_window,
        "parameters": {
            "embeddings": counts.get("embeddings").copied().unwrap_or(0),
            "attention": counts.get("attention").copied().unwrap_or(0),
            "mlp": counts.get("mlp").copied().unwrap_or(0),
            "norms": counts.get("norms").copied().unwrap_or(0),
            "lm_head": if c.tie_word_embeddings { serde_json::Value::String("tied to embeddings".into()) } else { json!(counts.get("lm_head").copied().unwrap_or(0)) },
            "total": total,
        },
        "dtypes": dtypes,
        "files": hf.checkpoint.files().iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
        "bytes_on_disk": hf.checkpoint.bytes_on_disk(),
    });
    if as_json {
        return Ok(serde_json::to_string_pretty(&v).unwrap_or_default());
    }
    use std::fmt::Write as _;
    let mut o = String::new();
    let m = |x: u64| format!("{:>12} ({:.2}M)", x, x as f64 / 1e6);
    let _ = writeln!(o, "{}  [{}]", path.display(), c.architectures[0]);
    let _ = writeln!(
        o,
        "  layers {}  hidden {}  ffn {}  heads {} (kv {})  head_dim {}  vocab {}  ctx {}  {}",
        c.num_hidden_layers,
        c.hidden_size,
        c.intermediate_size,
        c.num_attention_heads,
        c.num_kv_heads(),
        c.head_dim(),
        c.vocab_size,
        c.max_position_embeddings,
        match (
            c.arch() == orlik_model::Arch::Gemma3,
            c.rope_for("full_attention"),
            c.rope_for("sliding_attention")
        ) {
            (true, Ok(g), Ok(l)) => {
                let local =
                    (0..c.num_hidden_layers).filter(|&i| c.layer_window(i).is_some()).count();
                format!(
                    "rope_theta {} global / {} local ({local} sliding-window layers of {})",
                    g.0,
                    l.0,
                    c.sliding_window.unwrap_or(0)
                )
            }
            _ => format!("rope_theta {}", c.rope_theta()),
        }
    );
    for k in ["embeddings", "attention", "mlp", "norms"] {
        let _ = writeln!(o, "  {:<11}{}", k, m(counts.get(k).copied().unwrap_or(0)));
    }
    if c.tie_word_embeddings {
        let _ = writeln!(o, "  {:<11}{:>12} (tied to embeddings, counted once)", "lm_head", "-");
    } else {
        let _ =
            writeln!(o, "  {:<11}{}", "lm_head", m(counts.get("lm_head").copied().unwrap_or(0)));
    }
    let _ = writeln!(o, "  {:<11}{}", "total", m(total));
    let _ = writeln!(
        o,
        "  dtypes {}  files {}  on disk {:.1} MB",
        dtypes.join(","),
        hf.checkpoint.files().len(),
        hf.checkpoint.bytes_on_disk() as f64 / 1e6
    );
    Ok(o.trim_end().to_string())
}
