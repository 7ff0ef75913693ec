#!/usr/bin/env python3
"""Golden GGML block quantisation from the `gguf` package's numpy quantisers (llama.cpp's gguf-py,
which mirrors ggml's `quantize_row_*_ref`, roundf included).

    PYTHONPATH=$ORLIK_CACHE/llamacpp/src-0.3.36/gguf-py $ORLIK_CACHE/pyenv/bin/python \
        scripts/gen_quant_fixture.py tests/fixtures

Writes tests/fixtures/gguf/quants.safetensors: `input` (4 x 64 f32: normal values, one row with
an outlier, one all-zero block) and, per type, the quantised bytes as a u8 tensor.
"""
import os
import sys

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
path = os.path.join(sys.argv[1], "gguf", "quants.safetensors")
save_file(out, path)
print(path, {k: v.shape for k, v in out.items()})
