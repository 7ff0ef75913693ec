//! HF directory -> GGUF that llama.cpp loads (`orlik export`), the inverse of `convert`:
//! llama.cpp's tensor names (the rename table in `convert.rs`, used both ways), its metadata
//! keys per architecture (as `convert_hf_to_gguf.py` writes them), the Q/K row permutation of
//! the Llama family, Gemma's +1 norms, every dimension explicit (pruned widths, head_dim, KV
//! heads), the tokenizer, the chat template, and the licence files beside the GGUF.
//!
//! What llama.cpp cannot represent is refused with the reason (RoPE scaling types it lacks, a
//! Gemma attention scale other than the one it assumes) or said in the report (Mistral's
//! sliding window: llama.cpp runs Mistral as `llama`, with full attention).

use crate::convert::{gguf_name, permute_qk};
use crate::gguf::GValue;
use crate::gguf_write::{encode, ggml_type_id, OutTensor};
use crate::hfdir::HfModel;
use crate::{io_err, IoError};
use candle_core::quantized::GgmlDType;
use candle_core::{DType, Tensor};
use orlik_model::{Arch, Config};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Storage type of the 2-D weights (`--type`); 1-D tensors (norms, biases) stay f32, as
/// llama.cpp's own converter and quantiser keep them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum GgufType {
    #[serde(rename = "f32")]
    F32,
    #[serde(rename = "f16")]
    F16,
    #[serde(rename = "bf16")]
    Bf16,
    #[serde(rename = "q8_0")]
    Q8_0,
    #[serde(rename = "q4_0")]
    Q4_0,
    #[serde(rename = "q4_k")]
    Q4K,
    #[serde(rename = "q6_k")]
    Q6K,
}

/// The pipeline's export stage (`[export]` in a recipe, `orlik compress --export-gguf TYPE`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportSettings {
    /// Storage type of the weight matrices of OUT/final.gguf: f32, f16, bf16, q8_0, q4_0,
    /// q4_k, q6_k.
    pub gguf: GgufType,
}

impl GgufType {
    pub const NAMES: &'static [&'static str] =
        &["f32", "f16", "bf16", "q8_0", "q4_0", "q4_k", "q6_k"];
    pub fn parse(s: &str) -> Result<GgufType, String> {
        use GgufType::*;
        Ok(match s.to_ascii_lowercase().as_str() {
            "f32" => F32,
            "f16" => F16,
            "bf16" => Bf16,
            "q8_0" => Q8_0,
            "q4_0" => Q4_0,
            "q4_k" => Q4K,
            "q6_k" => Q6K,
            other => return Err(format!("GGUF type {other:?}: one of {}", Self::NAMES.join(", "))),
        })
    }
    pub fn name(self) -> &'static str {
        Self::NAMES[self as usize]
    }
    /// The types tried in order for a 2-D tensor: the requested one, then what llama.cpp's
    /// quantiser falls back to when a row is not a whole number of blocks (k-quants need
    /// rows of 256; SmolLM2's hidden 576 is not).
    fn chain(self) -> &'static [GgmlDType] {
        use GgmlDType as G;
        match self {
            GgufType::F32 => &[G::F32],
            GgufType::F16 => &[G::F16],
            GgufType::Bf16 => &[G::BF16],
            GgufType::Q8_0 => &[G::Q8_0, G::F16],
            GgufType::Q4_0 => &[G::Q4_0, G::F16],
            GgufType::Q4K => &[G::Q4K, G::Q5_0, G::Q8_0, G::F16],
            GgufType::Q6K => &[G::Q6K, G::Q8_0, G::F16],
        }
    }
    /// `general.file_type` (llama.cpp's `llama_ftype`).
    fn file_type(self) -> u32 {
        match self {
            GgufType::F32 => 0,
            GgufType::F16 => 1,
            GgufType::Q4_0 => 2,
            GgufType::Q8_0 => 7,
            GgufType::Q4K => 14, // Q4_K_S: every matrix Q4_K
            GgufType::Q6K => 18,
            GgufType::Bf16 => 32,
        }
    }
}

/// What `orlik export` wrote.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct ExportReport {
    pub arch: String,
    pub tokenizer: String,
    pub tensors: usize,
    pub bytes: u64,
    /// Tensors per stored GGML type.
    pub types: BTreeMap<String, usize>,
    /// Tensors stored in another type than asked: (why, their names).
    pub fallbacks: BTreeMap<String, Vec<String>>,
    /// What llama.cpp will do differently from orlik, said once.
    pub notes: Vec<String>,
    pub licences: Vec<PathBuf>,
}

impl ExportReport {
    pub fn summary(&self, out: &Path) -> String {
        let types: Vec<String> = self.types.iter().map(|(t, n)| format!("{n} {t}")).collect();
        format!(
            "exported {}: llama.cpp architecture {}, {} tokenizer, {} tensors ({}), {}",
            out.display(),
            self.arch,
            self.tokenizer,
            self.tensors,
            types.join(", "),
            crate::text::format_size(self.bytes)
        )
    }
}

/// llama.cpp's architecture for a model. A Qwen2 whose heads × head_dim is not its hidden size
/// (heads pruned, hidden kept) goes as `llama`: llama.cpp's qwen2 graph sizes q/o by hidden, its
/// llama graph by heads × head_dim, and with the Q/K rows (and biases) permuted for llama's
/// interleaved RoPE it computes what Qwen2 computes (optional q/k/v biases included).
fn gguf_arch(cfg: &Config) -> &'static str {
    match cfg.arch() {
        Arch::Llama | Arch::Mistral => "llama",
        Arch::Qwen2 if qwen2_as_llama(cfg).is_some() => "llama",
        Arch::Qwen2 => "qwen2",
        Arch::Gemma3 => "gemma3",
        Arch::Qwen3 => "qwen3",
    }
}

/// Why a Qwen2 model must be stored as llama.cpp's `llama` (which takes q/k/v biases too), if it
/// must: llama.cpp's `qwen2` graph derives the head width from the hidden size, and reads no
/// `rope_freqs` tensor (Llama-3 RoPE scaling; llama.cpp's src/models/qwen2.cpp).
fn qwen2_as_llama(cfg: &Config) -> Option<String> {
    if cfg.num_attention_heads * cfg.head_dim() != cfg.hidden_size {
        return Some(format!(
            "its qwen2 needs heads x head_dim = hidden ({} x {} != {})",
            cfg.num_attention_heads,
            cfg.head_dim(),
            cfg.hidden_size
        ));
    }
    matches!(cfg.llama3_scaling(), Ok(Some(_)))
        .then(|| "its qwen2 reads no rope_freqs tensor (Llama-3 RoPE scaling)".to_string())
}

/// `orlik export MODEL --gguf OUT`: the model at `dir` as a GGUF file at `out` (replaced only
/// when `overwrite` and it is a GGUF), with the licence files that came with the model written
/// beside it as `OUT-STEM.NAME` first. `progress(done, total, tensor)` counts tensors.
pub fn run(
    dir: &Path,
    out: &Path,
    ty: GgufType,
    overwrite: bool,
    progress: impl FnMut(usize, usize, &str),
) -> Result<ExportReport, IoError> {
    check_target(dir, out, overwrite)?;
    let hf = HfModel::open(dir)?;
    let cfg = &hf.config;
    let arch = cfg.arch();
    let mut notes = Vec::new();
    let name = gguf_arch(cfg);
    if let (Arch::Qwen2, Some(why)) = (arch, qwen2_as_llama(cfg)) {
        notes.push(format!("stored as llama.cpp's llama architecture: {why}"));
    }
    let dir_name = crate::output::resolve(dir).file_name().map(|n| n.to_string_lossy().to_string());
    let mut meta = model_metadata(cfg, name, dir_name.as_deref(), &mut notes).map_err(|msg| {
        IoError::Format {
            path: dir.join("config.json"),
            msg: format!("cannot be exported for llama.cpp: {msg}"),
        }
    })?;
    let tok_path = dir.join("tokenizer.json");
    let read_json = |p: &Path| -> Result<Value, IoError> {
        let s = std::fs::read_to_string(p).map_err(io_err(p))?;
        serde_json::from_str(&s)
            .map_err(|e| IoError::Tokenizer { path: p.into(), msg: e.to_string() })
    };
    if !tok_path.exists() {
        return Err(IoError::Tokenizer {
            path: tok_path,
            msg: "missing: llama.cpp needs the vocabulary inside the GGUF".into(),
        });
    }
    let tok = read_json(&tok_path)?;
    let tc_path = dir.join("tokenizer_config.json");
    let tok_cfg = if tc_path.exists() { read_json(&tc_path)? } else { Value::Null };
    let template = chat_template(dir, &tok_cfg)?;
    let id = |v: &Option<Value>| match v {
        Some(Value::Array(a)) => a.first().and_then(Value::as_u64).map(|x| x as u32),
        Some(v) => v.as_u64().map(|x| x as u32),
        None => None,
    };
    let ids = [id(&cfg.bos_token_id), id(&cfg.eos_token_id), id(&cfg.pad_token_id)];
    let (vocab_meta, tok_kind) =
        crate::gguf_vocab::metadata(&tok, &tok_cfg, template, cfg.vocab_size, ids)
            .map_err(|msg| IoError::Tokenizer { path: tok_path.clone(), msg })?;
    meta.extend(vocab_meta);
    meta.push(("general.file_type".into(), GValue::U32(ty.file_type())));
    meta.push(("general.quantization_version".into(), GValue::U32(2)));
    let licences = write_licences(dir, out, &mut meta)?;
    meta.push(("orlik.command".into(), GValue::Str(crate::output::command_line())));
    meta.push(("orlik.export.type".into(), GValue::Str(ty.name().into())));

    let plan = plan_tensors(&hf, ty)?;
    let (tensors, fallbacks): (Vec<OutTensor>, Vec<Option<String>>) =
        plan.iter().map(|p| (p.out.clone(), p.fallback.clone())).unzip();
    let mut types = BTreeMap::new();
    for t in &tensors {
        *types.entry(crate::gguf::ggml_type_name(t.ty)).or_insert(0) += 1;
    }
    let bytes =
        crate::gguf_write::write(out, &meta, &tensors, |i| tensor_data(&hf, &plan[i]), progress)?;
    Ok(ExportReport {
        arch: name.into(),
        tokenizer: tok_kind.into(),
        tensors: tensors.len(),
        bytes,
        types,
        fallbacks: group(tensors.iter().zip(fallbacks)),
        notes,
        licences,
    })
}

fn group<'a>(
    it: impl Iterator<Item = (&'a OutTensor, Option<String>)>,
) -> BTreeMap<String, Vec<String>> {
    let mut m: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (t, why) in it {
        if let Some(w) = why {
            m.entry(w).or_default().push(t.name.clone());
        }
    }
    m
}

/// The output file: never inside the model directory, never over a file that is not a GGUF,
/// over an earlier GGUF only with `--force`.
fn check_target(dir: &Path, out: &Path, overwrite: bool) -> Result<(), IoError> {
    let err = |msg: &str| IoError::Output { path: out.into(), msg: msg.into() };
    let (o, d) = (crate::output::resolve(out), crate::output::resolve(dir));
    if o.starts_with(&d) {
        return Err(err("is inside the model directory being exported; write the GGUF elsewhere"));
    }
    if out.is_dir() {
        return Err(err("is a directory; give the path of the .gguf file to write"));
    }
    if out.exists() {
        let mut magic = [0u8; 4];
        let is_gguf = std::fs::File::open(out)
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut magic))
            .is_ok()
            && &magic == b"GGUF";
        if !is_gguf {
            return Err(err("exists and is not a GGUF file: refusing to replace it"));
        }
        if !overwrite {
            return Err(IoError::Exists(out.into()));
        }
    }
    Ok(())
}

/// Architecture metadata, as llama.cpp's loader reads it.
fn model_metadata(
    cfg: &Config,
    a: &str,
    name: Option<&str>,
    notes: &mut Vec<String>,
) -> Result<Vec<(String, GValue)>, String> {
    let mut m: Vec<(String, GValue)> = Vec::new();
    let k = |s: &str| format!("{a}.{s}");
    let u = |x: usize| GValue::U32(x as u32);
    m.push(("general.architecture".into(), GValue::Str(a.into())));
    m.push(("general.type".into(), GValue::Str("model".into())));
    if let Some(n) = name {
        m.push(("general.name".into(), GValue::Str(n.into())));
    }
    // orlik's own key: the HF architecture, so `orlik convert` restores Mistral (stored as llama).
    m.push(("orlik.hf_architecture".into(), GValue::Str(cfg.architectures[0].clone())));
    m.push((k("context_length"), u(cfg.max_position_embeddings)));
    m.push((k("embedding_length"), u(cfg.hidden_size)));
    m.push((k("block_count"), u(cfg.num_hidden_layers)));
    m.push((k("feed_forward_length"), u(cfg.intermediate_size)));
    m.push((k("attention.head_count"), u(cfg.num_attention_heads)));
    m.push((k("attention.head_count_kv"), u(cfg.num_kv_heads())));
    m.push((k("attention.key_length"), u(cfg.head_dim())));
    m.push((k("attention.value_length"), u(cfg.head_dim())));
    m.push((k("attention.layer_norm_rms_epsilon"), GValue::F32(cfg.rms_norm_eps as f32)));
    m.push((k("vocab_size"), u(cfg.vocab_size)));
    let arch = cfg.arch();
    if arch == Arch::Gemma3 {
        gemma_metadata(cfg, &mut m)?;
        return Ok(m);
    }
    m.push((k("rope.dimension_count"), u(cfg.head_dim())));
    m.push((k("rope.freq_base"), GValue::F32(cfg.rope_theta() as f32)));
    // transformers < 5 writes rope_scaling, 5 writes rope_parameters
    if let Some(v) =
        cfg.rope_scaling.as_ref().or(cfg.rope_parameters.as_ref()).filter(|v| !v.is_null())
    {
        match v.get("rope_type").or_else(|| v.get("type")).and_then(Value::as_str) {
            None | Some("default") => {}
            Some("llama3") if a != "llama" => {
                return Err(format!(
                    "rope_scaling type \"llama3\": llama.cpp's {a} graph reads no rope_freqs tensor (only its llama does)"
                ))
            }
            Some("llama3") => {
                // the factors go in the rope_freqs tensor; the parameters, for orlik's convert
                m.push(("orlik.rope_scaling".into(), GValue::Str(v.to_string())));
            }
            Some("linear") => {
                let f =
                    v.get("factor").and_then(Value::as_f64).ok_or("rope_scaling.factor missing")?;
                m.push((k("rope.scaling.type"), GValue::Str("linear".into())));
                m.push((k("rope.scaling.factor"), GValue::F32(f as f32)));
            }
            Some(other) => {
                return Err(format!("rope_scaling type {other:?} is not exported (linear, llama3)"))
            }
        }
    }
    let window = (0..cfg.num_hidden_layers).find_map(|i| cfg.layer_window(i));
    if let Some(w) = window {
        // llama.cpp's llama and qwen2 graphs attend over the whole context.
        m.push((k("attention.sliding_window"), u(w)));
        notes.push(format!(
            "llama.cpp runs {} without its sliding window of {w} tokens (full attention): outputs differ from orlik's past {w} tokens of context",
            cfg.architectures[0]
        ));
    }
    Ok(m)
}

fn gemma_metadata(cfg: &Config, m: &mut Vec<(String, GValue)>) -> Result<(), String> {
    let (full_base, full_factor) = cfg.rope_for("full_attention")?;
    let (local_base, local_factor) = cfg.rope_for("sliding_attention")?;
    if local_factor != 1.0 {
        return Err(format!("sliding layers' RoPE scaling factor {local_factor}: llama.cpp scales only the global layers"));
    }
    // llama.cpp: 1/sqrt(head_dim), except 1/sqrt(hidden / heads) for the 62-layer 27B.
    let assumed = if cfg.num_hidden_layers == 62 {
        (cfg.hidden_size / cfg.num_attention_heads) as f64
    } else {
        cfg.head_dim() as f64
    };
    if (cfg.attn_scale() - 1.0 / assumed.sqrt()).abs() > 1e-9 {
        return Err(format!(
            "query_pre_attn_scalar gives attention scale {}, llama.cpp assumes 1/sqrt({assumed}) for {} layers",
            cfg.attn_scale(),
            cfg.num_hidden_layers
        ));
    }
    m.push(("gemma3.rope.freq_base".into(), GValue::F32(full_base as f32)));
    m.push(("gemma3.rope.freq_base_swa".into(), GValue::F32(local_base as f32)));
    if full_factor != 1.0 {
        m.push(("gemma3.rope.scaling.type".into(), GValue::Str("linear".into())));
        m.push(("gemma3.rope.scaling.factor".into(), GValue::F32(full_factor as f32)));
    }
    if let Some(c) = cfg.extra.get("final_logit_softcapping").and_then(Value::as_f64) {
        m.push(("gemma3.final_logit_softcapping".into(), GValue::F32(c as f32)));
    }
    let sliding: Vec<bool> =
        (0..cfg.num_hidden_layers).map(|i| cfg.layer_window(i).is_some()).collect();
    if let Some(w) = cfg.sliding_window.filter(|_| sliding.iter().any(|&s| s)) {
        m.push(("gemma3.attention.sliding_window".into(), GValue::U32(w as u32)));
        // Per layer (a depth-pruned Gemma no longer has every 6th layer global).
        m.push((
            "gemma3.attention.sliding_window_pattern".into(),
            GValue::Array(sliding.into_iter().map(GValue::Bool).collect()),
        ));
    }
    Ok(())
}

/// The chat template: tokenizer_config's (a string, or the "default" of a named list), else
/// `chat_template.jinja`.
fn chat_template(dir: &Path, tok_cfg: &Value) -> Result<Option<String>, IoError> {
    match &tok_cfg["chat_template"] {
        Value::String(s) => return Ok(Some(s.clone())),
        Value::Array(list) => {
            let d = list.iter().find(|t| t["name"] == "default").or(list.first());
            return Ok(d.and_then(|t| t["template"].as_str()).map(String::from));
        }
        _ => {}
    }
    let p = dir.join("chat_template.jinja");
    if p.exists() {
        return std::fs::read_to_string(&p).map(Some).map_err(io_err(&p));
    }
    Ok(None)
}

/// Licence files from the model directory, written beside the GGUF as `STEM.NAME` (before the
/// GGUF, so a GGUF is never without them), and named in `general.license*`.
fn write_licences(
    dir: &Path,
    out: &Path,
    meta: &mut Vec<(String, GValue)>,
) -> Result<Vec<PathBuf>, IoError> {
    let stem =
        out.file_stem().map(|s| s.to_string_lossy().to_string()).unwrap_or_else(|| "model".into());
    let mut files = Vec::new();
    let mut spdx = None;
    for name in crate::hfdir::licence_files() {
        let p = dir.join(name);
        if !p.is_file() {
            continue;
        }
        let bytes = std::fs::read(&p).map_err(io_err(&p))?;
        let text = String::from_utf8_lossy(&bytes);
        if name.contains("GEMMA") {
            spdx = Some("gemma");
        } else if spdx.is_none() && text.contains("Apache License") && text.contains("Version 2.0")
        {
            spdx = Some("apache-2.0");
        } else if spdx.is_none() && text.contains("MIT License") {
            spdx = Some("mit");
        }
        let target = out.with_file_name(format!("{stem}.{name}"));
        // Beside the output may be a file of the user's under the same name: replaced only when
        // it already holds these terms (an earlier export), refused otherwise.
        if target.exists() {
            let there = std::fs::read(&target).map_err(io_err(&target))?;
            if there != bytes {
                return Err(IoError::Output {
                    path: target,
                    msg: format!("exists with other contents; the model's {name} would replace it: move it, or export elsewhere"),
                });
            }
        }
        files.push((target, bytes));
    }
    // Every name checked before any is written.
    let mut written = Vec::new();
    for (target, bytes) in files {
        crate::atomic::write_file_atomically(&target, &bytes)?;
        written.push(target);
    }
    if !written.is_empty() {
        meta.push(("general.license".into(), GValue::Str(spdx.unwrap_or("other").into())));
        let names: Vec<String> = written
            .iter()
            .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().to_string()))
            .collect();
        meta.push((
            "general.license.name".into(),
            GValue::Str(format!("see {} beside this file", names.join(", "))),
        ));
    }
    Ok(written)
}

/// One tensor of the export: where it comes from and how it is stored.
struct Planned {
    out: OutTensor,
    /// The HF tensor (None: generated, `rope_freqs`).
    hf: Option<String>,
    fallback: Option<String>,
    permute_heads: Option<usize>,
    shift: bool,
}

fn plan_tensors(hf: &HfModel, ty: GgufType) -> Result<Vec<Planned>, IoError> {
    let cfg = &hf.config;
    let arch = cfg.arch();
    let mut names: Vec<String> = hf.checkpoint.infos().map(|t| t.name.clone()).collect();
    names.sort_by_key(|n| orlik_model::config::layer_order(n));
    let mut plan = Vec::with_capacity(names.len() + 1);
    if let Ok(Some(_)) = cfg.llama3_scaling() {
        let n = cfg.head_dim() as u64 / 2;
        plan.push(Planned {
            out: OutTensor { name: "rope_freqs.weight".into(), ne: vec![n], ty: 0 },
            hf: None,
            fallback: None,
            permute_heads: None,
            shift: false,
        });
    }
    for name in names {
        let info = hf.checkpoint.info(&name).expect("listed by the checkpoint");
        let g = gguf_name(&name, arch).ok_or_else(|| IoError::Tensor {
            path: hf.dir.clone(),
            name: name.clone(),
            msg: "no llama.cpp name known".into(),
        })?;
        let ne: Vec<u64> = info.shape.iter().rev().map(|&d| d as u64).collect();
        // llama.cpp's quantiser keeps the output matrix (the tied embedding where there is no
        // lm_head) at Q6_K in every 4-bit file (llama-quant.cpp, llama_tensor_get_type).
        let output = name == "lm_head.weight"
            || (cfg.tie_word_embeddings && name == "model.embed_tokens.weight");
        let (stored, fallback) = if ne.len() == 1 {
            (GgmlDType::F32, None)
        } else {
            // why a matrix of a 4-bit file is raised to Q6_K, if it is
            let raised = if output && matches!(ty, GgufType::Q4_0 | GgufType::Q4K) {
                Some("the output matrix, as llama.cpp's quantiser keeps it")
            } else if ty == GgufType::Q4K && q4_k_m_more_bits(&name, cfg.num_hidden_layers) {
                Some("attn_v / ffn_down of the layers Q4_K_M gives more bits")
            } else {
                None
            };
            let chain = if raised.is_some() { GgufType::Q6K.chain() } else { ty.chain() };
            let pick = chain
                .iter()
                .find(|d| ne[0].is_multiple_of(d.block_size() as u64))
                .copied()
                .unwrap_or(GgmlDType::F16);
            let why = if pick != chain[0] {
                Some(format!(
                    "{pick:?}: rows of {} are not whole {:?} blocks of {}",
                    ne[0],
                    chain[0],
                    chain[0].block_size()
                ))
            } else {
                raised.map(|why| format!("{pick:?}: {why}"))
            };
            (pick, why)
        };
        let llama = gguf_arch(cfg) == "llama";
        let permute_heads = match () {
            _ if llama && name.contains("self_attn.q_proj") => Some(cfg.num_attention_heads),
            _ if llama && name.contains("self_attn.k_proj") => Some(cfg.num_kv_heads()),
            _ => None,
        };
        plan.push(Planned {
            out: OutTensor { name: g, ne, ty: ggml_type_id(stored) },
            shift: arch == Arch::Gemma3 && name.ends_with("norm.weight"),
            hf: Some(name),
            fallback,
            permute_heads,
        });
    }
    Ok(plan)
}

/// llama-quantize's `Q4_K` is its Q4_K_M mixture: the V projection and the MLP's down
/// projection of the first and last eighth of the layers, and of every third layer between, in
/// Q6_K (llama-quant.cpp, `use_more_bits` in llama_tensor_get_type_impl; dense models). Not
/// followed: its 70B rule (attn_v in Q5_K for 80-layer GQA models), orlik writes no Q5_K.
fn q4_k_m_more_bits(hf_name: &str, n_layers: usize) -> bool {
    let Some((i, base, "weight")) = crate::convert::layer_parts(hf_name, "model.layers.") else {
        return false;
    };
    let more =
        i < n_layers / 8 || i >= 7 * n_layers / 8 || (i as i64 - (n_layers / 8) as i64) % 3 == 2;
    more && matches!(base, "self_attn.v_proj" | "mlp.down_proj")
}

fn tensor_data(hf: &HfModel, p: &Planned) -> Result<Vec<u8>, IoError> {
    let cerr = |source| IoError::Candle { context: format!("exporting {}", p.out.name), source };
    let Some(name) = &p.hf else {
        let c = &hf.config;
        let s = c.llama3_scaling().ok().flatten().expect("planned only for llama3 scaling");
        let f = crate::rope_freqs::factors(&s, c.head_dim(), c.rope_theta());
        let t = Tensor::new(f.as_slice(), &candle_core::Device::Cpu).map_err(cerr)?;
        return encode(&t, p.out.ty).map_err(cerr);
    };
    let mut w = hf.checkpoint.tensor(name)?.to_dtype(DType::F32).map_err(cerr)?;
    if p.shift {
        // llama.cpp stores Gemma's zero-centred norm weights as 1 + w (convert_hf_to_gguf.py).
        w = (w + 1.0).map_err(cerr)?;
    }
    if let Some(h) = p.permute_heads {
        w = permute_qk(&w, h).map_err(cerr)?;
    }
    let bytes = encode(&w, p.out.ty).map_err(cerr);
    hf.checkpoint.release(name);
    bytes
}

#[cfg(test)]
mod tests {
    use super::q4_k_m_more_bits;

    #[test]
    fn q4_k_m_gives_more_bits_where_llama_quantize_does() {
        // 32 layers (Llama 3 8B): the first and last four, and 4 + 2 + 3k between
        let more: Vec<usize> = (0..32)
            .filter(|i| q4_k_m_more_bits(&format!("model.layers.{i}.mlp.down_proj.weight"), 32))
            .collect();
        assert_eq!(more, [0, 1, 2, 3, 6, 9, 12, 15, 18, 21, 24, 27, 28, 29, 30, 31]);
        assert!(q4_k_m_more_bits("model.layers.0.self_attn.v_proj.weight", 32));
        for other in [
            "model.layers.0.self_attn.q_proj.weight",
            "model.layers.0.mlp.up_proj.weight",
            "lm_head.weight",
        ] {
            assert!(!q4_k_m_more_bits(other, 32), "{other}");
        }
    }
}
