//! The decoder block, described once: every option an executor needs to run a layer, read from
//! the config by name (`config.rs`), and the HF tensors of each layer with their shapes. The
//! candle graph (`llama.rs`), the CPU flat-buffer executor (`cpu/`), the streaming scorer and
//! the checkpoint validation all build from this description, so a new block feature is added
//! here and then implemented by each executor, never re-derived from another field.
//!
//! One block, in the order the executors run it (h: hidden, q/kv: query/key heads, d: head_dim):
//!
//! ```text
//! x (n, h)
//!   a = norm(x; input_layernorm)
//!   q = a Wqᵀ [+ bq] (n, q·d)   k = a Wkᵀ [+ bk] (n, kv·d)   v = a Wvᵀ [+ bv] (n, kv·d)
//!   [qk_norm]   q, k = norm over each head's d (q_norm, k_norm)
//!   q, k = rope(q, k; the layer's RoPE table)
//!   o = softmax(scale · q kᵀ + causal / window mask) v      GQA: q/kv query heads per key head
//!   o = o Woᵀ [+ bo] (n, h)
//!   [sandwich]  x = x + norm(o; post_attention_layernorm);  a = norm(x; pre_feedforward_layernorm)
//!   [else]      x = x + o;                                  a = norm(x; post_attention_layernorm)
//!   m = act(a Wgᵀ [+ bg]) · (a Wuᵀ [+ bu]) (n, ffn)
//!   y = m Wdᵀ [+ bd] (n, h)
//!   [sandwich]  x = x + norm(y; post_feedforward_layernorm)
//!   [else]      x = x + y
//! ```
//!
//! `norm(x; w)` is RMSNorm, x / sqrt(mean(x²) + eps) · w, with w applied as (1 + w) when the
//! weights are stored zero-centred (`norm_offset`, Gemma). Around the blocks: the embedding
//! (times `embed_scale` for Gemma), the final norm, lm_head (the embedding when tied).

use crate::{Config, ModelError};

/// The MLP's gate activation, by transformers' `ACT2FN` name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// x · σ(x): "silu" / "swish" (SwiGLU MLP).
    Silu,
    /// 0.5 x (1 + tanh(sqrt(2/π) (x + 0.044715 x³))): "gelu_pytorch_tanh" (GeGLU, Gemma).
    GeluTanh,
}

impl Activation {
    pub const SUPPORTED: [&'static str; 3] = ["silu", "swish", "gelu_pytorch_tanh"];

    pub fn from_hf(name: &str) -> Option<Activation> {
        match name {
            "silu" | "swish" => Some(Activation::Silu),
            "gelu_pytorch_tanh" => Some(Activation::GeluTanh),
            _ => None,
        }
    }
}

/// RMSNorm convention.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Norm {
    pub eps: f64,
    /// Weights stored zero-centred, applied as (1 + w) (Gemma).
    pub offset: bool,
}

/// What differs between layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LayerSpec {
    /// Keys visible to query i: i − window < j ≤ i (None: all j ≤ i).
    pub window: Option<usize>,
    /// Index of the layer's RoPE table (Gemma 3: 0 global, 1 sliding; others: 0).
    pub rope: usize,
}

/// Every option of the block, resolved from the config.
#[derive(Debug, Clone, PartialEq)]
pub struct BlockSpec {
    pub hidden: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub ffn: usize,
    pub vocab: usize,
    pub norm: Norm,
    pub act: Activation,
    pub qkv_bias: bool,
    pub o_bias: bool,
    pub mlp_bias: bool,
    /// RMSNorm of every query and key head before RoPE (Gemma 3).
    pub qk_norm: bool,
    /// Norms on the attention output and around the MLP (Gemma 3).
    pub sandwich: bool,
    /// Attention scores are multiplied by this.
    pub attn_scale: f64,
    /// Token embeddings are multiplied by this (Gemma: sqrt(hidden) rounded to f32).
    pub embed_scale: Option<f64>,
    pub tied: bool,
    pub layers: Vec<LayerSpec>,
}

impl BlockSpec {
    pub fn of(cfg: &Config) -> Result<BlockSpec, ModelError> {
        let act = Activation::from_hf(cfg.activation()).ok_or_else(|| ModelError::Config {
            origin: "config.json".into(),
            msg: format!(
                "hidden activation {:?} is not supported ({})",
                cfg.activation(),
                Activation::SUPPORTED.join(", ")
            ),
        })?;
        let two_ropes = cfg.arch() == crate::Arch::Gemma3;
        Ok(BlockSpec {
            hidden: cfg.hidden_size,
            heads: cfg.num_attention_heads,
            kv_heads: cfg.num_kv_heads(),
            head_dim: cfg.head_dim(),
            ffn: cfg.intermediate_size,
            vocab: cfg.vocab_size,
            norm: Norm { eps: cfg.rms_norm_eps, offset: cfg.norm_offset() },
            act,
            qkv_bias: cfg.qkv_bias(),
            o_bias: cfg.o_bias(),
            mlp_bias: cfg.mlp_bias(),
            qk_norm: cfg.qk_norm(),
            sandwich: cfg.sandwich_norms(),
            attn_scale: cfg.attn_scale(),
            embed_scale: cfg.embed_scale(),
            tied: cfg.tie_word_embeddings,
            layers: (0..cfg.num_hidden_layers)
                .map(|l| {
                    let window = cfg.layer_window(l);
                    LayerSpec { window, rope: usize::from(two_ropes && window.is_some()) }
                })
                .collect(),
        })
    }
}

/// A layer tensor's part in the block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    InputNorm,
    Q,
    K,
    V,
    QBias,
    KBias,
    VBias,
    O,
    OBias,
    QNorm,
    KNorm,
    PreFfnNorm,
    PostFfnNorm,
    PostAttnNorm,
    Gate,
    Up,
    Down,
    GateBias,
    UpBias,
    DownBias,
}

impl Role {
    /// The HF name below `model.layers.{l}.`.
    pub fn suffix(self) -> &'static str {
        match self {
            Role::InputNorm => "input_layernorm.weight",
            Role::Q => "self_attn.q_proj.weight",
            Role::K => "self_attn.k_proj.weight",
            Role::V => "self_attn.v_proj.weight",
            Role::QBias => "self_attn.q_proj.bias",
            Role::KBias => "self_attn.k_proj.bias",
            Role::VBias => "self_attn.v_proj.bias",
            Role::O => "self_attn.o_proj.weight",
            Role::OBias => "self_attn.o_proj.bias",
            Role::QNorm => "self_attn.q_norm.weight",
            Role::KNorm => "self_attn.k_norm.weight",
            Role::PreFfnNorm => "pre_feedforward_layernorm.weight",
            Role::PostFfnNorm => "post_feedforward_layernorm.weight",
            Role::PostAttnNorm => "post_attention_layernorm.weight",
            Role::Gate => "mlp.gate_proj.weight",
            Role::Up => "mlp.up_proj.weight",
            Role::Down => "mlp.down_proj.weight",
            Role::GateBias => "mlp.gate_proj.bias",
            Role::UpBias => "mlp.up_proj.bias",
            Role::DownBias => "mlp.down_proj.bias",
        }
    }

    pub fn name(self, layer: usize) -> String {
        format!("model.layers.{layer}.{}", self.suffix())
    }
}

/// The tensors of one layer that `cfg` implies, with their shapes, in checkpoint order.
pub fn layer_tensors(cfg: &Config) -> Vec<(Role, Vec<usize>)> {
    let (h, f, d) = (cfg.hidden_size, cfg.intermediate_size, cfg.head_dim());
    let (q, kv) = (cfg.num_attention_heads * d, cfg.num_kv_heads() * d);
    let mut out = vec![(Role::InputNorm, vec![h]), (Role::Q, vec![q, h])];
    out.extend([(Role::K, vec![kv, h]), (Role::V, vec![kv, h])]);
    if cfg.qkv_bias() {
        out.extend([(Role::QBias, vec![q]), (Role::KBias, vec![kv]), (Role::VBias, vec![kv])]);
    }
    out.push((Role::O, vec![h, q]));
    if cfg.o_bias() {
        out.push((Role::OBias, vec![h]));
    }
    if cfg.qk_norm() {
        out.extend([(Role::QNorm, vec![d]), (Role::KNorm, vec![d])]);
    }
    if cfg.sandwich_norms() {
        out.extend([(Role::PreFfnNorm, vec![h]), (Role::PostFfnNorm, vec![h])]);
    }
    out.push((Role::PostAttnNorm, vec![h]));
    out.extend([(Role::Gate, vec![f, h]), (Role::Up, vec![f, h]), (Role::Down, vec![h, f])]);
    if cfg.mlp_bias() {
        out.extend([(Role::GateBias, vec![f]), (Role::UpBias, vec![f]), (Role::DownBias, vec![h])]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::tiny;
    use serde_json::json;

    #[test]
    fn options_come_from_the_config_by_name() {
        let llama = BlockSpec::of(&tiny("LlamaForCausalLM", json!({}))).unwrap();
        assert_eq!(llama.act, Activation::Silu);
        assert!(!llama.norm.offset && !llama.qk_norm && !llama.sandwich);
        assert_eq!(llama.embed_scale, None);
        // The activation is read from `hidden_act`, whatever the architecture.
        let geglu = tiny("LlamaForCausalLM", json!({"hidden_act": "gelu_pytorch_tanh"}));
        assert_eq!(BlockSpec::of(&geglu).unwrap().act, Activation::GeluTanh);
        let gemma = tiny(
            "Gemma3ForCausalLM",
            json!({"layer_types": ["sliding_attention", "full_attention"], "sliding_window": 4,
                "query_pre_attn_scalar": 9}),
        );
        let g = BlockSpec::of(&gemma).unwrap();
        assert_eq!(g.act, Activation::GeluTanh);
        assert!(g.norm.offset && g.qk_norm && g.sandwich);
        assert_eq!(g.attn_scale, 1.0 / 3.0);
        assert_eq!(g.layers[0], LayerSpec { window: Some(4), rope: 1 });
        assert_eq!(g.layers[1], LayerSpec { window: None, rope: 0 });
        let mut bad = tiny("LlamaForCausalLM", json!({}));
        bad.hidden_act = Some("relu".into());
        let e = BlockSpec::of(&bad).unwrap_err().to_string();
        assert!(e.contains("\"relu\"") && e.contains("gelu_pytorch_tanh"), "{e}");
    }

    #[test]
    fn layer_tensors_follow_the_options() {
        let names =
            |c: &Config| -> Vec<Role> { layer_tensors(c).into_iter().map(|r| r.0).collect() };
        let llama = names(&tiny("LlamaForCausalLM", json!({})));
        assert_eq!(llama.len(), 9);
        let qwen = names(&tiny("Qwen2ForCausalLM", json!({})));
        assert!(qwen.contains(&Role::QBias) && !qwen.contains(&Role::OBias));
        let gemma = names(&tiny("Gemma3ForCausalLM", json!({})));
        assert!(gemma.contains(&Role::QNorm) && gemma.contains(&Role::PostFfnNorm));
        let biased =
            names(&tiny("LlamaForCausalLM", json!({"attention_bias": true, "mlp_bias": true})));
        assert_eq!(biased.len(), 9 + 4 + 3);
        assert_eq!(Role::Down.name(3), "model.layers.3.mlp.down_proj.weight");
    }
}
