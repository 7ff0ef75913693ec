#!/usr/bin/env python3
"""Training-step speed, orlik vs PyTorch CPU eager, same weights and tokens, side by side in one run.

    $ORLIK_CACHE/pyenv/bin/python scripts/bench_train.py HF_DIR [--small] [--rounds 2] [--reps 3]
    $ORLIK_CACHE/pyenv/bin/python scripts/bench_train.py HF_DIR --distill [--rounds 2] [--reps 3]

--distill times a distillation step instead (HF_DIR as both teacher and student): the teacher's
forward without gradients, the student's forward, forward KL on the full logits (T = 1, mean
over tokens), backward, clip, AdamW; orlik's side is `orlik distill` itself (tokens/s of steps
2.. from metrics.jsonl, and its per-phase seconds), PyTorch's the same loop in eager and SDPA
attention, each phase timed. Also printed: this run's f32 gemm throughput (`gemm_speed`) and the
fraction of it each side reaches (MFU, counting 6 · params · tokens for the student and
2 · params · tokens for the teacher, attention FLOPs left out).

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
    return batch * seq / statistics.median(ts), sum(p.numel() for p in model.parameters())


def mfu(flops_per_token, tokens_per_s, peak):
    """The fraction of the machine's measured f32 gemm throughput a side reaches, as text."""
    return f"{flops_per_token * tokens_per_s / (peak * 1e9):6.1%}" if peak and flops_per_token else "     -"


def kd_step_flops(model, tokens):
    n = sum(p.numel() for p in model.parameters())  # tied embedding counted once, as lm_head
    return (6 + 2) * n * tokens


def torch_distill_round(path, batch, seq, reps, attn):
    load = lambda: AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation=attn)
    teacher, student = load().eval(), load().train()
    opt = torch.optim.AdamW(student.parameters(), lr=3e-4, betas=(0.9, 0.95), weight_decay=0.01)
    vocab = student.config.vocab_size
    ids = torch.tensor(bench_ids(batch * (seq + 1) * (reps + 1), vocab)).reshape(reps + 1, batch, seq + 1)
    steps, phases = [], {k: [] for k in ("teacher", "forward", "loss_backward", "update")}
    for r in range(reps + 1):  # the first step warms up
        x = ids[r][:, :-1]
        t = [time.perf_counter()]
        with torch.no_grad():
            lt = torch.log_softmax(teacher(input_ids=x).logits, -1)
        t.append(time.perf_counter())
        logits = student(input_ids=x).logits
        t.append(time.perf_counter())
        ls = torch.log_softmax(logits, -1)
        loss = (lt.exp() * (lt - ls)).sum(-1).mean()  # forward KL(teacher || student)
        loss.backward()
        t.append(time.perf_counter())
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        t.append(time.perf_counter())
        if r > 0:
            steps.append(t[-1] - t[0])
            for k, a, b in zip(phases, t, t[1:]):
                phases[k].append(b - a)
    return batch * seq / statistics.median(steps), {k: statistics.median(v) for k, v in phases.items()}, kd_step_flops(student, batch * seq)


def orlik_distill_round(exe, path, batch, seq, reps, text, tmp):
    out = os.path.join(tmp, "kd")
    subprocess.run([exe, "distill", "--teacher", path, "--student", path, "--data", text, "--steps", str(reps + 1),
                    "--batch", str(batch), "--seq-len", str(seq), "--save-every", "1000", "--force", "-o", out],
                   check=True, capture_output=True)
    rows = [json.loads(l) for l in open(os.path.join(out, "metrics.jsonl")) if '"loss"' in l][1:]
    ph = {k: statistics.median(r["phase_seconds"].get(k, 0.0) for r in rows) for k in rows[0]["phase_seconds"]}
    return statistics.median(r["tokens_per_s"] for r in rows), ph


def gemm_peak():
    """This run's f32 GFLOP/s at prefill shapes (the best of gemm_speed's prefill rows), or None."""
    here = os.path.dirname(os.path.abspath(__file__))
    r = subprocess.run(["cargo", "run", "--release", "-q", "-p", "orlik-model", "--example", "gemm_speed", "--", "2"],
                       cwd=os.path.join(here, ".."), capture_output=True, text=True)
    for line in r.stdout.splitlines():
        if line.startswith("f32 peak GF/s"):
            return float(line.split()[-1])
    return None


def distill_main(a):
    tmp = tempfile.TemporaryDirectory()
    text = os.path.join(tmp.name, "text.txt")
    with open(text, "w") as f:  # enough windows for the steps
        f.write("\n\n".join(f"Zdanie numer {i} o tym, jak model uczy się od nauczyciela." for i in range(4000)))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; distillation step = teacher fwd + student fwd + "
          f"forward KL (full logits) + bwd + clip + AdamW, batch {a.batch} x {a.seq_len}; {a.rounds} alternating rounds, median")
    res = {"orlik": [], "eager": [], "sdpa": []}
    phases = {k: [] for k in res}
    flops = None
    for _ in range(a.rounds):
        tps, ph = orlik_distill_round(a.orlik, a.model, a.batch, a.seq_len, a.reps, text, tmp.name)
        res["orlik"].append(tps)
        phases["orlik"].append(ph)
        for attn in ("eager", "sdpa"):
            tps, ph, flops = torch_distill_round(a.model, a.batch, a.seq_len, a.reps, attn)
            res[attn].append(tps)
            phases[attn].append(ph)
    peak = gemm_peak()
    o = statistics.median(res["orlik"])
    print(f"{'side':10} {'tok/s':>8} {'orlik/side':>10} {'MFU':>6}   phases (median s per step)")
    for side, v in res.items():
        t = statistics.median(v)
        per_token = flops / (a.batch * a.seq_len) if flops else None
        ph = {k: statistics.median(p[k] for p in phases[side]) for k in phases[side][0]}
        shown = "  ".join(f"{k} {s:.2f}" for k, s in ph.items())
        print(f"{side:10} {t:8.1f} {o / t:10.2f} {mfu(per_token, t, peak)}   {shown}")
    if peak:
        print(f"f32 gemm peak measured in this run: {peak:.1f} GFLOP/s (gemm_speed); MFU counts 8 · params FLOPs per token")
    print(json.dumps({k: statistics.median(v) for k, v in res.items()}))


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
    ap.add_argument("--distill", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(os.cpu_count() or 2)
    if a.distill:
        return distill_main(a)
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
    rows, measured = {}, []
    for name, path in shapes:
        ours, theirs, rss, n = [], [], None, None
        for _ in range(a.rounds):
            o, rss = orlik_round(a.orlik, path, a.batch, a.seq_len, a.reps)
            ours.append(o)
            t, n = torch_round(path, a.batch, a.seq_len, a.reps)
            theirs.append(t)
        measured.append((name, statistics.median(ours), statistics.median(theirs), rss, n))
    peak = gemm_peak()
    print(f"{'shape':28} {'orlik tok/s':>12} {'torch tok/s':>12} {'ratio':>7} {'orlik MFU':>9} {'torch MFU':>9} "
          f"{'orlik peak RSS MB':>18}")
    for name, o, t, rss, n in measured:
        rows[name] = {"orlik": o, "torch": t, "ratio": o / t, "orlik_peak_rss_mb": rss}
        print(f"{name:28} {o:12.1f} {t:12.1f} {o / t:7.2f} {mfu(6 * n, o, peak):>9} {mfu(6 * n, t, peak):>9} "
              f"{rss or 0:18.0f}")
    if peak:
        print(f"f32 gemm peak measured in this run: {peak:.1f} GFLOP/s (gemm_speed); MFU counts 6 · params FLOPs "
              f"per token (attention scores left out)")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
