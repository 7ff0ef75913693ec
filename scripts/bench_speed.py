#!/usr/bin/env python3
"""Forward speed, orlik vs PyTorch CPU eager, same weights and inputs, side by side in one run.

    $ORLIK_CACHE/pyenv/bin/python scripts/bench_speed.py HF_DIR [--rounds 2] [--reps 3]

Prefill at batch 1 x 512 and batch 8 x 128, and decode of 64 tokens after 16 with a KV cache, all
in f32. Rounds alternate orlik and PyTorch so machine noise hits both; medians are reported with
the ratio orlik / PyTorch (> 1 means orlik is faster). Also printed: this run's f32 gemm
throughput (`gemm_speed`) and the fraction of it each side reaches (MFU, 2 · params FLOPs per
token, attention scores left out; decode is memory-bound, so its MFU is low by nature and the
weight bytes streamed per second are printed beside it). A benchmark program, not a test.
"""
import argparse
import json
import os
import statistics
import subprocess
import time

import torch
from transformers import AutoModelForCausalLM

from bench_train import gemm_peak, mfu


def bench_ids(n, vocab):  # same formula as orlik_eval::speed::bench_ids
    return [(i * 2654435761 + 12345) % vocab for i in range(n)]


def torch_round(model, vocab, reps):
    # Prefill as generation runs it: the next token's logits only (`logits_to_keep=1`, what
    # transformers' generate passes), as `orlik bench` and llama-bench do.
    out = {}
    with torch.no_grad():
        for b, t in ((1, 512), (8, 128)):
            x = torch.tensor(bench_ids(b * t, vocab)).reshape(b, t)
            model(input_ids=x, logits_to_keep=1)
            ts = []
            for _ in range(reps):
                t0 = time.perf_counter()
                model(input_ids=x, logits_to_keep=1)
                ts.append(time.perf_counter() - t0)
            out[f"prefill b{b}x{t}"] = b * t / statistics.median(ts)
        ids = bench_ids(16 + 64, vocab)
        ts = []
        for r in range(reps + 1):
            o = model(input_ids=torch.tensor([ids[:16]]), use_cache=True, logits_to_keep=1)
            past = o.past_key_values
            t0 = time.perf_counter()
            for i in ids[16:]:
                o = model(input_ids=torch.tensor([[i]]), past_key_values=past, use_cache=True)
                past = o.past_key_values
            if r > 0:
                ts.append(time.perf_counter() - t0)
        out["decode b1 64 tokens after 16"] = 64 / statistics.median(ts)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--orlik", default=os.environ.get("ORLIK", "target/release/orlik"))
    a = ap.parse_args()
    torch.set_num_threads(os.cpu_count() or 2)
    model = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32, attn_implementation="eager").eval()
    vocab = model.config.vocab_size
    ours, theirs = {}, {}
    for _ in range(a.rounds):
        r = subprocess.run([a.orlik, "bench", a.model, "--reps", str(a.reps), "--json"],
                           capture_output=True, text=True, check=True)
        for row in json.loads(r.stdout):
            ours.setdefault(row["what"], []).append(row["tokens_per_s"])
        for k, v in torch_round(model, vocab, a.reps).items():
            theirs.setdefault(k, []).append(v)
    peak = gemm_peak()
    n = sum(p.numel() for p in model.parameters())  # a tied embedding counted once, as lm_head
    head = model.get_output_embeddings().weight.numel()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {a.rounds} alternating rounds, median")
    print(f"{'':32} {'orlik tok/s':>12} {'torch tok/s':>12} {'ratio':>7} {'orlik MFU':>9} {'torch MFU':>9} "
          f"{'orlik GB/s':>10}")
    rows = {}
    for k in ours:
        o, t = statistics.median(ours[k]), statistics.median(theirs[k])
        rows[k] = {"orlik": o, "torch": t, "ratio": o / t}
        # Each decoded token streams every f32 weight once.
        gbs = f"{4 * n * o / 1e9:10.1f}" if k.startswith("decode") else f"{'':10}"
        # Prefill FLOPs per token leave the head out (it runs at the last position only).
        f = 2 * (n - head) if k.startswith("prefill") else 2 * n
        print(f"{k:32} {o:12.1f} {t:12.1f} {o / t:7.2f} {mfu(f, o, peak):>9} {mfu(f, t, peak):>9} {gbs}")
    if peak:
        print(f"f32 gemm peak measured in this run: {peak:.1f} GFLOP/s (gemm_speed)")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
