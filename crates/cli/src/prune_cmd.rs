//! `orlik score` and `orlik prune`.

use crate::commands::provenance;
use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use orlik_io::atomic::write_dir_atomically;
use orlik_io::hfdir::{save_pretrained, side_files, HfModel, SaveOptions};
use orlik_model::ModelOptions;
use orlik_prune::select::{build, DepthMethod, Importance, Target};
use orlik_prune::Plan;
use orlik_score::{calibration_batches, Agg, ScoreMeta, ScoreOptions, Scores};
use sha2::{Digest, Sha256};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

fn sha256_files(paths: &[&Path]) -> Result<String> {
    let mut h = Sha256::new();
    for p in paths {
        let mut f = std::fs::File::open(p).with_context(|| p.display().to_string())?;
        std::io::copy(&mut f, &mut h).with_context(|| p.display().to_string())?;
    }
    Ok(format!("{:x}", h.finalize()))
}

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
}

pub fn score(a: ScoreArgs) -> Result<()> {
    if a.output.exists() && !a.force {
        bail!("{} already exists (use --force to replace it)", a.output.display());
    }
    let hf = HfModel::open(&a.model)?;
    let tok = hf.tokenizer()?;
    let model = hf.load(ModelOptions::default())?;
    let eos = hf.config.eos_ids().first().copied();
    // Paragraphs (blank-line separated), tokenized until enough tokens for the samples.
    let mut docs = Vec::new();
    let mut have = 0;
    for f in &a.data {
        let text = orlik_eval::read_text(f)?;
        for p in text.split("\n\n").filter(|p| !p.trim().is_empty()) {
            let ids = tok.encode(p, false).map_err(|e| anyhow::anyhow!("{}: tokenizing: {e}", f.display()))?;
            have += ids.len() + 1;
            docs.push(ids.get_ids().to_vec());
            if have >= a.samples * a.seq_len {
                break;
            }
        }
    }
    let batches = calibration_batches(&docs, eos, a.samples, a.seq_len, a.batch)?;
    let opts = ScoreOptions { seq: a.seq_agg, batch: a.batch_agg, max_block: a.max_block, loo_batches: a.loo_batches };
    let pb = ProgressBar::new(batches.len() as u64);
    pb.set_style(ProgressStyle::with_template("{msg:16} [{bar:30}] {pos}/{len} eta {eta}").unwrap_or_else(|_| ProgressStyle::default_bar()));
    let t0 = std::time::Instant::now();
    let scores = orlik_score::collect::collect(&model, &batches, &opts, |what, i, n| {
        pb.set_message(what.to_string());
        pb.set_length(n as u64);
        pb.set_position(i as u64);
    })?;
    pb.finish_and_clear();
    let files: Vec<&Path> = hf.checkpoint.files();
    let mut model_files = vec![hf.dir.join("config.json")];
    model_files.extend(files.iter().map(|p| p.to_path_buf()));
    let meta = ScoreMeta {
        format_version: orlik_score::FORMAT_VERSION,
        model_sha256: sha256_files(&model_files.iter().map(PathBuf::as_path).collect::<Vec<_>>())?,
        data_sha256: sha256_files(&a.data.iter().map(PathBuf::as_path).collect::<Vec<_>>())?,
        settings: opts,
        samples: batches.iter().map(|b| b.0.len()).sum(),
        seq_len: a.seq_len,
        tokens: scores.tokens,
        full_loss: scores.full_loss,
        num_hidden_layers: hf.config.num_hidden_layers,
    };
    let report = report(&scores, &meta, t0.elapsed().as_secs_f64());
    write_dir_atomically::<anyhow::Error>(&a.output, a.force, |tmp| {
        scores.save(tmp, &meta)?;
        std::fs::write(tmp.join("report.md"), &report)?;
        std::fs::write(tmp.join("orlik.json"), provenance())?;
        Ok(())
    })?;
    print!("{report}");
    eprintln!("scores written to {}", a.output.display());
    Ok(())
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
        let _ = writeln!(r, "| {l} | {:.4} | {:.4} | {:.4} | {:.4} |", s.bi[l], a, s.loo_kl[l], s.loo_loss[l]);
    }
    let _ = writeln!(r, "\n## Width\n");
    let _ = writeln!(r, "| layer | MLP min / median / max | head scores |\n| --- | --- | --- |");
    for l in 0..s.mlp.len() {
        let mut v = s.mlp[l].clone();
        v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
        let heads: Vec<String> = s.heads[l].iter().map(|x| format!("{x:.2}")).collect();
        let _ = writeln!(r, "| {l} | {:.3} / {:.3} / {:.3} | {} |", v[0], v[v.len() / 2], v[v.len() - 1], heads.join(" "));
    }
    let mut h = s.hidden.clone();
    h.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    let _ = writeln!(r, "\nHidden channels: min {:.3}, median {:.3}, max {:.3}.", h[0], h[h.len() / 2], h[h.len() - 1]);
    r
}

pub struct PruneArgs {
    pub model: PathBuf,
    pub scores: Option<PathBuf>,
    pub plan: Option<PathBuf>,
    pub target: Target,
    pub depth: DepthMethod,
    pub importance: String,
    pub seed: u64,
    pub output: PathBuf,
    pub force: bool,
}

pub fn prune(a: PruneArgs) -> Result<()> {
    if a.output.exists() && !a.force {
        bail!("{} already exists (use --force to replace it)", a.output.display());
    }
    let hf = HfModel::open(&a.model)?;
    let cfg = &hf.config;
    let weights = hf.checkpoint.load_all(candle_core::DType::F32)?;
    let plan = if let Some(p) = &a.plan {
        let text = std::fs::read_to_string(p).with_context(|| p.display().to_string())?;
        Plan::from_json(&text, &p.display().to_string())?
    } else {
        let imp = match a.importance.as_str() {
            "minitron" => {
                let dir = a.scores.as_ref().context("--importance minitron needs --scores DIR (from `orlik score`)")?;
                let (s, meta) = Scores::load(dir)?;
                if meta.num_hidden_layers != cfg.num_hidden_layers || s.mlp.first().map(Vec::len) != Some(cfg.intermediate_size) {
                    bail!("{}: scores are for another model ({} layers)", dir.display(), meta.num_hidden_layers);
                }
                Importance::from_scores(&s, a.depth)
            }
            "magnitude" => Importance::magnitude(cfg, &weights)?,
            "random" => Importance::random(cfg, a.seed),
            other => bail!("unknown --importance {other:?} (minitron, magnitude, random)"),
        };
        build(cfg, &imp, &a.target, a.depth)?
    };
    let (pcfg, pw) = orlik_prune::apply(cfg, &weights, &plan)?;
    let mut tensors: Vec<(String, candle_core::Tensor)> = pw.into_iter().collect();
    tensors.sort_by(|x, y| orlik_io::convert::layer_order(&x.0).cmp(&orlik_io::convert::layer_order(&y.0)));
    let dtype = hf.stored_dtypes().first().copied().unwrap_or(candle_core::DType::F32);
    let mut files = side_files(&a.model)?;
    files.retain(|(n, _)| n != "orlik.json");
    files.push(("prune_plan.json".into(), plan.to_json().into_bytes()));
    files.push(("orlik.json".into(), provenance()));
    let opts = SaveOptions { dtype, max_shard_bytes: 2_000_000_000, overwrite: a.force };
    save_pretrained(&a.output, &pcfg, &tensors, &files, &opts)?;
    let count = |c: &orlik_model::Config| c.expected_tensors().iter().map(|(_, s)| s.iter().product::<usize>()).sum::<usize>();
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
