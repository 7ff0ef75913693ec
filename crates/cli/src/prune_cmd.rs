//! `orlik score` and `orlik prune`.

use crate::commands::provenance;
use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use orlik_io::atomic::write_dir_atomically;
use orlik_io::hfdir::{save_pretrained_with, side_files, HfModel, SaveOptions};
use orlik_model::ModelOptions;
use orlik_prune::select::{build, DepthMethod, Importance, Target};
use orlik_prune::Plan;
use orlik_score::{calibration_batches, Agg, ScoreMeta, ScoreOptions, Scores};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

pub struct ScoreArgs {
    pub model: PathBuf,
    pub data: Vec<PathBuf>,
    pub samples: usize,
    pub seq_len: usize,
    pub batch: usize,
    pub seq_agg: Agg,
    pub batch_agg: Agg,
    pub max_block: usize,
    pub loo_batches: usize,
    pub output: PathBuf,
    pub force: bool,
    pub in_memory: bool,
    pub measure_cost: bool,
}

pub fn score(a: ScoreArgs) -> Result<()> {
    a.validate()?;
    let inputs: Vec<&Path> =
        std::iter::once(a.model.as_path()).chain(a.data.iter().map(PathBuf::as_path)).collect();
    orlik_io::output::check(
        &a.output,
        "score",
        &inputs,
        orlik_io::output::Mode::from_flags(a.force, false),
    )?;
    let hf = HfModel::open(&a.model)?;
    let tok = hf.tokenizer()?;
    let eos = hf.config.eos_ids().first().copied();
    // Paragraphs (blank-line separated), tokenized until enough tokens for the samples.
    let docs = tokenize_paragraphs(&tok, &a.data, a.samples * a.seq_len, false)?;
    let batches = calibration_batches(&docs, eos, a.samples, a.seq_len, a.batch)?;
    let opts = ScoreOptions {
        seq: a.seq_agg,
        batch: a.batch_agg,
        max_block: a.max_block,
        loo_batches: a.loo_batches,
    };
    let pb = ProgressBar::new(batches.len() as u64);
    pb.set_style(
        ProgressStyle::with_template("{msg:16} [{bar:30}] {pos}/{len} eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let t0 = std::time::Instant::now();
    let show = |what: &str, i: usize, n: usize| {
        pb.set_message(what.to_string());
        pb.set_length(n as u64);
        pb.set_position(i as u64);
    };
    let scores = if a.in_memory {
        let model = hf.load(ModelOptions::default())?;
        orlik_score::collect::collect(&model, &batches, &opts, show)?
    } else {
        orlik_score::collect::collect_streaming(&hf, &batches, &opts, show)?
    };
    pb.finish_and_clear();
    let meta = ScoreMeta {
        format_version: orlik_score::FORMAT_VERSION,
        model_sha256: hf.content_sha256()?,
        data_sha256: orlik_io::hfdir::sha256_files(&a.data)?,
        settings: opts,
        samples: batches.iter().map(|b| b.0.len()).sum(),
        seq_len: a.seq_len,
        tokens: scores.tokens,
        full_loss: scores.full_loss,
        num_hidden_layers: hf.config.num_hidden_layers,
    };
    let mut report = report(&scores, &meta, t0.elapsed().as_secs_f64());
    if a.measure_cost {
        // Same batches, measured side by side: a plain forward vs the scoring pass without
        // leave-one-out (which by definition costs one forward per layer).
        let model = hf.load(ModelOptions::default())?;
        let plain = std::time::Instant::now();
        for (ids, valid) in &batches {
            let t = ids.first().map_or(0, Vec::len);
            let x = candle_core::Tensor::from_vec(
                ids.iter().flatten().copied().collect::<Vec<u32>>(),
                (ids.len(), t),
                &candle_core::Device::Cpu,
            )?;
            model.forward_hidden(&x, Some(valid), None, None)?; // without lm_head: the strict comparison
        }
        let plain = plain.elapsed().as_secs_f64();
        let no_loo = ScoreOptions { loo_batches: 0, ..meta.settings.clone() };
        let sc = std::time::Instant::now();
        orlik_score::collect::collect(&model, &batches, &no_loo, |_, _, _| {})?;
        let sc = sc.elapsed().as_secs_f64();
        let _ = writeln!(report, "\nCost: plain forward to the final hidden state {plain:.2} s, scoring pass without leave-one-out {sc:.2} s, ratio {:.2}.", sc / plain);
    }
    let _ = writeln!(report, "\n## Charts\n\n![depth](depth.png)\n![heads](heads.png)\n![mlp](mlp.png)\n![hidden](hidden.png)\n\n{}", orlik_score::charts::CAPTIONS);
    if let Some(kb) = peak_rss_kb() {
        let _ = writeln!(
            report,
            "\nPeak resident memory: {:.1} MB ({}; checkpoint {:.1} MB).",
            kb as f64 / 1024.0,
            if a.in_memory { "whole model in memory" } else { "layer by layer" },
            hf.checkpoint.bytes_on_disk() as f64 / 1e6
        );
    }
    write_dir_atomically::<anyhow::Error>(&a.output, "score", a.force, |tmp| {
        scores.save(tmp, &meta)?;
        orlik_score::charts::draw(&scores, tmp)?;
        std::fs::write(tmp.join("report.md"), &report)?;
        std::fs::write(tmp.join("orlik.json"), provenance())?;
        Ok(())
    })?;
    print!("{report}");
    eprintln!("scores written to {}", a.output.display());
    Ok(())
}

impl ScoreArgs {
    /// Every option checked before any work, each error naming its flag.
    pub fn validate(&self) -> Result<()> {
        if self.seq_len < 2 {
            bail!("--seq-len {}: must be at least 2 tokens", self.seq_len);
        }
        for (flag, v) in
            [("--samples", self.samples), ("--batch", self.batch), ("--max-block", self.max_block)]
        {
            if v == 0 {
                bail!("{flag} 0: must be at least 1");
            }
        }
        if self.data.is_empty() {
            bail!("--data: give at least one calibration text file");
        }
        Ok(())
    }
}

impl PruneArgs {
    /// Every option checked before any work, each error naming its flag.
    pub fn validate(&self) -> Result<()> {
        let t = &self.target;
        for (flag, v) in [
            ("--layers", t.layers),
            ("--hidden", t.hidden),
            ("--heads", t.heads),
            ("--kv-heads", t.kv_heads),
            ("--ffn", t.ffn),
        ] {
            if v == Some(0) {
                bail!("{flag} 0: must be at least 1");
            }
        }
        if self.max_shard_bytes == 0 {
            bail!("--max-shard-size: must be positive");
        }
        if let Some(s) = &self.search {
            if let Some(e) = orlik_prune::search::budget_error(s.params) {
                bail!("--params {e}");
            }
            if s.seq_len < 2 {
                bail!("--seq-len {}: must be at least 2 tokens", s.seq_len);
            }
            for (flag, v) in [
                ("--multiple", s.multiple),
                ("--candidates", s.candidates),
                ("--proxy-samples", s.proxy_samples),
            ] {
                if v == 0 {
                    bail!("{flag} 0: must be at least 1");
                }
            }
            if !(s.tolerance > 0.0 && s.tolerance < 1.0) {
                bail!("--tolerance {}: must be in (0, 1)", s.tolerance);
            }
        }
        Ok(())
    }
}

fn report(s: &Scores, m: &ScoreMeta, secs: f64) -> String {
    let mut r = String::new();
    let _ = writeln!(r, "# Importance scores\n");
    let _ = writeln!(
        r,
        "{} samples x {} tokens ({} tokens), sequence aggregation {:?}, batch aggregation {:?}, {:.0} s. Calibration loss {:.4}.\n",
        m.samples, m.seq_len, m.tokens, m.settings.seq, m.settings.batch, secs, m.full_loss
    );
    let _ = writeln!(r, "## Depth (higher = more important)\n");
    let _ = writeln!(r, "| layer | block influence | angular (n=1) | LOO KL | LOO loss |\n| --- | --- | --- | --- | --- |");
    for l in 0..s.bi.len() {
        let a = s.angular.first().and_then(|v| v.get(l)).copied().unwrap_or(f32::NAN);
        let _ = writeln!(
            r,
            "| {l} | {:.4} | {:.4} | {:.4} | {:.4} |",
            s.bi[l], a, s.loo_kl[l], s.loo_loss[l]
        );
    }
    let _ = writeln!(r, "\n## Width\n");
    let _ = writeln!(r, "| layer | MLP min / median / max | head scores |\n| --- | --- | --- |");
    for l in 0..s.mlp.len() {
        let mut v = s.mlp[l].clone();
        v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
        let heads: Vec<String> = s.heads[l].iter().map(|x| format!("{x:.2}")).collect();
        let _ = writeln!(
            r,
            "| {l} | {:.3} / {:.3} / {:.3} | {} |",
            v[0],
            v[v.len() / 2],
            v[v.len() - 1],
            heads.join(" ")
        );
    }
    let mut h = s.hidden.clone();
    h.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    let _ = writeln!(
        r,
        "\nHidden channels: min {:.3}, median {:.3}, max {:.3}.",
        h[0],
        h[h.len() / 2],
        h[h.len() - 1]
    );
    r
}

/// `--depth-method` / `prune.depth_method`: bi (default), block or loo.
pub fn depth_method(name: &str) -> DepthMethod {
    match name {
        "block" => DepthMethod::Block,
        "loo" => DepthMethod::Loo,
        _ => DepthMethod::Bi,
    }
}

/// The `--params` budget search settings.
pub struct Search {
    pub params: f64,
    pub data: Vec<PathBuf>,
    pub multiple: usize,
    pub tolerance: f64,
    pub axes: String,
    pub candidates: usize,
    pub export: usize,
    pub proxy_samples: usize,
    pub seq_len: usize,
}

pub struct PruneArgs {
    pub search: Option<Search>,
    pub model: PathBuf,
    pub scores: Option<PathBuf>,
    pub plan: Option<PathBuf>,
    pub target: Target,
    pub depth: DepthMethod,
    pub importance: String,
    pub seed: u64,
    pub output: PathBuf,
    pub force: bool,
    pub max_shard_bytes: u64,
}

pub fn prune(a: PruneArgs) -> Result<()> {
    a.validate()?;
    let mut inputs: Vec<&Path> = vec![a.model.as_path()];
    inputs.extend(a.scores.iter().chain(&a.plan).map(PathBuf::as_path));
    inputs.extend(a.search.iter().flat_map(|s| s.data.iter().map(PathBuf::as_path)));
    orlik_io::output::check(
        &a.output,
        "prune",
        &inputs,
        orlik_io::output::Mode::from_flags(a.force, false),
    )?;
    let hf = HfModel::open(&a.model)?;
    let cfg = &hf.config;
    // Whole weights in memory only where a choice needs them (magnitude importance, the budget
    // search); the final slicing streams tensor by tensor from the mmap'd checkpoint.
    let needs_weights = a.plan.is_none() && (a.importance == "magnitude" || a.search.is_some());
    let weights = if needs_weights {
        hf.checkpoint.load_all(candle_core::DType::F32)?
    } else {
        orlik_model::Weights::new()
    };
    let mut extra: Vec<(String, Vec<u8>)> = Vec::new();
    let plan = if let Some(p) = &a.plan {
        let text = std::fs::read_to_string(p).with_context(|| p.display().to_string())?;
        Plan::from_json(&text, &p.display().to_string())?
    } else {
        let imp = match a.importance.as_str() {
            "minitron" => {
                let dir = a
                    .scores
                    .as_ref()
                    .context("--importance minitron needs --scores DIR (from `orlik score`)")?;
                let (s, meta) = Scores::load(dir)?;
                if meta.num_hidden_layers != cfg.num_hidden_layers
                    || s.mlp.first().map(Vec::len) != Some(cfg.intermediate_size)
                {
                    bail!(
                        "{}: scores are for another model ({} layers)",
                        dir.display(),
                        meta.num_hidden_layers
                    );
                }
                let here = hf.content_sha256()?;
                if meta.model_sha256 != here {
                    bail!(
                        "{}: scores were computed on another checkpoint (model sha256 {} vs {})",
                        dir.display(),
                        &meta.model_sha256[..12.min(meta.model_sha256.len())],
                        &here[..12]
                    );
                }
                Importance::from_scores(&s, a.depth)
            }
            "magnitude" => Importance::magnitude(cfg, &weights)?,
            "random" => Importance::random(cfg, a.seed),
            other => bail!("unknown --importance {other:?} (minitron, magnitude, random)"),
        };
        match &a.search {
            Some(s) => {
                let (plan, table) = search(&hf, &weights, &imp, a.depth, s)?;
                extra.push(("candidates.json".to_string(), table.into_bytes()));
                plan
            }
            None => build(cfg, &imp, &a.target, a.depth)?,
        }
    };
    drop(weights);
    let pcfg = plan.pruned_config(cfg);
    let specs = orlik_prune::slice::slices(cfg, &plan)?;
    let dtype = hf.stored_dtypes().first().copied().unwrap_or(candle_core::DType::F32);
    let mut files = side_files(&a.model)?;
    files.retain(|(n, _)| n != "orlik.json");
    files.push(("prune_plan.json".into(), plan.to_json().into_bytes()));
    files.push(("orlik.json".into(), provenance()));
    files.extend(extra);
    let opts = SaveOptions {
        dtype,
        max_shard_bytes: a.max_shard_bytes,
        overwrite: a.force,
        kind: "prune",
    };
    let shapes: Vec<(String, Vec<usize>)> =
        specs.iter().map(|s| (s.name.clone(), s.shape.clone())).collect();
    let pb = ProgressBar::new(specs.len() as u64);
    let mut produce = |name: &str| -> Result<candle_core::Tensor, orlik_io::IoError> {
        pb.inc(1);
        let s = specs.iter().find(|s| s.name == name).ok_or_else(|| orlik_io::IoError::Tensor {
            path: a.output.clone(),
            name: name.into(),
            msg: "not in the plan".into(),
        })?;
        let t = hf.checkpoint.tensor(&s.src)?;
        let out = orlik_prune::slice::cut(&t, s).map_err(|e| orlik_io::IoError::Tensor {
            path: a.model.clone(),
            name: s.src.clone(),
            msg: e.to_string(),
        });
        hf.checkpoint.release(&s.src);
        out
    };
    save_pretrained_with(&a.output, &pcfg, &shapes, &mut produce, &files, &opts)?;
    pb.finish_and_clear();
    let count = |c: &orlik_model::Config| {
        c.expected_tensors().iter().map(|(_, s)| s.iter().product::<usize>()).sum::<usize>()
    };
    let (before, after) = (count(cfg), count(&pcfg));
    println!(
        "pruned {} -> {}: layers {}->{}, hidden {}->{}, heads {}->{} (kv {}->{}), ffn {}->{}; parameters {} -> {} ({:.1}%)",
        a.model.display(),
        a.output.display(),
        cfg.num_hidden_layers,
        pcfg.num_hidden_layers,
        cfg.hidden_size,
        pcfg.hidden_size,
        cfg.num_attention_heads,
        pcfg.num_attention_heads,
        cfg.num_kv_heads(),
        pcfg.num_kv_heads(),
        cfg.intermediate_size,
        pcfg.intermediate_size,
        before,
        after,
        100.0 * after as f64 / before as f64
    );
    Ok(())
}

/// `--params`: enumerate shapes within the tolerance of the budget, rank a shortlist by
/// KL(teacher ‖ pruned) on the last paragraphs of `--data`, return the best plan and a JSON table.
fn search(
    hf: &HfModel,
    weights: &orlik_model::Weights,
    imp: &Importance,
    depth: DepthMethod,
    s: &Search,
) -> Result<(Plan, String)> {
    use orlik_prune::search::{enumerate, evaluate, shortlist, teacher_logprobs, Axes};
    let cfg = &hf.config;
    let total = cfg.param_count();
    let budget =
        if s.params <= 1.0 { (s.params * total as f64) as usize } else { s.params as usize };
    if s.params <= 0.0 || budget > total {
        bail!("--params {}: budget {budget} must be positive and at most the model's {total} parameters", s.params);
    }
    let has = |a: &str| s.axes == "all" || s.axes.split(',').any(|x| x.trim() == a);
    for a in s.axes.split(',') {
        if !["all", "depth", "hidden", "heads", "mlp"].contains(&a.trim()) {
            bail!("--axes: unknown axis {a:?} (all, depth, hidden, heads, mlp)");
        }
    }
    if s.data.is_empty() {
        bail!("--params ranks candidates by KL to the original model on held-out text: give --data FILE");
    }
    let axes =
        Axes { depth: has("depth"), hidden: has("hidden"), heads: has("heads"), mlp: has("mlp") };
    let all = enumerate(cfg, budget, s.tolerance, s.multiple, axes);
    if all.is_empty() {
        bail!("no architecture within {:.1}% of {budget} parameters on multiples of {} along {}; widen --tolerance or --axes",
            100.0 * s.tolerance, s.multiple, s.axes);
    }
    // held out: the last paragraphs (scoring reads from the start)
    let docs = tokenize_paragraphs(&hf.tokenizer()?, &s.data, s.proxy_samples * s.seq_len, true)?;
    let batches: Vec<Vec<Vec<u32>>> =
        calibration_batches(&docs, cfg.eos_ids().first().copied(), s.proxy_samples, s.seq_len, 2)?
            .into_iter()
            .map(|b| b.0)
            .collect();
    let teacher_model = orlik_model::Model::new(cfg, weights, ModelOptions::default())?;
    let teacher = teacher_logprobs(&teacher_model, &batches)?;
    drop(teacher_model);
    let mut short = shortlist(all.clone(), s.candidates);
    eprintln!(
        "{} shapes within {:.1}% of {budget} parameters; ranking {} by KL to the original",
        all.len(),
        100.0 * s.tolerance,
        short.len()
    );
    let pb = ProgressBar::new(short.len() as u64);
    let mut plans = Vec::new();
    for c in short.iter_mut() {
        let (kl, plan) = evaluate(cfg, weights, imp, depth, c, &batches, &teacher)?;
        c.kl = Some(kl);
        plans.push(plan);
        pb.inc(1);
    }
    pb.finish_and_clear();
    let mut order: Vec<usize> = (0..short.len()).collect();
    order.sort_by(|&a, &b| {
        short[a].kl.partial_cmp(&short[b].kl).unwrap_or(std::cmp::Ordering::Equal)
    });
    println!(
        "{:>4} {:>6} {:>6} {:>5} {:>4} {:>6} {:>12} {:>10}",
        "rank", "layers", "hidden", "heads", "kv", "ffn", "params", "KL"
    );
    let mut rows = Vec::new();
    for (rank, &i) in order.iter().enumerate() {
        let c = &short[i];
        let t = c.target;
        let g = |x: Option<usize>| x.unwrap_or(0);
        println!(
            "{:>4} {:>6} {:>6} {:>5} {:>4} {:>6} {:>12} {:>10.4}",
            rank + 1,
            g(t.layers),
            g(t.hidden),
            g(t.heads),
            g(t.kv_heads),
            g(t.ffn),
            c.params,
            c.kl.unwrap_or(f64::NAN)
        );
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
    Ok((plans[order[0]].clone(), serde_json::to_string_pretty(&table).unwrap_or_default()))
}

/// Peak resident set size of this process (Linux VmHWM), in KiB.
pub(crate) fn peak_rss_kb() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Paragraphs (blank-line separated) of `files`, tokenized without special tokens until about
/// `need` tokens are collected; taken from the end of the text when `from_end` (held-out text).
fn tokenize_paragraphs(
    tok: &tokenizers::Tokenizer,
    files: &[PathBuf],
    need: usize,
    from_end: bool,
) -> Result<Vec<Vec<u32>>> {
    let mut paras: Vec<String> = Vec::new();
    for f in files {
        let text = orlik_eval::read_text(f)?;
        paras.extend(text.split("\n\n").filter(|p| !p.trim().is_empty()).map(String::from));
    }
    if from_end {
        paras.reverse();
    }
    let mut docs = Vec::new();
    let mut have = 0;
    for p in &paras {
        let ids = tok
            .encode(p.as_str(), false)
            .map_err(|e| anyhow::anyhow!("tokenizing calibration text: {e}"))?;
        have += ids.len() + 1;
        docs.push(ids.get_ids().to_vec());
        if have >= need {
            break;
        }
    }
    Ok(docs)
}
