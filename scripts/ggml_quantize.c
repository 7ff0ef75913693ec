// ggml's own quantiser on raw f32 rows, for golden files and checks (scripts/gen_quant_fixture.py):
//   ggml_quantize TYPE N_PER_ROW < rows.f32 > blocks.bin      (TYPE: q4_K, q6_K, q8_0, ...)
// Built against the static libggml-base of scripts/build-llamacpp.sh; calls ggml_quantize_chunk
// without an importance matrix, which is what llama-quantize does without --imatrix.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "ggml.h"

int main(int argc, char **argv) {
    if (argc != 3) { fprintf(stderr, "usage: %s TYPE N_PER_ROW < f32 > blocks\n", argv[0]); return 2; }
    enum ggml_type type = GGML_TYPE_COUNT;
    for (int t = 0; t < GGML_TYPE_COUNT; t++) {
        const char *name = ggml_type_name((enum ggml_type) t);
        if (name && strcmp(name, argv[1]) == 0) type = (enum ggml_type) t;
    }
    if (type == GGML_TYPE_COUNT) { fprintf(stderr, "unknown type %s\n", argv[1]); return 2; }
    long n_per_row = atol(argv[2]);
    size_t cap = 1 << 20, n = 0;
    float *x = malloc(cap * sizeof(float));
    size_t got;
    while ((got = fread(x + n, sizeof(float), cap - n, stdin)) > 0) {
        n += got;
        if (n == cap) { cap *= 2; x = realloc(x, cap * sizeof(float)); }
    }
    if (n_per_row <= 0 || n % n_per_row != 0) { fprintf(stderr, "%zu values are not rows of %ld\n", n, n_per_row); return 2; }
    long nrows = (long) (n / n_per_row);
    size_t bytes = ggml_row_size(type, n_per_row) * nrows;
    void *out = malloc(bytes);
    ggml_quantize_init(type);
    size_t wrote = ggml_quantize_chunk(type, x, out, 0, nrows, n_per_row, NULL);
    fwrite(out, 1, wrote, stdout);
    return wrote == bytes ? 0 : 1;
}
