//! The gated MLP's activations on flat f32 rows, vectorised: SwiGLU (silu) and GeGLU (tanh GELU,
//! Gemma), forward and backward. libm's scalar `tanhf` (through `expm1f`) was a tenth of a Gemma
//! distillation step under `perf` (the student's GeGLU and the teacher's candle `gelu` both);
//! here both functions come from the branch-free `exp_lane` of `kernels.rs`, so the loops
//! vectorise. AVX-512 or AVX2 where the CPU has them, plain SSE2 otherwise: the same arithmetic
//! in the same order on every path (no fused multiply-add), so the same bits.

use super::kernels::exp_lane;
use crate::block::Activation;

/// sqrt(2/π), to f32 as transformers' `gelu_pytorch_tanh` (torch's tanh GELU) computes it.
const GELU_C: f32 = 0.797_884_6;
const GELU_A: f32 = 0.044_715;

/// The activation and its derivative at g (`GELU` picks tanh GELU, else silu), from one
/// `exp_lane` each. Neither subtracts from 1: with e = e^{2z}, 1 + tanh z = 2e / (1 + e) and
/// 1 − tanh z = 2 / (1 + e); with e = e^{−g}, 1 − σ(g) = e·σ(g). So both stay accurate in the
/// tails, where 1 ± tanh is tiny (the exponent is clamped to ±87 so that e and 1 + e stay
/// finite: beyond, tanh and σ are 0 or ±1 to f32 anyway).
#[inline(always)]
fn act_slope<const GELU: bool>(g: f32) -> (f32, f32) {
    if GELU {
        let z = GELU_C * (g + GELU_A * g * g * g);
        let e = exp_lane((2.0 * z).clamp(-87.0, 87.0));
        let r = 1.0 / (1.0 + e);
        let (p, m) = (2.0 * e * r, 2.0 * r); // 1 + tanh z, 1 − tanh z
        let inner = GELU_C * (1.0 + 3.0 * GELU_A * g * g);
        // d/dg ½ g (1 + tanh z) = ½ (1 + tanh z) + ½ g (1 − tanh² z) z'
        (0.5 * g * p, 0.5 * p * (1.0 + g * (m * inner)))
    } else {
        let e = exp_lane((-g).clamp(-87.0, 87.0));
        let s = 1.0 / (1.0 + e); // σ(g); 1 − σ(g) = e σ(g)
        (g * s, s * (1.0 + g * (e * s)))
    }
}

/// The activation and its derivative at one g (for tests and scalar callers).
pub fn act_and_slope(act: Activation, g: f32) -> (f32, f32) {
    match act {
        Activation::Silu => act_slope::<false>(g),
        Activation::GeluTanh => act_slope::<true>(g),
    }
}

#[inline(always)]
fn fwd<const GELU: bool>(g: &[f32], u: &[f32], out: &mut [f32]) {
    for ((o, &gv), &uv) in out.iter_mut().zip(g).zip(u) {
        *o = act_slope::<GELU>(gv).0 * uv;
    }
}

#[inline(always)]
fn bwd<const GELU: bool>(da: &[f32], g: &mut [f32], u: &mut [f32]) {
    for ((gv, uv), &d) in g.iter_mut().zip(u.iter_mut()).zip(da) {
        let (a, slope) = act_slope::<GELU>(*gv);
        *gv = d * *uv * slope;
        *uv = d * a;
    }
}

#[inline(always)]
fn fwd_any(act: Activation, g: &[f32], u: &[f32], out: &mut [f32]) {
    match act {
        Activation::Silu => fwd::<false>(g, u, out),
        Activation::GeluTanh => fwd::<true>(g, u, out),
    }
}

#[inline(always)]
fn bwd_any(act: Activation, da: &[f32], g: &mut [f32], u: &mut [f32]) {
    match act {
        Activation::Silu => bwd::<false>(da, g, u),
        Activation::GeluTanh => bwd::<true>(da, g, u),
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn fwd_avx512(act: Activation, g: &[f32], u: &[f32], out: &mut [f32]) {
    fwd_any(act, g, u, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn fwd_avx2(act: Activation, g: &[f32], u: &[f32], out: &mut [f32]) {
    fwd_any(act, g, u, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn bwd_avx512(act: Activation, da: &[f32], g: &mut [f32], u: &mut [f32]) {
    bwd_any(act, da, g, u)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn bwd_avx2(act: Activation, da: &[f32], g: &mut [f32], u: &mut [f32]) {
    bwd_any(act, da, g, u)
}

/// The widest SIMD path this CPU has.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Simd {
    Avx512,
    Avx2,
    Base,
}

fn simd() -> Simd {
    #[cfg(target_arch = "x86_64")]
    {
        static PICK: std::sync::OnceLock<Simd> = std::sync::OnceLock::new();
        *PICK.get_or_init(|| {
            if std::arch::is_x86_feature_detected!("avx512f") {
                Simd::Avx512
            } else if std::arch::is_x86_feature_detected!("avx2") {
                Simd::Avx2
            } else {
                Simd::Base
            }
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    Simd::Base
}

/// out = act(g) · u elementwise, on `path`.
fn glu_on(path: Simd, act: Activation, g: &[f32], u: &[f32], out: &mut [f32]) {
    assert!(g.len() == u.len() && g.len() == out.len(), "glu: lengths");
    match path {
        // SAFETY: `simd()` picked these paths only where the CPU has the feature.
        #[cfg(target_arch = "x86_64")]
        Simd::Avx512 => unsafe { fwd_avx512(act, g, u, out) },
        #[cfg(target_arch = "x86_64")]
        Simd::Avx2 => unsafe { fwd_avx2(act, g, u, out) },
        _ => fwd_any(act, g, u, out),
    }
}

/// dg = da · u · act'(g) into `g`, du = da · act(g) into `u`, on `path`.
fn glu_backward_on(path: Simd, act: Activation, da: &[f32], g: &mut [f32], u: &mut [f32]) {
    assert!(g.len() == u.len() && g.len() == da.len(), "glu backward: lengths");
    match path {
        // SAFETY: as in `glu_on`.
        #[cfg(target_arch = "x86_64")]
        Simd::Avx512 => unsafe { bwd_avx512(act, da, g, u) },
        #[cfg(target_arch = "x86_64")]
        Simd::Avx2 => unsafe { bwd_avx2(act, da, g, u) },
        _ => bwd_any(act, da, g, u),
    }
}

/// out = act(g) · u elementwise (SwiGLU for silu, GeGLU for tanh GELU), one thread.
pub fn glu_into(act: Activation, g: &[f32], u: &[f32], out: &mut [f32]) {
    glu_on(simd(), act, g, u, out)
}

/// `glu_into` backward, one thread, overwriting `g` with dg and `u` with du.
pub fn glu_backward_into(act: Activation, da: &[f32], g: &mut [f32], u: &mut [f32]) {
    glu_backward_on(simd(), act, da, g, u)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The f64 references: torch's formulas.
    fn reference(act: Activation, g: f64) -> (f64, f64) {
        match act {
            Activation::Silu => {
                let s = 1.0 / (1.0 + (-g).exp());
                (g * s, s * (1.0 + g * (1.0 - s)))
            }
            Activation::GeluTanh => {
                let (c, a) = ((2.0 / std::f64::consts::PI).sqrt(), 0.044715);
                let th = (c * (g + a * g * g * g)).tanh();
                (
                    0.5 * g * (1.0 + th),
                    0.5 * (1.0 + th) + 0.5 * g * (1.0 - th * th) * c * (1.0 + 3.0 * a * g * g),
                )
            }
        }
    }

    fn inputs(n: usize) -> Vec<f32> {
        // From far negative to far positive, with 0, the edges of exp's range and NaN-free odd values.
        let mut g: Vec<f32> = (0..n).map(|i| (i as f32 - n as f32 / 2.0) * 0.173).collect();
        g.extend([0.0, -0.0, 1e-6, -1e-6, 44.5, -44.5, 90.0, -90.0, 200.0, -200.0]);
        g
    }

    #[test]
    fn activations_and_slopes_match_f64_everywhere() {
        for act in [Activation::Silu, Activation::GeluTanh] {
            for &g in &inputs(301) {
                let (a, s) = act_and_slope(act, g);
                let (ra, rs) = reference(act, g as f64);
                let tol = 4e-7 * (1.0 + ra.abs());
                assert!((a as f64 - ra).abs() <= tol, "{act:?}({g}) = {a}, f64 {ra}");
                let tol = 4e-7 * (1.0 + rs.abs());
                assert!((s as f64 - rs).abs() <= tol, "{act:?}'({g}) = {s}, f64 {rs}");
            }
        }
        // torch's tanh GELU at 1: 0.5 (1 + tanh(0.79788456 · 1.044715)) = 0.8411920
        assert!((act_and_slope(Activation::GeluTanh, 1.0).0 - 0.841_192).abs() < 1e-6);
    }

    /// Every SIMD path this CPU has gives the bits of the plain one, at lengths that are not
    /// multiples of any vector width.
    #[test]
    fn every_simd_path_gives_the_same_bits() {
        let mut paths = vec![Simd::Base];
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx2") {
                paths.push(Simd::Avx2);
            } else {
                println!("skipped the AVX2 path: this CPU has no AVX2");
            }
            if std::arch::is_x86_feature_detected!("avx512f") {
                paths.push(Simd::Avx512);
            } else {
                println!("skipped the AVX-512 path: this CPU has no AVX-512");
            }
        }
        for act in [Activation::Silu, Activation::GeluTanh] {
            for n in [1usize, 7, 16, 33, 301] {
                let g = inputs(n);
                let u: Vec<f32> = (0..g.len()).map(|i| (i as f32 * 0.37).sin() * 2.0).collect();
                let da: Vec<f32> = (0..g.len()).map(|i| (i as f32 * 0.11).cos()).collect();
                let run = |p: Simd| {
                    let mut out = vec![0f32; g.len()];
                    glu_on(p, act, &g, &u, &mut out);
                    let (mut dg, mut du) = (g.clone(), u.clone());
                    glu_backward_on(p, act, &da, &mut dg, &mut du);
                    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                    (bits(&out), bits(&dg), bits(&du))
                };
                let base = run(Simd::Base);
                for &p in &paths[1..] {
                    assert_eq!(
                        run(p),
                        base,
                        "{act:?}, {n} values: {p:?} differs from the plain path"
                    );
                }
                // and the plain path is the scalar function
                for (i, (&gv, &uv)) in g.iter().zip(&u).enumerate() {
                    assert_eq!(base.0[i], (act_and_slope(act, gv).0 * uv).to_bits());
                }
            }
        }
    }

    #[test]
    fn slopes_match_finite_differences() {
        for act in [Activation::Silu, Activation::GeluTanh] {
            for g in [-3.0f32, -0.7, 0.0, 0.4, 2.5] {
                let (h, slope) = (1e-2f64, act_and_slope(act, g).1 as f64);
                let f = |x: f64| act_and_slope(act, x as f32).0 as f64;
                let fd = (f(g as f64 + h) - f(g as f64 - h)) / (2.0 * h);
                assert!((fd - slope).abs() < 1e-3, "{act:?} at {g}: {slope} vs {fd}");
            }
        }
    }
}
