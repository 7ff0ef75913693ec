#!/usr/bin/env bash
# Issue 20 item 4: is orlik's compression better than what a practitioner would do instead?
# Every variant is a student of the same size (PARAMS of the base model's parameters) trained on
# the same tokens, in the same data order (seed 0), with the same optimiser settings:
#
#   orlik-kd      orlik's pick (Minitron activation importance, budget search over depth and
#                 width, ranked by KL) + logit distillation from the original (forward KL,
#                 online teacher, full vocabulary: what `orlik compress` does); run with every
#                 seed of SEEDS to show the run-to-run noise
#   depth-kd      depth only, layers dropped by Block Influence (ShortGPT) + KD
#   width-kd      width only (attention heads and MLP neurons, Minitron importance) + KD
#   magnitude-kd  weight-magnitude importance (budget search) + KD
#   random-kd     random importance (budget search) + KD
#   orlik-ce      orlik's pick + plain cross-entropy fine-tuning
#   scratch       orlik's pick's architecture from random initialisation, cross-entropy
#   tc-kd-ce      teacher correction (the teacher first fine-tuned on the same tokens) + KD with
#                 a CE term of weight 1 (the best recipe of docs/experiments/kd-smollm2-pl)
#
# and every final model measured the same way: bits/byte at context 1024 on the corpus'
# validation text (in domain) and on UD Polish-PUD (out of domain: never used for training,
# calibration or trimming), KL and top-1 agreement with the teacher on ud-pl-pud, and decode
# speed-up over the teacher (batch 1, in one interleaved run).
#
#   bash scripts/quality_experiment.sh OUT [smollm2|gemma]
#   TOKENS     training tokens per run (default 200000; ~120 tokens/s on 2 cores for SmolLM2)
#   SEEDS      seeds of orlik-kd (default "0 1"); other variants use seed 0
#   VARIANTS   which to run (default: all of the above, in that order)
#   PARAMS     student size as a fraction of the base model (default 0.67)
#   ORLIK      orlik binary (default target/release/orlik)
#   SAMPLES    calibration windows of `orlik score` (default 64)
#   VALID, PUD the in-domain and out-of-domain evaluation texts (defaults: the corpus'
#              valid-small.txt, ../shared/data/pl/ud-pl-pud.txt)
#
# gemma: Gemma-3-270M (opt-in: ORLIK_ACCEPT_GEMMA_TERMS=1, see scripts/demo-pl.sh); its
# vocabulary is first trimmed to the training text, and the trimmed model is the base every
# variant is cut from; the teacher stays the original.
#
# Resumable stage by stage: a finished stage is kept, an interrupted training run resumes from
# its checkpoint (kill it at any time and run the same command again). Every model is measured as
# soon as it exists and OUT/results.md, OUT/results.tsv are written again each time, so a
# part-run experiment has the table of what it has done; the decode speed-ups and
# OUT/val_bpb.png (validation bits/byte during training) come when every variant is done.
# OUT/times.tsv has every stage's wall seconds and peak RSS.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:?usage: quality_experiment.sh OUT [smollm2|gemma]}
MODEL=${2:-smollm2}
TOKENS=${TOKENS:-200000}
SEEDS=${SEEDS:-0 1}
PARAMS=${PARAMS:-0.67}
VARIANTS=${VARIANTS:-orlik-kd depth-kd width-kd magnitude-kd random-kd orlik-ce scratch tc-kd-ce}
ORLIK=${ORLIK:-target/release/orlik}
CACHE=${ORLIK_CACHE:-$HOME/.cache/orlik}
PUD=${PUD:-../shared/data/pl/ud-pl-pud.txt}
VALID=${VALID:-$CACHE/corpus-pl/valid-small.txt}
SAMPLES=${SAMPLES:-64}
[ -f "$PUD" ] || { echo "error: $PUD (UD Polish-PUD, out-of-domain text) is missing: ../shared must be beside the checkout" >&2; exit 2; }
[ -x "$ORLIK" ] || cargo build --release --quiet -p orlik
mkdir -p "$OUT"
timed() { # name, command...: wall seconds and peak RSS into OUT/times.tsv
  local name=$1; shift
  /usr/bin/time -f "$name\t%e\t%M" -a -o "$OUT/times.tsv" "$@"
}
case "$MODEL" in
  smollm2)
    bash scripts/fetch-assets.sh model corpus >&2
    [ -f "$OUT/teacher/config.json" ] || "$ORLIK" convert "$CACHE/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" -o "$OUT/teacher" >&2
    BASE="$OUT/teacher" ;;
  gemma)
    [ "${ORLIK_ACCEPT_GEMMA_TERMS:-}" = 1 ] || { echo "gemma: Gemma terms apply; set ORLIK_ACCEPT_GEMMA_TERMS=1 (see scripts/demo-pl.sh)" >&2; exit 2; }
    bash scripts/fetch-assets.sh gemma corpus >&2
    [ -f "$OUT/teacher/config.json" ] || "$ORLIK" convert "$CACHE/gemma3/gemma-3-270m-q4_k_m.gguf" -o "$OUT/teacher" >&2
    [ -f "$OUT/trimmed/config.json" ] || timed trim "$ORLIK" trim-vocab "$OUT/teacher" --data "$CACHE/corpus-pl/train.txt" -o "$OUT/trimmed" --force >&2
    BASE="$OUT/trimmed" ;;
  *) echo "unknown model '$MODEL' (smollm2, gemma)" >&2; exit 2 ;;
esac
TEACHER="$OUT/teacher"
# Training text: whole paragraphs from the start of train.txt, about 1.3 x the budget (so no run
# repeats a window); in-loop validation: the first ~40 KB of valid-small.txt.
python3 - "$CACHE/corpus-pl" "$OUT" "$TOKENS" <<'PY'
import os, sys
src, out, tokens = sys.argv[1], sys.argv[2], int(sys.argv[3])
def head(name, limit, dst):
    if os.path.exists(f"{out}/{dst}"):
        return
    paras, n = [], 0
    for p in open(f"{src}/{name}", encoding="utf-8").read().split("\n\n"):
        paras.append(p); n += len(p.encode())
        if n > limit: break
    open(f"{out}/{dst}", "w", encoding="utf-8").write("\n\n".join(paras))
head("train.txt", int(tokens * 1.3 * 2.6), "train.txt")   # ~2.1-3.7 bytes per token
head("valid-small.txt", 40_000, "val.txt")
PY
[ -d "$OUT/scores" ] || timed score "$ORLIK" score "$BASE" --data "$CACHE/corpus-pl/train.txt" --samples "$SAMPLES" --seq-len 256 --in-memory -o "$OUT/scores" > /dev/null
# Measurements, each kept in OUT/eval/NAME.json once made.
mkdir -p "$OUT/eval"
measure() { # name, model dir
  local name=$1 dir=$2 f="$OUT/eval/$1.json"
  [ -f "$f" ] && return
  local in out agree="null"
  in=$("$ORLIK" eval ppl "$dir" --text "$VALID" --context 1024 --json)
  out=$("$ORLIK" eval ppl "$dir" --text "$PUD" --context 1024 --json)
  [ "$dir" != "$TEACHER" ] && agree=$("$ORLIK" eval agree "$dir" --teacher "$TEACHER" --text "$PUD" --max-tokens 16384 --json)
  python3 - "$f" "$dir" "$in" "$out" "$agree" <<'PY'
import json, sys
f, d, i, o, a = sys.argv[1], sys.argv[2], *map(json.loads, sys.argv[3:])
json.dump({"model": d, "bpb_valid": i["bits_per_byte"], "bpb_pud": o["bits_per_byte"],
           "kl": a and a["kl"], "top1": a and a["top1"]}, open(f + ".tmp", "w"), indent=1)
PY
  mv "$f.tmp" "$f"
}
results() { # the table of what has been measured so far (speed once every run is done)
  python3 - "$OUT" "$TOKENS" "$PARAMS" "$MODEL" <<'PY'
import json, os, sys
out, tokens, params, model = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
ev = {f[:-5]: json.load(open(f"{out}/eval/{f}")) for f in os.listdir(f"{out}/eval")
      if f.endswith(".json") and f != "speed.json"}
# decode b1 tokens/s by directory name (the teacher and every pruned architecture)
speed = {os.path.basename(r["model"].rstrip("/")): next(t["tokens_per_s"] for t in r["timings"] if t["what"].startswith("decode b1"))
         for r in json.load(open(f"{out}/eval/speed.json"))} if os.path.exists(f"{out}/eval/speed.json") else {}
# each run's architecture (its pruned start); scratch starts from random weights (no gap)
start = {"orlik-kd": "orlik", "orlik-ce": "orlik", "scratch": "orlik", "tc-kd-ce": "orlik",
         "depth-kd": "depth", "width-kd": "width", "magnitude-kd": "magnitude", "random-kd": "random"}
def arch(name):
    if name.startswith("pruned-"):
        return name
    k = next((k for k in start if name == k or name.startswith(k + "-s")), None)
    return k and f"pruned-{start[k]}"
t = ev["teacher"]
order = ["teacher", "trimmed"] + sorted(k for k in ev if k.startswith("pruned-"))
order += sorted(k for k in ev if k not in order)
with open(f"{out}/results.md", "w") as f, open(f"{out}/results.tsv", "w") as g:
    f.write(f"{model}: students of {params} of the base model's parameters, {tokens:,} training tokens per run, "
            "the same data order (seed 0 unless the name says), bits/byte at context 1024.\n\n")
    f.write("| model | bits/byte valid-small (in domain) | bits/byte ud-pl-pud (out of domain) | pruned→teacher gap closed, ud-pl-pud | KL to teacher, ud-pl-pud | top-1 agreement | decode b1 speed-up |\n")
    f.write("| --- | --- | --- | --- | --- | --- | --- |\n")
    g.write("model\tbpb_valid\tbpb_pud\tkl\ttop1\n")
    for name in order:
        if name not in ev:
            continue
        e, a = ev[name], arch(name)
        p = ev.get(a) if a and not name.startswith(("pruned-", "scratch")) else None
        gap = "—"
        if p and p["bpb_pud"] != t["bpb_pud"]:
            gap = f"{100 * (p['bpb_pud'] - e['bpb_pud']) / (p['bpb_pud'] - t['bpb_pud']):.1f}%"
        kl = "—" if e["kl"] is None else f"{e['kl']:.4f}"
        top = "—" if e["top1"] is None else f"{100 * e['top1']:.1f}%"
        d = speed.get(a if a else name)
        sp = f"{d / speed['teacher']:.2f}x" if d and "teacher" in speed else "—"
        f.write(f"| {name} | {e['bpb_valid']:.4f} | {e['bpb_pud']:.4f} | {gap} | {kl} | {top} | {sp} |\n")
        g.write(f"{name}\t{e['bpb_valid']}\t{e['bpb_pud']}\t{e['kl']}\t{e['top1']}\n")
PY
}
prune() { # name, extra flags...: a student of PARAMS of the base, into OUT/pruned-NAME, measured
  local name=$1; shift
  [ -f "$OUT/pruned-$name/config.json" ] || timed "prune-$name" "$ORLIK" prune "$BASE" --scores "$OUT/scores" --params "$PARAMS" --data "$CACHE/corpus-pl/train.txt" "$@" -o "$OUT/pruned-$name" --force
  measure "pruned-$name" "$OUT/pruned-$name"; results
}
COMMON=(--data "$OUT/train.txt" --val "$OUT/val.txt" --tokens "$TOKENS" --seq-len 256 --batch 4 --grad-accum 2 --eval-every 10 --val-tokens 8192 --save-every 10)
run() { # name, command...: a training run into OUT/NAME (resumed when interrupted), measured
  local name=$1; shift
  if [ ! -d "$OUT/$name/final" ]; then
    local resume=(); [ -f "$OUT/$name/run.json" ] && resume=(--resume)
    timed "$name" "$@" "${COMMON[@]}" -o "$OUT/$name" "${resume[@]}"
  fi
  # a teacher run (teacher correction) is no student: it is not measured
  [[ "$name" == teacher-* ]] || { measure "$name" "$OUT/$name/final"; results; }
}
measure teacher "$TEACHER"
[ "$BASE" != "$TEACHER" ] && measure trimmed "$BASE"
RUNS=()
for v in $VARIANTS; do
  case "$v" in
    orlik-kd)
      prune orlik
      for s in $SEEDS; do
        run "orlik-kd-s$s" "$ORLIK" distill --student "$OUT/pruned-orlik" --teacher "$TEACHER" --lr 3e-4 --seed "$s"
        RUNS+=("orlik-kd-s$s")
      done ;;
    depth-kd) prune depth --axes depth --depth-method bi
      run depth-kd "$ORLIK" distill --student "$OUT/pruned-depth" --teacher "$TEACHER" --lr 3e-4; RUNS+=(depth-kd) ;;
    width-kd) prune width --axes heads,mlp
      run width-kd "$ORLIK" distill --student "$OUT/pruned-width" --teacher "$TEACHER" --lr 3e-4; RUNS+=(width-kd) ;;
    magnitude-kd) prune magnitude --importance magnitude
      run magnitude-kd "$ORLIK" distill --student "$OUT/pruned-magnitude" --teacher "$TEACHER" --lr 3e-4; RUNS+=(magnitude-kd) ;;
    random-kd) prune random --importance random
      run random-kd "$ORLIK" distill --student "$OUT/pruned-random" --teacher "$TEACHER" --lr 3e-4; RUNS+=(random-kd) ;;
    orlik-ce) prune orlik
      run orlik-ce "$ORLIK" train "$OUT/pruned-orlik" --lr 3e-4; RUNS+=(orlik-ce) ;;
    scratch) prune orlik
      run scratch "$ORLIK" train "$OUT/pruned-orlik" --init random --lr 1e-3; RUNS+=(scratch) ;;
    tc-kd-ce) prune orlik
      # Teacher correction: the teacher itself trained on the same tokens first.
      run teacher-tc "$ORLIK" train "$TEACHER" --lr 3e-5
      run tc-kd-ce "$ORLIK" distill --student "$OUT/pruned-orlik" --teacher "$OUT/teacher-tc/final" --lr 3e-4 --ce-weight 1
      RUNS+=(tc-kd-ce) ;;
    *) echo "unknown variant '$v'" >&2; exit 2 ;;
  esac
done
# Decode speed of every distinct architecture against the teacher, in one interleaved run.
PRUNED=(); for p in "$OUT"/pruned-*; do PRUNED+=("$OUT/$(basename "$p")"); done
if [ ! -f "$OUT/eval/speed.json" ]; then
  "$ORLIK" eval speed "$TEACHER" "${PRUNED[@]}" --reps 3 --json > "$OUT/eval/speed.json.tmp"
  mv "$OUT/eval/speed.json.tmp" "$OUT/eval/speed.json"
fi
results
DIRS=(); for r in "${RUNS[@]}"; do DIRS+=("$OUT/$r"); done
"$ORLIK" curves "${DIRS[@]}" --key val_bits_per_byte -o "$OUT/val_bpb.png" >&2
cat "$OUT/results.md"
echo; echo "stage, wall seconds, peak RSS KB:"; cat "$OUT/times.tsv"
