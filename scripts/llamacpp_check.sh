#!/usr/bin/env bash
# The real client decides: llama.cpp's own tools load orlik's GGUF exports and agree with orlik.
#
#   bash scripts/llamacpp_check.sh ORLIK TEXT NAME=MODEL_DIR [NAME=MODEL_DIR ...]
#
# ORLIK is the orlik binary, TEXT a Polish text file (the perplexity text; its first 1200
# characters are the tokenization paragraph). For each HF model directory:
#   1. `orlik export` as f32, f16, q8_0, q4_0, q4_k and q6_k;
#   2. tokenization: llama-tokenize on the f32 GGUF = the model's tokenizer.json (HF tokenizers,
#      the library orlik tokenizes with), id for id;
#   3. greedy generation of 32 tokens: llama-simple on the f32 GGUF = `orlik generate
#      --temperature 0`, character for character; on the f16 GGUF, the same up to the first token
#      whose top-2 margin in orlik is within what f16 rounding can move (measured, see below);
#   4. llama-perplexity (ctx 256, 16 chunks) of orlik's f16 GGUF = that of the GGUF llama.cpp's
#      own convert_hf_to_gguf.py makes from the same directory, within 0.1% (where that script
#      accepts the directory); each quantised type against llama-quantize run on orlik's f32 GGUF: the
#      same type for every tensor, byte-identical blocks counted, perplexity within 0.1%;
#   5. round trip: `orlik convert` of the f32 GGUF gives back the directory's safetensors,
#      byte for byte (Gemma's norms excepted: llama.cpp stores 1 + w).
# llama.cpp is built by scripts/build-llamacpp.sh (cached). Exits non-zero on any disagreement.
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
CACHE=${ORLIK_CACHE:-$HOME/.cache/orlik}
ORLIK=$(realpath "$1"); TEXT=$(realpath "$2"); shift 2
BIN=$(bash "$HERE/build-llamacpp.sh") || { echo "llamacpp: FAILED: llama.cpp did not build"; exit 1; }
PY=$CACHE/pyenv/bin/python
SRC=$CACHE/llamacpp/src-0.3.36
"$PY" -c "import sentencepiece" 2>/dev/null || "$CACHE/pyenv/bin/pip" install --quiet sentencepiece
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
head -c 1200 "$TEXT" > "$W/para.txt"
PROMPT="Stolica Polski to"
fail=0
ok() { echo "llamacpp: $1: ok ($2)"; }
bad() { echo "llamacpp: $1: FAILED ($2)"; fail=1; }
ppl() { # gguf -> perplexity
  "$BIN/llama-perplexity" -m "$1" -f "$TEXT" -c "${PPL_CTX:-256}" --chunks 16 -t "$(nproc)" 2>&1 \
    | sed -n 's/.*Final estimate: PPL = \([0-9.]*\).*/\1/p'
}
within() { # a b rel -> true when |a-b| <= rel*b
  python3 -c "import sys; a,b,r=map(float,sys.argv[1:]); sys.exit(0 if abs(a-b)<=r*b else 1)" "$1" "$2" "$3"
}

for spec in "$@"; do
  name=${spec%%=*}; dir=$(realpath "${spec#*=}")
  for t in f32 f16 q8_0 q4_0 q4_k q6_k; do
    "$ORLIK" export "$dir" --gguf "$W/$name-$t.gguf" --type "$t" > "$W/$name-$t.log" 2>&1 \
      || { cat "$W/$name-$t.log"; bad "$name export $t" "see above"; continue 2; }
  done
  echo "llamacpp: $name: $(tail -1 "$W/$name-f16.log")"

  # 2. tokenization
  ours=$("$PY" -c "import sys; from tokenizers import Tokenizer
t = Tokenizer.from_file(sys.argv[1] + '/tokenizer.json'); print(t.encode(open(sys.argv[2], encoding='utf-8').read()).ids)" "$dir" "$W/para.txt")
  theirs=$("$BIN/llama-tokenize" -m "$W/$name-f32.gguf" -f "$W/para.txt" --ids --log-disable 2>/dev/null | tail -1)
  n=$(echo "$ours" | tr ',' '\n' | wc -l)
  if [ "$(echo "$ours" | tr -d ' ')" = "$(echo "$theirs" | tr -d ' ')" ]; then ok "$name tokenization" "$n tokens of Polish, id for id"
  else bad "$name tokenization" "orlik ${ours:0:120}... llama.cpp ${theirs:0:120}..."; fi

  # 3. greedy generation: the continuations after the prompt (orlik's --json text; llama-simple
  # echoes the prompt as its tokens decode, special tokens and all, which is cut off). f32 must
  # agree throughout. f16 must agree up to the first token whose top-2 margin in orlik is below
  # what f16 can move: δ, the largest logit change orlik measures when it runs the f16 GGUF's
  # weights (converted back), counted twice because llama.cpp also rounds the activations to f16
  # in its products, and twice again because a margin moves by both of its logits: 4δ.
  gen() { "$ORLIK" generate "$1" --prompt "$PROMPT" --max-new-tokens 32 --temperature 0 --json 2>/dev/null; }
  gen "$dir" > "$W/$name-gen.json"
  "$ORLIK" convert "$W/$name-f16.gguf" -o "$W/$name-back16" > /dev/null 2>&1 && gen "$W/$name-back16" > "$W/$name-gen16.json" \
    || bad "$name orlik on the f16 weights" "convert or generate failed"
  rm -rf "$W/$name-back16"
  shown=$("$PY" -c "import sys; from tokenizers import Tokenizer
t = Tokenizer.from_file(sys.argv[1] + '/tokenizer.json'); print(t.decode(t.encode(sys.argv[2]).ids, skip_special_tokens=False), end='')" "$dir" "$PROMPT")
  for t in f32 f16; do
    l=$("$BIN/llama-simple" -m "$W/$name-$t.gguf" -n 32 "$PROMPT" 2>/dev/null)
    [ "${l#"$shown"}" = "$l" ] && bad "$name llama-simple's prompt" "'${l:0:60}' does not start with the prompt's tokens '$shown'"
    printf '%s' "${l#"$shown"}" > "$W/$name-llama-$t.txt"
    if msg=$(python3 - "$t" "$W/$name-gen.json" "$W/$name-gen16.json" "$W/$name-llama-$t.txt" <<'PYEOF'
import json, sys
t, ours, theirs = sys.argv[1], json.load(open(sys.argv[2])), open(sys.argv[4], encoding="utf-8").read()
o = ours["text"]
k = next((i for i, (x, y) in enumerate(zip(o, theirs)) if x != y), min(len(o), len(theirs)))
if t == "f32":
    ok = o == theirs
    print(f"{len(o)} characters equal" if ok else f"first difference at character {k}: orlik {o[:150]!r} llama.cpp {theirs[:150]!r}")
    sys.exit(0 if ok else 1)
# δ over the tokens where orlik on the f16 weights picked the same ones (their logits compare)
steps, steps16 = ours["steps"], json.load(open(sys.argv[3]))["steps"]
delta = 0.0
for a, b in zip(steps, steps16):
    if a["id"] != b["id"]:
        break
    delta = max(delta, abs(a["best"][1] - b["best"][1]))
    if a["runner_up"][0] == b["runner_up"][0]:
        delta = max(delta, abs(a["runner_up"][1] - b["runner_up"][1]))
tau = 4 * delta
tie = next((i for i, s in enumerate(steps) if s["best"][1] - s["runner_up"][1] < tau), None)
must = len(o) if tie is None else (steps[tie - 1]["chars"] if tie > 0 else 0)
where = "no near tie" if tie is None else f"token {tie + 1} is a near tie (margin {steps[tie]['best'][1] - steps[tie]['runner_up'][1]:.4f})"
ok = o[:must] == theirs[:must] and (tie is not None or o == theirs)
print(f"{k} of {len(o)} characters equal; f16 moves orlik's logits by δ = {delta:.4f}, 4δ = {tau:.4f}; {where}: "
      f"the first {must} characters ({len(steps) if tie is None else tie} tokens) must agree: {'they do' if ok else 'they do not'}")
sys.exit(0 if ok else 1)
PYEOF
); then ok "$name greedy 32 tokens, $t" "$msg"; else bad "$name greedy 32 tokens, $t" "$msg"; fi
  done

  # 4. perplexity
  p16=$(ppl "$W/$name-f16.gguf")
  if PYTHONPATH=$SRC/gguf-py "$PY" "$SRC/convert_hf_to_gguf.py" "$dir" --outtype f16 --outfile "$W/$name-ref.gguf" > "$W/$name-ref.log" 2>&1; then
    pref=$(ppl "$W/$name-ref.gguf")
    if [ -n "$p16" ] && within "$p16" "$pref" 0.001; then ok "$name perplexity f16" "orlik's GGUF $p16, convert_hf_to_gguf.py's $pref"
    else bad "$name perplexity f16" "orlik's GGUF ${p16:-none}, convert_hf_to_gguf.py's ${pref:-none}"; fi
    rm -f "$W/$name-ref.gguf"
  else
    echo "llamacpp: $name: convert_hf_to_gguf.py does not take this directory ($(grep -m1 -E 'Error|error' "$W/$name-ref.log" | cut -c1-160)); f16 perplexity $p16 not compared"
  fi
  # q8_0 / q4_0 / q4_k / q6_k against llama.cpp's own quantiser run on orlik's f32 GGUF: same
  # tensor types, the same blocks (tensors compared byte for byte), perplexity within 0.1%.
  for q in "q8_0 Q8_0" "q4_0 Q4_0" "q4_k Q4_K" "q6_k Q6_K"; do
    read -r t T <<<"$q"
    "$BIN/llama-quantize" "$W/$name-f32.gguf" "$W/$name-lq-$t.gguf" "$T" > "$W/$name-lq.log" 2>&1 || { tail -3 "$W/$name-lq.log"; bad "$name llama-quantize $T" "failed"; continue; }
    blocks=$(PYTHONPATH=$SRC/gguf-py "$PY" - "$W/$name-$t.gguf" "$W/$name-lq-$t.gguf" <<'PYEOF'
import sys
import numpy as np
from gguf import GGUFReader
a, b = (GGUFReader(p) for p in sys.argv[1:3])
tb = {t.name: t for t in b.tensors}
same = sum(1 for t in a.tensors if t.tensor_type == tb[t.name].tensor_type
           and np.array_equal(np.asarray(t.data).view(np.uint8), np.asarray(tb[t.name].data).view(np.uint8)))
types = sum(1 for t in a.tensors if t.tensor_type == tb[t.name].tensor_type)
print(f"{same} {types} {len(a.tensors)}")
PYEOF
)
    read -r same types total <<<"$blocks"
    # Byte-identical tensors give the same perplexity by construction: llama-quantize's file is
    # measured only otherwise. orlik's own is measured for q8_0 / q4_0 (the bound the README
    # states); for the k-quants only where the blocks differ (CI time; figures in the README).
    p=; pq=
    case "$t:$same" in q4_k:"$total"|q6_k:"$total") p="not measured again" ;; *) p=$(ppl "$W/$name-$t.gguf") ;; esac
    if [ "$same" = "$total" ]; then how="llama-quantize's file has the same tensors"
    else pq=$(ppl "$W/$name-lq-$t.gguf"); how="llama-quantize's $pq"; fi
    msg="perplexity $p (f16 $p16), $how; $same of $total tensors byte-identical, $types of the same type"
    if [ "$types" = "$total" ] && [ -n "$p" ] && { [ "$same" = "$total" ] || { [ -n "$pq" ] && within "$p" "$pq" 0.001; }; }; then ok "$name $t" "$msg"
    else bad "$name $t" "$msg"; fi
    rm -f "$W/$name-lq-$t.gguf"
  done

  # 5. round trip
  "$ORLIK" convert "$W/$name-f32.gguf" -o "$W/$name-back" > /dev/null 2>&1 || bad "$name round trip" "convert failed"
  if grep -q '"Gemma3ForCausalLM"' "$dir/config.json"; then
    echo "llamacpp: $name round trip: Gemma norms are stored as 1 + w (checked to half an ulp by crates/io/tests/export.rs)"
  elif rt=$("$PY" - "$dir" "$W/$name-back" <<'PYEOF'
import json, sys, glob
from safetensors.torch import load_file
def tensors(d):
    out = {}
    for f in sorted(glob.glob(d + "/model*.safetensors")):
        out.update(load_file(f))
    return out
a, b = tensors(sys.argv[1]), tensors(sys.argv[2])
# the GGUF is f32: values compared as f32 bit patterns (a bf16 / f16 source widens exactly)
bits = lambda t: t.float().reshape(-1).view(__import__("torch").int32)
same = set(a) == set(b) and all(a[k].shape == b[k].shape and bits(a[k]).equal(bits(b[k])) for k in a)
keys = ["architectures", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
        "num_key_value_heads", "head_dim", "vocab_size", "rms_norm_eps", "tie_word_embeddings"]
ca, cb = (json.load(open(d + "/config.json")) for d in sys.argv[1:3])
diff = [k for k in keys if ca.get(k) != cb.get(k)]
print(f"{len(a)} tensors bit for bit, config keys equal" if same and not diff else f"tensors equal: {same}; config differs in {diff}")
sys.exit(0 if same and not diff else 1)
PYEOF
); then ok "$name round trip" "convert(export(M)): $rt"
  else bad "$name round trip" "convert(export(M)) differs from M: $rt"; fi
  rm -rf "$W/$name-back" "$W/$name-"*.gguf
done
[ $fail -eq 0 ] && echo "llamacpp: all checks passed" || echo "llamacpp: some checks FAILED"
exit $fail
