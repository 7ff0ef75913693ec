//! One GPU: a context and stream, every kernel module compiled (cached) and loaded, a cuBLAS
//! handle, and one method per kernel launch on device buffers. Shapes follow the CPU executor's
//! flat buffers (`orlik_model::cpu`), row-major, so each method has a CPU twin that
//! `tests/kernels.rs` compares it with on a GPU.

use crate::device::GpuInfo;
use crate::kernels::MODULES;
use crate::{nvrtc, CudaError};
use cudarc::cublas::sys::cublasOperation_t as Op;
use cudarc::cublas::{CudaBlas, Gemm, GemmConfig};
use cudarc::driver::{
    CudaContext, CudaFunction, CudaSlice, CudaStream, DeviceRepr, LaunchConfig, PushKernelArg,
    ValidAsZeroBits,
};
use cudarc::nvrtc::Ptx;
use orlik_model::block::Activation;
use std::collections::HashMap;
use std::sync::Arc;

/// Threads per block of the element-wise and per-row kernels (the per-row reductions' shared
/// arrays hold 256 values).
const THREADS: u32 = 256;
/// Threads per block of the attention kernels (each thread owns up to 4 of a head's dims).
const ATTN_THREADS: u32 = 128;
/// Blocks of `sum_squares`: fixed, so the norm's summation order does not depend on the GPU.
const SUMSQ_BLOCKS: u32 = 256;

/// Causal grouped-query attention's shape (as `orlik_model::cpu::attention::Shape`, plus the
/// key count `tk` ≥ t: a KV cache's earlier keys come first, and `kcap` ≥ tk: the rows between
/// one batch row's keys and the next's in the k / v buffers).
#[derive(Debug, Clone, Copy)]
pub struct AttnShape {
    pub b: usize,
    pub t: usize,
    pub tk: usize,
    pub kcap: usize,
    pub heads: usize,
    pub kv: usize,
    pub hd: usize,
    pub scale: f32,
    pub window: Option<usize>,
}

/// AdamW's per-step scalars, computed on the host as `orlik_train::optim::adamw_step` does.
#[derive(Debug, Clone, Copy)]
pub struct AdamStep {
    pub beta1: f32,
    pub beta2: f32,
    /// lr / (1 − β1^t).
    pub step: f32,
    /// sqrt(1 − β2^t).
    pub bc2_sqrt: f32,
    pub eps: f32,
    /// 1 − lr · weight_decay for matrices, 1 for norms and biases.
    pub shrink: f32,
}

pub struct Gpu {
    pub info: GpuInfo,
    /// The PTX target the kernels were compiled for ("compute_90").
    pub arch: String,
    pub nvrtc_version: String,
    _ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    funcs: HashMap<&'static str, CudaFunction>,
    blas: CudaBlas,
}

fn grid(n: usize, threads: u32) -> LaunchConfig {
    LaunchConfig {
        grid_dim: ((n as u64).div_ceil(threads as u64).max(1) as u32, 1, 1),
        block_dim: (threads, 1, 1),
        shared_mem_bytes: 0,
    }
}

fn rows_cfg(rows: usize) -> LaunchConfig {
    LaunchConfig { grid_dim: (rows as u32, 1, 1), block_dim: (THREADS, 1, 1), shared_mem_bytes: 0 }
}

fn int(v: usize, what: &str) -> Result<i32, CudaError> {
    i32::try_from(v)
        .map_err(|_| CudaError::Internal(format!("{what} = {v} does not fit a kernel's int")))
}

fn check_len<T>(s: &CudaSlice<T>, want: usize, what: &str) -> Result<(), CudaError> {
    if s.len() < want {
        return Err(CudaError::Internal(format!(
            "{what}: {} elements, the launch needs {want}",
            s.len()
        )));
    }
    Ok(())
}

/// Launch `$name` with `$cfg` and the arguments in the kernel's order. Every argument must be
/// a place (a variable), not a temporary: the builder keeps pointers to them until the launch.
macro_rules! launch {
    ($gpu:expr, $name:expr, $cfg:expr, $($arg:expr),+ $(,)?) => {{
        let f = $gpu.func($name)?;
        let mut b = $gpu.stream.launch_builder(f);
        $( b.arg($arg); )+
        // SAFETY: the arguments follow the kernel's signature in kernels/*.cu (types and
        // order); buffer lengths are checked by the caller against the launch's extent.
        unsafe { b.launch($cfg) }.map(|_| ()).map_err(CudaError::from)
    }};
}

impl Gpu {
    /// A context on `info`'s GPU with every kernel module compiled for it (PTX from the cache
    /// when there) and loaded.
    pub fn open(info: &GpuInfo) -> Result<Gpu, CudaError> {
        let ctx = CudaContext::new(info.ordinal)?;
        let stream = ctx.default_stream();
        let arch = nvrtc::arch_for(info.capability);
        let dir = nvrtc::cache_dir();
        let mut funcs = HashMap::new();
        for m in MODULES.iter() {
            let ptx = nvrtc::compile_cached(m, &arch, &dir)?;
            let module = ctx.load_module(Ptx::from_src(ptx))?;
            for &f in m.functions {
                funcs.insert(f, module.load_function(f)?);
            }
        }
        // SAFETY: only tries to dlopen the library.
        if !unsafe { cudarc::cublas::sys::is_culib_present() } {
            return Err(CudaError::Blas("libcublas.so.13 is not on the library path".into()));
        }
        let blas = CudaBlas::new(stream.clone())?;
        Ok(Gpu {
            info: info.clone(),
            arch,
            nvrtc_version: nvrtc::version()?,
            _ctx: ctx,
            stream,
            funcs,
            blas,
        })
    }

    fn func(&self, name: &str) -> Result<&CudaFunction, CudaError> {
        self.funcs
            .get(name)
            .ok_or_else(|| CudaError::Internal(format!("kernel {name} is not loaded")))
    }

    pub fn upload<T: DeviceRepr>(&self, host: &[T]) -> Result<CudaSlice<T>, CudaError> {
        Ok(self.stream.clone_htod(host)?)
    }

    pub fn download<T: DeviceRepr + Default + Clone>(
        &self,
        dev: &CudaSlice<T>,
    ) -> Result<Vec<T>, CudaError> {
        Ok(self.stream.clone_dtoh(dev)?)
    }

    pub fn zeros<T: DeviceRepr + ValidAsZeroBits>(
        &self,
        n: usize,
    ) -> Result<CudaSlice<T>, CudaError> {
        Ok(self.stream.alloc_zeros::<T>(n.max(1))?)
    }

    /// dev = host (same length).
    pub fn write<T: DeviceRepr>(
        &self,
        dev: &mut CudaSlice<T>,
        host: &[T],
    ) -> Result<(), CudaError> {
        if dev.len() != host.len() {
            return Err(CudaError::Internal(format!(
                "write: {} host values into {}",
                host.len(),
                dev.len()
            )));
        }
        Ok(self.stream.memcpy_htod(host, dev)?)
    }

    /// dev = 0.
    pub fn clear<T: DeviceRepr + ValidAsZeroBits>(
        &self,
        dev: &mut CudaSlice<T>,
    ) -> Result<(), CudaError> {
        Ok(self.stream.memset_zeros(dev)?)
    }

    /// A copy of `x` in a new buffer.
    pub fn dup(&self, x: &CudaSlice<f32>) -> Result<CudaSlice<f32>, CudaError> {
        let mut y = self.zeros(x.len())?;
        self.copy((x, 0), (&mut y, 0), x.len())?;
        Ok(y)
    }

    /// dst[to .. to + n] = src[from .. from + n] (device to device, on the stream).
    pub fn copy(
        &self,
        (src, from): (&CudaSlice<f32>, usize),
        (dst, to): (&mut CudaSlice<f32>, usize),
        n: usize,
    ) -> Result<(), CudaError> {
        check_len(src, from + n, "copy source")?;
        check_len(dst, to + n, "copy destination")?;
        let s = src.slice(from..from + n);
        let mut d = dst.slice_mut(to..to + n);
        Ok(self.stream.memcpy_dtod(&s, &mut d)?)
    }

    pub fn synchronize(&self) -> Result<(), CudaError> {
        Ok(self.stream.synchronize()?)
    }

    /// out (n, d) = table[ids] · scale.
    pub fn embed_gather(
        &self,
        ids: &CudaSlice<u32>,
        table: &CudaSlice<f32>,
        out: &mut CudaSlice<f32>,
        d: usize,
        scale: f32,
    ) -> Result<(), CudaError> {
        let n = ids.len();
        check_len(out, n * d, "embed_gather out")?;
        let (ni, di) = (int(n, "rows")?, int(d, "hidden")?);
        launch!(self, "embed_gather", grid(n * d, THREADS), ids, table, out, &ni, &di, &scale)
    }

    /// grad[ids[r]] += dy[r] · scale, rows in order.
    pub fn embed_scatter_add(
        &self,
        ids: &CudaSlice<u32>,
        dy: &CudaSlice<f32>,
        grad: &mut CudaSlice<f32>,
        d: usize,
        scale: f32,
    ) -> Result<(), CudaError> {
        let n = ids.len();
        check_len(dy, n * d, "embed_scatter_add dy")?;
        let (ni, di) = (int(n, "rows")?, int(d, "hidden")?);
        launch!(self, "embed_scatter_add", grid(d, THREADS), ids, dy, grad, &ni, &di, &scale)
    }

    /// y (rows, d) = RMSNorm(x) · (w + offset); inv (rows) kept for the backward.
    #[allow(clippy::too_many_arguments)]
    pub fn rms_forward(
        &self,
        x: &CudaSlice<f32>,
        w: &CudaSlice<f32>,
        y: &mut CudaSlice<f32>,
        inv: &mut CudaSlice<f32>,
        rows: usize,
        eps: f64,
        offset: bool,
    ) -> Result<(), CudaError> {
        let d = w.len();
        check_len(x, rows * d, "rms x")?;
        check_len(y, rows * d, "rms y")?;
        check_len(inv, rows, "rms inv")?;
        let (ri, di, off) =
            (int(rows, "rows")?, int(d, "width")?, if offset { 1f32 } else { 0f32 });
        launch!(self, "rms_forward", rows_cfg(rows), x, w, y, inv, &ri, &di, &eps, &off)
    }

    /// dx += ∂/∂x, dw += ∂/∂w of RMSNorm given dy.
    #[allow(clippy::too_many_arguments)]
    pub fn rms_backward(
        &self,
        x: &CudaSlice<f32>,
        inv: &CudaSlice<f32>,
        w: &CudaSlice<f32>,
        dy: &CudaSlice<f32>,
        dx: &mut CudaSlice<f32>,
        dw: &mut CudaSlice<f32>,
        rows: usize,
        offset: bool,
    ) -> Result<(), CudaError> {
        let d = w.len();
        for (s, what) in [(x, "x"), (dy, "dy")] {
            check_len(s, rows * d, what)?;
        }
        check_len(dx, rows * d, "dx")?;
        let (ri, di, off) =
            (int(rows, "rows")?, int(d, "width")?, if offset { 1f32 } else { 0f32 });
        launch!(self, "rms_backward_dx", rows_cfg(rows), x, inv, w, dy, dx, &ri, &di, &off)?;
        launch!(self, "rms_backward_dw", grid(d, THREADS), x, inv, dy, dw, &ri, &di)
    }

    /// RoPE in place on x (rows, heads · hd), row r at position pos[r]; cos/sin (positions,
    /// hd / 2). `inverse`: the backward rotation.
    #[allow(clippy::too_many_arguments)]
    pub fn rope(
        &self,
        x: &mut CudaSlice<f32>,
        pos: &CudaSlice<u32>,
        cos: &CudaSlice<f32>,
        sin: &CudaSlice<f32>,
        heads: usize,
        hd: usize,
        inverse: bool,
    ) -> Result<(), CudaError> {
        let rows = pos.len();
        check_len(x, rows * heads * hd, "rope x")?;
        let n = rows * heads * (hd / 2);
        let (ri, hi, di, inv) =
            (int(rows, "rows")?, int(heads, "heads")?, int(hd, "head_dim")?, i32::from(inverse));
        launch!(self, "rope", grid(n, THREADS), x, pos, cos, sin, &ri, &hi, &di, &inv)
    }

    /// a = act(g) · u.
    pub fn glu_forward(
        &self,
        act: Activation,
        g: &CudaSlice<f32>,
        u: &CudaSlice<f32>,
        a: &mut CudaSlice<f32>,
    ) -> Result<(), CudaError> {
        let n = g.len();
        check_len(u, n, "glu u")?;
        check_len(a, n, "glu a")?;
        let (ai, ni) = (act_code(act), n as i64);
        launch!(self, "glu_forward", grid(n, THREADS), &ai, g, u, a, &ni)
    }

    /// In place: g becomes dg, u becomes du.
    pub fn glu_backward(
        &self,
        act: Activation,
        da: &CudaSlice<f32>,
        g: &mut CudaSlice<f32>,
        u: &mut CudaSlice<f32>,
    ) -> Result<(), CudaError> {
        let n = da.len();
        check_len(g, n, "glu g")?;
        check_len(u, n, "glu u")?;
        let (ai, ni) = (act_code(act), n as i64);
        launch!(self, "glu_backward", grid(n, THREADS), &ai, da, g, u, &ni)
    }

    /// y (·, d) += bias (d) on every row.
    pub fn add_bias(&self, y: &mut CudaSlice<f32>, bias: &CudaSlice<f32>) -> Result<(), CudaError> {
        let (n, d) = (y.len(), bias.len());
        let (ni, di) = (n as i64, int(d, "bias")?);
        launch!(self, "add_bias", grid(n, THREADS), y, bias, &ni, &di)
    }

    /// out (d) += Σ_rows x (rows, d).
    pub fn col_sums(
        &self,
        x: &CudaSlice<f32>,
        out: &mut CudaSlice<f32>,
        rows: usize,
    ) -> Result<(), CudaError> {
        let d = out.len();
        check_len(x, rows * d, "col_sums x")?;
        let (ri, di) = (int(rows, "rows")?, int(d, "width")?);
        launch!(self, "col_sums", grid(d, THREADS), x, out, &ri, &di)
    }

    /// y += a · x.
    pub fn axpy(
        &self,
        y: &mut CudaSlice<f32>,
        a: f32,
        x: &CudaSlice<f32>,
    ) -> Result<(), CudaError> {
        let n = y.len();
        check_len(x, n, "axpy x")?;
        let ni = n as i64;
        launch!(self, "axpy", grid(n, THREADS), y, x, &a, &ni)
    }

    /// x *= a.
    pub fn scale(&self, x: &mut CudaSlice<f32>, a: f32) -> Result<(), CudaError> {
        let (n, ni) = (x.len(), x.len() as i64);
        launch!(self, "scale", grid(n, THREADS), x, &a, &ni)
    }

    /// bf16 bits -> f32.
    pub fn bf16_to_f32(
        &self,
        x: &CudaSlice<u16>,
        out: &mut CudaSlice<f32>,
    ) -> Result<(), CudaError> {
        check_len(out, x.len(), "bf16_to_f32 out")?;
        let ni = x.len() as i64;
        launch!(self, "bf16_to_f32_kernel", grid(x.len(), THREADS), x, out, &ni)
    }

    /// f32 -> bf16 bits, rounded to nearest even.
    pub fn f32_to_bf16(
        &self,
        x: &CudaSlice<f32>,
        out: &mut CudaSlice<u16>,
    ) -> Result<(), CudaError> {
        check_len(out, x.len(), "f32_to_bf16 out")?;
        let ni = x.len() as i64;
        launch!(self, "f32_to_bf16_kernel", grid(x.len(), THREADS), x, out, &ni)
    }

    fn attn_check(s: &AttnShape) -> Result<(), CudaError> {
        // An empty batch launches nothing sensible; window 0 would read as "no window" in the
        // kernels where the CPU sees no key at all.
        let bad_rows = s.b == 0 || s.t == 0 || s.tk < s.t || s.kcap < s.tk || s.window == Some(0);
        if s.kv == 0
            || !s.heads.is_multiple_of(s.kv)
            || s.hd > 4 * ATTN_THREADS as usize
            || bad_rows
        {
            return Err(CudaError::Internal(format!("attention shape {s:?} is not supported")));
        }
        Ok(())
    }

    /// o (b · t, heads · hd) and lse (b, heads, t) of causal GQA attention; `valid` (b · tk
    /// bytes, 1 = a real key) marks padding, None = every key real.
    pub fn attn_forward(
        &self,
        s: &AttnShape,
        (q, k, v): (&CudaSlice<f32>, &CudaSlice<f32>, &CudaSlice<f32>),
        o: &mut CudaSlice<f32>,
        lse: &mut CudaSlice<f32>,
        valid: Option<&CudaSlice<u8>>,
    ) -> Result<(), CudaError> {
        Self::attn_check(s)?;
        check_len(q, s.b * s.t * s.heads * s.hd, "attention q")?;
        check_len(k, ((s.b - 1) * s.kcap + s.tk) * s.kv * s.hd, "attention k")?;
        check_len(v, ((s.b - 1) * s.kcap + s.tk) * s.kv * s.hd, "attention v")?;
        check_len(o, s.b * s.t * s.heads * s.hd, "attention o")?;
        check_len(lse, s.b * s.heads * s.t, "attention lse")?;
        let cfg = LaunchConfig {
            grid_dim: (s.t as u32, s.heads as u32, s.b as u32),
            block_dim: (ATTN_THREADS, 1, 1),
            shared_mem_bytes: ((s.hd + 2 * ATTN_THREADS as usize) * 4) as u32,
        };
        let w = s.window.unwrap_or(0);
        let [b, t, tk, kcap, h, kv, hd, win] =
            ints([s.b, s.t, s.tk, s.kcap, s.heads, s.kv, s.hd, w])?;
        let scale = s.scale;
        match valid {
            Some(valid) => {
                check_len(valid, s.b * s.tk, "attention valid")?;
                launch!(
                    self,
                    "attn_forward",
                    cfg,
                    q,
                    k,
                    v,
                    o,
                    lse,
                    valid,
                    &b,
                    &t,
                    &tk,
                    &kcap,
                    &h,
                    &kv,
                    &hd,
                    &scale,
                    &win
                )
            }
            None => {
                let null = 0u64; // a null `const unsigned char*`: every key is real
                launch!(
                    self,
                    "attn_forward",
                    cfg,
                    q,
                    k,
                    v,
                    o,
                    lse,
                    &null,
                    &b,
                    &t,
                    &tk,
                    &kcap,
                    &h,
                    &kv,
                    &hd,
                    &scale,
                    &win
                )
            }
        }
    }

    /// (dq, dk, dv), written, of the training attention (tk = t, no padding) from the forward's
    /// o and lse and the output's gradient.
    #[allow(clippy::too_many_arguments)]
    pub fn attn_backward(
        &self,
        s: &AttnShape,
        (q, k, v): (&CudaSlice<f32>, &CudaSlice<f32>, &CudaSlice<f32>),
        o: &CudaSlice<f32>,
        lse: &CudaSlice<f32>,
        dout: &CudaSlice<f32>,
        (dq, dk, dv): (&mut CudaSlice<f32>, &mut CudaSlice<f32>, &mut CudaSlice<f32>),
    ) -> Result<(), CudaError> {
        Self::attn_check(s)?;
        if s.tk != s.t || s.kcap != s.t {
            return Err(CudaError::Internal("attention backward with cached keys".into()));
        }
        let (nq, nk) = (s.b * s.t * s.heads * s.hd, s.b * s.t * s.kv * s.hd);
        for (x, n, what) in
            [(q, nq, "q"), (o, nq, "o"), (dout, nq, "dout"), (k, nk, "k"), (v, nk, "v")]
        {
            check_len(x, n, what)?;
        }
        check_len(dq, nq, "dq")?;
        check_len(dk, nk, "dk")?;
        check_len(dv, nk, "dv")?;
        let mut delta = self.zeros::<f32>(s.b * s.heads * s.t)?;
        let [b, t, h, kv, hd, win] = ints([s.b, s.t, s.heads, s.kv, s.hd, s.window.unwrap_or(0)])?;
        let scale = s.scale;
        let per_query = |shared: usize, ys: usize| LaunchConfig {
            grid_dim: (s.t as u32, ys as u32, s.b as u32),
            block_dim: (ATTN_THREADS, 1, 1),
            shared_mem_bytes: (shared * 4) as u32,
        };
        let nt = ATTN_THREADS as usize;
        let delta_cfg = LaunchConfig { block_dim: (THREADS, 1, 1), ..per_query(0, s.heads) };
        launch!(self, "attn_delta", delta_cfg, o, dout, &mut delta, &b, &t, &h, &hd)?;
        let cfg = per_query(2 * s.hd + nt, s.heads);
        launch!(
            self,
            "attn_backward_dq",
            cfg,
            q,
            k,
            v,
            dout,
            lse,
            &delta,
            dq,
            &b,
            &t,
            &h,
            &kv,
            &hd,
            &scale,
            &win
        )?;
        let cfg = per_query(2 * s.hd + 2 * nt, s.kv);
        launch!(
            self,
            "attn_backward_dkv",
            cfg,
            q,
            k,
            v,
            dout,
            lse,
            &delta,
            dk,
            dv,
            &b,
            &t,
            &h,
            &kv,
            &hd,
            &scale,
            &win
        )
    }

    /// One AdamW step on w with gradient g; m and v are the moments.
    pub fn adamw(
        &self,
        w: &mut CudaSlice<f32>,
        m: &mut CudaSlice<f32>,
        v: &mut CudaSlice<f32>,
        g: &CudaSlice<f32>,
        a: &AdamStep,
    ) -> Result<(), CudaError> {
        let n = w.len();
        for (x, what) in [(&*m, "m"), (&*v, "v"), (g, "g")] {
            check_len(x, n, what)?;
        }
        let ni = n as i64;
        let AdamStep { beta1, beta2, step, bc2_sqrt, eps, shrink } = *a;
        launch!(
            self,
            "adamw",
            grid(n, THREADS),
            w,
            m,
            v,
            g,
            &ni,
            &beta1,
            &beta2,
            &step,
            &bc2_sqrt,
            &eps,
            &shrink
        )
    }

    /// Σ x² in f64, in an order fixed by the launch shape (one term of the global norm).
    pub fn sum_squares(&self, x: &CudaSlice<f32>) -> Result<f64, CudaError> {
        let mut partial = self.zeros::<f64>(SUMSQ_BLOCKS as usize)?;
        let ni = x.len() as i64;
        let cfg = LaunchConfig {
            grid_dim: (SUMSQ_BLOCKS, 1, 1),
            block_dim: (THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        launch!(self, "sum_squares", cfg, x, &ni, &mut partial)?;
        Ok(self.download(&partial)?.iter().sum())
    }

    /// lse (rows) of logits (rows, vocab).
    pub fn row_logsumexp(
        &self,
        logits: &CudaSlice<f32>,
        lse: &mut CudaSlice<f32>,
        vocab: usize,
    ) -> Result<(), CudaError> {
        let rows = lse.len();
        check_len(logits, rows * vocab, "logits")?;
        let (ri, vi) = (int(rows, "rows")?, int(vocab, "vocab")?);
        launch!(self, "row_logsumexp", rows_cfg(rows), logits, lse, &ri, &vi)
    }

    /// dlogits = coeff[r] · (onehot(target[r]) − softmax(logits[r])).
    pub fn logp_grad(
        &self,
        logits: &CudaSlice<f32>,
        lse: &CudaSlice<f32>,
        target: &CudaSlice<u32>,
        coeff: &CudaSlice<f32>,
        dlogits: &mut CudaSlice<f32>,
        vocab: usize,
    ) -> Result<(), CudaError> {
        let rows = lse.len();
        check_len(logits, rows * vocab, "logits")?;
        check_len(dlogits, rows * vocab, "dlogits")?;
        check_len(target, rows, "target")?;
        check_len(coeff, rows, "coeff")?;
        let (ri, vi) = (int(rows, "rows")?, int(vocab, "vocab")?);
        launch!(self, "logp_grad", rows_cfg(rows), logits, lse, target, coeff, dlogits, &ri, &vi)
    }

    /// Row-major y (n, m) = x (n, k) · Wᵀ (W is (m, k), HF's layout) + beta · y. cuBLAS is
    /// column-major: this is yᵀ = W · xᵀ there.
    #[allow(clippy::too_many_arguments)]
    pub fn linear(
        &self,
        x: &CudaSlice<f32>,
        w: &CudaSlice<f32>,
        y: &mut CudaSlice<f32>,
        (n, k, m): (usize, usize, usize),
        beta: f32,
    ) -> Result<(), CudaError> {
        check_len(x, n * k, "linear x")?;
        check_len(w, m * k, "linear w")?;
        check_len(y, n * m, "linear y")?;
        let [n, k, m] = ints([n, k, m])?;
        self.sgemm((Op::CUBLAS_OP_T, Op::CUBLAS_OP_N), (m, n, k), (w, k), (x, k), (y, m), beta)
    }

    /// Row-major dx (n, k) = dy (n, m) · W (m, k) + beta · dx (the input's gradient).
    pub fn linear_dx(
        &self,
        dy: &CudaSlice<f32>,
        w: &CudaSlice<f32>,
        dx: &mut CudaSlice<f32>,
        (n, k, m): (usize, usize, usize),
        beta: f32,
    ) -> Result<(), CudaError> {
        check_len(dy, n * m, "linear_dx dy")?;
        check_len(w, m * k, "linear_dx w")?;
        check_len(dx, n * k, "linear_dx dx")?;
        let [n, k, m] = ints([n, k, m])?;
        self.sgemm((Op::CUBLAS_OP_N, Op::CUBLAS_OP_N), (k, n, m), (w, k), (dy, m), (dx, k), beta)
    }

    /// Row-major dW (m, k) = dyᵀ (m, n) · x (n, k) + beta · dW (the weight's gradient).
    pub fn linear_dw(
        &self,
        x: &CudaSlice<f32>,
        dy: &CudaSlice<f32>,
        dw: &mut CudaSlice<f32>,
        (n, k, m): (usize, usize, usize),
        beta: f32,
    ) -> Result<(), CudaError> {
        check_len(x, n * k, "linear_dw x")?;
        check_len(dy, n * m, "linear_dw dy")?;
        check_len(dw, m * k, "linear_dw dw")?;
        let [n, k, m] = ints([n, k, m])?;
        self.sgemm((Op::CUBLAS_OP_N, Op::CUBLAS_OP_T), (k, m, n), (x, k), (dy, m), (dw, k), beta)
    }

    /// Column-major C (m, n) = op(A) op(B) + beta C, f32 (no TF32: cuBLAS's default math mode).
    #[allow(clippy::type_complexity)]
    fn sgemm(
        &self,
        (transa, transb): (Op, Op),
        (m, n, k): (i32, i32, i32),
        (a, lda): (&CudaSlice<f32>, i32),
        (b, ldb): (&CudaSlice<f32>, i32),
        (c, ldc): (&mut CudaSlice<f32>, i32),
        beta: f32,
    ) -> Result<(), CudaError> {
        let cfg = GemmConfig { transa, transb, m, n, k, alpha: 1.0f32, lda, ldb, beta, ldc };
        // SAFETY: the callers checked every buffer against the extents m, n, k and the leading
        // dimensions describe dense row-major matrices of those extents.
        unsafe { self.blas.gemm(cfg, a, b, c) }?;
        Ok(())
    }
}

/// The activation's code in `elementwise.cu` (0 silu, 1 tanh GELU).
fn act_code(act: Activation) -> i32 {
    match act {
        Activation::Silu => 0,
        Activation::GeluTanh => 1,
    }
}

fn ints<const N: usize>(v: [usize; N]) -> Result<[i32; N], CudaError> {
    let mut out = [0i32; N];
    for (o, x) in out.iter_mut().zip(v) {
        *o = int(x, "a dimension")?;
    }
    Ok(out)
}
