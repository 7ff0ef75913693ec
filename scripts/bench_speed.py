#!/usr/bin/env python3
"""Forward speed, orlik vs PyTorch CPU eager, same weights and inputs, side by side in one run.

    $ORLIK_CACHE/pyenv/bin/python scripts/bench_speed.py HF_DIR [--rounds 2] [--reps 3]

Prefill at batch 1 x 512 and batch 8 x 128, and decode of 64 tokens after 16 with a KV cache, all
in f32. Rounds alternate orlik and PyTorch so machine noise hits both; medians are reported with
the ratio orlik / PyTorch (> 1 means orlik is faster). A benchmark program, not a test.
"""
import argparse
import json
import os
import statistics
import subprocess
import time

import torch
from transformers import AutoModelForCausalLM


def bench_ids(n, vocab):  # same formula as orlik_eval::speed::bench_ids
    return [(i * 2654435761 + 12345) % vocab for i in range(n)]


def torch_round(model, vocab, reps):
    out = {}
    with torch.no_grad():
        for b, t in ((1, 512), (8, 128)):
            x = torch.tensor(bench_ids(b * t, vocab)).reshape(b, t)
            model(input_ids=x)
            ts = []
            for _ in range(reps):
                t0 = time.perf_counter()
                model(input_ids=x)
                ts.append(time.perf_counter() - t0)
            out[f"prefill b{b}x{t}"] = b * t / statistics.median(ts)
        ids = bench_ids(16 + 64, vocab)
        ts = []
        for r in range(reps + 1):
            o = model(input_ids=torch.tensor([ids[:16]]), use_cache=True)
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
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {a.rounds} alternating rounds, median")
    print(f"{'':32} {'orlik tok/s':>12} {'torch tok/s':>12} {'ratio':>7}")
    rows = {}
    for k in ours:
        o, t = statistics.median(ours[k]), statistics.median(theirs[k])
        rows[k] = {"orlik": o, "torch": t, "ratio": o / t}
        print(f"{k:32} {o:12.1f} {t:12.1f} {o / t:7.2f}")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
