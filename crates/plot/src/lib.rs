//! Every chart orlik draws, with `plotters`: titles, axis labels with units, tick values, legends
//! and value labels drawn in the image. Each chart is written twice: `NAME.png` for the report
//! (text rendered with DejaVu Sans from the `dejavu` crate, so nothing depends on the machine's
//! fonts and no font file is committed) and `NAME.svg` beside it (text as SVG text).
//!
//! Four kinds cover the charts: [`Lines`] (training curves, quality vs parameters with labelled
//! points and a reference line), [`Bars`] (speed with values, per-layer metrics in panels),
//! [`Heatmap`] (head and MLP importance, with a colour scale).

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use std::path::{Path, PathBuf};
use std::sync::Once;

#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    #[error("{path}: {msg}")]
    Draw { path: PathBuf, msg: String },
    #[error("{path}: {source}")]
    File { path: PathBuf, source: std::io::Error },
}

/// The palette (matplotlib's tab10): series i gets colour i.
pub const PALETTE: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(255, 127, 14),
    RGBColor(140, 86, 75),
];

const FONT: &str = "sans-serif";

fn register_font() {
    static ONCE: Once = Once::new();
    // DejaVu Sans is a valid TrueType font; were registration to fail, text would be missing
    // from the PNG (the SVG keeps it), never a crash.
    ONCE.call_once(|| {
        let _ = plotters::style::register_font(FONT, FontStyle::Normal, dejavu::sans::regular());
    });
}

/// How a series is drawn.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Mark {
    Line,
    /// Points, each with its label (`Series::labels`) drawn beside it.
    Points,
}

#[derive(Debug, Clone)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
    pub mark: Mark,
    /// One label per point (for `Mark::Points`).
    pub labels: Vec<String>,
}

impl Series {
    pub fn line(name: impl Into<String>, points: Vec<(f64, f64)>) -> Series {
        Series { name: name.into(), points, mark: Mark::Line, labels: Vec::new() }
    }
}

/// Series of (x, y) points on shared axes; an optional horizontal reference line.
#[derive(Debug, Clone, Default)]
pub struct Lines {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub series: Vec<Series>,
    /// (label, y): a dashed horizontal line across the chart (e.g. the teacher's value).
    pub reference: Option<(String, f64)>,
}

/// Grouped bars: one group per category on x, one bar per series in each, values on top.
#[derive(Debug, Clone, Default)]
pub struct Bars {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub categories: Vec<String>,
    /// (name, one value per category); a non-finite value draws no bar.
    pub series: Vec<(String, Vec<f64>)>,
    pub values_on_bars: bool,
}

/// A matrix of values as colours (rows top to bottom), with a colour scale.
#[derive(Debug, Clone, Default)]
pub struct Heatmap {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub rows: Vec<Vec<f64>>,
    /// What the colour means (the scale's label).
    pub scale_label: String,
}

/// White → dark blue for v in [0, 1].
fn blue(v: f64) -> RGBColor {
    let v = if v.is_finite() { v.clamp(0.0, 1.0) } else { 0.0 };
    RGBColor((255.0 * (1.0 - v)) as u8, (255.0 * (1.0 - 0.8 * v)) as u8, (255.0 - 100.0 * v) as u8)
}

/// The (low, high) of finite values, widened a little so that nothing sits on the frame.
fn range(vals: impl Iterator<Item = f64>, from_zero: bool) -> (f64, f64) {
    let (mut lo, mut hi) = vals
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| (a.min(v), b.max(v)));
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    if from_zero {
        lo = lo.min(0.0);
    }
    if hi - lo < 1e-12 {
        hi = lo + 1.0;
    }
    let pad = 0.05 * (hi - lo);
    (if from_zero && lo >= 0.0 { lo } else { lo - pad }, hi + pad)
}

fn err<E: std::fmt::Debug>(path: &Path) -> impl Fn(E) -> PlotError + '_ {
    move |e| PlotError::Draw { path: path.to_path_buf(), msg: format!("{e:?}") }
}

/// A chart that can draw itself on any plotters backend.
trait Draw {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<(), String>;
}

/// Draw `c` into `path` (PNG) and the same path with `.svg`, both (w × h) pixels.
fn render(path: &Path, (w, h): (u32, u32), c: &impl Draw) -> Result<(), PlotError> {
    register_font();
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (w, h)).into_drawing_area();
        root.fill(&WHITE).map_err(err(path))?;
        c.draw(&root).map_err(err(path))?;
        root.present().map_err(err(path))?;
    }
    let mut px = vec![255u8; (w * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut px, (w, h)).into_drawing_area();
        c.draw(&root).map_err(err(path))?;
        root.present().map_err(err(path))?;
    }
    write_png(path, w, h, &px)?;
    write_file(&path.with_extension("svg"), svg.as_bytes())
}

/// Write through a temporary file and a rename, so that a chart is never half written.
fn write_file(path: &Path, bytes: &[u8]) -> Result<(), PlotError> {
    let file_err = |p: &Path| {
        let p = p.to_path_buf();
        move |source| PlotError::File { path: p, source }
    };
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp{}", std::process::id()));
    std::fs::write(&tmp, bytes).map_err(file_err(&tmp))?;
    std::fs::rename(&tmp, path).map_err(file_err(path))
}

fn write_png(path: &Path, w: u32, h: u32, px: &[u8]) -> Result<(), PlotError> {
    let mut bytes = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut bytes, w, h);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        let mut wr = enc.write_header().map_err(err(path))?;
        wr.write_image_data(px).map_err(err(path))?;
    }
    write_file(path, &bytes)
}

fn s<E: std::fmt::Debug>(e: E) -> String {
    format!("{e:?}")
}

impl Lines {
    /// Write `path` (PNG) and its `.svg`.
    pub fn save(&self, path: &Path) -> Result<(), PlotError> {
        render(path, (900, 480), self)
    }
}

impl Draw for Lines {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<(), String> {
        let pts = || self.series.iter().flat_map(|s| s.points.iter());
        let (mut x0, mut x1) = range(pts().map(|p| p.0), false);
        if self.series.iter().any(|s| s.mark == Mark::Points) {
            // room for the points' labels on both sides
            let w = x1 - x0;
            (x0, x1) = (x0 - 0.1 * w, x1 + 0.15 * w);
        }
        let refy = self.reference.iter().map(|r| r.1);
        let (y0, y1) = range(pts().map(|p| p.1).chain(refy), false);
        let mut ch = ChartBuilder::on(root)
            .caption(&self.title, (FONT, 22))
            .margin(12)
            .x_label_area_size(45)
            .y_label_area_size(70)
            .build_cartesian_2d(x0..x1, y0..y1)
            .map_err(s)?;
        ch.configure_mesh()
            .x_desc(&self.x_label)
            .y_desc(&self.y_label)
            .label_style((FONT, 14))
            .axis_desc_style((FONT, 16))
            .light_line_style(RGBColor(235, 235, 235))
            .draw()
            .map_err(s)?;
        for (i, se) in self.series.iter().enumerate() {
            let c = PALETTE[i % PALETTE.len()];
            let finite: Vec<(f64, f64)> =
                se.points.iter().copied().filter(|p| p.0.is_finite() && p.1.is_finite()).collect();
            match se.mark {
                Mark::Line => ch
                    .draw_series(LineSeries::new(finite, c.stroke_width(2)))
                    .map_err(s)?
                    .label(&se.name)
                    .legend(move |(x, y)| {
                        PathElement::new([(x, y), (x + 18, y)], c.stroke_width(2))
                    }),
                Mark::Points => {
                    let none = String::new();
                    let labels = se.labels.iter().chain(std::iter::repeat(&none));
                    ch.draw_series(finite.iter().zip(labels).map(|(&p, l)| {
                        EmptyElement::at(p)
                            + Circle::new((0, 0), 6, c.filled())
                            + Text::new(l.clone(), (9, -16), (FONT, 15))
                    }))
                    .map_err(s)?
                    .label(&se.name)
                    .legend(move |(x, y)| Circle::new((x + 9, y), 5, c.filled()))
                }
            };
        }
        if let Some((label, y)) = &self.reference {
            let dash = DashedLineSeries::new([(x0, *y), (x1, *y)], 8, 5, BLACK.stroke_width(1));
            ch.draw_series(dash)
                .map_err(s)?
                .label(label)
                .legend(|(x, y)| PathElement::new([(x, y), (x + 18, y)], BLACK));
        }
        ch.configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.85))
            .border_style(RGBColor(180, 180, 180))
            .label_font((FONT, 14))
            .draw()
            .map_err(s)?;
        Ok(())
    }
}

struct Panels<'a>(&'a [Bars]);

impl Draw for Panels<'_> {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<(), String> {
        for (b, area) in self.0.iter().zip(root.split_evenly((self.0.len().max(1), 1))) {
            b.draw(&area)?;
        }
        Ok(())
    }
}

impl Bars {
    /// Write `path` (PNG) and its `.svg`.
    pub fn save(&self, path: &Path) -> Result<(), PlotError> {
        render(path, (900, 480), self)
    }

    /// Several bar charts stacked in one image (one panel each, e.g. per-layer depth metrics).
    pub fn save_panels(panels: &[Bars], path: &Path) -> Result<(), PlotError> {
        render(path, (900, 260 * panels.len().max(1) as u32), &Panels(panels))
    }
}

impl Draw for Bars {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<(), String> {
        let n = self.categories.len().max(1);
        let k = self.series.len().max(1);
        let (y0, y1) = range(self.series.iter().flat_map(|s| s.1.iter().copied()), true);
        let y1 = y1 + if self.values_on_bars { 0.08 * (y1 - y0) } else { 0.0 };
        let mut ch = ChartBuilder::on(root)
            .caption(&self.title, (FONT, 20))
            .margin(10)
            .x_label_area_size(45)
            .y_label_area_size(70)
            .build_cartesian_2d(0f64..n as f64, y0..y1)
            .map_err(s)?;
        ch.configure_mesh()
            .disable_x_mesh()
            .x_labels(0)
            .x_desc(&self.x_label)
            .y_desc(&self.y_label)
            .label_style((FONT, 13))
            .axis_desc_style((FONT, 15))
            .light_line_style(RGBColor(235, 235, 235))
            .draw()
            .map_err(s)?;
        // Category names under their groups (at most ~40 shown: every m-th on long axes), placed
        // in pixels below the axis, outside the plotting area.
        let every = n.div_ceil(40);
        let base = root.get_base_pixel();
        for (i, cat) in self.categories.iter().enumerate().step_by(every) {
            let (px, py) = ch.backend_coord(&(i as f64 + 0.5, y0));
            let style =
                TextStyle::from((FONT, 13).into_font()).pos(Pos::new(HPos::Center, VPos::Top));
            root.draw(&Text::new(cat.clone(), (px - base.0, py - base.1 + 6), style)).map_err(s)?;
        }
        let width = 0.8 / k as f64;
        for (j, (name, vals)) in self.series.iter().enumerate() {
            let c = PALETTE[j % PALETTE.len()];
            let rects = vals.iter().enumerate().filter(|(_, v)| v.is_finite()).map(|(i, &v)| {
                let x = i as f64 + 0.1 + j as f64 * width;
                Rectangle::new([(x, 0.0f64.max(y0)), (x + width * 0.95, v)], c.filled())
            });
            let drawn = ch.draw_series(rects).map_err(s)?;
            if self.series.len() > 1 {
                drawn.label(name).legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 12, y + 5)], c.filled())
                });
            }
            if self.values_on_bars {
                let texts =
                    vals.iter().enumerate().filter(|(_, v)| v.is_finite()).map(|(i, &v)| {
                        let x = i as f64 + 0.1 + j as f64 * width;
                        let st = TextStyle::from((FONT, 13).into_font())
                            .pos(Pos::new(HPos::Center, VPos::Bottom));
                        Text::new(format!("{v:.1}"), (x + width * 0.475, v + 0.01 * (y1 - y0)), st)
                    });
                ch.draw_series(texts).map_err(s)?;
            }
        }
        if self.series.len() > 1 {
            ch.configure_series_labels()
                .position(SeriesLabelPosition::UpperRight)
                .background_style(WHITE.mix(0.85))
                .border_style(RGBColor(180, 180, 180))
                .label_font((FONT, 14))
                .draw()
                .map_err(s)?;
        }
        Ok(())
    }
}

impl Heatmap {
    /// Write `path` (PNG) and its `.svg`. Colours scale from 0 to the largest value.
    pub fn save(&self, path: &Path) -> Result<(), PlotError> {
        render(path, (900, 520), self)
    }
}

impl Draw for Heatmap {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<(), String> {
        let nr = self.rows.len().max(1);
        let nc = self.rows.iter().map(Vec::len).max().unwrap_or(1).max(1);
        let max = self.rows.iter().flatten().copied().filter(|v| v.is_finite()).fold(0.0, f64::max);
        let max = if max > 0.0 { max } else { 1.0 };
        let (main, scale) = root.split_horizontally(800);
        // y runs from nr (top) down to 0, so that row 0 is drawn on top
        let mut ch = ChartBuilder::on(&main)
            .caption(&self.title, (FONT, 20))
            .margin(10)
            .x_label_area_size(45)
            .y_label_area_size(60)
            .build_cartesian_2d(0.0..nc as f64, nr as f64..0.0)
            .map_err(s)?;
        ch.configure_mesh()
            .disable_mesh()
            .x_labels(0)
            .y_labels(0)
            .x_desc(&self.x_label)
            .y_desc(&self.y_label)
            .axis_desc_style((FONT, 15))
            .draw()
            .map_err(s)?;
        let cells = self.rows.iter().enumerate().flat_map(|(r, row)| {
            row.iter().enumerate().map(move |(c, &v)| {
                let (x, y) = (c as f64, r as f64);
                Rectangle::new([(x, y), (x + 1.0, y + 1.0)], blue(v / max).filled())
            })
        });
        ch.draw_series(cells).map_err(s)?;
        // row and column numbers at the cells' centres (every m-th on long axes)
        let base = main.get_base_pixel();
        let font = || TextStyle::from((FONT, 13).into_font());
        for r in (0..nr).step_by(nr.div_ceil(25)) {
            let (px, py) = ch.backend_coord(&(0.0, r as f64 + 0.5));
            let st = font().pos(Pos::new(HPos::Right, VPos::Center));
            main.draw(&Text::new(r.to_string(), (px - base.0 - 6, py - base.1), st)).map_err(s)?;
        }
        for c in (0..nc).step_by(nc.div_ceil(20)) {
            let (px, py) = ch.backend_coord(&(c as f64 + 0.5, 0.0));
            let py = ch.backend_coord(&(0.0, nr as f64)).1.max(py);
            let st = font().pos(Pos::new(HPos::Center, VPos::Top));
            main.draw(&Text::new(c.to_string(), (px - base.0, py - base.1 + 6), st)).map_err(s)?;
        }
        // the colour scale: 0 .. max, with its label
        let mut sc = ChartBuilder::on(&scale)
            .margin_top(40)
            .margin_bottom(55)
            .margin_right(5)
            .y_label_area_size(45)
            .build_cartesian_2d(0.0..1.0, 0.0..max)
            .map_err(s)?;
        sc.configure_mesh()
            .disable_mesh()
            .disable_x_axis()
            .y_desc(&self.scale_label)
            .label_style((FONT, 12))
            .axis_desc_style((FONT, 13))
            .draw()
            .map_err(s)?;
        let steps = 64;
        sc.draw_series((0..steps).map(|i| {
            let (a, b) = (max * i as f64 / steps as f64, max * (i + 1) as f64 / steps as f64);
            Rectangle::new([(0.0, a), (1.0, b)], blue(a / max).filled())
        }))
        .map_err(s)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png_size(p: &Path) -> (u32, u32) {
        let dec = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(p).unwrap()));
        let r = dec.read_info().unwrap();
        (r.info().width, r.info().height)
    }

    /// Pixels that are neither white nor a series colour: text and axes.
    fn dark_pixels(p: &Path) -> usize {
        let dec = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(p).unwrap()));
        let mut r = dec.read_info().unwrap();
        let mut buf = vec![0; r.output_buffer_size().unwrap()];
        r.next_frame(&mut buf).unwrap();
        buf.chunks(3).filter(|c| c[0] < 80 && c[1] < 80 && c[2] < 80).count()
    }

    #[test]
    fn every_kind_writes_a_png_with_text_and_an_svg_with_the_same_labels() {
        let dir = tempfile::tempdir().unwrap();
        let lines = Lines {
            title: "loss".into(),
            x_label: "step".into(),
            y_label: "loss (nats/token)".into(),
            series: vec![
                Series::line("train", vec![(1.0, 3.0), (2.0, 2.5), (3.0, 2.2)]),
                Series {
                    name: "models".into(),
                    points: vec![(90.0, 2.9)],
                    mark: Mark::Points,
                    labels: vec!["pruned".into()],
                },
            ],
            reference: Some(("teacher".into(), 2.0)),
        };
        let p = dir.path().join("lines.png");
        lines.save(&p).unwrap();
        let svg = std::fs::read_to_string(dir.path().join("lines.svg")).unwrap();
        for want in ["loss (nats/token)", "step", "train", "pruned", "teacher"] {
            assert!(svg.contains(want), "{want} missing from the SVG");
        }
        assert_eq!(png_size(&p), (900, 480));
        // a blank chart with no text has a few hundred dark pixels of axes; text adds thousands
        assert!(dark_pixels(&p) > 2000, "text drawn: {}", dark_pixels(&p));
        let bars = Bars {
            title: "speed".into(),
            x_label: "".into(),
            y_label: "tokens/s".into(),
            categories: vec!["prefill".into(), "decode".into()],
            series: vec![
                ("teacher".into(), vec![400.0, 50.0]),
                ("pruned".into(), vec![600.0, f64::NAN]),
            ],
            values_on_bars: true,
        };
        bars.save(&dir.path().join("bars.png")).unwrap();
        let svg = std::fs::read_to_string(dir.path().join("bars.svg")).unwrap();
        assert!(svg.contains("600.0") && svg.contains("tokens/s") && svg.contains("decode"));
        Bars::save_panels(&[bars.clone(), bars], &dir.path().join("panels.png")).unwrap();
        assert_eq!(png_size(&dir.path().join("panels.png")), (900, 520));
        let hm = Heatmap {
            title: "heads".into(),
            x_label: "head".into(),
            y_label: "layer".into(),
            rows: vec![vec![0.0, 1.0, 2.0], vec![3.0, f64::NAN, 5.0]],
            scale_label: "importance".into(),
        };
        hm.save(&dir.path().join("heat.png")).unwrap();
        let svg = std::fs::read_to_string(dir.path().join("heat.svg")).unwrap();
        assert!(svg.contains("importance") && svg.contains("layer"));
        // nothing else left behind (temporary files renamed)
        let mut names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names.len(), 8, "{names:?}");
    }
}
