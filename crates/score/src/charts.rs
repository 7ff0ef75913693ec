//! PNG charts of the scores, drawn pixel by pixel (no font: the report's captions name the axes).
//! - depth.png: one bar panel per depth metric (BI, angular n=1, LOO KL, LOO loss increase), x = layer.
//! - heads.png: heatmap, rows = layers (top = 0), columns = heads, colour = importance / layer max.
//! - mlp.png: heatmap, rows = layers, columns = neurons sorted by importance (percentiles), colour =
//!   importance / global max: the distribution per layer.
//! - hidden.png: hidden-channel importance sorted descending, bars.

use crate::{ScoreError, Scores};
use orlik_io::png::Canvas;
use std::path::Path;

/// White -> dark blue.
fn colour(v: f32) -> [u8; 3] {
    let v = if v.is_finite() { v.clamp(0.0, 1.0) } else { 0.0 };
    [(255.0 * (1.0 - v)) as u8, (255.0 * (1.0 - 0.8 * v)) as u8, (255.0 - 100.0 * v) as u8]
}

fn bars(c: &mut Canvas, v: &[f32], y0: usize, height: usize, col: [u8; 3]) {
    let max = v.iter().copied().filter(|x| x.is_finite()).fold(0f32, f32::max).max(1e-12);
    let bw = (c.w / v.len().max(1)).max(1);
    c.rect(0, y0 + height, c.w, y0 + height + 1, [0, 0, 0]); // baseline
    for (i, &x) in v.iter().enumerate() {
        let hgt = ((x.max(0.0) / max) * height as f32) as usize;
        c.rect(i * bw + 1, y0 + height - hgt, (i + 1) * bw - 1, y0 + height, col);
    }
}

fn heatmap(rows: &[Vec<f32>], cell_w: usize, cell_h: usize, per_row_max: bool) -> Canvas {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(1);
    let mut c = Canvas::new(cols * cell_w, rows.len() * cell_h);
    let gmax = rows.iter().flatten().copied().fold(0f32, f32::max).max(1e-12);
    for (r, row) in rows.iter().enumerate() {
        let m =
            if per_row_max { row.iter().copied().fold(0f32, f32::max).max(1e-12) } else { gmax };
        for (j, &x) in row.iter().enumerate() {
            c.rect(j * cell_w, r * cell_h, (j + 1) * cell_w, (r + 1) * cell_h, colour(x / m));
        }
    }
    c
}

pub fn draw(s: &Scores, dir: &Path) -> Result<Vec<&'static str>, ScoreError> {
    let nl = s.bi.len();
    let bw = (600 / nl.max(1)).max(4);
    let mut depth = Canvas::new(bw * nl, 4 * 110);
    let inc: Vec<f32> = s.loo_loss.iter().map(|x| x - s.full_loss).collect();
    let ang = s.angular.first().cloned().unwrap_or_default();
    for (k, (v, col)) in [
        (&s.bi, [31, 119, 180]),
        (&ang, [44, 160, 44]),
        (&s.loo_kl, [214, 39, 40]),
        (&inc, [148, 103, 189]),
    ]
    .into_iter()
    .enumerate()
    {
        if !v.is_empty() {
            bars(&mut depth, v, k * 110 + 5, 100, col);
        }
    }
    depth.save(&dir.join("depth.png"))?;
    heatmap(&s.heads, 24, 12, true).save(&dir.join("heads.png"))?;
    // MLP: each layer's neurons sorted descending, resampled to 200 percentiles
    let pct: Vec<Vec<f32>> = s
        .mlp
        .iter()
        .map(|r| {
            let mut v = r.clone();
            v.sort_by(|a, b| b.partial_cmp(a).unwrap_or(std::cmp::Ordering::Equal));
            // log scale against the layer's median: a few huge activations would hide the rest
            let med = v[v.len() / 2].max(1e-12);
            (0..200).map(|i| (1.0 + v[i * v.len() / 200] / med).ln()).collect()
        })
        .collect();
    heatmap(&pct, 3, 12, true).save(&dir.join("mlp.png"))?;
    let mut hid = s.hidden.clone();
    hid.sort_by(|a, b| b.partial_cmp(a).unwrap_or(std::cmp::Ordering::Equal));
    let mut hc = Canvas::new(hid.len().clamp(200, 1200), 160);
    bars(&mut hc, &hid, 5, 150, [255, 127, 14]);
    hc.save(&dir.join("hidden.png"))?;
    Ok(vec!["depth.png", "heads.png", "mlp.png", "hidden.png"])
}

pub const CAPTIONS: &str = "\
- `depth.png`: four panels, top to bottom: Block Influence, angular distance (n = 1), leave-one-out KL, \
leave-one-out loss increase; x = layer 0 → last, bars scaled to each panel's maximum.
- `heads.png`: rows = layers (layer 0 on top), columns = attention heads; darker = more important \
(scaled per layer).
- `mlp.png`: rows = layers, columns = that layer's neurons sorted from most to least important \
(200 percentiles); darker = more important (log(1 + score / layer median), scaled per layer).
- `hidden.png`: hidden channels sorted from most to least important.
";
