//! A minimal RGB canvas written as PNG (no font: captions live in the report text). Shared by the
//! score charts and the training curves.

use crate::{io_err, IoError};
use std::path::Path;

pub struct Canvas {
    pub w: usize,
    pub h: usize,
    px: Vec<u8>, // RGB
}

impl Canvas {
    pub fn new(w: usize, h: usize) -> Canvas {
        Canvas { w, h, px: vec![255; w * h * 3] }
    }
    pub fn rect(&mut self, x0: usize, y0: usize, x1: usize, y1: usize, c: [u8; 3]) {
        for y in y0.min(self.h)..y1.min(self.h) {
            for x in x0.min(self.w)..x1.min(self.w) {
                let i = (y * self.w + x) * 3;
                self.px[i..i + 3].copy_from_slice(&c);
            }
        }
    }
    /// A 2-pixel line from (x0, y0) to (x1, y1), in pixel coordinates.
    pub fn line(&mut self, (x0, y0): (f64, f64), (x1, y1): (f64, f64), c: [u8; 3]) {
        let n = ((x1 - x0).abs().max((y1 - y0).abs()).ceil() as usize).max(1);
        for i in 0..=n {
            let f = i as f64 / n as f64;
            let (x, y) = (x0 + (x1 - x0) * f, y0 + (y1 - y0) * f);
            if x >= 0.0 && y >= 0.0 {
                self.rect(x as usize, y as usize, x as usize + 2, y as usize + 2, c);
            }
        }
    }
    pub fn save(&self, path: &Path) -> Result<(), IoError> {
        let err = |e: String| IoError::Format { path: path.into(), msg: e };
        let f = std::fs::File::create(path).map_err(io_err(path))?;
        let mut enc = png::Encoder::new(std::io::BufWriter::new(f), self.w as u32, self.h as u32);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        let mut wr = enc.write_header().map_err(|e| err(e.to_string()))?;
        wr.write_image_data(&self.px).map_err(|e| err(e.to_string()))?;
        Ok(())
    }
}

/// Series colours in order, and their names for captions.
pub const PALETTE: [[u8; 3]; 6] =
    [[31, 119, 180], [214, 39, 40], [44, 160, 44], [148, 103, 189], [255, 127, 14], [23, 190, 207]];
pub const COLOUR_NAMES: [&str; 6] = ["blue", "red", "green", "purple", "orange", "cyan"];

/// Line chart of several series (x, y) sharing axes, with light grid lines at y quartiles;
/// `log_y` plots log10(y). Colours cycle through a fixed palette in series order.
pub fn line_chart(series: &[Vec<(f64, f64)>], w: usize, h: usize, log_y: bool) -> Canvas {
    let mut c = Canvas::new(w, h);
    let ty = |y: f64| if log_y { y.max(1e-12).log10() } else { y };
    let pts: Vec<(f64, f64)> =
        series.iter().flatten().filter(|p| p.1.is_finite()).map(|&(x, y)| (x, ty(y))).collect();
    if pts.is_empty() {
        return c;
    }
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in &pts {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    if x1 <= x0 {
        x1 = x0 + 1.0;
    }
    if y1 <= y0 {
        y1 = y0 + 1.0;
    }
    let m = 20.0;
    let px = |x: f64| m + (x - x0) / (x1 - x0) * (w as f64 - 2.0 * m);
    let py = |y: f64| h as f64 - m - (y - y0) / (y1 - y0) * (h as f64 - 2.0 * m);
    for q in 0..=4 {
        let y = py(y0 + (y1 - y0) * q as f64 / 4.0) as usize;
        c.rect(m as usize, y, w - m as usize, y + 1, [220, 220, 220]);
    }
    c.rect(m as usize, h - m as usize, w - m as usize, h - m as usize + 1, [0, 0, 0]);
    c.rect(m as usize - 1, m as usize, m as usize, h - m as usize, [0, 0, 0]);
    for (i, s) in series.iter().enumerate() {
        let col = PALETTE[i % PALETTE.len()];
        let s: Vec<(f64, f64)> =
            s.iter().filter(|p| p.1.is_finite()).map(|&(x, y)| (px(x), py(ty(y)))).collect();
        for pair in s.windows(2) {
            c.line(pair[0], pair[1], col);
        }
        if s.len() == 1 {
            // a lone point (e.g. one model on a quality-vs-size chart): an 8-pixel square
            let (x, y) = ((s[0].0 as usize).saturating_sub(4), (s[0].1 as usize).saturating_sub(4));
            c.rect(x, y, x + 8, y + 8, col);
        }
    }
    c
}

/// Grouped bar chart from zero: one group per measurement, one bar per series in palette order
/// (`groups[g][s]`); each group is scaled to its own largest bar, so groups of different units
/// (tokens/s of prefill and of decode) can stand side by side and the chart shows ratios.
pub fn bar_chart(groups: &[Vec<f64>], w: usize, h: usize) -> Canvas {
    let mut c = Canvas::new(w, h);
    let m = 20usize;
    c.rect(m, h - m, w - m, h - m + 1, [0, 0, 0]);
    if groups.is_empty() {
        return c;
    }
    let gw = (w - 2 * m) / groups.len();
    for (g, vals) in groups.iter().enumerate() {
        let top = vals.iter().copied().filter(|v| v.is_finite()).fold(0.0f64, f64::max);
        if top <= 0.0 || vals.is_empty() {
            continue;
        }
        let bw = (gw * 3 / 4) / vals.len();
        for (s, &v) in vals.iter().enumerate() {
            if !(v.is_finite() && v > 0.0) {
                continue;
            }
            let x0 = m + g * gw + gw / 8 + s * bw;
            let bh = ((h - 2 * m) as f64 * v / top) as usize;
            c.rect(
                x0,
                h - m - bh,
                x0 + bw.saturating_sub(2).max(1),
                h - m,
                PALETTE[s % PALETTE.len()],
            );
        }
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bar_heights_are_proportional_within_a_group() {
        let c = bar_chart(&[vec![1.0, 0.5]], 120, 120);
        // column of the middle of each bar: count coloured pixels
        let count = |x: usize, col: [u8; 3]| {
            (0..120).filter(|&y| c.px[(y * 120 + x) * 3..(y * 120 + x) * 3 + 3] == col).count()
        };
        let bw = (80 * 3 / 4) / 2;
        let (a, b) =
            (count(20 + 10 + bw / 2, PALETTE[0]), count(20 + 10 + bw + bw / 2, PALETTE[1]));
        assert_eq!(a, 80);
        assert_eq!(b, 40);
    }
}
