#!/usr/bin/env python3
"""Alignment data for `orlik sft / dpo / grpo`, made from public inputs (nothing third-party is
committed; run it on a fresh machine):

  python3 scripts/make_align_data.py OUT [--exams ../shared/data/pl/exams-pl-train.jsonl]
                                         [--arith 1200] [--heldout 200] [--seed 0]

1. EXAMS-pl (Polish school and vocational exam questions, multiple choice A-D), split by a seeded
   shuffle into a training part and a held-out part of --heldout questions:
   - exams-sft.jsonl   conversations: question with lettered choices -> "B. <choice text>"
   - exams-dpo.jsonl   pairs: the correct answer (chosen) vs a seeded random wrong one (rejected)
   - exams-grpo.jsonl  prompts with "answer": the correct letter (reward: choice)
   - exams-heldout.jsonl (EXAMS shape, for `orlik eval mc`) and exams-heldout-grpo.jsonl (prompts,
     for `orlik eval reward --reward choice`)
2. Polish arithmetic word problems generated here (seeded): "Ania ma 7 jabłek. Kupiła jeszcze 5.
   Ile jabłek ma teraz?" with the worked answer "7 + 5 = 12. Odpowiedź: 12".
   - arith-sft.jsonl, arith-dpo.jsonl (chosen: correct; rejected: a near miss),
     arith-grpo.jsonl (reward: numeric), arith-heldout.jsonl (prompts never trained on)
"""
import argparse
import json
import os
import random

INSTR_MC = "Odpowiedz, podając literę poprawnej odpowiedzi."
INSTR_ARITH = "Rozwiąż zadanie i podaj wynik."


def mc_prompt(q):
    lines = [q["question"]["stem"].strip()]
    for c in q["question"]["choices"]:
        lines.append(f"{c['label']}. {c['text'].strip()}")
    lines.append(INSTR_MC)
    return "\n".join(lines)


def user(text):
    return [{"role": "user", "content": text}]


NAMES = ["Ania", "Kasia", "Marek", "Tomek", "Ola", "Piotr", "Zosia", "Janek", "Ewa", "Bartek"]
# Plural genitives: every count before a noun is >= 5, where Polish takes the genitive plural.
THINGS = ["jabłek", "cukierków", "książek", "kredek", "znaczków", "orzechów", "balonów", "ołówków"]


def arith_problem(rng):
    name = rng.choice(NAMES)
    gen = rng.choice(THINGS)
    kind = rng.choice(["add", "sub", "mul"])
    if kind == "add":
        a, b = rng.randint(5, 30), rng.randint(2, 30)
        q = f"{name} ma {a} {gen}. Dostaje jeszcze {b}. Ile {gen} ma teraz?"
        expr, ans = f"{a} + {b}", a + b
    elif kind == "sub":
        a = rng.randint(10, 40)
        b = rng.randint(1, a - 1)
        q = f"{name} ma {a} {gen}. Oddaje {b}. Ile {gen} zostaje?"
        expr, ans = f"{a} - {b}", a - b
    else:
        a, b = rng.randint(2, 9), rng.randint(5, 9)
        boxes = "pudełka" if a < 5 else "pudełek"
        q = f"{name} ma {a} {boxes}, w każdym jest {b} {gen}. Ile {gen} jest razem?"
        expr, ans = f"{a} * {b}", a * b
    return f"{q}\n{INSTR_ARITH}", expr, ans


def write(path, rows):
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    print(f"{path}: {len(rows)} rows")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out")
    here = os.path.dirname(os.path.abspath(__file__))
    ap.add_argument("--exams", default=os.path.join(here, "..", "..", "shared", "data", "pl", "exams-pl-train.jsonl"))
    ap.add_argument("--arith", type=int, default=1200, help="arithmetic problems for training")
    ap.add_argument("--heldout", type=int, default=200, help="held-out EXAMS questions and arithmetic problems")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    rng = random.Random(a.seed)

    if os.path.exists(a.exams):
        qs = []
        with open(a.exams, encoding="utf-8") as f:
            for i, line in enumerate(f, 1):
                if not line.strip():
                    continue
                q = json.loads(line)
                labels = [c["label"] for c in q["question"]["choices"]]
                if q.get("answerKey") not in labels or len(labels) < 2:
                    raise SystemExit(f"{a.exams}:{i}: answerKey {q.get('answerKey')!r} not among choices {labels}")
                qs.append(q)
        rng.shuffle(qs)
        held, train = qs[: a.heldout], qs[a.heldout:]
        sft, dpo, grpo = [], [], []
        for q in train:
            key = q["answerKey"]
            text = {c["label"]: c["text"].strip() for c in q["question"]["choices"]}
            p = mc_prompt(q)
            good = f"{key}. {text[key]}"
            wrong = rng.choice([k for k in text if k != key])
            sft.append({"messages": user(p) + [{"role": "assistant", "content": good}]})
            dpo.append({"prompt": user(p), "chosen": good, "rejected": f"{wrong}. {text[wrong]}"})
            grpo.append({"prompt": user(p), "answer": key})
        write(os.path.join(a.out, "exams-sft.jsonl"), sft)
        write(os.path.join(a.out, "exams-dpo.jsonl"), dpo)
        write(os.path.join(a.out, "exams-grpo.jsonl"), grpo)
        write(os.path.join(a.out, "exams-heldout.jsonl"), held)
        write(os.path.join(a.out, "exams-heldout-grpo.jsonl"), [{"prompt": user(mc_prompt(q)), "answer": q["answerKey"]} for q in held])
    else:
        print(f"note: {a.exams} not found; EXAMS-pl files not made (../shared holds it)")

    seen, train, held = set(), [], []
    while len(train) + len(held) < a.arith + a.heldout:
        q, expr, ans = arith_problem(rng)
        if q in seen:
            continue
        seen.add(q)
        (held if len(held) < a.heldout else train).append((q, expr, ans))
    sft, dpo, grpo = [], [], []
    for q, expr, ans in train:
        good = f"{expr} = {ans}. Odpowiedź: {ans}"
        miss = ans + rng.choice([-2, -1, 1, 2])
        sft.append({"messages": user(q) + [{"role": "assistant", "content": good}]})
        dpo.append({"prompt": user(q), "chosen": good, "rejected": f"{expr} = {miss}. Odpowiedź: {miss}"})
        grpo.append({"prompt": user(q), "answer": str(ans)})
    write(os.path.join(a.out, "arith-sft.jsonl"), sft)
    write(os.path.join(a.out, "arith-dpo.jsonl"), dpo)
    write(os.path.join(a.out, "arith-grpo.jsonl"), grpo)
    write(os.path.join(a.out, "arith-heldout.jsonl"), [{"prompt": user(q), "answer": str(ans)} for q, _, ans in held])


if __name__ == "__main__":
    main()
