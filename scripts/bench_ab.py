#!/usr/bin/env python3
"""Two orlik binaries side by side in one run: `orlik bench` (prefill / decode) and `orlik bench
--train` (a training step: forward, backward, AdamW), alternating A and B every round so that the
machine's noise hits both; medians and the ratio B / A (> 1 means B is faster). A benchmark
program, not a test; for checking that a change did not slow orlik down.

    python3 scripts/bench_ab.py OLD_ORLIK NEW_ORLIK HF_DIR [--rounds 3] [--batch 4] [--seq-len 256]
"""
import argparse, json, statistics, subprocess


def run(binary, args):
    out = subprocess.run([binary, *args, "--json"], check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("a")
    ap.add_argument("b")
    ap.add_argument("model")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--reps", type=int, default=3)
    o = ap.parse_args()
    res = {"a": {}, "b": {}}
    train = ["bench", o.model, "--train", "--batch", str(o.batch), "--seq-len", str(o.seq_len), "--reps", str(o.reps)]
    infer = ["bench", o.model, "--reps", str(o.reps)]
    for r in range(o.rounds):
        for side in (["a", "b"] if r % 2 == 0 else ["b", "a"]):
            binary = getattr(o, side)
            t = run(binary, train)
            res[side].setdefault(f"train step {o.batch}x{o.seq_len}", []).append(t["median_tokens_per_s"])
            for t in run(binary, infer):
                res[side].setdefault(t["what"], []).append(t["tokens_per_s"])
    print(f"{'measurement':48} {'A tok/s':>10} {'B tok/s':>10} {'B / A':>7}   ({o.rounds} alternating rounds, medians)")
    for k in res["a"]:
        a, b = statistics.median(res["a"][k]), statistics.median(res["b"][k])
        print(f"{k:48} {a:10.1f} {b:10.1f} {b / a:7.3f}")


if __name__ == "__main__":
    main()
