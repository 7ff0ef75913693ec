#!/usr/bin/env python3
"""Write a synthetic Mistral-7B-shaped bf16 HF checkpoint (sharded, ~14.5 GB) for IO benchmarks.

    python3 scripts/gen_synthetic_7b.py OUT_DIR [--layers 32]

Weights are a repeated block of random bf16 values (finite, |x| < 1): the numbers do not matter,
only shapes, dtype and bytes on disk. Stdlib only.
"""
import json
import os
import random
import struct
import sys

H, I, V, NH, KV, HD = 4096, 14336, 32000, 32, 8, 128


def tensors(layers):
    yield "model.embed_tokens.weight", [V, H]
    for l in range(layers):
        p = f"model.layers.{l}"
        yield f"{p}.input_layernorm.weight", [H]
        yield f"{p}.self_attn.q_proj.weight", [NH * HD, H]
        yield f"{p}.self_attn.k_proj.weight", [KV * HD, H]
        yield f"{p}.self_attn.v_proj.weight", [KV * HD, H]
        yield f"{p}.self_attn.o_proj.weight", [H, NH * HD]
        yield f"{p}.post_attention_layernorm.weight", [H]
        yield f"{p}.mlp.gate_proj.weight", [I, H]
        yield f"{p}.mlp.up_proj.weight", [I, H]
        yield f"{p}.mlp.down_proj.weight", [H, I]
    yield "model.norm.weight", [H]
    yield "lm_head.weight", [V, H]


def main():
    out = sys.argv[1]
    layers = int(sys.argv[sys.argv.index("--layers") + 1]) if "--layers" in sys.argv else 32
    os.makedirs(out, exist_ok=True)
    rnd = random.Random(0)
    block = b"".join(struct.pack("<f", rnd.uniform(-1, 1))[2:] for _ in range(1 << 20))  # 2 MB of bf16
    shards, cur, size = [[]], 0, 2_000_000_000
    for name, shape in tensors(layers):
        n = 2
        for d in shape:
            n *= d
        if cur and cur + n > size:
            shards.append([])
            cur = 0
        shards[-1].append((name, shape, n))
        cur += n
    weight_map, total = {}, 0
    for i, shard in enumerate(shards):
        fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        header, off = {"__metadata__": {"format": "pt"}}, 0
        for name, shape, n in shard:
            header[name] = {"dtype": "BF16", "shape": shape, "data_offsets": [off, off + n]}
            weight_map[name] = fname
            off += n
        h = json.dumps(header).encode()
        h += b" " * (-len(h) % 8)
        with open(os.path.join(out, fname), "wb") as f:
            f.write(struct.pack("<Q", len(h)) + h)
            left = off
            while left:
                k = min(left, len(block))
                f.write(block[:k])
                left -= k
        total += off
    json.dump({"metadata": {"total_size": total}, "weight_map": weight_map},
              open(os.path.join(out, "model.safetensors.index.json"), "w"), indent=1)
    cfg = {"architectures": ["MistralForCausalLM"], "model_type": "mistral", "vocab_size": V, "hidden_size": H,
           "intermediate_size": I, "num_hidden_layers": layers, "num_attention_heads": NH, "num_key_value_heads": KV,
           "head_dim": HD, "rms_norm_eps": 1e-5, "rope_theta": 1e6, "max_position_embeddings": 32768,
           "sliding_window": None, "tie_word_embeddings": False, "torch_dtype": "bfloat16"}
    json.dump(cfg, open(os.path.join(out, "config.json"), "w"), indent=1)
    print(f"{out}: {len(shards)} shards, {total / 1e9:.2f} GB")


if __name__ == "__main__":
    main()
