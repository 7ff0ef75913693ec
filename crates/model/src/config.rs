//! HF `config.json` for decoder-only causal LMs (Llama, Mistral, Qwen2, Gemma 3 text).
//!
//! Every dimension is explicit. `head_dim` is read when present and only falls back to
//! `hidden_size / num_attention_heads` when the file omits it (that is transformers' own rule for
//! old configs); configs orlik writes always carry `head_dim`, so width-pruned models stay right.
//! Keys this struct does not model are kept verbatim in `extra` and written back unchanged.

use crate::ModelError;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::path::Path;

/// The architectures the model core implements, named as in `architectures[0]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    Llama,
    Mistral,
    Qwen2,
    /// Gemma 3 text (`Gemma3ForCausalLM`, model_type `gemma3_text`).
    Gemma3,
    /// Qwen3 (`Qwen3ForCausalLM`): RMSNorm of every query and key head, no q/k/v bias unless
    /// `attention_bias`, explicit head_dim.
    Qwen3,
}

impl Arch {
    pub fn from_hf(name: &str) -> Option<Arch> {
        match name {
            "LlamaForCausalLM" => Some(Arch::Llama),
            "MistralForCausalLM" => Some(Arch::Mistral),
            "Qwen2ForCausalLM" => Some(Arch::Qwen2),
            "Gemma3ForCausalLM" => Some(Arch::Gemma3),
            "Qwen3ForCausalLM" => Some(Arch::Qwen3),
            _ => None,
        }
    }
    pub fn hf_name(self) -> &'static str {
        match self {
            Arch::Llama => "LlamaForCausalLM",
            Arch::Mistral => "MistralForCausalLM",
            Arch::Qwen2 => "Qwen2ForCausalLM",
            Arch::Gemma3 => "Gemma3ForCausalLM",
            Arch::Qwen3 => "Qwen3ForCausalLM",
        }
    }
    pub fn model_type(self) -> &'static str {
        match self {
            Arch::Llama => "llama",
            Arch::Mistral => "mistral",
            Arch::Qwen2 => "qwen2",
            Arch::Gemma3 => "gemma3_text",
            Arch::Qwen3 => "qwen3",
        }
    }
    pub const SUPPORTED: &'static [&'static str] = &[
        "LlamaForCausalLM",
        "MistralForCausalLM",
        "Qwen2ForCausalLM",
        "Gemma3ForCausalLM",
        "Qwen3ForCausalLM",
    ];
}

/// A `config.json` as transformers writes it. Field defaults are transformers' defaults.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Config {
    pub architectures: Vec<String>,
    pub model_type: String,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    /// Defaults to `num_attention_heads` (multi-head attention).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_key_value_heads: Option<usize>,
    /// Defaults to `hidden_size / num_attention_heads` only when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head_dim: Option<usize>,
    #[serde(default = "default_eps")]
    pub rms_norm_eps: f64,
    /// transformers < 5 writes `rope_theta`; transformers 5 writes `rope_parameters.rope_theta`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_theta: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_scaling: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_parameters: Option<Value>,
    #[serde(default = "default_max_pos")]
    pub max_position_embeddings: usize,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    /// Llama: bias on q/k/v/o. (Qwen2 always has q/k/v bias and no o bias.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attention_bias: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mlp_bias: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sliding_window: Option<usize>,
    /// Qwen2 only: sliding window is off unless this is true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub use_sliding_window: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_window_layers: Option<usize>,
    /// transformers 5: per-layer `"full_attention"` / `"sliding_attention"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layer_types: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hidden_act: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bos_token_id: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eos_token_id: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pad_token_id: Option<Value>,
    /// Every other key, written back unchanged (`torch_dtype`/`dtype`, `transformers_version`, ...).
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

fn default_eps() -> f64 {
    1e-6
}
fn default_max_pos() -> usize {
    2048
}

/// Llama-3 style frequency-dependent RoPE scaling (`rope_type: "llama3"`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Llama3Scaling {
    pub factor: f64,
    pub low_freq_factor: f64,
    pub high_freq_factor: f64,
    pub original_max_position_embeddings: f64,
}

impl Config {
    pub fn from_json_str(s: &str, origin: &str) -> Result<Config, ModelError> {
        let mut cfg: Config = serde_json::from_str(s).map_err(|e| {
            // serde names the type, not the key: take the key written on the error's line.
            let key = s
                .lines()
                .nth(e.line().saturating_sub(1))
                .and_then(|l| l.trim().strip_prefix('"'))
                .and_then(|l| l.split_once('"'))
                .map(|(k, _)| format!("key {k}: "))
                .filter(|_| e.is_data());
            ModelError::Config {
                origin: origin.to_string(),
                msg: format!("{}{e}", key.unwrap_or_default()),
            }
        })?;
        // transformers' default differs per model: Gemma ties its embeddings unless told not to.
        if cfg.arch() == Arch::Gemma3 && !s.contains("\"tie_word_embeddings\"") {
            cfg.tie_word_embeddings = true;
        }
        cfg.validate(origin)?;
        Ok(cfg)
    }

    pub fn from_file(path: &Path) -> Result<Config, ModelError> {
        let origin = path.display().to_string();
        let s = std::fs::read_to_string(path)
            .map_err(|e| ModelError::Config { origin: origin.clone(), msg: e.to_string() })?;
        Config::from_json_str(&s, &origin)
    }

    pub fn to_json_pretty(&self) -> String {
        // serde_json of a struct with flattened map cannot fail on these types.
        serde_json::to_string_pretty(self).unwrap_or_else(|_| "{}".to_string())
    }

    fn validate(&self, origin: &str) -> Result<(), ModelError> {
        let bad = |msg: String| ModelError::Config { origin: origin.to_string(), msg };
        let name = self.architectures.first().map(String::as_str).unwrap_or("<none>");
        if Arch::from_hf(name).is_none() {
            return Err(ModelError::UnknownArchitecture {
                origin: origin.to_string(),
                name: name.to_string(),
            });
        }
        for (k, v) in [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.num_kv_heads()),
            ("head_dim", self.head_dim()),
        ] {
            if v == 0 {
                return Err(bad(format!("{k} must be > 0")));
            }
        }
        // Sanity limits far above any real model: a flipped byte in a count must be refused here,
        // before anything is allocated from it.
        for (k, v, max) in [
            ("vocab_size", self.vocab_size, 1 << 24),
            ("hidden_size", self.hidden_size, 1 << 18),
            ("intermediate_size", self.intermediate_size, 1 << 20),
            ("num_hidden_layers", self.num_hidden_layers, 4096),
            ("num_attention_heads", self.num_attention_heads, 4096),
            ("num_key_value_heads", self.num_kv_heads(), 4096),
            ("head_dim", self.head_dim(), 1 << 14),
            ("max_position_embeddings", self.max_position_embeddings, 1 << 26),
        ] {
            if v > max {
                return Err(bad(format!(
                    "{k} = {v} is not plausible (more than {max}): a corrupt file?"
                )));
            }
        }
        if self.max_position_embeddings == 0 {
            return Err(bad("max_position_embeddings must be > 0".into()));
        }
        if !(self.rms_norm_eps > 0.0 && self.rms_norm_eps < 1.0) {
            return Err(bad(format!("rms_norm_eps = {} must be in (0, 1)", self.rms_norm_eps)));
        }
        if self.arch() != Arch::Gemma3 {
            let t = self.rope_theta();
            if !(t.is_finite() && t > 0.0) {
                return Err(bad(format!("rope_theta = {t} must be a positive number")));
            }
        }
        if let Some(w) = self.sliding_window {
            if w == 0 {
                return Err(bad("sliding_window must be > 0 (or null for none)".into()));
            }
        }
        if let Some(s) = self.extra.get("query_pre_attn_scalar").filter(|v| !v.is_null()) {
            if !s.as_f64().is_some_and(|x| x.is_finite() && x > 0.0) {
                return Err(bad(format!("query_pre_attn_scalar = {s} must be a positive number")));
            }
        }
        for (k, v) in [
            ("bos_token_id", &self.bos_token_id),
            ("eos_token_id", &self.eos_token_id),
            ("pad_token_id", &self.pad_token_id),
        ] {
            let ids: Vec<&Value> = match v {
                None | Some(Value::Null) => Vec::new(),
                Some(Value::Array(a)) => a.iter().collect(),
                Some(x) => vec![x],
            };
            for id in ids {
                match id.as_u64() {
                    Some(i) if (i as usize) < self.vocab_size => {}
                    _ => {
                        return Err(bad(format!(
                            "{k} = {id} is not a token id below vocab_size {}",
                            self.vocab_size
                        )))
                    }
                }
            }
        }
        if !self.num_attention_heads.is_multiple_of(self.num_kv_heads()) {
            return Err(bad(format!(
                "num_attention_heads {} is not a multiple of num_key_value_heads {}",
                self.num_attention_heads,
                self.num_kv_heads()
            )));
        }
        if !self.head_dim().is_multiple_of(2) {
            return Err(bad(format!("head_dim {} must be even for RoPE", self.head_dim())));
        }
        if crate::block::Activation::from_hf(self.activation()).is_none() {
            return Err(bad(format!(
                "hidden activation {:?} is not supported for {name} ({})",
                self.activation(),
                crate::block::Activation::SUPPORTED.join(", ")
            )));
        }
        for k in ["final_logit_softcapping", "attn_logit_softcapping"] {
            if self.extra.get(k).is_some_and(|v| !v.is_null()) {
                return Err(bad(format!(
                    "{k} is set: logit soft-capping (Gemma 2) is not supported"
                )));
            }
        }
        if self.arch() == Arch::Gemma3 {
            for kind in ["full_attention", "sliding_attention"] {
                let (theta, factor) = self.rope_for(kind).map_err(bad)?;
                if !(theta.is_finite() && theta > 0.0 && factor.is_finite() && factor > 0.0) {
                    return Err(bad(format!("{kind}: RoPE base {theta} and scaling factor {factor} must be positive numbers")));
                }
            }
        }
        if let Some(lt) = &self.layer_types {
            if lt.len() != self.num_hidden_layers {
                return Err(bad(format!(
                    "layer_types has {} entries, num_hidden_layers is {}",
                    lt.len(),
                    self.num_hidden_layers
                )));
            }
        }
        self.llama3_scaling().map_err(bad)?;
        Ok(())
    }

    /// The MLP activation: `hidden_act`, or Gemma's `hidden_activation` (default per model).
    pub fn activation(&self) -> &str {
        if let Some(a) = self.extra.get("hidden_activation").and_then(Value::as_str) {
            return a;
        }
        match (&self.hidden_act, self.arch()) {
            (Some(a), _) => a,
            (None, Arch::Gemma3) => "gelu_pytorch_tanh",
            (None, _) => "silu",
        }
    }
    /// Gemma: RMSNorm weights are stored zero-centred and applied as (1 + w).
    pub fn norm_offset(&self) -> bool {
        self.arch() == Arch::Gemma3
    }
    /// Gemma 3, Qwen3: RMSNorm of every query and key head before RoPE.
    pub fn qk_norm(&self) -> bool {
        matches!(self.arch(), Arch::Gemma3 | Arch::Qwen3)
    }
    /// Gemma 3: the attention output is normalised before the residual add, and the MLP has
    /// norms before and after it.
    pub fn sandwich_norms(&self) -> bool {
        self.arch() == Arch::Gemma3
    }
    /// Gemma: token embeddings are multiplied by sqrt(hidden_size) (in the weights' dtype).
    pub fn embed_scale(&self) -> Option<f64> {
        (self.arch() == Arch::Gemma3).then(|| (self.hidden_size as f64).sqrt() as f32 as f64)
    }
    /// Attention scores are multiplied by this: 1/sqrt(head_dim), or Gemma's
    /// 1/sqrt(query_pre_attn_scalar).
    pub fn attn_scale(&self) -> f64 {
        let s = self
            .extra
            .get("query_pre_attn_scalar")
            .and_then(Value::as_f64)
            .filter(|_| self.arch() == Arch::Gemma3);
        1.0 / s.unwrap_or(self.head_dim() as f64).sqrt()
    }
    /// Gemma 3: RoPE base and linear scaling factor of a layer kind ("full_attention" or
    /// "sliding_attention"), from transformers 5's per-kind `rope_parameters` or from 4.x's
    /// `rope_theta` / `rope_local_base_freq` / `rope_scaling`.
    pub fn rope_for(&self, kind: &str) -> Result<(f64, f64), String> {
        if let Some(p) = self.rope_parameters.as_ref().and_then(|p| p.get(kind)) {
            let theta = p
                .get("rope_theta")
                .and_then(Value::as_f64)
                .ok_or(format!("rope_parameters.{kind}.rope_theta missing"))?;
            return match p.get("rope_type").and_then(Value::as_str).unwrap_or("default") {
                "default" => Ok((theta, 1.0)),
                "linear" => Ok((
                    theta,
                    p.get("factor")
                        .and_then(Value::as_f64)
                        .ok_or(format!("rope_parameters.{kind}.factor missing"))?,
                )),
                other => Err(format!(
                    "rope_parameters.{kind}.rope_type {other:?} is not supported (default, linear)"
                )),
            };
        }
        if kind == "sliding_attention" {
            return Ok((
                self.extra.get("rope_local_base_freq").and_then(Value::as_f64).unwrap_or(10_000.0),
                1.0,
            ));
        }
        let factor = match self.rope_scaling.as_ref().filter(|v| !v.is_null()) {
            None => 1.0,
            Some(v) => match v.get("rope_type").or_else(|| v.get("type")).and_then(Value::as_str) {
                Some("linear") => {
                    v.get("factor").and_then(Value::as_f64).ok_or("rope_scaling.factor missing")?
                }
                None | Some("default") => 1.0,
                Some(other) => {
                    return Err(format!(
                        "rope_scaling type {other:?} is not supported for Gemma 3 (linear)"
                    ))
                }
            },
        };
        Ok((self.rope_theta.unwrap_or(1_000_000.0), factor))
    }

    pub fn arch(&self) -> Arch {
        self.architectures.first().and_then(|n| Arch::from_hf(n)).unwrap_or(Arch::Llama)
    }
    pub fn num_kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }
    pub fn head_dim(&self) -> usize {
        self.head_dim.unwrap_or(self.hidden_size / self.num_attention_heads.max(1))
    }
    pub fn rope_theta(&self) -> f64 {
        if let Some(t) = self.rope_theta {
            return t;
        }
        self.rope_parameters
            .as_ref()
            .and_then(|p| p.get("rope_theta"))
            .and_then(Value::as_f64)
            .unwrap_or(10_000.0)
    }
    /// Bias on q/k/v projections.
    pub fn qkv_bias(&self) -> bool {
        match self.arch() {
            Arch::Qwen2 => true,
            Arch::Mistral => false,
            Arch::Llama | Arch::Gemma3 | Arch::Qwen3 => self.attention_bias.unwrap_or(false),
        }
    }
    /// Bias on o_proj.
    pub fn o_bias(&self) -> bool {
        matches!(self.arch(), Arch::Llama | Arch::Gemma3 | Arch::Qwen3)
            && self.attention_bias.unwrap_or(false)
    }
    pub fn mlp_bias(&self) -> bool {
        self.arch() == Arch::Llama && self.mlp_bias.unwrap_or(false)
    }
    /// The sliding window of layer `i`, if that layer uses one (transformers' rules per model).
    pub fn layer_window(&self, i: usize) -> Option<usize> {
        if let Some(lt) = &self.layer_types {
            return match lt.get(i).map(String::as_str) {
                Some("sliding_attention") => self.sliding_window,
                _ => None,
            };
        }
        if self.arch() == Arch::Gemma3 {
            // transformers 4.x: every `sliding_window_pattern`-th layer is global.
            let pattern = ["sliding_window_pattern", "_sliding_window_pattern"]
                .iter()
                .find_map(|k| self.extra.get(*k).and_then(Value::as_u64))
                .unwrap_or(6) as usize;
            return if (i + 1).is_multiple_of(pattern.max(1)) { None } else { self.sliding_window };
        }
        match self.arch() {
            Arch::Mistral => self.sliding_window,
            Arch::Qwen2 | Arch::Qwen3 => {
                if self.use_sliding_window.unwrap_or(false)
                    && i >= self.max_window_layers.unwrap_or(self.num_hidden_layers)
                {
                    self.sliding_window
                } else {
                    None
                }
            }
            Arch::Llama | Arch::Gemma3 => None,
        }
    }
    fn rope_scaling_value(&self) -> Option<&Value> {
        self.rope_scaling.as_ref().or(self.rope_parameters.as_ref())
    }
    /// `Ok(None)` for plain RoPE, `Ok(Some)` for Llama-3 scaling, `Err` for an unsupported type.
    pub fn llama3_scaling(&self) -> Result<Option<Llama3Scaling>, String> {
        if self.arch() == Arch::Gemma3 {
            return Ok(None); // per layer kind: `rope_for`
        }
        let Some(v) = self.rope_scaling_value() else { return Ok(None) };
        if v.is_null() {
            return Ok(None);
        }
        let ty = v.get("rope_type").or_else(|| v.get("type")).and_then(Value::as_str);
        match ty {
            None | Some("default") => Ok(None),
            Some("llama3") => {
                let f = |k: &str| {
                    v.get(k).and_then(Value::as_f64).ok_or(format!("rope_scaling.{k} missing"))
                };
                Ok(Some(Llama3Scaling {
                    factor: f("factor")?,
                    low_freq_factor: f("low_freq_factor")?,
                    high_freq_factor: f("high_freq_factor")?,
                    original_max_position_embeddings: f("original_max_position_embeddings")?,
                }))
            }
            Some(other) => Err(format!("rope_scaling type {other:?} is not supported")),
        }
    }
    /// The first `eos_token_id` (an int or a list in HF configs).
    pub fn eos_ids(&self) -> Vec<u32> {
        match &self.eos_token_id {
            Some(Value::Number(n)) => n.as_u64().map(|x| vec![x as u32]).unwrap_or_default(),
            Some(Value::Array(a)) => {
                a.iter().filter_map(|x| x.as_u64().map(|x| x as u32)).collect()
            }
            _ => vec![],
        }
    }
    /// The dtype the checkpoint declares (`torch_dtype` or transformers 5's `dtype`).
    pub fn declared_dtype(&self) -> Option<&str> {
        self.extra.get("torch_dtype").or_else(|| self.extra.get("dtype")).and_then(Value::as_str)
    }

    /// The HF tensor names and shapes this config implies, in checkpoint order.
    /// Parameters of the config (a tied lm_head counted once).
    pub fn param_count(&self) -> usize {
        self.expected_tensors().iter().map(|(_, s)| s.iter().product::<usize>()).sum()
    }

    pub fn expected_tensors(&self) -> Vec<(String, Vec<usize>)> {
        let (h, v) = (self.hidden_size, self.vocab_size);
        let mut out = vec![("model.embed_tokens.weight".to_string(), vec![v, h])];
        let layer = crate::block::layer_tensors(self);
        for l in 0..self.num_hidden_layers {
            out.extend(layer.iter().map(|(role, shape)| (role.name(l), shape.clone())));
        }
        out.push(("model.norm.weight".to_string(), vec![h]));
        if !self.tie_word_embeddings {
            out.push(("lm_head.weight".to_string(), vec![v, h]));
        }
        out
    }
}

/// Sort key: embeddings, layers in numeric order, final norm, lm_head.
pub fn layer_order(name: &str) -> (usize, usize, String) {
    if name.starts_with("model.embed_tokens") {
        return (0, 0, name.into());
    }
    if let Some(rest) = name.strip_prefix("model.layers.") {
        let (l, leaf) = rest.split_once('.').unwrap_or((rest, ""));
        return (1, l.parse().unwrap_or(0), leaf.into());
    }
    if name.starts_with("model.norm") {
        return (2, 0, name.into());
    }
    (3, 0, name.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    const TINY: &str = r#"{"architectures":["LlamaForCausalLM"],"model_type":"llama","vocab_size":10,
        "hidden_size":8,"intermediate_size":16,"num_hidden_layers":2,"num_attention_heads":4,
        "num_key_value_heads":2,"head_dim":4,"rms_norm_eps":1e-5,"rope_theta":10000.0,
        "tie_word_embeddings":true,"torch_dtype":"float32","initializer_range":0.02}"#;

    #[test]
    fn parses_and_keeps_unknown_keys() {
        let c = Config::from_json_str(TINY, "t").unwrap();
        assert_eq!(c.head_dim(), 4);
        assert_eq!(c.num_kv_heads(), 2);
        assert_eq!(c.extra.get("initializer_range").and_then(Value::as_f64), Some(0.02));
        let back = Config::from_json_str(&c.to_json_pretty(), "t").unwrap();
        assert_eq!(back, c);
        assert_eq!(c.expected_tensors().len(), 1 + 2 * 9 + 1);
    }

    #[test]
    fn explicit_head_dim_is_not_derived() {
        let s = TINY.replace("\"head_dim\":4", "\"head_dim\":6");
        let c = Config::from_json_str(&s, "t").unwrap();
        assert_eq!(c.head_dim(), 6);
        assert_eq!(c.expected_tensors()[2].1, vec![24, 8]);
    }

    #[test]
    fn transformers5_rope_parameters() {
        let s = TINY.replace(
            "\"rope_theta\":10000.0",
            "\"rope_parameters\":{\"rope_type\":\"default\",\"rope_theta\":500.0}",
        );
        let c = Config::from_json_str(&s, "t").unwrap();
        assert_eq!(c.rope_theta(), 500.0);
        assert_eq!(c.llama3_scaling().unwrap(), None);
    }

    #[test]
    fn unknown_architecture_is_an_error() {
        let s = TINY.replace("LlamaForCausalLM", "BertModel");
        let e = Config::from_json_str(&s, "x/config.json").unwrap_err().to_string();
        assert!(e.contains("BertModel") && e.contains("x/config.json"), "{e}");
    }
}
