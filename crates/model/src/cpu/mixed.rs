//! Products of f32 activations with 16-bit (bf16 or f16) weights, accumulated in f32: what a
//! frozen model (teacher, scorer, evaluator, sampler) runs when its weights stay 16-bit in memory.
//!
//! `y (n, out) = x (n, k) · wᵀ`, `w` row-major (out, k) as in HF's `nn.Linear`. Two regimes:
//! - few rows (decode, n ≤ [`GEMV_ROWS`]): memory-bound, so each weight row is read once and
//!   widened in registers; one dot product per (row, output), computed by one thread in a fixed
//!   order, so the result does not depend on the thread count;
//! - many rows (prefill, scoring, a teacher's batch): compute-bound, so blocks of weight rows are
//!   widened to f32 (a cost of 1/n of the products) and multiplied by the f32 gemm.
//!
//! The kernel is chosen at run time ([`Path::detect`], `ORLIK_CPU_KERNEL` overrides): AVX-512 BF16
//! dot products where the CPU has them (bf16 weights), AVX2 + FMA + F16C widening otherwise,
//! plain Rust everywhere else. With AVX-512 BF16 the activations are split into two bf16 parts
//! (x ≈ hi + lo, |x − hi − lo| ≤ 2⁻¹⁶|x|), so rounding x to bf16 does not cost accuracy: the
//! products are those of the f32 path to about 2⁻¹⁶ relative. A product repeated on one matrix
//! warm in cache runs faster widened (AVX2), but a model's decode, each matrix read once from
//! memory, ran 1.11× faster on `vdpbf16ps` (SmolLM2 in bf16, `orlik bench` alternating
//! `ORLIK_CPU_KERNEL=avx512bf16|avx2`, 73 against 66 tokens/s): the end-to-end figure decides.

use super::kernels::{gemm, Par, View};
use rayon::prelude::*;

/// The 16-bit format of the weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Half {
    Bf16,
    F16,
}

impl Half {
    /// The f32 value of one stored element.
    #[inline]
    pub fn widen(self, bits: u16) -> f32 {
        match self {
            Half::Bf16 => f32::from_bits((bits as u32) << 16),
            Half::F16 => half::f16::from_bits(bits).to_f32(),
        }
    }
}

/// Which kernel runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path {
    /// `vdpbf16ps` (bf16 weights; f16 weights take [`Path::Avx2`]).
    Avx512Bf16,
    /// AVX2 + FMA + F16C: widen 8 weights per instruction group, f32 FMA.
    Avx2,
    /// Plain Rust: correct on every CPU.
    Scalar,
}

/// At most this many rows take the dot-product kernel; more take widen-and-gemm.
pub const GEMV_ROWS: usize = 8;

impl Path {
    pub const ALL: [Path; 3] = [Path::Avx512Bf16, Path::Avx2, Path::Scalar];

    pub fn name(self) -> &'static str {
        match self {
            Path::Avx512Bf16 => "avx512bf16",
            Path::Avx2 => "avx2",
            Path::Scalar => "scalar",
        }
    }

    /// Whether this CPU can run the path.
    pub fn available(self) -> bool {
        match self {
            Path::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            Path::Avx2 => {
                is_x86_feature_detected!("avx2")
                    && is_x86_feature_detected!("fma")
                    && is_x86_feature_detected!("f16c")
            }
            #[cfg(target_arch = "x86_64")]
            Path::Avx512Bf16 => {
                is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bf16")
            }
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }

    /// The best path this CPU has, or the one `ORLIK_CPU_KERNEL` names (an unknown or
    /// unavailable name falls back to the best, with a message on stderr once).
    pub fn detect() -> Path {
        static CHOSEN: std::sync::OnceLock<Path> = std::sync::OnceLock::new();
        *CHOSEN.get_or_init(|| {
            let best = Path::ALL.into_iter().find(|p| p.available()).unwrap_or(Path::Scalar);
            let Ok(want) = std::env::var("ORLIK_CPU_KERNEL") else { return best };
            match Path::ALL.into_iter().find(|p| p.name() == want) {
                Some(p) if p.available() => p,
                _ => {
                    eprintln!(
                        "ORLIK_CPU_KERNEL={want:?}: not one of avx512bf16, avx2, scalar that \
                         this CPU runs; using {}",
                        best.name()
                    );
                    best
                }
            }
        })
    }
}

/// y (n, out) = x (n, k) · wᵀ with `w` (out, k) of `kind` bits, on `path` (which must be
/// available: see [`Path::available`]).
///
/// Panics (a bug, not an input error) when a buffer is shorter than its shape.
pub fn matmul_t(
    x: &[f32],
    n: usize,
    k: usize,
    w: &[u16],
    kind: Half,
    out: usize,
    path: Path,
) -> Vec<f32> {
    assert!(x.len() >= n * k && w.len() >= out * k, "matmul_t: operand too short");
    assert!(path.available(), "matmul_t: {} is not available on this CPU", path.name());
    let mut y = vec![0f32; n * out];
    if n == 0 || out == 0 {
        return y;
    }
    if n <= GEMV_ROWS {
        gemv(&Operands { x, n, k, w, kind, path }, &mut y);
    } else {
        widen_gemm(x, n, k, w, kind, out, &mut y);
    }
    y
}

/// The inputs of one product in the dot-product regime: x (n, k) f32, w (out, k) of `kind`
/// bits, the kernel path.
struct Operands<'a> {
    x: &'a [f32],
    n: usize,
    k: usize,
    w: &'a [u16],
    kind: Half,
    path: Path,
}

/// The dot-product regime, y (n, out): threads split the outputs; four outputs at a time share
/// one pass over each row of x (four weight streams in flight: decode waits on memory, not on
/// FMAs).
fn gemv(op: &Operands, y: &mut [f32]) {
    let Operands { x, n, k, kind, path, .. } = *op;
    let out = y.len() / n;
    // The activations as two bf16 parts, once per call (AVX-512 BF16 only).
    let split = (path == Path::Avx512Bf16 && kind == Half::Bf16).then(|| split_bf16(&x[..n * k]));
    // yt (out, n): for one row that is y itself, else it is transposed into y at the end.
    if n == 1 {
        return gemv_t(op, split.as_ref(), y);
    }
    let mut yt = vec![0f32; out * n];
    gemv_t(op, split.as_ref(), &mut yt);
    transpose_into(&yt, n, y);
}

/// y (n, out) from yt (out, n).
fn transpose_into(yt: &[f32], n: usize, y: &mut [f32]) {
    let out = yt.len() / n;
    for (j, row) in yt.chunks(n).enumerate() {
        for (r, &v) in row.iter().enumerate() {
            y[r * out + j] = v;
        }
    }
}

/// yt (out, n) = w · xᵀ for the 16-bit weights, the outputs split across threads.
fn gemv_t(op: &Operands, split: Option<&(Vec<u16>, Vec<u16>)>, yt: &mut [f32]) {
    let Operands { x, n, k, w, kind, path } = *op;
    groups_of_four(n, yt, |j, m, r| {
        // A short group repeats its last row: the same kernel for every output.
        let rows: [&[u16]; 4] =
            std::array::from_fn(|q| &w[(j + q.min(m - 1)) * k..(j + q.min(m - 1) + 1) * k]);
        let xr = &x[r * k..(r + 1) * k];
        match (split, path) {
            #[cfg(target_arch = "x86_64")]
            (Some((hi, lo)), _) => {
                let (hi, lo) = (&hi[r * k..(r + 1) * k], &lo[r * k..(r + 1) * k]);
                // SAFETY: the path is available (asserted by the caller).
                unsafe { x86::dot4_avx512bf16(rows, hi, lo) }
            }
            #[cfg(target_arch = "x86_64")]
            (None, Path::Avx2 | Path::Avx512Bf16) => {
                // SAFETY: AVX2, FMA and F16C are present (every AVX-512 BF16 CPU has them).
                unsafe { x86::dot4_avx2(rows, xr, kind) }
            }
            _ => rows.map(|wq| dot_scalar(wq, xr, kind)),
        }
    });
}

/// yt (out, n), transposed outputs, filled four outputs at a time: `dot(j, m, r)` gives outputs
/// j..j + m (m ≤ 4; the rest of its result is ignored) against row r of x. Threads take whole
/// groups of four, so which outputs share a pass (and so every bit of the result) does not
/// depend on the thread count.
fn groups_of_four(n: usize, yt: &mut [f32], dot: impl Fn(usize, usize, usize) -> [f32; 4] + Sync) {
    let out = yt.len() / n;
    let per_task = (out / (4 * rayon::current_num_threads())).clamp(16, 1024) / 4 * 4;
    yt.par_chunks_mut(per_task * n).enumerate().for_each(|(c, chunk)| {
        let j0 = c * per_task;
        for (g, yg) in chunk.chunks_mut(4 * n).enumerate() {
            let j = j0 + 4 * g;
            let m = yg.len() / n; // 4, or fewer in the last group
            for r in 0..n {
                let v = dot(j, m, r);
                for q in 0..m {
                    yg[q * n + r] = v[q];
                }
            }
        }
    });
}

/// y (n, out) = x (n, k) · wᵀ with f32 weights `w` (out, k), for few rows (n ≤ [`GEMV_ROWS`]):
/// the decode regime of an f32 model, where the gemm library streams the weights at about
/// two thirds of the bandwidth a plain four-row dot product reaches (`examples/gemm_speed.rs`).
/// AVX2 + FMA where the CPU has them, else four-lane Rust.
///
/// Panics (a bug, not an input error) when a buffer is shorter than its shape.
pub fn gemv_f32_t(x: &[f32], n: usize, k: usize, w: &[f32], out: usize) -> Vec<f32> {
    assert!(x.len() >= n * k && w.len() >= out * k, "gemv_f32_t: operand too short");
    let mut yt = vec![0f32; out * n];
    if n == 0 || out == 0 {
        return yt;
    }
    #[cfg(target_arch = "x86_64")]
    let simd = std::arch::is_x86_feature_detected!("avx2")
        && std::arch::is_x86_feature_detected!("fma")
        && std::arch::is_x86_feature_detected!("f16c");
    groups_of_four(n, &mut yt, |j, m, r| {
        let rows: [&[f32]; 4] =
            std::array::from_fn(|q| &w[(j + q.min(m - 1)) * k..(j + q.min(m - 1) + 1) * k]);
        let xr = &x[r * k..(r + 1) * k];
        #[cfg(target_arch = "x86_64")]
        if simd {
            // SAFETY: AVX2, FMA and F16C are present (checked above).
            return unsafe { x86::dot4_f32_avx2(rows, xr) };
        }
        rows.map(|wq| dot_f32(wq, xr))
    });
    if n == 1 {
        return yt;
    }
    let mut y = vec![0f32; n * out];
    transpose_into(&yt, n, &mut y);
    y
}

/// Σ w[i]·x[i] over f32, four partial sums.
fn dot_f32(w: &[f32], x: &[f32]) -> f32 {
    let mut acc = [0f32; 4];
    let (wc, xc) = (w.chunks_exact(4), x.chunks_exact(4));
    let tail: f32 = wc.remainder().iter().zip(xc.remainder()).map(|(a, b)| a * b).sum();
    for (a, b) in wc.zip(xc) {
        for q in 0..4 {
            acc[q] += a[q] * b[q];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// Σ w[i]·x[i] in f32, four partial sums (the same association as the vector kernels' lanes
/// would give is not promised: each path is checked against an f64 reference instead).
pub fn dot_scalar(w: &[u16], x: &[f32], kind: Half) -> f32 {
    let mut acc = [0f32; 4];
    let main = w.len() / 4 * 4;
    for i in (0..main).step_by(4) {
        for l in 0..4 {
            acc[l] = kind.widen(w[i + l]).mul_add(x[i + l], acc[l]);
        }
    }
    let mut s = (acc[0] + acc[1]) + (acc[2] + acc[3]);
    for i in main..w.len() {
        s = kind.widen(w[i]).mul_add(x[i], s);
    }
    s
}

/// x = hi + lo + ε with hi, lo bf16 (round to nearest even) and |ε| ≤ 2⁻¹⁶|x| (for normal x).
pub fn split_bf16(x: &[f32]) -> (Vec<u16>, Vec<u16>) {
    let hi: Vec<u16> = x.iter().map(|&v| half::bf16::from_f32(v).to_bits()).collect();
    let lo = x
        .iter()
        .zip(&hi)
        .map(|(&v, &h)| half::bf16::from_f32(v - Half::Bf16.widen(h)).to_bits())
        .collect();
    (hi, lo)
}

/// The gemm regime: blocks of weight rows widened to f32 (in parallel), then multiplied by the
/// f32 gemm on all threads straight into their columns of y. Widening costs one pass over the
/// weights per call, 1/n of the products.
fn widen_gemm(x: &[f32], n: usize, k: usize, w: &[u16], kind: Half, out: usize, y: &mut [f32]) {
    // 4 Mi elements (16 MiB of f32): measured here, smaller blocks lose to the per-call cost
    // of a threaded gemm (at 1 Mi, 0.7-0.8× the f32 product; at 4 Mi, 0.9×).
    let bj = ((4 << 20) / k.max(1)).clamp(16, out.max(16));
    let mut wide = vec![0f32; bj.min(out) * k];
    for j0 in (0..out).step_by(bj) {
        let j1 = (j0 + bj).min(out);
        let dst = &mut wide[..(j1 - j0) * k];
        dst.par_chunks_mut(1 << 14)
            .zip(w[j0 * k..j1 * k].par_chunks(1 << 14))
            .for_each(|(d, s)| widen(s, d, kind));
        // y[:, j0..j1] (n, j1 - j0; row stride out) = x (n, k) · wideᵀ (k, j1 - j0)
        gemm(
            &mut y[j0..],
            out,
            n,
            j1 - j0,
            k,
            View::rows(x, k),
            View::t(dst, k),
            false,
            1.0,
            Par::All,
        );
    }
}

/// dst[i] = the f32 value of src[i].
pub fn widen(src: &[u16], dst: &mut [f32], kind: Half) {
    #[cfg(target_arch = "x86_64")]
    if Path::Avx2.available() {
        // SAFETY: AVX2 and F16C are present.
        return unsafe { x86::widen_avx2(src, dst, kind) };
    }
    match kind {
        Half::Bf16 => {
            dst.iter_mut().zip(src).for_each(|(d, &v)| *d = f32::from_bits((v as u32) << 16))
        }
        Half::F16 => {
            dst.iter_mut().zip(src).for_each(|(d, &v)| *d = half::f16::from_bits(v).to_f32())
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::Half;
    use std::arch::x86_64::*;

    /// Eight weights widened to f32.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn load8(w: *const u16, kind: Half) -> __m256 {
        unsafe {
            let raw = _mm_loadu_si128(w as *const __m128i);
            match kind {
                Half::Bf16 => {
                    _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(raw), 16))
                }
                Half::F16 => _mm256_cvtph_ps(raw),
            }
        }
    }

    /// dst[i] = widen(src[i]), 8 at a time.
    ///
    /// # Safety
    /// The CPU must have AVX2 and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn widen_avx2(src: &[u16], dst: &mut [f32], kind: Half) {
        let n = src.len().min(dst.len());
        let mut i = 0;
        unsafe {
            while i + 8 <= n {
                _mm256_storeu_ps(dst.as_mut_ptr().add(i), load8(src.as_ptr().add(i), kind));
                i += 8;
            }
        }
        for j in i..n {
            dst[j] = kind.widen(src[j]);
        }
    }

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
        _mm_cvtss_f32(s)
    }

    /// Four dot products Σ w_q[i]·x[i] in one pass over x: 16 weights of each row per
    /// iteration into two accumulators per row (eight FMA chains in flight). `load8` reads
    /// eight weights as f32 and `widen` one (the tail); the two kernels below are this loop for
    /// 16-bit and for f32 weights, inlined into each (the closures inherit its features).
    ///
    /// Each row's next group of four (4·k elements on: the rows of a weight matrix are
    /// contiguous and groups run in order) is prefetched as this one is read, so the hardware
    /// prefetcher need not find a new stream every four rows: measured on a 576 × 49152
    /// lm_head at one row, 1.25× (f32) and 1.3× (bf16); within noise on the smaller matrices.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn dot4_body<T: Copy>(
        w: [&[T]; 4],
        x: &[f32],
        load8: impl Fn(*const T) -> __m256,
        widen: impl Fn(T) -> f32,
    ) -> [f32; 4] {
        unsafe {
            let k = x.len();
            debug_assert!(w.iter().all(|r| r.len() == k));
            let xp = x.as_ptr();
            let mut acc = [[_mm256_setzero_ps(); 2]; 4];
            let main = k / 16 * 16;
            let mut i = 0;
            while i < main {
                let (x0, x1) = (_mm256_loadu_ps(xp.add(i)), _mm256_loadu_ps(xp.add(i + 8)));
                for (a, r) in acc.iter_mut().zip(&w) {
                    let p = r.as_ptr().add(i);
                    // A hint: no fault past the end, so `wrapping_add` (no in-bounds promise).
                    _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(4 * k) as *const i8);
                    a[0] = _mm256_fmadd_ps(load8(p), x0, a[0]);
                    a[1] = _mm256_fmadd_ps(load8(p.add(8)), x1, a[1]);
                }
                i += 16;
            }
            let mut s = [0f32; 4];
            for (q, a) in acc.iter().enumerate() {
                s[q] = hsum(_mm256_add_ps(a[0], a[1]));
                for t in i..k {
                    s[q] = widen(w[q][t]).mul_add(x[t], s[q]);
                }
            }
            s
        }
    }

    /// [`dot4_body`] over bf16 or f16 weights.
    ///
    /// # Safety
    /// The CPU must have AVX2, FMA and F16C; every `w_q` and `x` of one length.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot4_avx2(w: [&[u16]; 4], x: &[f32], kind: Half) -> [f32; 4] {
        unsafe { dot4_body(w, x, |p| load8(p, kind), |b| kind.widen(b)) }
    }

    /// [`dot4_body`] over f32 weights.
    ///
    /// # Safety
    /// The CPU must have AVX2, FMA and F16C; every `w_q` and `x` of one length.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot4_f32_avx2(w: [&[f32]; 4], x: &[f32]) -> [f32; 4] {
        unsafe { dot4_body(w, x, |p| _mm256_loadu_ps(p), |v| v) }
    }

    /// Four dot products Σ w_q[i]·(hi[i] + lo[i]) in one pass over hi and lo (the f32
    /// activation's two bf16 halves): `vdpbf16ps` takes 32 pairs per instruction, two per 32
    /// weights (hi and lo), eight chains in flight.
    ///
    /// # Safety
    /// The CPU must have AVX-512F and AVX-512 BF16; every `w_q`, `hi` and `lo` of one length.
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub unsafe fn dot4_avx512bf16(w: [&[u16]; 4], hi: &[u16], lo: &[u16]) -> [f32; 4] {
        unsafe {
            let k = hi.len();
            debug_assert!(lo.len() == k && w.iter().all(|r| r.len() == k));
            let ld = |p: *const u16| -> __m512bh {
                std::mem::transmute(_mm512_loadu_si512(p as *const _))
            };
            let mut acc = [[_mm512_setzero_ps(); 2]; 4];
            let main = k / 32 * 32;
            let mut i = 0;
            while i < main {
                let (h, l) = (ld(hi.as_ptr().add(i)), ld(lo.as_ptr().add(i)));
                for (a, r) in acc.iter_mut().zip(&w) {
                    // The next group's line, as in `dot4_body`.
                    _mm_prefetch::<_MM_HINT_T0>(r.as_ptr().wrapping_add(i + 4 * k) as *const i8);
                    let wv = ld(r.as_ptr().add(i));
                    a[0] = _mm512_dpbf16_ps(a[0], wv, h);
                    a[1] = _mm512_dpbf16_ps(a[1], wv, l);
                }
                i += 32;
            }
            let mut s = [0f32; 4];
            for (q, a) in acc.iter().enumerate() {
                s[q] = _mm512_reduce_add_ps(_mm512_add_ps(a[0], a[1]));
                for t in i..k {
                    let x = Half::Bf16.widen(hi[t]) + Half::Bf16.widen(lo[t]);
                    s[q] = Half::Bf16.widen(w[q][t]).mul_add(x, s[q]);
                }
            }
            s
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic pseudo-random values in [-1, 1).
    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (0..n)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    fn bits(v: &[f32], kind: Half) -> Vec<u16> {
        v.iter()
            .map(|&x| match kind {
                Half::Bf16 => half::bf16::from_f32(x).to_bits(),
                Half::F16 => half::f16::from_f32(x).to_bits(),
            })
            .collect()
    }

    /// The exact product of the stored weights with x, in f64.
    fn reference(x: &[f32], n: usize, k: usize, w: &[u16], kind: Half, out: usize) -> Vec<f64> {
        let mut y = vec![0f64; n * out];
        for r in 0..n {
            for j in 0..out {
                y[r * out + j] =
                    (0..k).map(|i| kind.widen(w[j * k + i]) as f64 * x[r * k + i] as f64).sum();
            }
        }
        y
    }

    /// Every path this CPU has, both formats, sizes that leave tails in every unrolled loop, on
    /// both sides of the gemv / gemm boundary: within 4 f32 ulps of Σ|w·x| of the f64 product.
    /// A path the CPU lacks is reported as skipped (never counted as checked).
    #[test]
    fn every_path_matches_the_f64_product() {
        let mut ran = Vec::new();
        for path in Path::ALL {
            if !path.available() {
                println!("skipped: kernel path {} (this CPU lacks it)", path.name());
                continue;
            }
            ran.push(path.name());
            for kind in [Half::Bf16, Half::F16] {
                for &(n, k, out) in &[
                    (1, 1, 1),
                    (1, 37, 5),
                    (2, 64, 17),
                    (3, 95, 33),
                    (8, 576, 40),
                    (9, 131, 19),
                    (40, 300, 70),
                ] {
                    let x = values(n * k, 1 + n as u64);
                    let w = bits(&values(out * k, 7 + k as u64), kind);
                    let got = matmul_t(&x, n, k, &w, kind, out, path);
                    let want = reference(&x, n, k, &w, kind, out);
                    for r in 0..n {
                        for j in 0..out {
                            let mag: f64 = (0..k)
                                .map(|i| {
                                    (kind.widen(w[j * k + i]) as f64 * x[r * k + i] as f64).abs()
                                })
                                .sum();
                            let err = (got[r * out + j] as f64 - want[r * out + j]).abs();
                            // The AVX-512 BF16 path rounds x to hi + lo (2⁻¹⁶ relative).
                            let split = if path == Path::Avx512Bf16 && kind == Half::Bf16 {
                                2f64.powi(-16)
                            } else {
                                0.0
                            };
                            let tol = mag.max(1e-30)
                                * (split + 4.0 * f32::EPSILON as f64 * (k as f64).sqrt());
                            assert!(
                                err <= tol,
                                "{} {kind:?} n={n} k={k} out={out} ({r},{j}): {} vs {} (err {err:e}, tol {tol:e})",
                                path.name(),
                                got[r * out + j],
                                want[r * out + j]
                            );
                        }
                    }
                }
            }
        }
        assert!(ran.contains(&"scalar"), "the scalar fallback always runs");
    }

    /// The f32-weight decode product against f64, at odd sizes and every row count it takes,
    /// on the kernel this CPU runs (AVX2 + FMA or the four-lane fallback), and the fallback's
    /// dot product on its own.
    #[test]
    fn f32_gemv_matches_the_f64_product() {
        for &(n, k, out) in &[(1, 1, 1), (1, 37, 5), (2, 64, 17), (3, 95, 33), (8, 576, 41)] {
            let x = values(n * k, 3 + n as u64);
            let w = values(out * k, 11 + k as u64);
            let got = gemv_f32_t(&x, n, k, &w, out);
            for r in 0..n {
                for j in 0..out {
                    let (xr, wj) = (&x[r * k..(r + 1) * k], &w[j * k..(j + 1) * k]);
                    let want: f64 = xr.iter().zip(wj).map(|(&a, &b)| a as f64 * b as f64).sum();
                    let mag: f64 =
                        xr.iter().zip(wj).map(|(&a, &b)| (a as f64 * b as f64).abs()).sum();
                    let tol = mag.max(1e-30) * 4.0 * f32::EPSILON as f64 * (k as f64).sqrt();
                    let err = (got[r * out + j] as f64 - want).abs();
                    assert!(
                        err <= tol,
                        "n={n} k={k} out={out} ({r},{j}): err {err:e}, tol {tol:e}"
                    );
                    let err = (dot_f32(wj, xr) as f64 - want).abs();
                    assert!(err <= tol, "fallback k={k}: err {err:e}, tol {tol:e}");
                }
            }
        }
    }

    /// The hi/lo split recovers x to 2⁻¹⁶ relative.
    #[test]
    fn bf16_split_is_near_exact() {
        let x = values(1000, 3);
        let (hi, lo) = split_bf16(&x);
        for i in 0..x.len() {
            let back = Half::Bf16.widen(hi[i]) as f64 + Half::Bf16.widen(lo[i]) as f64;
            assert!((back - x[i] as f64).abs() <= (x[i].abs() as f64) * 2f64.powi(-16), "{i}");
        }
    }

    /// Results do not depend on the thread count (the decode path's outputs each come from one
    /// thread; the gemm path's blocks are fixed).
    #[test]
    fn thread_count_does_not_change_results() {
        let (n, k, out) = (3, 200, 301); // a short last group of outputs
        let x = values(n * k, 5);
        let w = bits(&values(out * k, 6), Half::Bf16);
        let path = Path::detect();
        let run = |threads| {
            rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap().install(|| {
                (
                    matmul_t(&x, n, k, &w, Half::Bf16, out, path),
                    matmul_t(&x, 20, 10, &w, Half::Bf16, out, path),
                )
            })
        };
        assert_eq!(run(1), run(3));
    }
}
