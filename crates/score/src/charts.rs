//! Charts of the scores (`orlik_plot`: axes, ticks, titles, colour scales in the image; each as
//! PNG and SVG):
//! - depth.png: one bar panel per depth metric (Block Influence, angular distance n = 1,
//!   leave-one-out KL, leave-one-out loss increase), x = layer;
//! - heads.png: heatmap, rows = layers (layer 0 on top), columns = heads, colour = importance
//!   as a fraction of the layer's most important head;
//! - mlp.png: heatmap, rows = layers, columns = that layer's neurons sorted from most to least
//!   important (200 percentiles), colour = log(1 + score / layer median);
//! - hidden.png: hidden-channel importance sorted descending.

use crate::{ScoreError, Scores};
use orlik_plot::{Bars, Heatmap};
use std::path::Path;

fn per_layer(title: &str, y_label: &str, v: &[f32]) -> Bars {
    Bars {
        title: title.into(),
        x_label: "layer".into(),
        y_label: y_label.into(),
        categories: (0..v.len()).map(|l| l.to_string()).collect(),
        series: vec![(title.into(), v.iter().map(|&x| x as f64).collect())],
        values_on_bars: false,
    }
}

fn sorted_desc(v: &[f32]) -> Vec<f32> {
    let mut v = v.to_vec();
    v.sort_by(|a, b| b.partial_cmp(a).unwrap_or(std::cmp::Ordering::Equal));
    v
}

pub fn draw(s: &Scores, dir: &Path) -> Result<Vec<&'static str>, ScoreError> {
    let inc: Vec<f32> = s.loo_loss.iter().map(|x| x - s.full_loss).collect();
    let ang = s.angular.first().cloned().unwrap_or_default();
    let panels: Vec<Bars> = [
        ("Block Influence (1 − cos(in, out))", "BI", &s.bi),
        ("Angular distance, one layer (arccos(cos) / π)", "distance", &ang),
        ("Leave-one-out KL(full ‖ without layer)", "nats / token", &s.loo_kl),
        ("Leave-one-out loss increase", "nats / token", &inc),
    ]
    .into_iter()
    .filter(|(_, _, v)| !v.is_empty())
    .map(|(t, y, v)| per_layer(t, y, v))
    .collect();
    Bars::save_panels(&panels, &dir.join("depth.png"))?;
    let heads: Vec<Vec<f64>> = s
        .heads
        .iter()
        .map(|r| {
            let m = r.iter().copied().fold(0f32, f32::max).max(1e-12);
            r.iter().map(|&x| (x / m) as f64).collect()
        })
        .collect();
    Heatmap {
        title: "Attention-head importance".into(),
        x_label: "head".into(),
        y_label: "layer".into(),
        rows: heads,
        scale_label: "importance / layer's largest".into(),
    }
    .save(&dir.join("heads.png"))?;
    // MLP: each layer's neurons sorted descending, resampled to 200 percentiles; log scale
    // against the layer's median, since a few huge activations would hide the rest.
    let pct: Vec<Vec<f64>> = s
        .mlp
        .iter()
        .map(|r| {
            let v = sorted_desc(r);
            let med = v.get(v.len() / 2).copied().unwrap_or(0.0).max(1e-12);
            (0..200).map(|i| (1.0 + v[i * v.len() / 200] / med).ln() as f64).collect()
        })
        .filter(|r: &Vec<f64>| !r.is_empty())
        .collect();
    Heatmap {
        title: "MLP neuron importance, each layer sorted (200 percentiles)".into(),
        x_label: "neurons sorted, most important first (one column = half a percentile)".into(),
        y_label: "layer".into(),
        rows: pct,
        scale_label: "ln(1 + score / layer median)".into(),
    }
    .save(&dir.join("mlp.png"))?;
    let hid = sorted_desc(&s.hidden);
    // one bar per channel would be unreadable for thousands: 100 quantiles
    let n = hid.len().clamp(1, 100);
    let q: Vec<f64> =
        (0..n).map(|i| hid.get(i * hid.len() / n).copied().unwrap_or(0.0) as f64).collect();
    Bars {
        title: "Hidden-channel importance, sorted".into(),
        x_label: format!("channel rank (of {}), in {} quantiles", hid.len(), n),
        y_label: "importance".into(),
        categories: (0..n).map(|i| (i * hid.len() / n).to_string()).collect(),
        series: vec![("hidden".into(), q)],
        values_on_bars: false,
    }
    .save(&dir.join("hidden.png"))?;
    Ok(vec!["depth.png", "heads.png", "mlp.png", "hidden.png"])
}

pub const CAPTIONS: &str = "\
Each chart is also written as SVG beside its PNG (depth.svg, heads.svg, mlp.svg, hidden.svg).
- `depth.png`: one panel per depth metric, x = layer: Block Influence, angular distance (n = 1), \
leave-one-out KL, leave-one-out loss increase.
- `heads.png`: rows = layers (layer 0 on top), columns = attention heads; darker = more important \
(scaled per layer).
- `mlp.png`: rows = layers, columns = that layer's neurons sorted from most to least important \
(200 percentiles); darker = more important.
- `hidden.png`: hidden channels sorted from most to least important.
";
