#!/usr/bin/env python3
"""The PyTorch side of scripts/gpu-check.sh, on the GPU machine (its python3 holds PyTorch and
transformers; nothing to install). Two subcommands:

    python3 scripts/gpu_bench.py make DIR [--shape 1b|tiny]   # a random Llama in HF layout (f32 safetensors)
    python3 scripts/gpu_bench.py bench DIR [--reps 3]         # PyTorch tokens/s on the GPU, JSON on stdout
    python3 scripts/gpu_bench.py compare ORLIK.json TORCH.json # the table with orlik / PyTorch ratios
    python3 scripts/gpu_bench.py train DIR --batch 2 --seq-len 1024 [--orlik ORLIK_TRAIN.json]
                                      # a training step (forward + CE backward + AdamW), PyTorch

`bench` measures what `orlik bench` measures, on the same weights and token ids: prefill 1 x 512,
prefill 8 x 128, decode of 64 tokens after 16 at batch 1 with a KV cache, in f32 (what orlik's
GPU executor computes in so far) and bf16 with SDPA, plus a large bf16 matrix product's
TFLOP/s (the ceiling MFU is measured against). A benchmark program, not a test.
"""
import argparse
import json
import sys
import time


def bench_ids(n, vocab):  # the formula of orlik_eval::speed::bench_ids
    return [(i * 2654435761 + 12345) % vocab for i in range(n)]


SHAPES = {
    # Llama-3.2-1B's shape (hidden 2048, 16 layers, 32/8 heads, MLP 8192, vocabulary 128256).
    "1b": dict(hidden_size=2048, num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8,
               intermediate_size=8192, vocab_size=128256, head_dim=64, tie_word_embeddings=True),
    "tiny": dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=4,
                 intermediate_size=704, vocab_size=4096, head_dim=32, tie_word_embeddings=False),
}


def make(path, shape):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    cfg = LlamaConfig(max_position_embeddings=4096, rms_norm_eps=1e-5, rope_theta=500000.0, **SHAPES[shape])
    model = LlamaForCausalLM(cfg).to(torch.float32)
    model.save_pretrained(path, safe_serialization=True)
    print(json.dumps({"made": path, "parameters": sum(p.numel() for p in model.parameters())}))


def sync():
    import torch
    torch.cuda.synchronize()


def timed(f, reps):
    f()
    sync()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        f()
        sync()
        ts.append(time.perf_counter() - t0)
    return sorted(ts)[len(ts) // 2]


def torch_rows(model, vocab, reps):
    import torch
    dev = "cuda"
    rows = []
    with torch.no_grad():
        for b, t in ((1, 512), (8, 128)):
            x = torch.tensor(bench_ids(b * t, vocab), device=dev).reshape(b, t)
            # the next token's logits only, as generation (and `orlik bench`) computes them
            s = timed(lambda: model(input_ids=x, logits_to_keep=1), reps)
            rows.append({"what": f"prefill b{b}x{t}", "tokens_per_s": b * t / s})
        ids = torch.tensor(bench_ids(16 + 64, vocab), device=dev).reshape(1, 80)

        def decode():
            out = model(input_ids=ids[:, :16], use_cache=True, logits_to_keep=1)
            past = out.past_key_values
            for k in range(16, 80):
                out = model(input_ids=ids[:, k:k + 1], past_key_values=past, use_cache=True)
                past = out.past_key_values
        # The prefill is inside the timed region here; 16 tokens of it are small next to 64 steps.
        s = timed(decode, reps)
        rows.append({"what": "decode b1 64 tokens after 16", "tokens_per_s": 64 / s})
    return rows


def bench(path, reps):
    import torch
    from transformers import AutoModelForCausalLM
    out = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__}
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    s = timed(lambda: a @ a, 10)
    out["bf16_matmul_tflops"] = 2 * 8192 ** 3 / s / 1e12
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.float32)
    torch.backends.cuda.matmul.allow_tf32 = False
    s = timed(lambda: a @ a, 5)
    out["f32_matmul_tflops"] = 2 * 8192 ** 3 / s / 1e12
    del a
    for dtype, attn in ((torch.float32, "eager"), (torch.float32, "sdpa"), (torch.bfloat16, "sdpa")):
        model = AutoModelForCausalLM.from_pretrained(path, torch_dtype=dtype, attn_implementation=attn).to("cuda").eval()
        vocab = model.config.vocab_size
        out[f"{str(dtype).split('.')[-1]}_{attn}"] = torch_rows(model, vocab, reps)
        del model
        torch.cuda.empty_cache()
    out["parameters"] = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(path).parameters())
    print(json.dumps(out))


def train(path, batch, seq, reps, orlik_path):
    """Tokens/s of a PyTorch training step on the GPU: f32 eager, f32 SDPA, bf16 autocast SDPA
    (f32 master weights), on the ids `orlik bench --train` uses; with ORLIK_TRAIN.json (`orlik
    bench --train --json`), the ratios."""
    import torch
    from transformers import AutoModelForCausalLM
    torch.backends.cuda.matmul.allow_tf32 = False
    out = {"batch": batch, "seq_len": seq}
    vocab = None
    for name, amp, attn in (("f32_eager", False, "eager"), ("f32_sdpa", False, "sdpa"), ("bf16_autocast_sdpa", True, "sdpa")):
        model = AutoModelForCausalLM.from_pretrained(path, torch_dtype=torch.float32, attn_implementation=attn).to("cuda").train()
        vocab = model.config.vocab_size
        opt = torch.optim.AdamW(model.parameters(), lr=1e-5, betas=(0.9, 0.95), weight_decay=0.01)
        x = torch.tensor(bench_ids(batch * (seq + 1), vocab), device="cuda").reshape(batch, seq + 1)

        def step():
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
                logits = model(input_ids=x[:, :-1]).logits
            loss = torch.nn.functional.cross_entropy(logits.float().reshape(-1, vocab), x[:, 1:].reshape(-1))
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        s = timed(step, reps)
        out[name] = batch * seq / s
        out[name + "_peak_gb"] = torch.cuda.max_memory_allocated() / 1e9
        del model, opt
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    print(json.dumps(out))
    if orlik_path:
        o = json.load(open(orlik_path))["median_tokens_per_s"]
        print(f"train step {batch}x{seq}: orlik f32 {o:.0f} tokens/s; " + ", ".join(
            f"PyTorch {k} {out[k]:.0f} (orlik / PyTorch {o / out[k]:.2f})" for k in ("f32_eager", "f32_sdpa", "bf16_autocast_sdpa")))


def compare(orlik_path, torch_path):
    orlik = json.load(open(orlik_path))  # `orlik bench --json`: a list of {what, tokens_per_s}
    th = json.load(open(torch_path))
    print(f"GPU: {th['gpu']}, torch {th['torch']}; bf16 8192^3 matmul {th['bf16_matmul_tflops']:.0f} TFLOP/s, "
          f"f32 (no TF32) {th['f32_matmul_tflops']:.1f} TFLOP/s")
    sides = [k for k in th if k.startswith(("float32", "bfloat16"))]
    print("| | orlik f32 | " + " | ".join(f"PyTorch {k}" for k in sides) + " | orlik / PyTorch " + " / ".join(sides) + " |")
    print("|" + " --- |" * (3 + len(sides)))
    for i, row in enumerate(orlik):
        o = row["tokens_per_s"]
        ts = [th[k][i]["tokens_per_s"] for k in sides]
        # MFU of the f32 prefill against the f32 ceiling: 2 · parameters FLOPs per token.
        mfu = 2 * th["parameters"] * o / (th["f32_matmul_tflops"] * 1e12)
        print(f"| {row['what']} | {o:.1f} (f32 MFU {100 * mfu:.1f}%) | " + " | ".join(f"{t:.1f}" for t in ts)
              + " | " + " / ".join(f"{o / t:.2f}" for t in ts) + " |")


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("make"); m.add_argument("dir"); m.add_argument("--shape", default="1b", choices=SHAPES)
    b = sub.add_parser("bench"); b.add_argument("dir"); b.add_argument("--reps", type=int, default=3)
    c = sub.add_parser("compare"); c.add_argument("orlik"); c.add_argument("torch")
    t = sub.add_parser("train"); t.add_argument("dir"); t.add_argument("--batch", type=int, default=2)
    t.add_argument("--seq-len", type=int, default=1024); t.add_argument("--reps", type=int, default=3)
    t.add_argument("--orlik")
    a = p.parse_args()
    if a.cmd == "make":
        make(a.dir, a.shape)
    elif a.cmd == "bench":
        bench(a.dir, a.reps)
    elif a.cmd == "train":
        train(a.dir, a.batch, a.seq_len, a.reps, a.orlik)
    else:
        compare(a.orlik, a.torch)
    sys.stdout.flush()
