//! Matrix-product throughput of this machine, side by side in one run (alternating rounds,
//! medians): the f32 gemm the executors use, and f32 activations × bf16 / f16 weights
//! (`cpu::mixed`), at the shapes of a decoder's prefill (many rows) and decode (one row).
//!
//!   cargo run --release -p orlik-model --example gemm_speed [-- ROUNDS]
//!
//! Prints GFLOP/s (2·n·k·out per product) and, for decode, the weight bytes streamed per second,
//! with each 16-bit path's ratio to f32 (the gemm library), and at few rows the four-row f32 dot
//! product a frozen f32 model runs there instead (`gemv_f32_t`), and the bf16 product widened on
//! AVX2 (`ORLIK_CPU_KERNEL=avx2`, the other path where the first is AVX-512 BF16). The speed scripts
//! quote the f32 prefill figure as the machine's limit when they report MFU.
//!
//! It runs on one of rayon's workers, as `orlik` does: called from outside the pool, every
//! product would pay a sleep and a wake-up, which dominated the decode shapes' figures before.

use orlik_model::cpu::kernels::{gemm, Par, View};
use orlik_model::cpu::mixed::{gemv_f32_t, matmul_t, Half, Path, GEMV_ROWS};
use std::time::Instant;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    // On a worker, as the CLI's commands run (`on_worker` in crates/cli/src/main.rs).
    rayon::scope(|_| run());
}

fn run() {
    let rounds: usize = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(5);
    let path = Path::detect();
    println!(
        "kernel path: {} ({} threads), {rounds} rounds",
        path.name(),
        rayon::current_num_threads()
    );
    println!(
        "{:<28} {:>12} {:>12} {:>12} {:>8} {:>8} {:>12} {:>12}",
        "shape (n × k → out)", "f32", "bf16", "f16", "bf16/f32", "f16/f32", "f32 dot", "bf16 avx2"
    );
    let wide = Path::Avx2.available();
    let mut peak = 0f64; // the best f32 GFLOP/s at a prefill shape: the speed scripts' MFU base
                         // (n, k, out): SmolLM2's lm_head and fused gate/up at 512 rows and at one row.
    for &(n, k, out) in &[
        (512, 576, 49152),
        (512, 576, 3072),
        (512, 1536, 576),
        (1, 576, 49152),
        (1, 576, 3072),
        (4, 576, 3072),
        (1, 640, 2048),
        (1, 2048, 640),
    ] {
        let x: Vec<f32> = (0..n * k).map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5).collect();
        let w32: Vec<f32> =
            (0..out * k).map(|i| ((i * 104729) % 1000) as f32 / 1000.0 - 0.5).collect();
        let wb: Vec<u16> = w32.iter().map(|&v| half::bf16::from_f32(v).to_bits()).collect();
        let wh: Vec<u16> = w32.iter().map(|&v| half::f16::from_f32(v).to_bits()).collect();
        let mut t = [Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new()];
        for r in 0..rounds + 1 {
            // A fresh output each time, as candle's matmul and `matmul_t` allocate one.
            let s = Instant::now();
            let mut y = vec![0f32; n * out];
            gemm(&mut y, out, n, out, k, View::rows(&x, k), View::t(&w32, k), false, 1.0, Par::All);
            std::hint::black_box(&y);
            let a = s.elapsed().as_secs_f64();
            let s = Instant::now();
            std::hint::black_box(matmul_t(&x, n, k, &wb, Half::Bf16, out, path));
            let b = s.elapsed().as_secs_f64();
            let s = Instant::now();
            std::hint::black_box(matmul_t(&x, n, k, &wh, Half::F16, out, path));
            let c = s.elapsed().as_secs_f64();
            // What a frozen f32 model runs at few rows instead of the gemm library.
            let s = Instant::now();
            if n <= GEMV_ROWS {
                std::hint::black_box(gemv_f32_t(&x, n, k, &w32, out));
            }
            let d = s.elapsed().as_secs_f64();
            let s = Instant::now();
            if n <= GEMV_ROWS && wide {
                std::hint::black_box(matmul_t(&x, n, k, &wb, Half::Bf16, out, Path::Avx2));
            }
            let e = s.elapsed().as_secs_f64();
            if r > 0 {
                t[0].push(a);
                t[1].push(b);
                t[2].push(c);
                t[3].push(d);
                t[4].push(e);
            }
        }
        let [a, b, c, d, e] = t.map(median);
        let flops = 2.0 * (n * k * out) as f64;
        if n > 8 {
            peak = peak.max(flops / a / 1e9);
        }
        let cell = |s: f64, bytes: f64| {
            if n <= 8 {
                format!("{:.1} GB/s", bytes / s / 1e9)
            } else {
                format!("{:.1} GF/s", flops / s / 1e9)
            }
        };
        let wbytes = (out * k) as f64;
        let dot = if n <= GEMV_ROWS { cell(d, 4.0 * wbytes) } else { "-".into() };
        let vdp = if n <= GEMV_ROWS && wide { cell(e, 2.0 * wbytes) } else { "-".into() };
        println!(
            "{:<28} {:>12} {:>12} {:>12} {:>8.2} {:>8.2} {:>12} {:>12}",
            format!("{n} × {k} → {out}"),
            cell(a, 4.0 * wbytes),
            cell(b, 2.0 * wbytes),
            cell(c, 2.0 * wbytes),
            a / b,
            a / c,
            dot,
            vdp
        );
    }
    println!("f32 peak GF/s {peak:.1}");
}
