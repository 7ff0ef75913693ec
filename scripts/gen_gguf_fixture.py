#!/usr/bin/env python3
"""Make a tiny GGUF the way llama.cpp's converter does, with golden values from the `gguf` package.

    $ORLIK_CACHE/pyenv/bin/python scripts/gen_gguf_fixture.py tests/fixtures

Writes tests/fixtures/gguf/:
- tiny-llama.gguf: the `mistral` fixture's weights as llama.cpp stores a Llama: Q/K rows permuted
  for interleaved RoPE (convert_hf_to_gguf.py LlamaModel.permute), tensors in F32, F16, BF16,
  Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, and a byte-level BPE tokenizer;
- kquants.gguf: one tensor per K-quant type (Q2_K..Q6_K, random blocks with sane scales).
- golden.safetensors: what conversion must produce, with HF names (dequantised by the `gguf`
  package's reference numpy code, Q/K in HF layout), and `quant.*` dequantised.
"""
import os
import sys

import numpy as np
from gguf import GGMLQuantizationType as Q
from gguf import GGUFWriter
from gguf.quants import dequantize, quantize
from safetensors.numpy import load_file, save_file

HF_TO_GGUF = {
    "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}
# One storage type per kind of tensor, so every common type is exercised.
TYPES = {"attn_q": Q.F32, "attn_k": Q.F16, "attn_v": Q.BF16, "attn_output": Q.Q8_0, "ffn_gate": Q.Q4_0,
         "ffn_up": Q.Q4_1, "ffn_down": Q.F32, "token_embd": Q.Q5_0, "output": Q.Q5_1}


def permute(w, n_head):
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def gguf_name(hf):
    if hf == "model.embed_tokens.weight":
        return "token_embd.weight"
    if hf == "model.norm.weight":
        return "output_norm.weight"
    if hf == "lm_head.weight":
        return "output.weight"
    _, _, layer, rest = hf.split(".", 3)
    base, kind = rest.rsplit(".", 1)
    return f"blk.{layer}.{HF_TO_GGUF[base]}.{kind}"


def kquant_blocks(qtype, n_blocks, rng):
    """Random K-quant blocks whose f16 scale fields hold small finite values."""
    size, d_offsets = {Q.Q2_K: (84, [80, 82]), Q.Q3_K: (110, [108]), Q.Q4_K: (144, [0, 2]),
                       Q.Q5_K: (176, [0, 2]), Q.Q6_K: (210, [208])}[qtype]
    b = rng.integers(0, 256, size=(n_blocks, size), dtype=np.uint8)
    for off in d_offsets:
        d = rng.uniform(0.001, 0.05, size=n_blocks).astype(np.float16).view(np.uint8).reshape(n_blocks, 2)
        b[:, off:off + 2] = d
    return b


def main(out):
    src = os.path.join(out, "mistral")
    import json
    cfg = json.load(open(os.path.join(src, "config.json")))
    w = {}
    for f in sorted(os.listdir(src)):
        if f.startswith("model-") and f.endswith(".safetensors"):
            w.update(load_file(os.path.join(src, f)))
    d = os.path.join(out, "gguf")
    os.makedirs(d, exist_ok=True)
    gw = GGUFWriter(os.path.join(d, "tiny-llama.gguf"), "llama")
    gw.add_name("tiny-llama")
    gw.add_context_length(cfg["max_position_embeddings"])
    gw.add_embedding_length(cfg["hidden_size"])
    gw.add_block_count(cfg["num_hidden_layers"])
    gw.add_feed_forward_length(cfg["intermediate_size"])
    gw.add_head_count(cfg["num_attention_heads"])
    gw.add_head_count_kv(cfg["num_key_value_heads"])
    gw.add_rope_freq_base(cfg["rope_parameters"]["rope_theta"])
    gw.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    # byte-level BPE vocabulary: 63 symbols + one control token
    syms = [chr(c) for c in range(ord("a"), ord("z") + 1)] + ["Ġ", "Ġa", "Ġt", "th", "the", "Ġthe", "he", "in", "an", "er"]
    syms += [f"x{i}" for i in range(cfg["vocab_size"] - 1 - len(syms))]
    tokens = ["<|endoftext|>"] + syms
    gw.add_tokenizer_model("gpt2")
    gw.add_tokenizer_pre("gpt-2")
    gw.add_token_list(tokens)
    gw.add_token_types([3] + [1] * len(syms))
    gw.add_token_merges(["Ġ a", "Ġ t", "t h", "h e", "th e", "Ġ the", "i n", "a n", "e r"])
    gw.add_bos_token_id(0)
    gw.add_eos_token_id(0)
    gw.add_add_bos_token(False)
    golden = {}
    rng = np.random.default_rng(0)
    for hf, t in w.items():
        t = t.astype(np.float32)
        name = gguf_name(hf)
        kind = name.split(".")[-2] if name.startswith("blk.") else name.split(".")[0]
        stored = t
        if kind == "attn_q":
            stored = permute(t, cfg["num_attention_heads"])
        elif kind == "attn_k":
            stored = permute(t, cfg["num_key_value_heads"])
        qt = TYPES.get(kind, Q.F32) if t.ndim == 2 else Q.F32
        if qt == Q.F32:
            gw.add_tensor(name, np.ascontiguousarray(stored))
            back = stored
        elif qt == Q.F16:
            gw.add_tensor(name, stored.astype(np.float16))
            back = stored.astype(np.float16).astype(np.float32)
        else:
            qd = quantize(np.ascontiguousarray(stored), qt)
            gw.add_tensor(name, qd, raw_dtype=qt)
            back = dequantize(qd, qt).reshape(stored.shape)
        # The golden is in HF layout: Q/K un-permuted (F32 / F16 storage commute with permuting).
        if kind == "attn_q":
            back = t
        elif kind == "attn_k":
            back = t.astype(np.float16).astype(np.float32)
        golden[hf] = np.ascontiguousarray(back, dtype=np.float32)
    gw.write_header_to_file()
    gw.write_kv_data_to_file()
    gw.write_tensors_to_file()
    gw.close()
    qw = GGUFWriter(os.path.join(d, "kquants.gguf"), "llama")
    for qt in (Q.Q2_K, Q.Q3_K, Q.Q4_K, Q.Q5_K, Q.Q6_K):
        blocks = kquant_blocks(qt, 4, rng)  # 4 rows of 256
        qw.add_tensor(f"quant.{qt.name}", blocks, raw_dtype=qt)
        golden[f"quant.{qt.name}"] = dequantize(blocks, qt).reshape(4, 256).astype(np.float32)
    qw.write_header_to_file()
    qw.write_kv_data_to_file()
    qw.write_tensors_to_file()
    qw.close()
    save_file(golden, os.path.join(d, "golden.safetensors"),
              metadata={"format_version": "1", "generated_by": "$ORLIK_CACHE/pyenv/bin/python scripts/gen_gguf_fixture.py tests/fixtures/gguf"})
    for f in sorted(os.listdir(d)):
        print(f, os.path.getsize(os.path.join(d, f)))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures")
