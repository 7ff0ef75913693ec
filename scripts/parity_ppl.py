#!/usr/bin/env python3
"""Perplexity parity: transformers vs `orlik eval ppl` on the same HF directory and text.

    $ORLIK_CACHE/pyenv/bin/python scripts/parity_ppl.py HF_DIR TEXT [--context 1024]
        [--max-chars N] [--orlik target/release/orlik] [--tol 0.005]

transformers loads the directory orlik wrote (AutoTokenizer + AutoModelForCausalLM, f32), tokenizes
the whole text with the tokenizer's defaults and scores windows exactly as orlik documents
(windows of `context` tokens every `stride`; each token scored once, never the first of the text,
and with stride == context not the first of each window). Exits 1 when the token counts differ or
the perplexities differ by more than `tol` (relative). Speed is reported as scoring tokens/s of
each (model loaded, text tokenized) and their ratio; it is printed, not checked.
"""
import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer


def windows(n, context, stride):
    out, scored_to, s = [], 1, 0
    while scored_to < n:
        e = min(s + context, n)
        first = max(scored_to, s + 1)
        if first < e:
            out.append((s, e, first))
            scored_to = e
        if e == n:
            break
        s += stride
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("text")
    ap.add_argument("--context", type=int, default=1024)
    ap.add_argument("--stride", type=int)
    ap.add_argument("--max-chars", type=int)
    ap.add_argument("--orlik", default=os.environ.get("ORLIK", "target/release/orlik"))
    ap.add_argument("--tol", type=float, default=0.005)
    a = ap.parse_args()
    stride = a.stride or a.context
    text = open(a.text, encoding="utf-8").read()
    if a.max_chars:
        text = text[: a.max_chars]
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False, encoding="utf-8") as f:
        f.write(text)
        path = f.name
    try:
        t0 = time.time()
        res = subprocess.run([a.orlik, "eval", "ppl", a.model, "--text", path, "--context", str(a.context),
                              "--stride", str(stride), "--json"], capture_output=True, text=True)
        if res.returncode != 0:
            sys.exit(f"orlik failed: {res.stderr}")
        ours = json.loads(res.stdout)
        t_ours = time.time() - t0
    finally:
        os.unlink(path)

    torch.set_num_threads(os.cpu_count() or 2)
    tok = AutoTokenizer.from_pretrained(a.model)
    model = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32).eval()
    ids = tok(text)["input_ids"]
    t0 = time.time()
    total, count = 0.0, 0
    with torch.no_grad():
        for s, e, first in windows(len(ids), a.context, stride):
            x = torch.tensor([ids[s:e]])
            logp = torch.log_softmax(model(input_ids=x).logits[0].float(), dim=-1)  # (t, v)
            tgt = torch.tensor(ids[first:e])
            total -= logp[first - 1 - s: e - 1 - s].gather(1, tgt[:, None]).sum().item()
            count += e - first
    t_ref = time.time() - t0
    ref = {"tokens": count, "nll": total / count, "ppl": math.exp(total / count),
           "bits_per_byte": total / math.log(2) / len(text.encode())}
    rel = abs(ours["ppl"] - ref["ppl"]) / ref["ppl"]
    report = {"text_bytes": len(text.encode()), "context": a.context, "stride": stride,
              "orlik": {k: ours[k] for k in ("tokens", "nll", "ppl", "bits_per_byte")},
              "transformers": ref, "ppl_relative_difference": rel,
              "seconds": {"orlik_incl_load": round(t_ours, 2), "transformers_scoring": round(t_ref, 2)},
              # Scoring only on both sides (model loaded, text tokenized): orlik's own timer
              # (eval ppl's tokens_per_s) against the loop above, the same windows.
              "scoring_tokens_per_s": {"orlik": round(ours["tokens_per_s"], 1),
                                       "transformers": round(count / t_ref, 1),
                                       "orlik_over_transformers": round(ours["tokens_per_s"] * t_ref / count, 3)}}
    print(json.dumps(report, indent=2))
    if ours["tokens"] != ref["tokens"]:
        sys.exit(f"FAIL: token counts differ ({ours['tokens']} vs {ref['tokens']}): tokenizers disagree")
    if rel > a.tol:
        sys.exit(f"FAIL: perplexity differs by {rel:.4%} > {a.tol:.2%}")
    print(f"OK: perplexity within {rel:.5%} of transformers")


if __name__ == "__main__":
    main()
