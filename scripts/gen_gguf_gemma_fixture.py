#!/usr/bin/env python3
"""Make a tiny Gemma 3 GGUF the way llama.cpp's converter stores one (convert_hf_to_gguf.py,
Gemma3Model): the `gemma3` HF fixture's weights in F32 under llama.cpp names, every RMSNorm weight
shifted by +1 (`norm_shift`), no Q/K permutation, and a SentencePiece vocabulary (scores, byte
fallback tokens, no space prefix).

    $ORLIK_CACHE/pyenv/bin/python scripts/gen_gguf_gemma_fixture.py tests/fixtures

Writes tests/fixtures/gguf/tiny-gemma3.gguf. The Rust test compares the converted weights with
the HF fixture's and checks what the converter derives (llama.cpp's every-6th-layer-global rule).
"""
import json
import os
import sys

import numpy as np
from gguf import GGUFWriter
from safetensors.numpy import load_file

HF_TO_GGUF = {
    "input_layernorm": "attn_norm", "post_attention_layernorm": "post_attention_norm",
    "pre_feedforward_layernorm": "ffn_norm", "post_feedforward_layernorm": "post_ffw_norm",
    "self_attn.q_norm": "attn_q_norm", "self_attn.k_norm": "attn_k_norm",
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}


def gguf_name(hf):
    if hf == "model.embed_tokens.weight":
        return "token_embd.weight"
    if hf == "model.norm.weight":
        return "output_norm.weight"
    _, _, layer, rest = hf.split(".", 3)
    base, kind = rest.rsplit(".", 1)
    return f"blk.{layer}.{HF_TO_GGUF[base]}.{kind}"


def main(out):
    src = os.path.join(out, "gemma3")
    cfg = json.load(open(os.path.join(src, "config.json")))
    w = load_file(os.path.join(src, "model.safetensors"))
    gw = GGUFWriter(os.path.join(out, "gguf", "tiny-gemma3.gguf"), "gemma3")
    gw.add_name("tiny-gemma3")
    gw.add_context_length(cfg["max_position_embeddings"])
    gw.add_embedding_length(cfg["hidden_size"])
    gw.add_block_count(cfg["num_hidden_layers"])
    gw.add_feed_forward_length(cfg["intermediate_size"])
    gw.add_head_count(cfg["num_attention_heads"])
    gw.add_head_count_kv(cfg["num_key_value_heads"])
    gw.add_key_length(cfg["head_dim"])
    gw.add_value_length(cfg["head_dim"])
    gw.add_rope_freq_base(cfg["rope_parameters"]["full_attention"]["rope_theta"])
    gw.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    gw.add_sliding_window(cfg["sliding_window"])
    # SentencePiece vocabulary: <pad> <eos> <bos> <unk>, 3 byte-fallback tokens, pieces.
    pieces = ["▁", "t", "h", "e", "a", "▁t", "he", "▁the", "▁a", "n", "▁an", "i", "in"]
    tokens = ["<pad>", "<eos>", "<bos>", "<unk>", "<0x0A>", "<0x20>", "<0xC3>"] + pieces
    tokens += [f"x{i}" for i in range(cfg["vocab_size"] - len(tokens))]
    types = [3, 3, 3, 2, 6, 6, 6] + [1] * (len(tokens) - 7)
    scores = [0.0] * 7 + [-float(i) for i in range(len(tokens) - 7)]
    gw.add_tokenizer_model("llama")
    gw.add_tokenizer_pre("default")
    gw.add_token_list(tokens)
    gw.add_token_scores(scores)
    gw.add_token_types(types)
    gw.add_bos_token_id(2)
    gw.add_eos_token_id(1)
    gw.add_unk_token_id(3)
    gw.add_pad_token_id(0)
    gw.add_add_bos_token(True)
    gw.add_add_space_prefix(False)
    for hf, t in w.items():
        t = t.astype(np.float32)
        if hf.endswith("norm.weight"):
            t = t + np.float32(1.0)
        gw.add_tensor(gguf_name(hf), np.ascontiguousarray(t))
    gw.write_header_to_file()
    gw.write_kv_data_to_file()
    gw.write_tensors_to_file()
    gw.close()
    print("tiny-gemma3.gguf", os.path.getsize(os.path.join(out, "gguf", "tiny-gemma3.gguf")))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures")
