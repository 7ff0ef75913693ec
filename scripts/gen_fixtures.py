#!/usr/bin/env python3
"""Generate tiny random HF checkpoints and golden logits with transformers (the reference).

    $ORLIK_CACHE/pyenv/bin/python scripts/gen_fixtures.py tests/fixtures [NAME ...]

With names, only those fixtures are written (the others are still built, so the random stream,
and every fixture's values, are the same as in a full run).

Each fixture directory holds config.json, safetensors weights and golden.safetensors with
`input_ids` (2, T) int64, `attention_mask` (2, T) (row 1 left-padded) and `logits` (2, T, V) f32
from eager attention. The Rust parity test compares orlik's logits at unpadded positions.
Fixtures cover: Llama (tied, Llama-3 rope scaling, attention bias), Mistral (sliding window
smaller than the input, sharded checkpoint), Qwen2 (q/k/v bias, head_dim != hidden/heads, bf16),
Gemma 3 text (sliding-window layers shorter than the input interleaved with a global one, separate
local/global RoPE bases, query_pre_attn_scalar != head_dim, q/k norms, pre/post norms, GeGLU),
Qwen3 (per-head q/k RMSNorm, no bias, head_dim != hidden/heads, untied).
"""
import json
import os
import sys

import torch
from safetensors.torch import save_file
from transformers import (Gemma3ForCausalLM, Gemma3TextConfig, LlamaConfig, LlamaForCausalLM,
                          MistralConfig, MistralForCausalLM, Qwen2Config, Qwen2ForCausalLM,
                          Qwen3Config, Qwen3ForCausalLM)

T = 12
COMMON = dict(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
              rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2)


def fixtures():
    yield "llama", LlamaForCausalLM, LlamaConfig(
        **COMMON, head_dim=8, rope_theta=500.0, tie_word_embeddings=True, attention_bias=True,
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                      "high_freq_factor": 4.0, "original_max_position_embeddings": 16}), torch.float32, None
    yield "mistral", MistralForCausalLM, MistralConfig(
        **COMMON, head_dim=8, rope_theta=10000.0, sliding_window=4, tie_word_embeddings=False), torch.float32, "20KB"
    yield "qwen2", Qwen2ForCausalLM, Qwen2Config(
        **COMMON, head_dim=16, rope_theta=1000000.0, tie_word_embeddings=False), torch.bfloat16, None
    g = dict(COMMON, num_hidden_layers=3)
    yield "gemma3", Gemma3ForCausalLM, Gemma3TextConfig(
        **g, head_dim=8, query_pre_attn_scalar=12, sliding_window=4,
        layer_types=["sliding_attention", "full_attention", "sliding_attention"],
        rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": 1000000.0},
                         "sliding_attention": {"rope_type": "default", "rope_theta": 100.0}},
        tie_word_embeddings=True, pad_token_id=0), torch.float32, None
    yield "qwen3", Qwen3ForCausalLM, Qwen3Config(
        **COMMON, head_dim=16, rope_theta=1000000.0, tie_word_embeddings=False), torch.float32, None


def main(out, only):
    torch.manual_seed(0)
    for name, cls, cfg, dtype, shard in fixtures():
        cfg._attn_implementation = "eager"
        model = cls(cfg).eval()
        with torch.no_grad():
            zero_centred = name == "gemma3"  # Gemma norms are applied as (1 + w)
            for p in model.parameters():  # larger than the default init so layers matter
                if p.dim() > 1:
                    p.normal_(0.0, 0.2)
                else:
                    p.uniform_(-0.5, 0.5) if zero_centred else p.uniform_(0.5, 1.5)
            for n, p in model.named_parameters():
                if n.endswith(".bias"):
                    p.normal_(0.0, 0.2)
        # Golden logits from the stored (possibly bf16-rounded) values, in a fresh f32 model: a
        # bf16 round-trip of the whole module would also round the RoPE inv_freq buffer.
        sd = {k: v.to(dtype).to(torch.float32) for k, v in model.state_dict().items()}
        model = cls(cfg).eval()
        model.load_state_dict(sd)
        g = torch.Generator().manual_seed(1)
        ids = torch.randint(3, cfg.vocab_size, (2, T), generator=g)
        if only and name not in only:
            continue
        d = os.path.join(out, name)
        os.makedirs(d, exist_ok=True)
        for f in os.listdir(d):
            os.remove(os.path.join(d, f))
        cls(cfg).to(dtype).eval().save_pretrained(d, max_shard_size=shard or "10GB", state_dict={k: v.to(dtype) for k, v in sd.items()})
        mask = torch.ones(2, T, dtype=torch.int64)
        mask[1, :3] = 0
        ids[1, :3] = 0
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=mask).logits.float()
        save_file({"input_ids": ids.contiguous(), "attention_mask": mask.contiguous(),
                   "logits": logits.contiguous()}, os.path.join(d, "golden.safetensors"),
                  metadata={"format_version": "1", "generated_by": "$ORLIK_CACHE/pyenv/bin/python scripts/gen_fixtures.py tests/fixtures"})
        size = sum(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d))
        print(f"{name}: {sorted(os.listdir(d))} {size} bytes")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures", set(sys.argv[2:]))
