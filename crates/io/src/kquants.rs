//! Q4_K and Q6_K blocks as llama.cpp's `llama-quantize` writes them without an importance
//! matrix: ggml's reference quantisers (`quantize_row_q4_K_ref`, `quantize_row_q6_K_ref` in
//! ggml/src/ggml-quants.c of llama.cpp b6xxx, vendored in llama-cpp-python 0.3.36), written again
//! here operation for operation so the bytes are the same.
//!
//! candle's k-quant quantisers port an older ggml (a different scale search: `make_qkx1_quants`,
//! an iterative `make_qx_quants`), so their blocks decode fine but are not llama-quantize's. ggml
//! builds these functions into ggml-base for plain x86-64 (no FMA contraction), in f32, in the
//! order written; so does this file. `tests/fixtures/gguf/quants.safetensors` holds ggml's own
//! bytes (scripts/gen_quant_fixture.py) and the unit test compares.

use half::f16;

/// Values per super-block.
pub const QK_K: usize = 256;
/// Bytes of one Q4_K block: d, dmin (f16), 12 bytes of packed 6-bit scales and mins, 128 of
/// 4-bit quants.
pub const Q4_K_BYTES: usize = 4 + 12 + QK_K / 2;
/// Bytes of one Q6_K block: 128 bytes of low 4 bits, 64 of high 2 bits, 16 i8 scales, d (f16).
pub const Q6_K_BYTES: usize = QK_K / 2 + QK_K / 4 + QK_K / 16 + 2;

/// ggml's GROUP_MAX_EPS: a group whose largest magnitude is below it is all zero.
const GROUP_MAX_EPS: f32 = 1e-15;

/// ggml's `nearest_int`: round half to even through the f32 mantissa (|x| < 2^22).
fn nearest_int(x: f32) -> i32 {
    let v = x + 12_582_912.0;
    (v.to_bits() & 0x007f_ffff) as i32 - 0x0040_0000
}

/// f32 -> f16 -> f32, as the block stores its scale and the quantiser reads it back.
fn fp16(x: f32) -> (u16, f32) {
    let h = f16::from_f32(x);
    (h.to_bits(), h.to_f32())
}

/// Q6_K blocks of `x` (a multiple of 256 values).
pub fn quantize_q6_k(x: &[f32]) -> Vec<u8> {
    super_blocks(x, q6_k_block)
}

/// Q4_K blocks of `x` (a multiple of 256 values).
pub fn quantize_q4_k(x: &[f32]) -> Vec<u8> {
    super_blocks(x, q4_k_block)
}

fn super_blocks<const N: usize>(x: &[f32], block: fn(&[f32]) -> [u8; N]) -> Vec<u8> {
    assert_eq!(x.len() % QK_K, 0, "k-quant rows are whole blocks of {QK_K} (the caller checks)");
    x.chunks_exact(QK_K).flat_map(block).collect()
}

fn q6_k_block(x: &[f32]) -> [u8; Q6_K_BYTES] {
    let mut l = [0i8; QK_K];
    let mut scales = [0f32; QK_K / 16];
    let (mut max_scale, mut max_abs_scale) = (0f32, 0f32);
    for (ib, s) in scales.iter_mut().enumerate() {
        let r = 16 * ib..16 * ib + 16;
        let scale = make_qx_quants(32, &x[r.clone()], &mut l[r]);
        *s = scale;
        if scale.abs() > max_abs_scale {
            max_abs_scale = scale.abs();
            max_scale = scale;
        }
    }
    let mut y = [0u8; Q6_K_BYTES];
    if max_abs_scale < GROUP_MAX_EPS {
        return y; // all zero, d = 0
    }
    let iscale = -128.0 / max_scale;
    let (d_bits, d) = fp16(1.0 / iscale);
    let mut sc = [0i8; QK_K / 16];
    for (s, &v) in sc.iter_mut().zip(&scales) {
        *s = nearest_int(iscale * v).min(127) as i8;
    }
    for j in 0..QK_K / 16 {
        let dj = d * sc[j] as f32;
        if dj == 0.0 {
            continue;
        }
        for ii in 0..16 {
            let q = nearest_int(x[16 * j + ii] / dj).clamp(-32, 31);
            l[16 * j + ii] = (q + 32) as i8;
        }
    }
    // layout: ql (128) | qh (64) | scales (16) | d; each half of 128 values packs value l, l+32,
    // l+64, l+96 into two low nibbles and one byte of high bit pairs
    let l = l.map(|v| v as u8);
    let (ql, rest) = y.split_at_mut(QK_K / 2);
    let (qh, rest) = rest.split_at_mut(QK_K / 4);
    for (h, j) in (0..QK_K).step_by(128).enumerate() {
        for i in 0..32 {
            let q = |k: usize| l[j + i + 32 * k];
            ql[64 * h + i] = (q(0) & 0xF) | ((q(2) & 0xF) << 4);
            ql[64 * h + i + 32] = (q(1) & 0xF) | ((q(3) & 0xF) << 4);
            qh[32 * h + i] =
                (q(0) >> 4) | ((q(1) >> 4) << 2) | ((q(2) >> 4) << 4) | ((q(3) >> 4) << 6);
        }
    }
    for (b, s) in rest[..QK_K / 16].iter_mut().zip(sc) {
        *b = s as u8;
    }
    rest[QK_K / 16..].copy_from_slice(&d_bits.to_le_bytes());
    y
}

/// ggml's `make_qx_quants(n, nmax, x, L, rmse_type = 1, qw = NULL)`: a signed scale for the
/// group, weights x², searching nmax ± 0.9 in steps of 0.1 for the least weighted error.
/// `l` gets `nmax + q`.
fn make_qx_quants(nmax: i32, x: &[f32], l: &mut [i8]) -> f32 {
    let (mut max, mut amax) = (0f32, 0f32);
    for &v in x {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    if amax < GROUP_MAX_EPS {
        l.fill(0);
        return 0.0;
    }
    let q = |iscale: f32, v: f32| nearest_int(iscale * v).clamp(-nmax, nmax - 1);
    // (sum w x l, sum w l²) with w = x², summed in order as ggml does
    let sums = |iscale: f32| {
        let (mut sumlx, mut suml2) = (0f32, 0f32);
        for &v in x {
            let lv = q(iscale, v) as f32;
            let w = v * v;
            sumlx += w * v * lv;
            suml2 += w * lv * lv;
        }
        (sumlx, suml2)
    };
    let iscale = -(nmax as f32) / max;
    for (o, &v) in l.iter_mut().zip(x) {
        *o = (q(iscale, v) + nmax) as i8;
    }
    let (sumlx, suml2) = sums(iscale);
    let mut scale = if suml2 != 0.0 { sumlx / suml2 } else { 0.0 };
    let mut best = scale * sumlx;
    for is in (-9..=9).filter(|&i| i != 0) {
        let iscale = -(nmax as f32 + 0.1 * is as f32) / max;
        let (sumlx, suml2) = sums(iscale);
        if suml2 > 0.0 && sumlx * sumlx > best * suml2 {
            for (o, &v) in l.iter_mut().zip(x) {
                *o = (q(iscale, v) + nmax) as i8;
            }
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    scale
}

fn q4_k_block(x: &[f32]) -> [u8; Q4_K_BYTES] {
    let mut l = [0u8; QK_K];
    let (mut scales, mut mins) = ([0f32; QK_K / 32], [0f32; QK_K / 32]);
    let (mut max_scale, mut max_min) = (0f32, 0f32);
    for j in 0..QK_K / 32 {
        let xs = &x[32 * j..32 * j + 32];
        let mut sum_x2 = 0f32;
        for &v in xs {
            sum_x2 += v * v;
        }
        let av_x = (sum_x2 / 32.0).sqrt();
        let w: [f32; 32] = std::array::from_fn(|i| av_x + xs[i].abs());
        let (s, m) = make_qkx2_quants(15, xs, &w, &mut l[32 * j..32 * j + 32], -1.0, 0.1, 20);
        (scales[j], mins[j]) = (s, m);
        max_scale = max_scale.max(s);
        max_min = max_min.max(m);
    }
    let inv_scale = if max_scale > 0.0 { 63.0 / max_scale } else { 0.0 };
    let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
    // 8 six-bit scales and 8 six-bit mins in 12 bytes: sub-blocks 0-3 in the low 6 bits of bytes
    // 0-3 (scales) and 4-7 (mins), sub-blocks 4-7 as nibbles of bytes 8-11 with their top two
    // bits in the top bits of bytes 0-7
    let mut sm = [0u8; 12];
    for j in 0..QK_K / 32 {
        let ls = (nearest_int(inv_scale * scales[j]) as u8).min(63);
        let lm = (nearest_int(inv_min * mins[j]) as u8).min(63);
        if j < 4 {
            sm[j] = ls;
            sm[j + 4] = lm;
        } else {
            sm[j + 4] = (ls & 0xF) | ((lm & 0xF) << 4);
            sm[j - 4] |= (ls >> 4) << 6;
            sm[j] |= (lm >> 4) << 6;
        }
    }
    let (d_bits, d) = fp16(max_scale / 63.0);
    let (dmin_bits, dmin) = fp16(max_min / 63.0);
    for j in 0..QK_K / 32 {
        let (sc, m) = scale_min_k4(j, &sm);
        let dj = d * sc as f32;
        if dj == 0.0 {
            continue;
        }
        let dm = dmin * m as f32;
        for ii in 0..32 {
            l[32 * j + ii] = nearest_int((x[32 * j + ii] + dm) / dj).clamp(0, 15) as u8;
        }
    }
    let mut y = [0u8; Q4_K_BYTES];
    y[0..2].copy_from_slice(&d_bits.to_le_bytes());
    y[2..4].copy_from_slice(&dmin_bits.to_le_bytes());
    y[4..16].copy_from_slice(&sm);
    // each 64 values: the first 32 in the low nibbles, the next 32 in the high ones
    for (c, j) in (0..QK_K).step_by(64).enumerate() {
        for i in 0..32 {
            y[16 + 32 * c + i] = l[j + i] | (l[j + i + 32] << 4);
        }
    }
    y
}

/// ggml's `get_scale_min_k4`: sub-block j's 6-bit scale and min from the 12 packed bytes.
fn scale_min_k4(j: usize, q: &[u8; 12]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        ((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4))
    }
}

/// ggml's `make_qkx2_quants(n, nmax, x, weights, L, &min, Laux, rmin, rdelta, nstep,
/// use_mad = false)`: an unsigned scale and a min (returned as `-min`, >= 0) minimising the
/// weighted squared error, trying nmax + rmin + rdelta * is for is in 0..=nstep with a
/// least-squares refit of scale and min for each.
fn make_qkx2_quants(
    nmax: i32,
    x: &[f32],
    w: &[f32],
    l: &mut [u8],
    rmin: f32,
    rdelta: f32,
    nstep: i32,
) -> (f32, f32) {
    let (mut min, mut max) = (x[0], x[0]);
    let (mut sum_w, mut sum_x) = (w[0], w[0] * x[0]);
    for i in 1..x.len() {
        min = if x[i] < min { x[i] } else { min };
        max = if x[i] > max { x[i] } else { max };
        sum_w += w[i];
        sum_x += w[i] * x[i];
    }
    if min > 0.0 {
        min = 0.0;
    }
    if max == min {
        l.fill(0);
        return (0.0, -min);
    }
    let q = |iscale: f32, v: f32, min: f32| nearest_int(iscale * (v - min)).clamp(0, nmax);
    let mut iscale = nmax as f32 / (max - min);
    let mut scale = 1.0 / iscale;
    let mut best_error = 0f32;
    for i in 0..x.len() {
        l[i] = q(iscale, x[i], min) as u8;
        let diff = scale * l[i] as f32 + min - x[i];
        best_error += w[i] * (diff * diff);
    }
    let mut aux = [0u8; 32];
    let aux = &mut aux[..x.len()];
    for is in 0..=nstep {
        iscale = (rmin + rdelta * is as f32 + nmax as f32) / (max - min);
        let (mut sum_l, mut sum_l2, mut sum_xl) = (0f32, 0f32, 0f32);
        for i in 0..x.len() {
            let li = q(iscale, x[i], min);
            aux[i] = li as u8;
            let lf = li as f32;
            sum_l += w[i] * lf;
            sum_l2 += w[i] * lf * lf;
            sum_xl += w[i] * lf * x[i];
        }
        let dd = sum_w * sum_l2 - sum_l * sum_l;
        if dd > 0.0 {
            let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / dd;
            let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / dd;
            if this_min > 0.0 {
                this_min = 0.0;
                this_scale = sum_xl / sum_l2;
            }
            let mut cur_error = 0f32;
            for i in 0..x.len() {
                let diff = this_scale * aux[i] as f32 + this_min - x[i];
                cur_error += w[i] * (diff * diff);
            }
            if cur_error < best_error {
                l.copy_from_slice(aux);
                best_error = cur_error;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    (scale, -min)
}
