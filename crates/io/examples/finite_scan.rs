//! Cost of the non-finite check that every checkpoint load runs, side by side with the cheapest
//! possible pass over the same mapped bytes (a wrapping byte sum), in alternating rounds.
//!
//!     cargo run --release -p orlik-io --example finite_scan -- MODEL_DIR [ROUNDS]
//!
//! (`python3 scripts/gen_synthetic_7b.py DIR` writes a 14.5 GB Mistral-7B-shaped bf16 checkpoint.)

use orlik_io::safetensors::Checkpoint;
use std::time::Instant;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let Some(dir) = args.get(1) else {
        eprintln!("usage: finite_scan MODEL_DIR [ROUNDS]");
        std::process::exit(1);
    };
    let rounds: usize = args.get(2).and_then(|r| r.parse().ok()).unwrap_or(3);
    let ck = match Checkpoint::open(std::path::Path::new(dir)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    };
    let gb = ck.bytes_on_disk() as f64 / 1e9;
    let names: Vec<String> = ck.infos().map(|t| t.name.clone()).collect();
    let (mut scan, mut sum) = (Vec::new(), Vec::new());
    for r in 0..rounds {
        let t = Instant::now();
        if let Err(e) = ck.check_finite() {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
        scan.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        let mut acc = 0u64;
        for n in &names {
            let x = ck.tensor(n).and_then(|t| {
                t.flatten_all()
                    .map_err(|e| orlik_io::IoError::Candle { context: n.clone(), source: e })
            });
            // read through the raw buffer: candle's from_raw_buffer copies it, so this is a full pass
            if let Ok(x) = x {
                acc = acc.wrapping_add(x.elem_count() as u64);
            }
            ck.release(n);
        }
        sum.push(t.elapsed().as_secs_f64());
        println!("round {r}: non-finite scan {:.2} s ({:.1} GB/s), plain copy of every tensor {:.2} s [{acc}]", scan[r], gb / scan[r], sum[r]);
    }
    let med = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    let (s, c) = (med(&mut scan), med(&mut sum));
    println!(
        "{gb:.2} GB: median scan {s:.2} s ({:.1} GB/s), median copy {c:.2} s, scan / copy = {:.2}",
        gb / s,
        s / c
    );
}
