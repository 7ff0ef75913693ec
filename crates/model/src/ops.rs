//! Primitive ops in two flavours: candle-nn's fused kernels (fast, but with NO backward: gradients
//! silently stop there) and compositions of differentiable candle ops. `Model` picks the composed
//! form whenever it was built for training; tests check both agree.

use candle_core::{DType, Device, Result, Tensor, D};

/// RMSNorm over the last dim: x / sqrt(mean(x²) + eps) * w  (Zhang & Sennrich 2019).
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f64, differentiable: bool) -> Result<Tensor> {
    if !differentiable && x.dtype() == DType::F32 && x.is_contiguous() {
        return candle_nn::ops::rms_norm(x, w, eps as f32);
    }
    let ms = x.sqr()?.mean_keepdim(D::Minus1)?; // (.., 1)
    let x = x.broadcast_div(&(ms + eps)?.sqrt()?)?;
    x.broadcast_mul(w)
}

/// GELU, tanh approximation (transformers' `gelu_pytorch_tanh`, Gemma's MLP):
/// 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))). Training composes it from ops with exact
/// constants: candle's fused `gelu` backward uses 6-digit rounded ones (a 1e-5 relative error that
/// the finite-difference check catches).
pub fn gelu_tanh(x: &Tensor, differentiable: bool) -> Result<Tensor> {
    if !differentiable {
        return x.gelu();
    }
    let c = (2.0 / std::f64::consts::PI).sqrt();
    let inner = ((x + (x.powf(3.0)? * 0.044715)?)? * c)?;
    (x * 0.5)?.mul(&(inner.tanh()? + 1.0)?)
}

/// Softmax over the last dim. The max is detached: softmax is shift-invariant, so it only
/// guards against overflow and must not receive gradient.
pub fn softmax_last(x: &Tensor, differentiable: bool) -> Result<Tensor> {
    if !differentiable && x.is_contiguous() {
        return candle_nn::ops::softmax_last_dim(x);
    }
    let max = x.max_keepdim(D::Minus1)?.detach();
    let e = x.broadcast_sub(&max)?.exp()?;
    let s = e.sum_keepdim(D::Minus1)?;
    e.broadcast_div(&s)
}

/// log-softmax over the last dim (differentiable composition).
pub fn log_softmax_last(x: &Tensor) -> Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?.detach();
    let shifted = x.broadcast_sub(&max)?;
    let lse = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    shifted.broadcast_sub(&lse)
}

/// Half-split RoPE as in HF `rotate_half`: x·cos + [-x2, x1]·sin.
/// x: (b, h, t, d); cos/sin: (b, t, d/2).
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor, differentiable: bool) -> Result<Tensor> {
    if !differentiable && x.dtype() == DType::F32 {
        return candle_nn::rotary_emb::rope(&x.contiguous()?, cos, sin);
    }
    let (b, _h, t, d) = x.dims4()?;
    let half = d / 2;
    let cos = Tensor::cat(&[cos, cos], D::Minus1)?.reshape((b, 1, t, d))?; // (b, 1, t, d)
    let sin = Tensor::cat(&[sin, sin], D::Minus1)?.reshape((b, 1, t, d))?;
    let x1 = x.narrow(D::Minus1, 0, half)?;
    let x2 = x.narrow(D::Minus1, half, half)?;
    let rotated = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?; // (b, h, t, d)
    x.broadcast_mul(&cos)? + rotated.broadcast_mul(&sin)?
}

/// Additive attention mask (b, 1, tq, tk): 0 where query i (absolute position `offset + i`) may
/// attend key j, a large negative number elsewhere. Causal, optional sliding window (key allowed
/// when `q - k < window`, as transformers' sliding_window_overlay), optional key padding
/// (`key_valid[b][j]`). A finite minimum keeps fully-masked (padding) rows finite.
pub fn attention_mask(
    b: usize,
    tq: usize,
    offset: usize,
    window: Option<usize>,
    key_valid: Option<&[Vec<bool>]>,
    dtype: DType,
    device: &Device,
) -> Result<Tensor> {
    let tk = offset + tq;
    let neg = f32::MIN;
    let mut m = vec![0f32; b * tq * tk];
    for bi in 0..b {
        for i in 0..tq {
            let q = offset + i;
            let row = &mut m[(bi * tq + i) * tk..(bi * tq + i + 1) * tk];
            for (j, v) in row.iter_mut().enumerate() {
                let mut ok = j <= q;
                if let Some(w) = window {
                    ok &= q - j.min(q) < w;
                }
                if let Some(kv) = key_valid {
                    ok &= kv[bi].get(j).copied().unwrap_or(true);
                }
                if !ok {
                    *v = neg;
                }
            }
        }
    }
    Tensor::from_vec(m, (b, 1, tq, tk), device)?.to_dtype(dtype)
}

/// x (n, k) f32 · wᵀ with a frozen `w` (out, k) in bf16, f16 or f32: the frozen models' matrix
/// product (`cpu::mixed`), f32 accumulation, no backward (the weights are never trained).
/// f32 weights: the four-row dot product for few rows (decode), the f32 gemm otherwise.
pub fn matmul_frozen_t(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    x.apply_op2_no_bwd(w, &FrozenMatmul)
}

struct FrozenMatmul;

impl candle_core::CustomOp2 for FrozenMatmul {
    fn name(&self) -> &'static str {
        "matmul-frozen-t"
    }

    fn cpu_fwd(
        &self,
        xs: &candle_core::CpuStorage,
        xl: &candle_core::Layout,
        ws: &candle_core::CpuStorage,
        wl: &candle_core::Layout,
    ) -> Result<(candle_core::CpuStorage, candle_core::Shape)> {
        use crate::cpu::kernels::{gemm_new, Par, View};
        use crate::cpu::mixed::{gemv_f32_t, matmul_t, Half, Path, GEMV_ROWS};
        use candle_core::CpuStorage as S;
        use half::slice::HalfFloatSliceExt;
        let (n, k) = xl.shape().dims2()?;
        let (out, kw) = wl.shape().dims2()?;
        if k != kw {
            candle_core::bail!("matmul-frozen-t: x (.., {k}) against a weight of ({out}, {kw})");
        }
        let x = match (xs, xl.contiguous_offsets()) {
            (S::F32(v), Some((a, b))) => &v[a..b],
            _ => candle_core::bail!("matmul-frozen-t: x must be contiguous f32"),
        };
        let Some((a, b)) = wl.contiguous_offsets() else {
            candle_core::bail!("matmul-frozen-t: the weight must be contiguous");
        };
        let (w, kind) = match ws {
            S::BF16(v) => (v[a..b].reinterpret_cast(), Half::Bf16),
            S::F16(v) => (v[a..b].reinterpret_cast(), Half::F16),
            S::F32(v) if n <= GEMV_ROWS => {
                let y = gemv_f32_t(x, n, k, &v[a..b], out);
                return Ok((S::F32(y), candle_core::Shape::from((n, out))));
            }
            S::F32(v) => {
                let (xv, wv) = (View::rows(x, k), View::t(&v[a..b], k));
                let y = gemm_new(n, out, k, xv, wv, Par::All);
                return Ok((S::F32(y), candle_core::Shape::from((n, out))));
            }
            _ => candle_core::bail!("matmul-frozen-t: the weight must be f32, bf16 or f16"),
        };
        let y = matmul_t(x, n, k, w, kind, out, Path::detect());
        Ok((S::F32(y), candle_core::Shape::from((n, out))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rand(shape: &[usize], seed: u64) -> Tensor {
        let n: usize = shape.iter().product();
        let v = crate::init::uniform_vec(n, seed, 1.0);
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar().unwrap()
    }

    #[test]
    fn fused_and_composed_agree() {
        let x = rand(&[2, 3, 5, 8], 1);
        let w = rand(&[8], 2);
        assert!(
            max_abs_diff(
                &rms_norm(&x, &w, 1e-6, true).unwrap(),
                &rms_norm(&x, &w, 1e-6, false).unwrap()
            ) < 1e-5
        );
        assert!(
            max_abs_diff(&softmax_last(&x, true).unwrap(), &softmax_last(&x, false).unwrap())
                < 1e-6
        );
        let cos = rand(&[2, 5, 4], 3);
        let sin = rand(&[2, 5, 4], 4);
        assert!(
            max_abs_diff(
                &rope(&x, &cos, &sin, true).unwrap(),
                &rope(&x, &cos, &sin, false).unwrap()
            ) < 1e-5
        );
    }

    #[test]
    fn mask_causal_window_padding() {
        let kv = vec![vec![false, true, true, true]];
        let m = attention_mask(1, 4, 0, Some(2), Some(&kv), DType::F32, &Device::Cpu).unwrap();
        let m: Vec<Vec<f32>> = m.squeeze(0).unwrap().squeeze(0).unwrap().to_vec2().unwrap();
        let allowed: Vec<Vec<bool>> =
            m.iter().map(|r| r.iter().map(|&x| x == 0.0).collect()).collect();
        assert_eq!(
            allowed,
            vec![
                vec![false, false, false, false],
                vec![false, true, false, false],
                vec![false, true, true, false],
                vec![false, false, true, true],
            ]
        );
    }
}
