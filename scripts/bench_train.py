#!/usr/bin/env python3
"""Training-step speed, orlik vs PyTorch CPU eager, same weights and tokens, side by side in one run.

    $ORLIK_CACHE/pyenv/bin/python scripts/bench_train.py HF_DIR [--small] [--rounds 2] [--reps 3]

One step = forward + next-token cross-entropy + backward + AdamW update, f32, batch x seq-len
tokens of the same deterministic ids (orlik_eval::speed::bench_ids). `--small` adds a smaller
shape (random weights, HF_DIR's vocabulary; 12 layers, hidden 384, 6/2 heads, MLP 1024) saved to a
temp dir so both sides load the same file. Rounds alternate orlik and PyTorch so machine noise
hits both; medians with the ratio orlik / PyTorch (> 1 means orlik is faster). A benchmark
program, not a test.
"""
import argparse
import json
import os
import statistics
import subprocess
import tempfile
import time

import torch
from transformers import AutoConfig, AutoModelForCausalLM


def bench_ids(n, vocab):  # same formula as orlik_eval::speed::bench_ids
    return [(i * 2654435761 + 12345) % vocab for i in range(n)]


def torch_round(path, batch, seq, reps):
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="eager").train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, betas=(0.9, 0.95), weight_decay=0.01)
    vocab = model.config.vocab_size
    n = batch * (seq + 1)
    ids = torch.tensor(bench_ids(n * (reps + 1), vocab)).reshape(reps + 1, batch, seq + 1)
    ts = []
    for r in range(reps + 1):  # the first step warms up
        x = ids[r]
        t0 = time.perf_counter()
        out = model(input_ids=x[:, :-1])
        loss = torch.nn.functional.cross_entropy(out.logits.reshape(-1, vocab), x[:, 1:].reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if r > 0:
            ts.append(time.perf_counter() - t0)
    return batch * seq / statistics.median(ts)


def orlik_round(exe, path, batch, seq, reps):
    r = subprocess.run([exe, "bench", path, "--train", "--batch", str(batch), "--seq-len", str(seq), "--reps", str(reps), "--json"],
                       capture_output=True, text=True, check=True)
    j = json.loads(r.stdout)
    return j["median_tokens_per_s"], j.get("peak_rss_mb")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--small", action="store_true")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--orlik", default=os.environ.get("ORLIK", "target/release/orlik"))
    a = ap.parse_args()
    torch.set_num_threads(os.cpu_count() or 2)
    shapes = [("model", a.model)]
    tmp = None
    if a.small:
        tmp = tempfile.TemporaryDirectory()
        cfg = AutoConfig.from_pretrained(a.model)
        cfg.num_hidden_layers, cfg.hidden_size, cfg.intermediate_size = 12, 384, 1024
        cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim = 6, 2, 64
        torch.manual_seed(0)
        AutoModelForCausalLM.from_config(cfg).save_pretrained(tmp.name)
        shapes.append(("small (12x384, ffn 1024)", tmp.name))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; step = fwd + CE + bwd + clip + AdamW, "
          f"batch {a.batch} x {a.seq_len}; {a.rounds} alternating rounds, median")
    print(f"{'shape':28} {'orlik tok/s':>12} {'torch tok/s':>12} {'ratio':>7} {'orlik peak RSS MB':>18}")
    rows = {}
    for name, path in shapes:
        ours, theirs, rss = [], [], None
        for _ in range(a.rounds):
            o, rss = orlik_round(a.orlik, path, a.batch, a.seq_len, a.reps)
            ours.append(o)
            theirs.append(torch_round(path, a.batch, a.seq_len, a.reps))
        o, t = statistics.median(ours), statistics.median(theirs)
        rows[name] = {"orlik": o, "torch": t, "ratio": o / t, "orlik_peak_rss_mb": rss}
        print(f"{name:28} {o:12.1f} {t:12.1f} {o / t:7.2f} {rss or 0:18.0f}")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
