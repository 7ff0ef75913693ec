//! Causal attention of the flat-buffer training executor, forward + backward, against the same
//! work done densely (every (query, key) pair, the masked half included), side by side in one
//! run (alternating rounds, medians).
//!
//!   cargo run --release -p orlik-model --example attention_speed [-- ROUNDS]
//!
//! Prints milliseconds per call for SmolLM2's shape (9 heads over 3, head_dim 64) at several
//! window lengths: blocks of 32 to 256 query rows (the kernels' QUERY_BLOCK is marked) and
//! dense (one block of t rows), and each block size's speed-up over dense.

use orlik_model::cpu::attention::{backward_blocked, forward_blocked, Shape, QUERY_BLOCK};
use std::time::Instant;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let rounds: usize = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(5);
    println!(
        "{rounds} rounds, {} threads; ms per forward + backward",
        rayon::current_num_threads()
    );
    for &(b, t) in &[(4, 256), (2, 512), (1, 1024), (1, 2048)] {
        let s = Shape { b, t, heads: 9, kv: 3, hd: 64, scale: 0.125, window: None };
        let gen =
            |n: usize, f: f32| -> Vec<f32> { (0..n).map(|i| ((i as f32) * f).sin()).collect() };
        let (q, k, v) = (gen(b * t * 576, 0.37), gen(b * t * 192, 0.91), gen(b * t * 192, 1.3));
        let dout = gen(b * t * 576, 0.53);
        let sizes = [32, 64, 128, 256, t]; // the last: dense
        let mut ms = vec![Vec::new(); sizes.len()];
        for r in 0..rounds + 1 {
            for (i, &qb) in sizes.iter().enumerate() {
                let st = Instant::now();
                let (o, lse) = forward_blocked(&s, &q, &k, &v, qb);
                std::hint::black_box((&o, backward_blocked(&s, &q, &k, &v, &lse, &dout, qb)));
                if r > 0 {
                    ms[i].push(st.elapsed().as_secs_f64() * 1e3);
                }
            }
        }
        let ms: Vec<f64> = ms.into_iter().map(median).collect();
        let dense = ms[sizes.len() - 1];
        let cells: Vec<String> = sizes[..sizes.len() - 1]
            .iter()
            .zip(&ms)
            .map(|(qb, m)| {
                let mark = if *qb == QUERY_BLOCK { "*" } else { "" };
                format!("{qb}{mark}: {m:.1} ({:.2}×)", dense / m)
            })
            .collect();
        println!("{:<10} dense {dense:>7.1}   {}", format!("{b} × {t}"), cells.join("   "));
    }
}
