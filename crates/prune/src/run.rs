//! The prune stage as one call: [`run`] takes the model, its scores (or a plan to re-apply) and
//! [`PruneSettings`] (the recipe's `[prune]` section; `orlik prune`'s flags fill the same
//! struct): exact dimensions, or a parameter budget searched over shapes ranked by KL to the
//! original; then the weights are sliced tensor by tensor into OUT/ (HF, atomically).

use crate::search::{enumerate, evaluate, shortlist, teacher_logprobs, Axes};
use crate::select::{build, DepthMethod, Importance, Target};
use crate::{Plan, PruneError};
use orlik_io::hfdir::{save_pretrained_with, side_files, HfModel, SaveOptions};
use orlik_model::{Config, ModelOptions, Weights};
use orlik_score::Scores;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// How units are ranked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum ImportanceKind {
    /// Activation importance from `orlik score` (Minitron).
    Minitron,
    /// Weight magnitude (no calibration; a baseline).
    Magnitude,
    /// Random, seeded (a baseline).
    Random,
}

/// A parameter budget (searched) or explicit dimensions, and how to choose the units: the keys
/// of a recipe's `[prune]` and the flags of `orlik prune` (defaults: `Default` below).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::Args))]
#[serde(deny_unknown_fields, default)]
pub struct PruneSettings {
    /// Parameter budget: a fraction of the model (e.g. 0.67) or a count (e.g. 90000000).
    #[cfg_attr(feature = "clap", arg(long, conflicts_with_all = ["layers", "hidden", "heads", "kv_heads", "ffn"]))]
    pub params: Option<f64>,
    /// Layers to keep.
    #[cfg_attr(feature = "clap", arg(long))]
    pub layers: Option<usize>,
    /// Hidden size to keep.
    #[cfg_attr(feature = "clap", arg(long))]
    pub hidden: Option<usize>,
    /// Query heads to keep (a multiple of the KV heads kept).
    #[cfg_attr(feature = "clap", arg(long))]
    pub heads: Option<usize>,
    /// KV groups to keep.
    #[cfg_attr(feature = "clap", arg(long))]
    pub kv_heads: Option<usize>,
    /// MLP neurons to keep per layer.
    #[cfg_attr(feature = "clap", arg(long))]
    pub ffn: Option<usize>,
    /// How to choose the dropped layers.
    #[cfg_attr(feature = "clap", arg(long, value_enum, default_value_t = PruneSettings::default().depth_method))]
    pub depth_method: DepthMethod,
    /// How to rank the units within a layer.
    #[cfg_attr(feature = "clap", arg(long, value_enum, default_value_t = PruneSettings::default().importance))]
    pub importance: ImportanceKind,
    /// Seed of `random` importance.
    #[cfg_attr(feature = "clap", arg(long, default_value_t = PruneSettings::default().seed))]
    pub seed: u64,
    /// Axes the budget search may shrink: all, or a comma list of depth, hidden, heads, mlp.
    #[cfg_attr(feature = "clap", arg(long, default_value_t = PruneSettings::default().axes))]
    pub axes: String,
    /// Searched hidden and MLP sizes are multiples of this.
    #[cfg_attr(feature = "clap", arg(long, default_value_t = PruneSettings::default().multiple))]
    pub multiple: usize,
    /// Shapes within this fraction of the budget are candidates.
    #[cfg_attr(feature = "clap", arg(long, default_value_t = PruneSettings::default().tolerance))]
    pub tolerance: f64,
    /// Shortlisted shapes ranked by the KL proxy.
    #[cfg_attr(feature = "clap", arg(long, default_value_t = PruneSettings::default().candidates))]
    pub candidates: usize,
    /// Windows of held-out text for the KL proxy.
    #[cfg_attr(feature = "clap", arg(long, default_value_t = PruneSettings::default().proxy_samples))]
    pub proxy_samples: usize,
    /// Window length for the KL proxy.
    #[cfg_attr(feature = "clap", arg(long, default_value_t = PruneSettings::default().seq_len))]
    pub seq_len: usize,
    /// Write the plans of the best N candidates into OUT/candidates.json.
    #[cfg_attr(feature = "clap", arg(long = "export-candidates", default_value_t = PruneSettings::default().export))]
    pub export: usize,
    /// Largest safetensors shard written, in bytes (or 500MB, 2GB, 1GiB).
    #[cfg_attr(feature = "clap", arg(long = "max-shard-size", value_parser = orlik_io::text::parse_size, default_value_t = PruneSettings::default().max_shard_bytes))]
    pub max_shard_bytes: u64,
}

impl Default for PruneSettings {
    fn default() -> Self {
        PruneSettings {
            params: None,
            layers: None,
            hidden: None,
            heads: None,
            kv_heads: None,
            ffn: None,
            depth_method: DepthMethod::Bi,
            importance: ImportanceKind::Minitron,
            seed: 0,
            axes: "all".into(),
            multiple: 64,
            tolerance: 0.02,
            candidates: 8,
            proxy_samples: 4,
            seq_len: 128,
            export: 0,
            max_shard_bytes: 2_000_000_000,
        }
    }
}

fn input(msg: String) -> PruneError {
    PruneError::Input(msg)
}

impl PruneSettings {
    pub fn target(&self) -> Target {
        Target {
            layers: self.layers,
            hidden: self.hidden,
            heads: self.heads,
            kv_heads: self.kv_heads,
            ffn: self.ffn,
        }
    }

    /// Every setting checked before any work, each error naming the setting as `name(key)`
    /// spells it (`--kv-heads` for a flag, `prune.kv_heads` in a recipe).
    pub fn validate(&self, name: &dyn Fn(&str) -> String) -> Result<(), PruneError> {
        let dims = [
            ("layers", self.layers),
            ("hidden", self.hidden),
            ("heads", self.heads),
            ("kv_heads", self.kv_heads),
            ("ffn", self.ffn),
        ];
        if let Some((k, _)) = dims.iter().find(|d| d.1 == Some(0)) {
            return Err(input(format!("{} 0: must be at least 1", name(k))));
        }
        if self.max_shard_bytes == 0 {
            return Err(input(format!("{}: must be positive", name("max_shard_bytes"))));
        }
        if let Some(p) = self.params {
            if let Some(e) = crate::search::budget_error(p) {
                return Err(input(format!("{} {e}", name("params"))));
            }
            if self.seq_len < 2 {
                let n = name("seq_len");
                return Err(input(format!("{n} {}: must be at least 2 tokens", self.seq_len)));
            }
            for (k, v) in [
                ("multiple", self.multiple),
                ("candidates", self.candidates),
                ("proxy_samples", self.proxy_samples),
            ] {
                if v == 0 {
                    return Err(input(format!("{} 0: must be at least 1", name(k))));
                }
            }
            if !(self.tolerance > 0.0 && self.tolerance < 1.0) {
                let n = name("tolerance");
                return Err(input(format!("{n} {}: must be in (0, 1)", self.tolerance)));
            }
        }
        Ok(())
    }
}

/// Where the stage reads from.
pub struct PruneInputs<'a> {
    pub model: &'a Path,
    /// `orlik score`'s output (for minitron importance).
    pub scores: Option<&'a Path>,
    /// A prune_plan.json to re-apply instead of choosing units.
    pub plan: Option<&'a Path>,
    /// Held-out text for the budget search's KL ranking (its last paragraphs).
    pub data: &'a [PathBuf],
}

/// One shortlisted shape of the budget search, ranked.
#[derive(Debug, Clone, Serialize)]
pub struct CandidateRow {
    pub rank: usize,
    pub target: Target,
    pub params: usize,
    /// KL(original ‖ pruned) per token on the held-out windows.
    pub kl: f64,
}

/// The budget search's result.
#[derive(Debug, Clone)]
pub struct SearchReport {
    pub budget: usize,
    /// Shapes within the tolerance of the budget.
    pub shapes: usize,
    pub candidates: Vec<CandidateRow>,
}

/// What a prune run did.
pub struct PruneOutcome {
    pub before: Config,
    pub after: Config,
    pub plan: Plan,
    pub search: Option<SearchReport>,
}

impl PruneOutcome {
    /// What a person reads: the budget search's ranking (when there was one) and the shapes
    /// before and after.
    pub fn summary(&self, s: &PruneSettings, model: &Path, out: &Path) -> String {
        use std::fmt::Write as _;
        let mut t = String::new();
        if let Some(r) = &self.search {
            let _ = writeln!(
                t,
                "{} shapes within {:.1}% of {} parameters; ranked {} by KL to the original",
                r.shapes,
                100.0 * s.tolerance,
                r.budget,
                r.candidates.len()
            );
            let _ = writeln!(
                t,
                "{:>4} {:>6} {:>6} {:>5} {:>4} {:>6} {:>12} {:>10}",
                "rank", "layers", "hidden", "heads", "kv", "ffn", "params", "KL"
            );
            for c in &r.candidates {
                let (d, g) = (c.target, |x: Option<usize>| x.unwrap_or(0));
                let _ = writeln!(
                    t,
                    "{:>4} {:>6} {:>6} {:>5} {:>4} {:>6} {:>12} {:>10.4}",
                    c.rank,
                    g(d.layers),
                    g(d.hidden),
                    g(d.heads),
                    g(d.kv_heads),
                    g(d.ffn),
                    c.params,
                    c.kl
                );
            }
        }
        let (a, b) = (&self.before, &self.after);
        let (pa, pb) = (a.param_count(), b.param_count());
        let _ = write!(
            t,
            "pruned {} -> {}: layers {}->{}, hidden {}->{}, heads {}->{} (kv {}->{}), ffn {}->{}; parameters {pa} -> {pb} ({:.1}%)",
            model.display(),
            out.display(),
            a.num_hidden_layers,
            b.num_hidden_layers,
            a.hidden_size,
            b.hidden_size,
            a.num_attention_heads,
            b.num_attention_heads,
            a.num_kv_heads(),
            b.num_kv_heads(),
            a.intermediate_size,
            b.intermediate_size,
            100.0 * pb as f64 / pa as f64
        );
        t
    }
}

/// Prune into `out` (refused if `out` is an input or another command's output; replaced when
/// `force` and it is a prune output). `progress(done, total)` counts candidates, then tensors.
pub fn run(
    s: &PruneSettings,
    inp: &PruneInputs,
    out: &Path,
    force: bool,
    progress: &dyn Fn(usize, usize),
) -> Result<PruneOutcome, PruneError> {
    s.validate(&orlik_score::run::flag)?;
    let mut inputs: Vec<&Path> = vec![inp.model];
    inputs.extend(inp.scores.iter().chain(&inp.plan).copied());
    if s.params.is_some() {
        inputs.extend(inp.data.iter().map(PathBuf::as_path));
    }
    orlik_io::output::check(
        out,
        "prune",
        &inputs,
        orlik_io::output::Mode::from_flags(force, false),
    )?;
    // Whole weights in memory only where a choice needs them (magnitude importance, the budget
    // search); the final slicing streams tensor by tensor from the mmap'd checkpoint, checking
    // each tensor it keeps for NaN and infinity as it reads it (one pass over the checkpoint, not
    // a checking pass first; a tensor the plan drops cannot reach the output).
    let needs_weights =
        inp.plan.is_none() && (s.importance == ImportanceKind::Magnitude || s.params.is_some());
    let hf =
        if needs_weights { HfModel::open(inp.model)? } else { HfModel::open_streaming(inp.model)? };
    let cfg = &hf.config;
    let weights = if needs_weights {
        hf.checkpoint.load_all(candle_core::DType::F32)?
    } else {
        Weights::new()
    };
    let mut table = None;
    let mut report = None;
    let plan = if let Some(p) = inp.plan {
        let text = std::fs::read_to_string(p)
            .map_err(|source| orlik_io::IoError::Io { path: p.into(), source })?;
        Plan::from_json(&text, &p.display().to_string())?
    } else {
        let imp = importance(s, &hf, inp.scores, &weights)?;
        match s.params {
            Some(budget) => {
                let (plan, rep, json) = search(&hf, &weights, &imp, s, budget, inp.data, progress)?;
                table = Some(json);
                report = Some(rep);
                plan
            }
            None => build(cfg, &imp, &s.target(), s.depth_method)?,
        }
    };
    drop(weights);
    let after = write(&hf, &plan, inp.model, out, force, s.max_shard_bytes, table, progress)?;
    Ok(PruneOutcome { before: cfg.clone(), after, plan, search: report })
}

/// The importance `s.importance` names; minitron scores must be of this very checkpoint.
pub fn importance(
    s: &PruneSettings,
    hf: &HfModel,
    scores: Option<&Path>,
    weights: &Weights,
) -> Result<Importance, PruneError> {
    let cfg = &hf.config;
    Ok(match s.importance {
        ImportanceKind::Minitron => {
            let dir = scores.ok_or_else(|| {
                input("--importance minitron needs --scores DIR (from `orlik score`)".into())
            })?;
            let (sc, meta) = Scores::load(dir)?;
            if meta.num_hidden_layers != cfg.num_hidden_layers
                || sc.mlp.first().map(Vec::len) != Some(cfg.intermediate_size)
            {
                return Err(input(format!(
                    "{}: scores are for another model ({} layers)",
                    dir.display(),
                    meta.num_hidden_layers
                )));
            }
            let here = hf.content_sha256()?;
            if meta.model_sha256 != here {
                return Err(input(format!(
                    "{}: scores were computed on another checkpoint (model sha256 {} vs {})",
                    dir.display(),
                    &meta.model_sha256[..12.min(meta.model_sha256.len())],
                    &here[..12]
                )));
            }
            Importance::from_scores(&sc, s.depth_method)
        }
        ImportanceKind::Magnitude => Importance::magnitude(cfg, weights)?,
        ImportanceKind::Random => Importance::random(cfg, s.seed),
    })
}

/// Slice the weights by `plan` into `out` (HF layout, the model's side files, the plan, the
/// candidate table when there is one); returns the pruned config.
#[allow(clippy::too_many_arguments)]
fn write(
    hf: &HfModel,
    plan: &Plan,
    model: &Path,
    out: &Path,
    force: bool,
    max_shard_bytes: u64,
    table: Option<String>,
    progress: &dyn Fn(usize, usize),
) -> Result<Config, PruneError> {
    let cfg = &hf.config;
    let pcfg = plan.pruned_config(cfg);
    let specs = crate::slice::slices(cfg, plan)?;
    let dtype = hf.stored_dtypes().first().copied().unwrap_or(candle_core::DType::F32);
    let mut files = side_files(model)?;
    files.retain(|(n, _)| n != "orlik.json");
    files.push(("prune_plan.json".into(), plan.to_json().into_bytes()));
    files.push(("orlik.json".into(), orlik_io::text::provenance()));
    files.extend(table.map(|t| ("candidates.json".to_string(), t.into_bytes())));
    let opts = SaveOptions { dtype, max_shard_bytes, overwrite: force, kind: "prune" };
    let shapes: Vec<(String, Vec<usize>)> =
        specs.iter().map(|s| (s.name.clone(), s.shape.clone())).collect();
    let done = std::cell::Cell::new(0);
    let mut produce = |name: &str| -> Result<candle_core::Tensor, orlik_io::IoError> {
        done.set(done.get() + 1);
        progress(done.get(), specs.len());
        let s = specs.iter().find(|s| s.name == name).ok_or_else(|| orlik_io::IoError::Tensor {
            path: out.into(),
            name: name.into(),
            msg: "not in the plan".into(),
        })?;
        hf.checkpoint.check_tensor_finite(&s.src)?;
        let (bytes, info, _) = hf.checkpoint.raw(&s.src)?;
        let cut = crate::slice::cut_stored(bytes, &info.shape, info.dtype, s).map_err(|e| {
            orlik_io::IoError::Tensor {
                path: model.into(),
                name: s.src.clone(),
                msg: e.to_string(),
            }
        });
        hf.checkpoint.release(&s.src);
        cut
    };
    save_pretrained_with(out, &pcfg, &shapes, &mut produce, &files, &opts)?;
    Ok(pcfg)
}

/// The budget search: enumerate shapes within the tolerance of the budget, rank a shortlist by
/// KL(teacher ‖ pruned) on the last paragraphs of `data`; the best plan, the ranking and the
/// candidates.json text.
pub fn search(
    hf: &HfModel,
    weights: &Weights,
    imp: &Importance,
    s: &PruneSettings,
    params: f64,
    data: &[PathBuf],
    progress: &dyn Fn(usize, usize),
) -> Result<(Plan, SearchReport, String), PruneError> {
    let cfg = &hf.config;
    let total = cfg.param_count();
    let budget = if params <= 1.0 { (params * total as f64) as usize } else { params as usize };
    if params <= 0.0 || budget > total {
        return Err(input(format!("--params {params}: budget {budget} must be positive and at most the model's {total} parameters")));
    }
    let has = |a: &str| s.axes == "all" || s.axes.split(',').any(|x| x.trim() == a);
    if let Some(a) =
        s.axes.split(',').find(|a| !["all", "depth", "hidden", "heads", "mlp"].contains(&a.trim()))
    {
        return Err(input(format!("--axes: unknown axis {a:?} (all, depth, hidden, heads, mlp)")));
    }
    if data.is_empty() {
        return Err(input("--params ranks candidates by KL to the original model on held-out text: give --data FILE".into()));
    }
    let axes =
        Axes { depth: has("depth"), hidden: has("hidden"), heads: has("heads"), mlp: has("mlp") };
    let all = enumerate(cfg, budget, s.tolerance, s.multiple, axes);
    if all.is_empty() {
        return Err(input(format!("no architecture within {:.1}% of {budget} parameters on multiples of {} along {}; widen --tolerance or --axes",
            100.0 * s.tolerance, s.multiple, s.axes)));
    }
    // held out: the last paragraphs (scoring reads from the start)
    let tok = hf.tokenizer()?;
    let need = s.proxy_samples * s.seq_len;
    let docs = orlik_score::run::tokenize_paragraphs(&tok, data, need, true)?;
    let eos = cfg.eos_ids().first().copied();
    let batches: Vec<Vec<Vec<u32>>> =
        orlik_score::calibration_batches(&docs, eos, s.proxy_samples, s.seq_len, 2)?
            .into_iter()
            .map(|b| b.0)
            .collect();
    let teacher_model = orlik_model::Model::new(cfg, weights, ModelOptions::default())?;
    let teacher = teacher_logprobs(&teacher_model, &batches)?;
    drop(teacher_model);
    let mut short = shortlist(all.clone(), s.candidates);
    let mut plans = Vec::new();
    for (i, c) in short.iter_mut().enumerate() {
        let (kl, plan) = evaluate(cfg, weights, imp, s.depth_method, c, &batches, &teacher)?;
        c.kl = Some(kl);
        plans.push(plan);
        progress(i + 1, plans.len().max(s.candidates.min(all.len())));
    }
    let mut order: Vec<usize> = (0..short.len()).collect();
    order.sort_by(|&a, &b| {
        short[a].kl.partial_cmp(&short[b].kl).unwrap_or(std::cmp::Ordering::Equal)
    });
    let mut rows = Vec::new();
    let mut ranked = Vec::new();
    for (rank, &i) in order.iter().enumerate() {
        let c = &short[i];
        let t = c.target;
        let kl = c.kl.unwrap_or(f64::NAN);
        ranked.push(CandidateRow { rank: rank + 1, target: t, params: c.params, kl });
        let mut row = serde_json::json!({"rank": rank + 1, "layers": t.layers, "hidden": t.hidden, "heads": t.heads,
            "kv_heads": t.kv_heads, "ffn": t.ffn, "params": c.params, "kl": c.kl});
        if rank < s.export {
            row["plan"] = serde_json::to_value(&plans[i]).unwrap_or_default();
        }
        rows.push(row);
    }
    let table = serde_json::json!({"budget": budget, "tolerance": s.tolerance, "multiple": s.multiple, "axes": s.axes,
        "proxy": {"metric": "KL(original || pruned) per token", "samples": batches.iter().map(Vec::len).sum::<usize>(), "seq_len": s.seq_len},
        "candidates": rows});
    let best =
        order.first().map(|&i| plans[i].clone()).ok_or_else(|| input("no candidates".into()))?;
    let rep = SearchReport { budget, shapes: all.len(), candidates: ranked };
    Ok((best, rep, serde_json::to_string_pretty(&table).unwrap_or_default()))
}
