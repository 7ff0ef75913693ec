//! A prune plan: which units of a source model survive, per axis (Minitron, arXiv 2407.14679):
//! depth (layers), width of the residual stream (hidden channels), attention (query heads and KV
//! groups) and MLP neurons. Plans are JSON files, versioned, and independent of the weights, so the
//! same plan re-applies to a sibling checkpoint (base <-> instruct).

use crate::PruneError;
use orlik_model::Config;
use serde::{Deserialize, Serialize};

pub const FORMAT_VERSION: u32 = 1;

/// Dimensions of the model a plan was made for; applying it elsewhere is an error.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceDims {
    pub num_hidden_layers: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
}

impl SourceDims {
    pub fn of(cfg: &Config) -> SourceDims {
        SourceDims {
            num_hidden_layers: cfg.num_hidden_layers,
            hidden_size: cfg.hidden_size,
            intermediate_size: cfg.intermediate_size,
            num_attention_heads: cfg.num_attention_heads,
            num_key_value_heads: cfg.num_kv_heads(),
            head_dim: cfg.head_dim(),
        }
    }
}

/// Kept indices, all ascending and in source numbering. Per-layer lists follow `layers`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    pub format_version: u32,
    pub source: SourceDims,
    /// Kept layers.
    pub layers: Vec<usize>,
    /// Kept hidden (residual stream) channels, shared by every layer, embeddings and lm_head.
    pub hidden: Vec<usize>,
    /// Per kept layer: kept MLP neurons (the same count in every layer: HF configs have one
    /// `intermediate_size`).
    pub mlp: Vec<Vec<usize>>,
    /// Per kept layer: kept KV groups.
    pub kv_heads: Vec<Vec<usize>>,
    /// Per kept layer: kept query heads; each kept KV group keeps the same number of its own heads.
    pub heads: Vec<Vec<usize>>,
}

fn check_sorted(what: &str, v: &[usize], bound: usize) -> Result<(), PruneError> {
    if v.is_empty() {
        return Err(PruneError::Plan(format!("{what}: nothing kept")));
    }
    if v.windows(2).any(|w| w[0] >= w[1]) {
        return Err(PruneError::Plan(format!("{what}: indices must be strictly ascending")));
    }
    if let Some(&x) = v.iter().find(|&&x| x >= bound) {
        return Err(PruneError::Plan(format!(
            "{what}: index {x} out of range (source has {bound})"
        )));
    }
    Ok(())
}

impl Plan {
    /// The plan that keeps everything.
    pub fn identity(cfg: &Config) -> Plan {
        let s = SourceDims::of(cfg);
        let n = s.num_hidden_layers;
        Plan {
            format_version: FORMAT_VERSION,
            layers: (0..n).collect(),
            hidden: (0..s.hidden_size).collect(),
            mlp: vec![(0..s.intermediate_size).collect(); n],
            kv_heads: vec![(0..s.num_key_value_heads).collect(); n],
            heads: vec![(0..s.num_attention_heads).collect(); n],
            source: s,
        }
    }

    pub fn from_json(text: &str, origin: &str) -> Result<Plan, PruneError> {
        let p: Plan =
            serde_json::from_str(text).map_err(|e| PruneError::Plan(format!("{origin}: {e}")))?;
        if p.format_version != FORMAT_VERSION {
            return Err(PruneError::Plan(format!(
                "{origin}: plan format_version {} (this orlik reads {FORMAT_VERSION})",
                p.format_version
            )));
        }
        Ok(p)
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// Check the plan against itself and against the model it will be applied to.
    pub fn validate(&self, cfg: &Config) -> Result<(), PruneError> {
        let s = SourceDims::of(cfg);
        if s != self.source {
            return Err(PruneError::Plan(format!(
                "plan was made for {:?}, model has {:?}",
                self.source, s
            )));
        }
        check_sorted("layers", &self.layers, s.num_hidden_layers)?;
        check_sorted("hidden", &self.hidden, s.hidden_size)?;
        let n = self.layers.len();
        for (what, len) in [
            ("mlp", self.mlp.len()),
            ("kv_heads", self.kv_heads.len()),
            ("heads", self.heads.len()),
        ] {
            if len != n {
                return Err(PruneError::Plan(format!(
                    "{what} has {len} entries for {n} kept layers"
                )));
            }
        }
        let rep = s.num_attention_heads / s.num_key_value_heads;
        for (i, &l) in self.layers.iter().enumerate() {
            check_sorted(&format!("layer {l} mlp"), &self.mlp[i], s.intermediate_size)?;
            check_sorted(&format!("layer {l} kv_heads"), &self.kv_heads[i], s.num_key_value_heads)?;
            check_sorted(&format!("layer {l} heads"), &self.heads[i], s.num_attention_heads)?;
            if self.mlp[i].len() != self.mlp[0].len()
                || self.kv_heads[i].len() != self.kv_heads[0].len()
                || self.heads[i].len() != self.heads[0].len()
            {
                return Err(PruneError::Plan(format!(
                    "layer {l}: every layer must keep the same number of neurons, KV groups and heads"
                )));
            }
            let per_group = self.heads[i].len() / self.kv_heads[i].len();
            for &g in &self.kv_heads[i] {
                let mine = self.heads[i].iter().filter(|&&h| h / rep == g).count();
                if mine != per_group {
                    return Err(PruneError::Plan(format!(
                        "layer {l}: KV group {g} keeps {mine} query heads, expected {per_group} (uniform within groups)"
                    )));
                }
            }
            if let Some(&h) =
                self.heads[i].iter().find(|&&h| !self.kv_heads[i].contains(&(h / rep)))
            {
                return Err(PruneError::Plan(format!(
                    "layer {l}: query head {h} belongs to a dropped KV group"
                )));
            }
        }
        // transformers (5.x) refuses Llama-family configs whose hidden_size is not a multiple of
        // num_attention_heads, even with an explicit head_dim.
        let (hid, nh) = (self.hidden.len(), self.heads.first().map_or(1, |h| h.len().max(1)));
        if hid % nh != 0 {
            return Err(PruneError::Plan(format!(
                "hidden size {hid} is not a multiple of {nh} attention heads: transformers would refuse the model"
            )));
        }
        Ok(())
    }

    /// The config of the pruned model: HF-standard, `head_dim` written explicitly.
    pub fn pruned_config(&self, cfg: &Config) -> Config {
        let mut c = cfg.clone();
        c.num_hidden_layers = self.layers.len();
        c.hidden_size = self.hidden.len();
        c.intermediate_size = self.mlp.first().map_or(0, Vec::len);
        c.num_attention_heads = self.heads.first().map_or(0, Vec::len);
        c.num_key_value_heads = Some(self.kv_heads.first().map_or(0, Vec::len));
        c.head_dim = Some(cfg.head_dim());
        if let Some(lt) = &cfg.layer_types {
            c.layer_types = Some(self.layers.iter().map(|&l| lt[l].clone()).collect());
        } else if cfg.arch() == orlik_model::Arch::Gemma3 {
            // A periodic sliding/global pattern does not survive dropping layers: spell it out.
            let kind = |l: usize| {
                if cfg.layer_window(l).is_some() {
                    "sliding_attention"
                } else {
                    "full_attention"
                }
            };
            c.layer_types = Some(self.layers.iter().map(|&l| kind(l).to_string()).collect());
        }
        if let Some(m) = cfg.max_window_layers {
            // Qwen2: layers >= max_window_layers use the window; keep each kept layer's kind.
            c.max_window_layers = Some(self.layers.iter().filter(|&&l| l < m).count());
        }
        c
    }
}
