#!/usr/bin/env python3
"""Two orlik binaries side by side in one run: `orlik bench` (prefill / decode) and a distillation
step (`orlik distill` with the model as its own online teacher: teacher forward, student forward
and backward, AdamW), alternating A and B every round so that the
machine's noise hits both; medians and the ratio B / A (> 1 means B is faster). A benchmark
program, not a test; for checking that a change did not slow orlik down.

    python3 scripts/bench_ab.py OLD_ORLIK NEW_ORLIK HF_DIR [--rounds 3] [--steps 5] [--batch 4] [--seq-len 256]
        [--train] [--speed] [--no-distill] [--no-bench]

--train adds `orlik bench --train` (a training step: forward, CE, backward, AdamW) with and
without --checkpoint-layers; --speed adds `orlik eval speed` (prefill and decode at batch 1 and
8); --no-distill / --no-bench leave those out.
"""
import argparse, json, os, shutil, statistics, subprocess, tempfile


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
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--train", action="store_true")
    ap.add_argument("--speed", action="store_true")
    ap.add_argument("--no-distill", action="store_true")
    ap.add_argument("--no-bench", action="store_true")
    o = ap.parse_args()
    res = {"a": {}, "b": {}}
    infer = ["bench", o.model, "--reps", str(o.reps)]
    tmp = tempfile.mkdtemp()
    text = os.path.join(tmp, "text.txt")
    with open(text, "w") as f:  # a Polish-ish paragraph repeated: enough windows for the steps
        f.write("\n\n".join(f"Zdanie numer {i} o tym, jak model uczy się od nauczyciela." for i in range(4000)))
    for r in range(o.rounds):
        for side in (["a", "b"] if r % 2 == 0 else ["b", "a"]):
            binary = getattr(o, side)
            for ckpt in ([[], ["--checkpoint-layers"]] if o.train else []):
                j = run(binary, ["bench", o.model, "--train", "--batch", str(o.batch), "--seq-len",
                                 str(o.seq_len), "--reps", str(o.reps), *ckpt])
                name = f"train step {o.batch}x{o.seq_len}{' --checkpoint-layers' if ckpt else ''}"
                res[side].setdefault(name, []).append(j["median_tokens_per_s"])
            if o.speed:
                for t in run(binary, ["eval", "speed", o.model, "--reps", str(o.reps)])[0]["timings"]:
                    res[side].setdefault(f"eval speed {t['what']}", []).append(t["tokens_per_s"])
            for t in ([] if o.no_bench else run(binary, infer)):
                res[side].setdefault(t["what"], []).append(t["tokens_per_s"])
            if o.no_distill:
                continue
            # a distillation step (online teacher = the model itself): forward of the teacher,
            # forward + backward of the student, AdamW; tokens/s of steps 2.. from metrics.jsonl
            out = os.path.join(tmp, f"kd-{side}-{r}")
            subprocess.run([binary, "distill", "--teacher", o.model, "--student", o.model, "--data", text,
                            "--steps", str(o.steps), "--batch", str(o.batch), "--seq-len", str(o.seq_len),
                            "--save-every", "1000", "-o", out], check=True, capture_output=True)
            rows = [json.loads(l) for l in open(os.path.join(out, "metrics.jsonl")) if '"loss"' in l]
            tps = statistics.median(x["tokens_per_s"] for x in rows[1:])
            res[side].setdefault(f"distill step {o.batch}x{o.seq_len} (online teacher)", []).append(tps)
            shutil.rmtree(out)
    print(f"{'measurement':48} {'A tok/s':>10} {'B tok/s':>10} {'B / A':>7}   ({o.rounds} alternating rounds, medians)")
    for k in res["a"]:
        a, b = statistics.median(res["a"][k]), statistics.median(res["b"][k])
        print(f"{k:48} {a:10.1f} {b:10.1f} {b / a:7.3f}")


if __name__ == "__main__":
    main()
