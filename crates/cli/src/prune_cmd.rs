//! `orlik score` and `orlik prune`: flags into the libraries' settings, progress bars, printing.
//! The stages themselves are `orlik_score::run` and `orlik_prune::run`.

use anyhow::Result;
use clap::Args;
use orlik_prune::{PruneInputs, PruneSettings};
use orlik_score::ScoreSettings;
use std::path::{Path, PathBuf};

/// `orlik score`: the scoring pass with a progress bar; the report printed.
pub fn score(
    s: &ScoreSettings,
    model: &Path,
    data: &[PathBuf],
    output: &Path,
    force: bool,
) -> Result<()> {
    let pb = crate::term::bar("{msg:16} [{bar:30}] {pos}/{len} eta {eta}");
    let show = |what: &str, i: usize, n: usize| crate::term::show(&pb, what, i, n);
    let r = orlik_score::run(s, model, data, output, force, &show)?;
    pb.finish_and_clear();
    print!("{}", r.report);
    eprintln!("scores written to {}", output.display());
    Ok(())
}

/// A lowercase name (`bi`, `minitron`...) as the settings' enum of that name.
pub fn parse_name<T: serde::de::DeserializeOwned>(flag: &str, v: &str) -> Result<T> {
    serde_json::from_value(serde_json::Value::String(v.into()))
        .map_err(|e| anyhow::anyhow!("{flag} {v:?}: {e}"))
}

/// `orlik prune`: prune with a progress bar; the budget search's ranking and the shapes printed.
pub fn prune(s: &PruneSettings, inputs: &PruneInputs, output: &Path, force: bool) -> Result<()> {
    let pb = crate::term::bar("{msg:12} [{bar:30}] {pos}/{len}");
    let show = |i: usize, n: usize| crate::term::show(&pb, "prune", i, n);
    let o = orlik_prune::run(s, inputs, output, force, &show)?;
    pb.finish_and_clear();
    println!("{}", o.summary(s, inputs.model, output));
    Ok(())
}

/// `orlik score` flags.
#[derive(Args, Debug, Clone)]
pub struct ScoreArgs {
    /// HF model directory.
    pub model: PathBuf,
    /// Calibration text files (paragraphs separated by blank lines).
    #[arg(long, num_args = 1.., required = true)]
    pub data: Vec<PathBuf>,
    /// Calibration windows.
    #[arg(long, default_value_t = 32)]
    pub samples: usize,
    #[arg(long, default_value_t = 256)]
    pub seq_len: usize,
    /// Windows per forward pass.
    #[arg(long, default_value_t = 4)]
    pub batch: usize,
    /// Aggregation over the sequence: mean (of |x|), l2, max, var.
    #[arg(long, default_value = "mean")]
    pub seq_agg: orlik_score::Agg,
    /// Aggregation over the batch: mean, l2, max, var.
    #[arg(long, default_value = "l2")]
    pub batch_agg: orlik_score::Agg,
    /// Largest block of contiguous layers for the angular distance.
    #[arg(long, default_value_t = 8)]
    pub max_block: usize,
    /// Batches also scored with each layer left out (one extra forward per layer each).
    #[arg(long, default_value_t = 2)]
    pub loo_batches: usize,
    /// Load the whole model instead of streaming layer by layer (more memory).
    #[arg(long)]
    pub in_memory: bool,
    /// Also time a plain forward and the scoring pass (without leave-one-out) on the same
    /// batches and report the ratio.
    #[arg(long)]
    pub measure_cost: bool,
    /// Output directory (written atomically).
    #[arg(short, long)]
    pub output: PathBuf,
    #[arg(long)]
    pub force: bool,
}

pub fn score_cmd(a: ScoreArgs) -> Result<()> {
    let s = ScoreSettings {
        samples: a.samples,
        seq_len: a.seq_len,
        batch: a.batch,
        seq_agg: a.seq_agg,
        batch_agg: a.batch_agg,
        max_block: a.max_block,
        loo_batches: a.loo_batches,
        in_memory: a.in_memory,
        measure_cost: a.measure_cost,
    };
    score(&s, &a.model, &a.data, &a.output, a.force)
}

/// `orlik prune` flags.
#[derive(Args, Debug, Clone)]
pub struct PruneArgs {
    /// HF model directory.
    pub model: PathBuf,
    /// Scores from `orlik score` (for --importance minitron).
    #[arg(long)]
    pub scores: Option<PathBuf>,
    /// Re-apply an existing prune_plan.json instead of choosing units.
    #[arg(long, conflicts_with_all = ["scores", "layers", "hidden", "heads", "kv_heads", "ffn"])]
    pub plan: Option<PathBuf>,
    /// Layers to keep.
    #[arg(long)]
    pub layers: Option<usize>,
    /// Hidden size to keep.
    #[arg(long)]
    pub hidden: Option<usize>,
    /// Query heads to keep (a multiple of --kv-heads).
    #[arg(long)]
    pub heads: Option<usize>,
    /// KV groups to keep.
    #[arg(long)]
    pub kv_heads: Option<usize>,
    /// MLP neurons to keep per layer.
    #[arg(long)]
    pub ffn: Option<usize>,
    /// How to choose dropped layers: bi (Block Influence), block (contiguous block with the
    /// smallest angular distance), loo (leave-one-out KL).
    #[arg(long, default_value = "bi", value_parser = ["bi", "block", "loo"])]
    pub depth_method: String,
    /// minitron (activation scores), magnitude (weight norms), random (seeded): the last two
    /// are baselines at the same dimensions.
    #[arg(long, default_value = "minitron", value_parser = ["minitron", "magnitude", "random"])]
    pub importance: String,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Parameter budget: a fraction of the model (e.g. 0.67) or a count (e.g. 90000000).
    #[arg(long, conflicts_with_all = ["plan", "layers", "hidden", "heads", "kv_heads", "ffn"])]
    pub params: Option<f64>,
    /// Held-out text for ranking candidates (the last paragraphs are used).
    #[arg(long, num_args = 1..)]
    pub data: Vec<PathBuf>,
    /// Hidden and MLP sizes are multiples of this.
    #[arg(long, default_value_t = 64)]
    pub multiple: usize,
    /// Relative distance to the budget allowed.
    #[arg(long, default_value_t = 0.02)]
    pub tolerance: f64,
    /// Axes the search may shrink: all, or a comma list of depth, hidden, heads, mlp.
    #[arg(long, default_value = "all")]
    pub axes: String,
    /// Candidates ranked by the KL proxy.
    #[arg(long, default_value_t = 8)]
    pub candidates: usize,
    /// Write the plans of the top K candidates into OUT/candidates.json.
    #[arg(long, default_value_t = 0)]
    pub export_candidates: usize,
    /// Windows of held-out text for the proxy.
    #[arg(long, default_value_t = 4)]
    pub proxy_samples: usize,
    /// Window length for the proxy.
    #[arg(long, default_value_t = 128)]
    pub seq_len: usize,
    /// Largest safetensors shard of the output.
    #[arg(long, default_value = "2GB")]
    pub max_shard_size: String,
    #[arg(short, long)]
    pub output: PathBuf,
    #[arg(long)]
    pub force: bool,
}

pub fn prune_cmd(a: PruneArgs) -> Result<()> {
    let s = PruneSettings {
        params: a.params,
        layers: a.layers,
        hidden: a.hidden,
        heads: a.heads,
        kv_heads: a.kv_heads,
        ffn: a.ffn,
        depth_method: parse_name("--depth-method", &a.depth_method)?,
        importance: parse_name("--importance", &a.importance)?,
        seed: a.seed,
        axes: a.axes,
        multiple: a.multiple,
        tolerance: a.tolerance,
        candidates: a.candidates,
        proxy_samples: a.proxy_samples,
        seq_len: a.seq_len,
        export: a.export_candidates,
        max_shard_bytes: crate::commands::parse_size(&a.max_shard_size)?,
    };
    let inputs = PruneInputs {
        model: &a.model,
        scores: a.scores.as_deref(),
        plan: a.plan.as_deref(),
        data: &a.data,
    };
    prune(&s, &inputs, &a.output, a.force)
}
