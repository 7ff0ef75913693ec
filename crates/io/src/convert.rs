//! GGUF -> Hugging Face directory. The only rename table in orlik lives here, at the import
//! boundary: llama.cpp tensor names -> HF names. Everything after this step is HF-native.

use crate::gguf::{GValue, Gguf};
use crate::hfdir::{save_pretrained, SaveOptions};
use crate::{tokenizer, IoError};
use candle_core::Tensor;
use orlik_model::{Arch, Config, ModelError};
use serde_json::{json, Value};
use std::path::Path;

pub struct ConvertReport {
    pub config: Config,
    pub tensors: usize,
    pub tied: bool,
    /// Licence files copied from beside the GGUF.
    pub licences: Vec<String>,
}

impl ConvertReport {
    /// The line a person reads.
    pub fn summary(&self, src: &Path, out: &Path) -> String {
        let c = &self.config;
        format!(
            "converted {} -> {}: {} ({} layers, hidden {}, {} heads / {} kv, head_dim {}, ffn {}, vocab {}, {} tensors{})",
            src.display(),
            out.display(),
            c.architectures[0],
            c.num_hidden_layers,
            c.hidden_size,
            c.num_attention_heads,
            c.num_kv_heads(),
            c.head_dim(),
            c.intermediate_size,
            c.vocab_size,
            self.tensors,
            if self.tied { ", tied embeddings" } else { "" }
        )
    }
}

/// `orlik convert`: the GGUF at `src` as an HF directory at `out` (refused over anything that
/// is not a convert output; replaced when `opts.overwrite`), with the licence terms shipped
/// beside the GGUF (they travel, as side files, with every model derived from it) and this
/// command's provenance. `progress(done, total, tensor)` counts tensors.
pub fn run(
    src: &Path,
    out: &Path,
    opts: &SaveOptions,
    progress: impl FnMut(usize, usize, &str),
) -> Result<ConvertReport, IoError> {
    use crate::output::{check, Mode};
    check(out, "convert", &[src], Mode::from_flags(opts.overwrite, false))?;
    let mut extra = vec![("orlik.json".to_string(), crate::text::provenance())];
    let dir = src.parent().unwrap_or(Path::new("."));
    let mut licences = Vec::new();
    for name in crate::hfdir::licence_files() {
        let p = dir.join(name);
        if p.is_file() {
            extra.push((name.to_string(), std::fs::read(&p).map_err(crate::io_err(&p))?));
            licences.push(name.to_string());
        }
    }
    let mut rep = convert_gguf(src, out, opts, extra, progress)?;
    rep.licences = licences;
    Ok(rep)
}

/// Which models a row of the rename table applies to.
#[derive(Clone, Copy, PartialEq)]
enum Rows {
    All,
    /// Gemma 3's norms on both sides of attention and MLP.
    Sandwich,
    /// Gemma 3's and Qwen3's per-head q/k norms.
    QkNorm,
}

/// The rename table, both ways: (llama.cpp leaf, HF leaf, which models). llama.cpp's `ffn_norm`
/// is the MLP's input norm in every family, but HF calls it differently in Gemma 3. Rows are
/// looked up in order, so a Gemma row comes before the generic row with the same llama.cpp name.
const LAYER_NAMES: &[(&str, &str, Rows)] = &[
    ("attn_norm", "input_layernorm", Rows::All),
    ("ffn_norm", "pre_feedforward_layernorm", Rows::Sandwich),
    ("post_attention_norm", "post_attention_layernorm", Rows::Sandwich),
    ("post_ffw_norm", "post_feedforward_layernorm", Rows::Sandwich),
    ("attn_q_norm", "self_attn.q_norm", Rows::QkNorm),
    ("attn_k_norm", "self_attn.k_norm", Rows::QkNorm),
    ("ffn_norm", "post_attention_layernorm", Rows::All),
    ("attn_q", "self_attn.q_proj", Rows::All),
    ("attn_k", "self_attn.k_proj", Rows::All),
    ("attn_v", "self_attn.v_proj", Rows::All),
    ("attn_output", "self_attn.o_proj", Rows::All),
    ("ffn_gate", "mlp.gate_proj", Rows::All),
    ("ffn_up", "mlp.up_proj", Rows::All),
    ("ffn_down", "mlp.down_proj", Rows::All),
];
/// Whole-model tensors: (llama.cpp name, HF name).
const GLOBAL_NAMES: &[(&str, &str)] = &[
    ("token_embd.weight", "model.embed_tokens.weight"),
    ("output_norm.weight", "model.norm.weight"),
    ("output.weight", "lm_head.weight"),
];

fn rows(arch: Arch) -> impl Iterator<Item = &'static (&'static str, &'static str, Rows)> {
    LAYER_NAMES.iter().filter(move |r| match r.2 {
        Rows::All => true,
        Rows::Sandwich => arch == Arch::Gemma3,
        Rows::QkNorm => matches!(arch, Arch::Gemma3 | Arch::Qwen3),
    })
}

/// `PREFIX{layer}.{base}.{kind}` -> (layer, base, kind).
pub(crate) fn layer_parts<'a>(name: &'a str, prefix: &str) -> Option<(usize, &'a str, &'a str)> {
    let (layer, leaf) = name.strip_prefix(prefix)?.split_once('.')?;
    let (base, kind) = leaf.rsplit_once('.')?;
    Some((layer.parse().ok()?, base, kind))
}

/// llama.cpp tensor name -> HF name.
pub(crate) fn hf_name(gguf: &str, arch: Arch) -> Option<String> {
    if let Some((_, hf)) = GLOBAL_NAMES.iter().find(|(g, _)| *g == gguf) {
        return Some(hf.to_string());
    }
    let (layer, base, kind) = layer_parts(gguf, "blk.")?;
    let hf = rows(arch).find(|r| r.0 == base)?.1;
    Some(format!("model.layers.{layer}.{hf}.{kind}"))
}

/// HF tensor name -> llama.cpp name (the inverse of [`hf_name`], from the same table).
pub(crate) fn gguf_name(hf: &str, arch: Arch) -> Option<String> {
    if let Some((g, _)) = GLOBAL_NAMES.iter().find(|(_, h)| *h == hf) {
        return Some(g.to_string());
    }
    let (layer, base, kind) = layer_parts(hf, "model.layers.")?;
    let g = rows(arch).find(|r| r.1 == base)?.0;
    Some(format!("blk.{layer}.{g}.{kind}"))
}

/// Undo llama.cpp's `permute` of Q/K rows (convert_hf_to_gguf.py, LlamaModel.permute):
/// GGUF rows are (heads, hd/2, 2) interleaved; HF rows are (heads, 2, hd/2) half-split.
pub fn unpermute_qk(t: &Tensor, n_heads: usize) -> candle_core::Result<Tensor> {
    let dims = t.dims().to_vec();
    let rows = dims[0];
    let cols: usize = dims[1..].iter().product();
    let hd = rows / n_heads;
    t.reshape((n_heads, hd / 2, 2, cols))? // (h, hd/2, 2, in)
        .transpose(1, 2)? // (h, 2, hd/2, in)
        .contiguous()?
        .reshape(dims)
}

/// llama.cpp's `permute` of Q/K rows (the inverse of [`unpermute_qk`]): HF rows (heads, 2,
/// hd/2) half-split become (heads, hd/2, 2) interleaved.
pub fn permute_qk(t: &Tensor, n_heads: usize) -> candle_core::Result<Tensor> {
    let dims = t.dims().to_vec();
    let rows = dims[0];
    let cols: usize = dims[1..].iter().product();
    let hd = rows / n_heads;
    t.reshape((n_heads, 2, hd / 2, cols))? // (h, 2, hd/2, in)
        .transpose(1, 2)? // (h, hd/2, 2, in)
        .contiguous()?
        .reshape(dims)
}

/// The HF config a GGUF's metadata describes (checked like any config.json).
pub fn config_from_gguf(g: &Gguf, vocab: usize) -> Result<(Config, Arch), IoError> {
    let arch_name = g.get("general.architecture").and_then(GValue::as_str).unwrap_or("<none>");
    // orlik's export records the HF architecture: Mistral is stored as llama.cpp's `llama`.
    let recorded = g.get("orlik.hf_architecture").and_then(GValue::as_str).and_then(Arch::from_hf);
    let arch = match arch_name {
        "llama" if recorded == Some(Arch::Mistral) => Arch::Mistral,
        // a Qwen2 llama.cpp's qwen2 cannot hold (heads x head_dim != hidden: orlik's export)
        "llama" if recorded == Some(Arch::Qwen2) => Arch::Qwen2,
        "llama" => Arch::Llama,
        "mistral" => Arch::Mistral,
        "qwen2" => Arch::Qwen2,
        "gemma3" => Arch::Gemma3,
        "qwen3" => Arch::Qwen3,
        other => {
            return Err(IoError::Model {
                path: g.path.clone(),
                source: ModelError::UnknownArchitecture {
                    origin: "general.architecture".into(),
                    name: other.into(),
                },
            })
        }
    };
    let need = |k: &str| -> Result<u64, IoError> {
        g.get(&format!("{arch_name}.{k}")).and_then(GValue::as_u64).ok_or_else(|| IoError::Format {
            path: g.path.clone(),
            msg: format!("GGUF metadata {arch_name}.{k} missing"),
        })
    };
    let hidden = need("embedding_length")? as usize;
    let heads = need("attention.head_count")? as usize;
    let kv = g
        .get(&format!("{arch_name}.attention.head_count_kv"))
        .and_then(GValue::as_u64)
        .map_or(heads, |x| x as usize);
    // GGUF states key_length when it differs from hidden/heads; otherwise that is the definition.
    let head_dim = g
        .get(&format!("{arch_name}.attention.key_length"))
        .and_then(GValue::as_u64)
        .map_or(hidden / heads.max(1), |x| x as usize);
    let f =
        |k: &str, d: f64| g.get(&format!("{arch_name}.{k}")).and_then(GValue::as_f64).unwrap_or(d);
    let mut extra = serde_json::Map::new();
    extra.insert("torch_dtype".into(), json!("float32"));
    let layers = need("block_count")? as usize;
    // Every layer has tensors of its own: more declared layers than tensors is a corrupt count,
    // refused before anything is sized by it.
    if layers == 0 || layers > g.tensors.len() {
        return Err(IoError::Format {
            path: g.path.clone(),
            msg: format!(
                "GGUF metadata {arch_name}.block_count = {layers} but the file holds {} tensors",
                g.tensors.len()
            ),
        });
    }
    let gemma = arch == Arch::Gemma3;
    let (mut sliding_window, mut layer_types, mut rope_parameters) = (None, None, None);
    if gemma {
        // What llama.cpp's gemma3 loader assumes and the GGUF does not store (llama-model.cpp):
        // every 6th layer is global, the others slide over `attention.sliding_window` tokens
        // with RoPE base 10000; queries are scaled by 1/sqrt(head_dim) except on the 27B
        // (62 layers), which uses hidden / heads.
        sliding_window =
            g.get("gemma3.attention.sliding_window").and_then(GValue::as_u64).map(|x| x as usize);
        // A per-layer pattern (bools, true = sliding) where the file has one (orlik's export of
        // a depth-pruned Gemma writes it; llama.cpp reads it in `load_swa_pattern`).
        let pattern: Option<Vec<bool>> = g
            .get("gemma3.attention.sliding_window_pattern")
            .and_then(GValue::as_array)
            .map(|a| a.iter().map(|v| v.as_bool().unwrap_or(false)).collect());
        if pattern.as_ref().is_some_and(|p| p.len() != layers) {
            return Err(IoError::Format {
                path: g.path.clone(),
                msg: format!(
                    "gemma3.attention.sliding_window_pattern has {} entries for {layers} layers",
                    pattern.as_ref().map_or(0, Vec::len)
                ),
            });
        }
        layer_types = Some(
            (0..layers)
                .map(|i| {
                    let sliding = pattern.as_ref().map_or((i + 1) % 6 != 0, |p| p[i]);
                    if sliding { "sliding_attention" } else { "full_attention" }.to_string()
                })
                .collect(),
        );
        let scalar = if layers == 62 { hidden / heads.max(1) } else { head_dim };
        extra.insert("query_pre_attn_scalar".into(), json!(scalar));
        extra.insert("hidden_activation".into(), json!("gelu_pytorch_tanh"));
        extra.insert("final_logit_softcapping".into(), Value::Null);
        extra.insert("attn_logit_softcapping".into(), Value::Null);
        let mut full = json!({"rope_type": "default", "rope_theta": f("rope.freq_base", 1_000_000.0) as f32 as f64});
        if g.get("gemma3.rope.scaling.type").and_then(GValue::as_str) == Some("linear") {
            full = json!({"rope_type": "linear", "rope_theta": full["rope_theta"], "factor": f("rope.scaling.factor", 1.0)});
        }
        rope_parameters = Some(
            json!({"full_attention": full, "sliding_attention": {"rope_type": "default", "rope_theta": f("rope.freq_base_swa", 10_000.0) as f32 as f64}}),
        );
    }
    let tid = |k: &str| g.get(k).and_then(GValue::as_u64).map(|x| json!(x));
    let cfg = Config {
        architectures: vec![arch.hf_name().into()],
        model_type: arch.model_type().into(),
        vocab_size: vocab,
        hidden_size: hidden,
        intermediate_size: need("feed_forward_length")? as usize,
        num_hidden_layers: layers,
        num_attention_heads: heads,
        num_key_value_heads: Some(kv),
        head_dim: Some(head_dim),
        // llama.cpp stores eps as f32; round-trip through f32 text gives e.g. 1e-5 exactly.
        rms_norm_eps: format!("{}", f("attention.layer_norm_rms_epsilon", 1e-6) as f32)
            .parse()
            .unwrap_or(1e-6),
        rope_theta: if gemma { None } else { Some(f("rope.freq_base", 10000.0) as f32 as f64) },
        rope_scaling: llama3_from_gguf(g, arch_name, head_dim, f("rope.freq_base", 10000.0))?,
        rope_parameters,
        max_position_embeddings: g
            .get(&format!("{arch_name}.context_length"))
            .and_then(GValue::as_u64)
            .unwrap_or(2048) as usize,
        tie_word_embeddings: g.tensor_info("output.weight").is_none(),
        attention_bias: if matches!(arch, Arch::Llama | Arch::Qwen3) {
            Some(g.tensor_info("blk.0.attn_q.bias").is_some())
        } else {
            None
        },
        mlp_bias: if arch == Arch::Llama { Some(false) } else { None },
        sliding_window: sliding_window.or_else(|| {
            let w = g.get(&format!("{arch_name}.attention.sliding_window"));
            w.and_then(GValue::as_u64).filter(|_| arch == Arch::Mistral).map(|x| x as usize)
        }),
        use_sliding_window: if matches!(arch, Arch::Qwen2 | Arch::Qwen3) {
            Some(false)
        } else {
            None
        },
        max_window_layers: None,
        layer_types,
        hidden_act: if gemma { None } else { Some("silu".into()) },
        bos_token_id: tid("tokenizer.ggml.bos_token_id"),
        eos_token_id: tid("tokenizer.ggml.eos_token_id"),
        pad_token_id: tid("tokenizer.ggml.padding_token_id"),
        extra,
    };
    let s = serde_json::to_string(&cfg).unwrap_or_default();
    let cfg = Config::from_json_str(&s, &g.path.display().to_string())
        .map_err(|source| IoError::Model { path: g.path.clone(), source })?;
    Ok((cfg, arch))
}

/// Llama 3's `rope_freqs.weight` as the `rope_scaling` it came from (`rope_freqs::invert`).
fn llama3_from_gguf(
    g: &Gguf,
    arch: &str,
    head_dim: usize,
    base: f64,
) -> Result<Option<Value>, IoError> {
    let Some(t) = g.tensor_info("rope_freqs.weight") else { return Ok(None) };
    let err = |msg: String| IoError::Tensor { path: g.path.clone(), name: t.name.clone(), msg };
    if !matches!(arch, "llama" | "mistral") {
        return Err(err(format!("frequency factors on a {arch} model are not supported")));
    }
    let f: Vec<f32> = g
        .dequantize(t)?
        .flatten_all()
        .and_then(|v| v.to_vec1())
        .map_err(|source| IoError::Candle { context: t.name.clone(), source })?;
    let recorded = g.get("orlik.rope_scaling").and_then(GValue::as_str);
    crate::rope_freqs::invert(&f, head_dim, base as f32 as f64, recorded).map_err(err)
}

/// Convert a GGUF file into an HF directory at `target` (atomically).
pub fn convert_gguf(
    src: &Path,
    target: &Path,
    opts: &SaveOptions,
    extra_files: Vec<(String, Vec<u8>)>,
    mut progress: impl FnMut(usize, usize, &str),
) -> Result<ConvertReport, IoError> {
    let g = Gguf::open(src)?;
    let tok = tokenizer::from_gguf(&g)?;
    let emb = g.tensor_info("token_embd.weight").ok_or_else(|| IoError::Tensor {
        path: src.into(),
        name: "token_embd.weight".into(),
        msg: "missing".into(),
    })?;
    let vocab = emb.ne.get(1).copied().unwrap_or(0) as usize;
    let (cfg, arch) = config_from_gguf(&g, vocab)?;
    let llama_rope =
        matches!(g.get("general.architecture").and_then(GValue::as_str), Some("llama" | "mistral"));
    let mut tensors: Vec<(String, Tensor)> = Vec::with_capacity(g.tensors.len());
    let n = g.tensors.len();
    for (i, t) in g.tensors.iter().enumerate() {
        progress(i, n, &t.name);
        if t.name == "rope_freqs.weight" {
            continue; // in config.json as rope_scaling (config_from_gguf)
        }
        let name = hf_name(&t.name, arch).ok_or_else(|| IoError::Tensor {
            path: src.into(),
            name: t.name.clone(),
            msg: "no Hugging Face equivalent known".into(),
        })?;
        let mut w = g.dequantize(t)?;
        let values = w
            .flatten_all()
            .and_then(|v| v.to_vec1::<f32>())
            .map_err(|source| IoError::Candle { context: t.name.clone(), source })?;
        crate::guard::check_finite_f32(src, &t.name, &values)?;
        // llama.cpp stores Gemma's zero-centred RMSNorm weights shifted by +1 (convert_hf_to_gguf,
        // Gemma3Model `norm_shift`); HF keeps w and applies 1 + w.
        if arch == Arch::Gemma3 && name.ends_with("norm.weight") {
            w = (w - 1.0).map_err(|source| IoError::Candle {
                context: format!("unshifting {}", t.name),
                source,
            })?;
        }
        // llama.cpp permutes Q/K for its interleaved RoPE only for the llama family.
        if llama_rope {
            let cerr =
                |source| IoError::Candle { context: format!("un-permuting {}", t.name), source };
            if name.contains("self_attn.q_proj") {
                w = unpermute_qk(&w, cfg.num_attention_heads).map_err(cerr)?;
            } else if name.contains("self_attn.k_proj") {
                w = unpermute_qk(&w, cfg.num_kv_heads()).map_err(cerr)?;
            }
        }
        tensors.push((name, w));
    }
    progress(n, n, "writing");
    tensors.sort_by_key(|a| orlik_model::config::layer_order(&a.0));
    let mut files = vec![
        ("tokenizer.json".to_string(), serde_json::to_vec(&tok.tokenizer_json).unwrap_or_default()),
        (
            "tokenizer_config.json".to_string(),
            serde_json::to_vec_pretty(&tok.tokenizer_config).unwrap_or_default(),
        ),
    ];
    let mut special = serde_json::Map::new();
    for k in ["bos_token", "eos_token", "unk_token", "pad_token"] {
        if let Some(v) = tok.tokenizer_config.get(k) {
            special.insert(k.into(), v.clone());
        }
    }
    files.push((
        "special_tokens_map.json".into(),
        serde_json::to_vec_pretty(&Value::Object(special)).unwrap_or_default(),
    ));
    files.extend(extra_files);
    save_pretrained(target, &cfg, &tensors, &files, opts)?;
    Ok(ConvertReport {
        tied: cfg.tie_word_embeddings,
        config: cfg,
        tensors: tensors.len(),
        licences: Vec::new(),
    })
}
