#!/usr/bin/env python3
"""Golden GGML block quantisation: Q8_0 / Q4_0 / Q5_0 from the `gguf` package's numpy
quantisers (llama.cpp's gguf-py, which mirrors ggml's `quantize_row_*_ref`, roundf included);
Q4_K / Q6_K, which gguf-py does not quantise, from ggml itself (scripts/ggml_quantize.c linked
against the static libggml-base of scripts/build-llamacpp.sh: what llama-quantize writes
without an importance matrix).

    bash scripts/build-llamacpp.sh
    PYTHONPATH=$ORLIK_CACHE/llamacpp/src-0.3.36/gguf-py $ORLIK_CACHE/pyenv/bin/python \
        scripts/gen_quant_fixture.py tests/fixtures

Writes tests/fixtures/gguf/quants.safetensors: `input` (4 x 64 f32: normal values, one row with
an outlier, one all-zero block, ties), `input_k` (3 x 512: the same kinds of rows in 256-value
super-blocks, an all-zero sub-block and super-block) and, per type, the quantised bytes as a
u8 tensor.
"""
import os
import subprocess
import sys
import tempfile

import numpy as np
from gguf import GGMLQuantizationType as Q
from gguf.quants import quantize
from safetensors.numpy import save_file

rng = np.random.default_rng(20261202)
x = rng.normal(0.0, 0.05, size=(4, 64)).astype(np.float32)
x[1, 5] = 3.0      # an outlier sets its block's scale
x[2, 32:] = 0.0    # an all-zero block: scale 0
x[3, :32] = np.linspace(-1.0, 1.0, 32, dtype=np.float32)  # ties at the rounding boundaries
out = {"input": x}
for t in (Q.Q8_0, Q.Q4_0, Q.Q5_0):
    out[t.name] = np.ascontiguousarray(quantize(x, t)).view(np.uint8).reshape(-1)

xk = rng.normal(0.0, 0.05, size=(3, 512)).astype(np.float32)
xk[0, 256:] = 0.0                                         # an all-zero super-block
xk[1, 7] = 2.5                                            # an outlier
xk[1, 300:316] = 0.0                                      # an all-zero 16-value group
xk[2, :256] = np.linspace(-1.0, 1.0, 256, dtype=np.float32)   # ties
xk[2, 256:] = np.abs(xk[2, 256:]) + 0.01                  # all positive: min 0
out["input_k"] = xk
here = os.path.dirname(os.path.abspath(__file__))
cache = os.environ.get("ORLIK_CACHE", os.path.expanduser("~/.cache/orlik"))
build, src = os.path.join(cache, "llamacpp", "build-avx2"), os.path.join(cache, "llamacpp", "src-0.3.36")
with tempfile.TemporaryDirectory() as tmp:
    exe = os.path.join(tmp, "ggml_quantize")
    subprocess.run(["cc", "-O2", "-c", os.path.join(here, "ggml_quantize.c"), "-I", os.path.join(src, "ggml", "include"),
                    "-o", exe + ".o"], check=True)
    subprocess.run(["c++", exe + ".o", os.path.join(build, "ggml", "src", "libggml-base.a"), "-lm", "-fopenmp",
                    "-lpthread", "-o", exe], check=True)
    for name in ("q4_K", "q6_K"):
        blocks = subprocess.run([exe, name, str(xk.shape[1])], input=xk.tobytes(), capture_output=True, check=True).stdout
        out[name.upper()] = np.frombuffer(blocks, dtype=np.uint8).copy()
path = os.path.join(sys.argv[1], "gguf", "quants.safetensors")
save_file(out, path)
print(path, {k: v.shape for k, v in out.items()})
