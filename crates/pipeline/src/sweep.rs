//! `orlik sweep`: what each pruning axis costs before any distillation, so that a user sees
//! which axes their model tolerates before spending compute on one.
//!
//! For every axis (depth, hidden, heads, MLP) and every parameter fraction, the model is pruned
//! along that axis alone to the shape nearest the fraction (the same importance and slicing
//! `orlik prune` uses), and, unless turned off, the budget search's pick at the same fraction
//! (all axes, ranked by KL). Each pruned model is measured against the original without
//! training: KL(original ‖ pruned) and top-1 agreement on the first `--val` text, bits/byte on
//! every `--val` text (pooled as `orlik eval ppl` pools). The points not dominated by another
//! (no more parameters and no higher pooled bits/byte) form the Pareto front.
//!
//! OUT/sweep.json is rewritten after every point, so a killed sweep continued with `--resume`
//! measures only what is missing; OUT/sweep.md is the table, OUT/sweep_bpb.png and
//! OUT/sweep_kl.png the charts (quality against parameters, one line per axis, the front).

use crate::PipelineError;
use orlik_eval::agree::agreement;
use orlik_eval::ppl::{score_ids, PplOptions, PplResult};
use orlik_io::hfdir::HfModel;
use orlik_model::{Config, Model, ModelOptions, Weights};
use orlik_prune::run::{importance, search, ImportanceKind};
use orlik_prune::search::{enumerate, Axes};
use orlik_prune::select::{build, DepthMethod, Target};
use orlik_prune::{apply, Plan, PruneSettings};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

/// The axes a sweep knows, in the order it measures them.
pub const AXES: [&str; 4] = ["depth", "hidden", "heads", "mlp"];

/// The sweep's settings: `orlik sweep`'s flags (defaults: `Default` below).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::Args))]
#[serde(deny_unknown_fields, default)]
pub struct SweepSettings {
    /// Axes pruned one at a time: a comma list of depth, hidden, heads, mlp.
    #[cfg_attr(feature = "clap", arg(long, default_value_t = SweepSettings::default().axes))]
    pub axes: String,
    /// Parameter fractions of the model: each axis is pruned to its shape nearest each one (an
    /// axis that cannot reach a fraction stops at its smallest shape; the table says so).
    #[cfg_attr(feature = "clap", arg(long, value_delimiter = ',', default_values_t = SweepSettings::default().fractions))]
    pub fractions: Vec<f64>,
    /// Leave out the budget search's pick (all axes at once, ranked by KL on --data) at each
    /// fraction.
    #[cfg_attr(feature = "clap", arg(long))]
    pub no_search: bool,
    /// How units are ranked within an axis (minitron needs --scores).
    #[cfg_attr(feature = "clap", arg(long, value_enum, default_value_t = SweepSettings::default().importance))]
    pub importance: ImportanceKind,
    /// How the dropped layers are chosen on the depth axis.
    #[cfg_attr(feature = "clap", arg(long, value_enum, default_value_t = SweepSettings::default().depth_method))]
    pub depth_method: DepthMethod,
    /// Seed of `random` importance.
    #[cfg_attr(feature = "clap", arg(long, default_value_t = SweepSettings::default().seed))]
    pub seed: u64,
    /// Hidden and MLP sizes are multiples of this.
    #[cfg_attr(feature = "clap", arg(long, default_value_t = SweepSettings::default().multiple))]
    pub multiple: usize,
    /// The budget search's shapes are within this fraction of each budget (a fraction with
    /// none is left out and said so).
    #[cfg_attr(feature = "clap", arg(long, default_value_t = SweepSettings::default().tolerance))]
    pub tolerance: f64,
    /// Window of the bits/byte and agreement passes, in tokens.
    #[cfg_attr(feature = "clap", arg(long, default_value_t = SweepSettings::default().context))]
    pub context: usize,
    /// Bytes read from the start of each --val text (cut at a line end), 0 = the whole text.
    #[cfg_attr(feature = "clap", arg(long, default_value_t = SweepSettings::default().val_bytes))]
    pub val_bytes: usize,
    /// Positions of the first --val text at which KL and top-1 agreement are measured.
    #[cfg_attr(feature = "clap", arg(long, default_value_t = SweepSettings::default().agree_tokens))]
    pub agree_tokens: usize,
}

impl Default for SweepSettings {
    fn default() -> Self {
        SweepSettings {
            axes: AXES.join(","),
            fractions: vec![0.9, 0.8, 0.67, 0.5],
            no_search: false,
            importance: ImportanceKind::Minitron,
            depth_method: DepthMethod::Bi,
            seed: 0,
            multiple: 64,
            tolerance: PruneSettings::default().tolerance,
            context: 512,
            val_bytes: 10_000,
            agree_tokens: 1024,
        }
    }
}

fn bad(msg: String) -> PipelineError {
    PipelineError::Recipe(msg)
}

impl SweepSettings {
    /// The axes asked for, checked, in [`AXES`] order.
    pub fn axis_list(&self) -> Result<Vec<&'static str>, PipelineError> {
        let asked: Vec<&str> = self.axes.split(',').map(str::trim).collect();
        if let Some(a) = asked.iter().find(|a| !AXES.contains(a)) {
            return Err(bad(format!("--axes: unknown axis {a:?} (depth, hidden, heads, mlp)")));
        }
        Ok(AXES.iter().copied().filter(|a| asked.contains(a)).collect())
    }

    /// Every setting checked before any work.
    pub fn validate(&self) -> Result<(), PipelineError> {
        self.axis_list()?;
        if self.fractions.is_empty() {
            return Err(bad("--fractions: give at least one, e.g. 0.9,0.8,0.67,0.5".into()));
        }
        if let Some(f) = self.fractions.iter().find(|f| !(**f > 0.0 && **f <= 1.0)) {
            return Err(bad(format!("--fractions {f}: each must be in (0, 1]")));
        }
        for (k, v) in [("--multiple", self.multiple), ("--agree-tokens", self.agree_tokens)] {
            if v == 0 {
                return Err(bad(format!("{k} 0: must be at least 1")));
            }
        }
        if !(self.tolerance > 0.0 && self.tolerance < 1.0) {
            return Err(bad(format!("--tolerance {}: must be in (0, 1)", self.tolerance)));
        }
        if self.context < 2 {
            return Err(bad(format!("--context {}: must be at least 2 tokens", self.context)));
        }
        Ok(())
    }
}

/// What the sweep reads.
pub struct SweepInputs<'a> {
    pub model: &'a Path,
    /// `orlik score`'s output (for minitron importance).
    pub scores: Option<&'a Path>,
    /// Held-out text for the budget search's KL ranking (its last paragraphs).
    pub data: &'a [PathBuf],
    /// Texts measured: bits/byte on each; KL and agreement on the first.
    pub val: &'a [PathBuf],
}

/// How the caller follows and steers the sweep.
pub struct SweepControl<'a> {
    pub force: bool,
    /// Continue OUT/sweep.json: points of the same settings and inputs are kept.
    pub resume: bool,
    /// (what, done, total) after each point.
    pub progress: &'a dyn Fn(&str, usize, usize),
    /// Called with the number of points written (a testing aid: the binary passes
    /// `ORLIK_STEP_DELAY_MS`'s pause so that a test can kill it mid-way).
    pub after_point: Option<&'a (dyn Fn(u64) + Sync)>,
}

/// One measured model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Point {
    /// depth, hidden, heads, mlp; search (the budget search's pick); original (not pruned).
    pub axis: String,
    /// The fraction asked for (1 for the original).
    pub fraction: f64,
    pub layers: usize,
    pub hidden: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub ffn: usize,
    pub params: usize,
    /// params / the original's.
    pub param_fraction: f64,
    /// KL(original ‖ pruned) per token, nats, on the first --val text.
    pub kl: f64,
    /// Fraction of those positions where both predict the same most likely token.
    pub top1: f64,
    /// Bits per byte on each --val text, in order.
    pub bits_per_byte: Vec<f64>,
    /// Over all --val texts: total NLL / ln 2 / total bytes.
    pub bits_per_byte_pooled: f64,
    /// On the Pareto front: no other pruned point has no more parameters and no higher pooled
    /// bits/byte (and one of them strictly less).
    #[serde(default)]
    pub pareto: bool,
}

/// What a sweep produced.
pub struct SweepOutcome {
    pub points: Vec<Point>,
    /// Points taken from the earlier sweep (`--resume`) rather than measured.
    pub kept: usize,
    /// The sweep.md table.
    pub table: String,
}

/// The shape along `axis` alone whose parameter count is nearest `fraction` of the model's.
pub fn nearest_on_axis(cfg: &Config, axis: &str, fraction: f64, multiple: usize) -> Target {
    let axes = Axes {
        depth: axis == "depth",
        hidden: axis == "hidden",
        heads: axis == "heads",
        mlp: axis == "mlp",
    };
    let budget = (fraction * cfg.param_count() as f64).round() as usize;
    // An infinite tolerance: every shape of the axis is a candidate, the nearest is taken.
    let all = enumerate(cfg, budget, f64::INFINITY, multiple, axes);
    let dist = |p: usize| (p as f64 - budget as f64).abs();
    all.into_iter()
        .min_by(|a, b| dist(a.params).total_cmp(&dist(b.params)))
        .map_or_else(Target::default, |c| c.target)
}

/// Mark every pruned point that no other dominates. The original, and a point that kept the
/// whole model (a fraction of 1), take no part.
pub fn mark_pareto(points: &mut [Point]) {
    let whole = points.iter().find(|p| p.axis == "original").map(|p| p.params);
    let pruned = |p: &Point| p.axis != "original" && Some(p.params) != whole;
    let others: Vec<(usize, f64)> =
        points.iter().filter(|p| pruned(p)).map(|p| (p.params, p.bits_per_byte_pooled)).collect();
    for p in points.iter_mut() {
        let (n, b) = (p.params, p.bits_per_byte_pooled);
        p.pareto = pruned(p) && !others.iter().any(|&(m, c)| m <= n && c <= b && (m < n || c < b));
    }
}

/// A --val text as measured: its first `val_bytes` (cut at a line end) and their tokens.
struct Val {
    path: PathBuf,
    bytes: usize,
    ids: Vec<u32>,
}

fn read_val(tok: &tokenizers::Tokenizer, path: &Path, limit: usize) -> Result<Val, PipelineError> {
    let mut text = orlik_io::text::read_text(path)?;
    if limit > 0 && text.len() > limit {
        let mut cut = limit;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        // At a line end, unless that would keep less than half of the limit (one long line).
        if let Some(i) = text[..cut].rfind('\n').filter(|&i| i + 1 >= cut / 2) {
            cut = i + 1;
        }
        text.truncate(cut);
    }
    let enc = tok
        .encode(text.as_str(), true)
        .map_err(|e| bad(format!("{}: tokenizing: {e}", path.display())))?;
    Ok(Val { path: path.to_path_buf(), bytes: text.len(), ids: enc.get_ids().to_vec() })
}

/// Bits/byte of `m` on each text and pooled.
fn bits_per_byte(
    m: &Model,
    vals: &[Val],
    context: usize,
) -> Result<(Vec<f64>, f64), PipelineError> {
    let opts = PplOptions { context, stride: context, batch: 1 };
    let mut parts = Vec::new();
    for v in vals {
        let r = score_ids(m, &v.ids, v.bytes, &opts, |_, _| {})
            .map_err(|e| bad(format!("{}: {e}", v.path.display())))?;
        parts.push(r);
    }
    let pooled = PplResult::pooled(&parts).bits_per_byte;
    Ok((parts.iter().map(|r| r.bits_per_byte).collect(), pooled))
}

/// The original, loaded once, and what every point is measured on.
struct Bench<'a> {
    cfg: &'a Config,
    weights: &'a Weights,
    teacher: Model,
    vals: Vec<Val>,
    s: &'a SweepSettings,
}

impl Bench<'_> {
    /// Measure the model `plan` makes; `axis` and `fraction` name the point.
    fn point(&self, axis: &str, fraction: f64, plan: &Plan) -> Result<Point, PipelineError> {
        let (pc, pw) = apply(self.cfg, self.weights, plan)?;
        let m = Model::new(&pc, &pw, ModelOptions::default())?;
        self.measure(axis, fraction, &pc, &m)
    }

    fn measure(
        &self,
        axis: &str,
        fraction: f64,
        c: &Config,
        m: &Model,
    ) -> Result<Point, PipelineError> {
        let a = agreement(
            &self.teacher,
            m,
            &self.vals[0].ids,
            None,
            self.s.context,
            self.s.agree_tokens,
            |_, _| {},
        )?;
        let (bpb, pooled) = bits_per_byte(m, &self.vals, self.s.context)?;
        Ok(Point {
            axis: axis.into(),
            fraction,
            layers: c.num_hidden_layers,
            hidden: c.hidden_size,
            heads: c.num_attention_heads,
            kv_heads: c.num_kv_heads(),
            ffn: c.intermediate_size,
            params: c.param_count(),
            param_fraction: c.param_count() as f64 / self.cfg.param_count() as f64,
            kl: a.kl,
            top1: a.top1,
            bits_per_byte: bpb,
            bits_per_byte_pooled: pooled,
            pareto: false,
        })
    }
}

/// The points a sweep measures, in order: (axis, fraction).
fn schedule(s: &SweepSettings) -> Result<Vec<(&'static str, f64)>, PipelineError> {
    let mut v = vec![("original", 1.0)];
    for a in s.axis_list()? {
        v.extend(s.fractions.iter().map(|&f| (a, f)));
    }
    if !s.no_search {
        v.extend(s.fractions.iter().map(|&f| ("search", f)));
    }
    Ok(v)
}

/// What a point's numbers depend on: every setting but the schedule (axes, fractions,
/// no_search: a sweep resumed with another schedule keeps the points both share), the model and
/// each input file's content.
fn key(s: &SweepSettings, hf: &HfModel, inp: &SweepInputs) -> Result<Value, PipelineError> {
    let sha = |p: &PathBuf| orlik_io::hfdir::sha256_files(std::slice::from_ref(p));
    let each = |ps: &[PathBuf]| ps.iter().map(sha).collect::<Result<Vec<_>, _>>();
    let scores = match inp.scores {
        Some(d) => Some(each(&[d.join("scores.safetensors"), d.join("scores.json")])?),
        None => None,
    };
    let mut settings = serde_json::to_value(s).map_err(|e| bad(e.to_string()))?;
    if let Some(m) = settings.as_object_mut() {
        for k in ["axes", "fractions", "no_search"] {
            m.remove(k);
        }
    }
    Ok(json!({"settings": settings, "model": hf.content_sha256()?, "scores": scores,
        "data": each(inp.data)?, "val": each(inp.val)?}))
}

/// The points of the sweep in `out` (`--resume`): none when there is no sweep.json yet; an
/// error naming what changed when it was made with other settings or inputs (its points would
/// not be comparable, and replacing them is `--force`'s job).
fn earlier(out: &Path, key: &Value) -> Result<Vec<Point>, PipelineError> {
    let path = out.join("sweep.json");
    let Ok(text) = std::fs::read_to_string(&path) else { return Ok(Vec::new()) };
    let unreadable = |e: String| bad(format!("{}: {e}; --force starts over", path.display()));
    let v: Value = serde_json::from_str(&text).map_err(|e| unreadable(e.to_string()))?;
    if v["key"] != *key {
        let changed: Vec<String> = ["model", "scores", "data", "val"]
            .iter()
            .filter(|k| v["key"][**k] != key[**k])
            .map(|k| format!("--{k}"))
            .chain(
                key["settings"]
                    .as_object()
                    .into_iter()
                    .flatten()
                    .filter(|&(k, x)| v["key"]["settings"][k] != *x)
                    .map(|(k, _)| format!("--{}", k.replace('_', "-"))),
            )
            .collect();
        return Err(bad(format!(
            "{}: the sweep there was made with other inputs or settings ({}): --force replaces it, or choose another -o",
            path.display(),
            if changed.is_empty() { "its format".into() } else { changed.join(", ") }
        )));
    }
    serde_json::from_value(v["points"].clone()).map_err(|e| unreadable(e.to_string()))
}

/// Run the sweep into `out` (an `orlik sweep` output directory).
pub fn run(
    s: &SweepSettings,
    inp: &SweepInputs,
    out: &Path,
    ctl: &SweepControl,
) -> Result<SweepOutcome, PipelineError> {
    s.validate()?;
    if inp.val.is_empty() {
        return Err(bad("--val: give at least one text to measure bits/byte on".into()));
    }
    if !s.no_search && inp.data.is_empty() {
        return Err(bad("the budget search ranks its shapes by KL on held-out text: give --data FILE (or --no-search)".into()));
    }
    let mut inputs: Vec<&Path> = vec![inp.model];
    inputs.extend(inp.scores);
    inputs.extend(inp.data.iter().chain(inp.val).map(PathBuf::as_path));
    let mode = orlik_io::output::Mode::from_flags(ctl.force, ctl.resume);
    // Refused outputs are refused before the model is read; claimed once the inputs are good.
    orlik_io::output::check(out, "sweep", &inputs, mode)?;
    let hf = HfModel::open(inp.model)?;
    let prune = PruneSettings {
        importance: s.importance,
        depth_method: s.depth_method,
        seed: s.seed,
        multiple: s.multiple,
        tolerance: s.tolerance,
        ..PruneSettings::default()
    };
    let weights = hf.checkpoint.load_all(candle_core::DType::F32)?;
    let imp = importance(&prune, &hf, inp.scores, &weights)?;
    let key = key(s, &hf, inp)?;
    let tok = hf.tokenizer()?;
    let vals =
        inp.val.iter().map(|p| read_val(&tok, p, s.val_bytes)).collect::<Result<Vec<_>, _>>()?;
    if let Some(v) = vals.iter().find(|v| v.ids.len() < 2) {
        return Err(bad(format!("{}: fewer than 2 tokens to measure", v.path.display())));
    }
    let done = if ctl.resume { earlier(out, &key)? } else { Vec::new() };
    // Every input read and checked: only now is an earlier output replaced (--force).
    orlik_io::output::claim_dir(out, "sweep", &inputs, mode)?;
    let cfg = &hf.config;
    let teacher = Model::new(cfg, &weights, ModelOptions::default())?;
    let bench = Bench { cfg, weights: &weights, teacher, vals, s };
    let plan = schedule(s)?;
    let mut points: Vec<Point> = Vec::new();
    let (mut skipped, mut kept) = (Vec::new(), 0);
    for (i, &(axis, f)) in plan.iter().enumerate() {
        (ctl.progress)(&format!("{axis} {f}"), i, plan.len());
        if axis == "search" && !has_shapes(cfg, f, &prune) {
            skipped.push(format!(
                "search {f}: no shape within {:.1}% of the budget on multiples of {} (widen --tolerance)",
                100.0 * s.tolerance,
                s.multiple
            ));
            continue;
        }
        if AXES.contains(&axis) && f < 1.0 && unmoved(cfg, axis, f, s.multiple) {
            let why = match axis {
                "hidden" => format!(
                    " (hidden sizes are multiples of {} that the {} query heads divide: try a smaller --multiple)",
                    s.multiple, cfg.num_attention_heads
                ),
                "mlp" => format!(" (MLP sizes are multiples of {}: try a smaller --multiple)", s.multiple),
                _ => String::new(),
            };
            skipped.push(format!(
                "{axis} {f}: the nearest shape on this axis is the whole model{why}"
            ));
            continue;
        }
        let same = |p: &&Point| p.axis == axis && p.fraction == f;
        let p = match done.iter().find(same) {
            Some(p) => {
                kept += 1;
                p.clone()
            }
            None => measure_one(&bench, &imp, &prune, &hf, inp, axis, f, &points)?,
        };
        points.push(p);
        mark_pareto(&mut points);
        write_json(out, &key, s, &points, &skipped)?;
        if let Some(hook) = ctl.after_point {
            hook(points.len() as u64);
        }
    }
    (ctl.progress)("done", plan.len(), plan.len());
    write_json(out, &key, s, &points, &skipped)?;
    let table = table(&points, &bench.vals, &skipped);
    orlik_io::atomic::write_file_atomically(&out.join("sweep.md"), table.as_bytes())?;
    charts(out, &points)?;
    Ok(SweepOutcome { points, kept, table })
}

/// One scheduled point measured (a shape already measured on the same axis is not measured
/// again: heads, say, reach their smallest shape before 0.5).
#[allow(clippy::too_many_arguments)]
fn measure_one(
    b: &Bench,
    imp: &orlik_prune::select::Importance,
    prune: &PruneSettings,
    hf: &HfModel,
    inp: &SweepInputs,
    axis: &str,
    f: f64,
    so_far: &[Point],
) -> Result<Point, PipelineError> {
    let plan = match axis {
        "original" => return b.measure(axis, f, b.cfg, &b.teacher),
        "search" => {
            let s = PruneSettings { params: Some(f), ..prune.clone() };
            search(hf, b.weights, imp, &s, f, inp.data, &|_, _| {})?.0
        }
        _ => {
            build(b.cfg, imp, &nearest_on_axis(b.cfg, axis, f, prune.multiple), prune.depth_method)?
        }
    };
    let shape = plan.pruned_config(b.cfg);
    let twin = so_far.iter().find(|p| {
        p.axis == axis
            && (p.layers, p.hidden, p.heads, p.kv_heads, p.ffn)
                == (
                    shape.num_hidden_layers,
                    shape.hidden_size,
                    shape.num_attention_heads,
                    shape.num_kv_heads(),
                    shape.intermediate_size,
                )
    });
    match twin {
        Some(p) => Ok(Point { fraction: f, ..p.clone() }),
        None => b.point(axis, f, &plan),
    }
}

/// Whether the nearest shape of `axis` to `f` is the whole model (nothing to measure).
fn unmoved(cfg: &Config, axis: &str, f: f64, multiple: usize) -> bool {
    let t = nearest_on_axis(cfg, axis, f, multiple);
    let whole = Target {
        layers: Some(cfg.num_hidden_layers),
        hidden: Some(cfg.hidden_size),
        heads: Some(cfg.num_attention_heads),
        kv_heads: Some(cfg.num_kv_heads()),
        ffn: Some(cfg.intermediate_size),
    };
    t == whole || t == Target::default()
}

/// Whether the budget search has any shape within its tolerance of fraction `f`.
fn has_shapes(cfg: &Config, f: f64, p: &PruneSettings) -> bool {
    let all = Axes { depth: true, hidden: true, heads: true, mlp: true };
    let budget = (f * cfg.param_count() as f64) as usize;
    !enumerate(cfg, budget, p.tolerance, p.multiple, all).is_empty()
}

fn write_json(
    out: &Path,
    key: &Value,
    s: &SweepSettings,
    points: &[Point],
    skipped: &[String],
) -> Result<(), PipelineError> {
    let v = json!({"format": 1, "command": orlik_io::output::command_line(), "key": key,
        "settings": s, "points": points, "skipped": skipped});
    let text = serde_json::to_string_pretty(&v).map_err(|e| bad(e.to_string()))?;
    orlik_io::atomic::write_file_atomically(&out.join("sweep.json"), text.as_bytes())?;
    Ok(())
}

/// The markdown table: one row per point, the original first.
fn table(points: &[Point], vals: &[Val], skipped: &[String]) -> String {
    use std::fmt::Write as _;
    let names: Vec<String> = vals
        .iter()
        .map(|v| v.path.file_name().map_or_else(String::new, |n| n.to_string_lossy().to_string()))
        .collect();
    let mut t = String::from(
        "Each axis pruned alone to the shape nearest each parameter fraction, no distillation \
         (`search`: the budget search's pick). KL and top-1: against the original on the first \
         text; bits/byte: each text, then pooled. * = on the Pareto front.\n\n",
    );
    let _ = writeln!(
        t,
        "| axis | asked | params | kept | layers | hidden | heads (kv) | ffn | KL | top-1 | {} | pooled bits/byte |",
        names.iter().map(|n| format!("bits/byte {n}")).collect::<Vec<_>>().join(" | ")
    );
    let _ = writeln!(t, "|{}", "---|".repeat(11 + names.len()));
    for p in points {
        let short = (p.param_fraction - p.fraction).abs() > 0.05 && p.axis != "original";
        let _ = writeln!(
            t,
            "| {} | {:.2} | {} | {:.1}%{} | {} | {} | {} ({}) | {} | {:.4} | {:.3} | {} | {:.4}{} |",
            p.axis,
            p.fraction,
            millions(p.params),
            100.0 * p.param_fraction,
            if short { " (nearest on this axis)" } else { "" },
            p.layers,
            p.hidden,
            p.heads,
            p.kv_heads,
            p.ffn,
            p.kl,
            p.top1,
            p.bits_per_byte.iter().map(|b| format!("{b:.4}")).collect::<Vec<_>>().join(" | "),
            p.bits_per_byte_pooled,
            if p.pareto { " *" } else { "" },
        );
    }
    for k in skipped {
        let _ = writeln!(t, "\nLeft out: {k}.");
    }
    t
}

/// 134.52M, or 21.3k below a million.
fn millions(n: usize) -> String {
    if n >= 1_000_000 {
        format!("{:.2}M", n as f64 / 1e6)
    } else {
        format!("{:.1}k", n as f64 / 1e3)
    }
}

/// Quality against parameters: one line per axis, the search's picks as points, the Pareto
/// front, the original as a dashed line.
fn charts(out: &Path, points: &[Point]) -> Result<(), PipelineError> {
    use orlik_plot::{Lines, Mark, Series};
    let original = points.iter().find(|p| p.axis == "original");
    for (file, what, metric) in [
        (
            "sweep_bpb.png",
            "pooled bits/byte",
            (|p: &Point| p.bits_per_byte_pooled) as fn(&Point) -> f64,
        ),
        ("sweep_kl.png", "KL(original || pruned), nats/token", |p: &Point| p.kl),
    ] {
        let xy = |p: &Point| (p.params as f64 / 1e6, metric(p));
        let mut series = Vec::new();
        for a in AXES.iter().chain(&["search"]) {
            let mut pts: Vec<&Point> = points.iter().filter(|p| p.axis == *a).collect();
            if pts.is_empty() {
                continue;
            }
            if *a != "search" {
                pts.extend(original); // each axis's line starts at the whole model
            }
            pts.sort_by_key(|p| p.params);
            let mark = if *a == "search" { Mark::Points } else { Mark::Line };
            let labels = if *a == "search" {
                pts.iter().map(|p| format!("{:.0}%", 100.0 * p.param_fraction)).collect()
            } else {
                Vec::new()
            };
            let name =
                if *a == "search" { "budget search's pick".into() } else { format!("{a} only") };
            series.push(Series { name, points: pts.iter().map(|p| xy(p)).collect(), mark, labels });
        }
        let mut front: Vec<&Point> = points.iter().filter(|p| p.pareto).collect();
        front.sort_by_key(|p| p.params);
        series
            .push(Series::line("Pareto front (bits/byte)", front.iter().map(|p| xy(p)).collect()));
        let chart = Lines {
            title: format!("{what} after pruning, before distillation"),
            x_label: "parameters (millions)".into(),
            y_label: what.into(),
            series,
            reference: original.map(|p| ("original".to_string(), metric(p))),
        };
        chart.save(&out.join(file))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pt(axis: &str, params: usize, bpb: f64) -> Point {
        Point {
            axis: axis.into(),
            fraction: 1.0,
            layers: 0,
            hidden: 0,
            heads: 0,
            kv_heads: 0,
            ffn: 0,
            params,
            param_fraction: 0.0,
            kl: 0.0,
            top1: 0.0,
            bits_per_byte: vec![bpb],
            bits_per_byte_pooled: bpb,
            pareto: false,
        }
    }

    #[test]
    fn the_front_keeps_exactly_the_undominated_points() {
        let mut v = vec![
            pt("original", 100, 1.0),
            pt("depth", 80, 2.0),
            pt("mlp", 80, 1.5), // dominates depth at 80
            pt("hidden", 60, 1.6),
            pt("heads", 90, 1.6),  // dominated by mlp (fewer params, lower bpb)
            pt("search", 60, 1.6), // a tie with hidden: neither dominates
        ];
        mark_pareto(&mut v);
        let on: Vec<bool> = v.iter().map(|p| p.pareto).collect();
        assert_eq!(on, [false, false, true, true, false, true]);
    }

    #[test]
    fn the_nearest_shape_on_each_axis() {
        let patch = json!({"num_hidden_layers": 6, "hidden_size": 32, "intermediate_size": 64});
        let c = orlik_model::testing::tiny("LlamaForCausalLM", patch);
        let n = c.param_count() as f64;
        // fraction 1: every axis keeps the whole model
        for a in AXES {
            let t = nearest_on_axis(&c, a, 1.0, 8);
            let full = (c.num_hidden_layers, c.hidden_size, c.intermediate_size);
            assert_eq!((t.layers.unwrap(), t.hidden.unwrap(), t.ffn.unwrap()), full, "{a}");
        }
        // depth alone: the layer count whose size is nearest, checked against every count
        let t = nearest_on_axis(&c, "depth", 0.6, 8);
        let size = |l: usize| {
            let mut d = c.clone();
            d.num_hidden_layers = l;
            d.param_count() as f64
        };
        let best = (1..=c.num_hidden_layers)
            .min_by(|&a, &b| (size(a) - 0.6 * n).abs().total_cmp(&(size(b) - 0.6 * n).abs()))
            .unwrap();
        assert_eq!(t.layers, Some(best));
        assert_eq!((t.hidden, t.ffn), (Some(c.hidden_size), Some(c.intermediate_size)));
        // MLP alone moves only the MLP, on multiples
        let t = nearest_on_axis(&c, "mlp", 0.7, 8);
        assert!(t.ffn.unwrap().is_multiple_of(8) && t.ffn.unwrap() < c.intermediate_size);
        assert_eq!(t.layers, Some(c.num_hidden_layers));
    }

    #[test]
    fn settings_are_checked_naming_the_flag() {
        let e = |s: SweepSettings| s.validate().unwrap_err().to_string();
        assert!(e(SweepSettings { axes: "depth,width".into(), ..Default::default() })
            .contains("--axes: unknown axis \"width\""));
        assert!(e(SweepSettings { fractions: vec![0.5, 1.5], ..Default::default() })
            .contains("--fractions 1.5"));
        assert!(e(SweepSettings { context: 1, ..Default::default() }).contains("--context 1"));
        let s = SweepSettings { axes: "mlp, depth".into(), ..Default::default() };
        assert_eq!(s.axis_list().unwrap(), ["depth", "mlp"]);
    }
}
