//! `orlik score`, `orlik prune` and `orlik sweep`: flags into the libraries' settings, progress
//! bars, printing. The stages themselves are `orlik_score::run`, `orlik_prune::run` and
//! `orlik_pipeline::sweep::run`.

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
    if !orlik_dist::is_root() {
        pb.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let show = |what: &str, i: usize, n: usize| crate::term::show(&pb, what, i, n);
    let r = orlik_score::run(s, model, data, output, force, &show)?;
    pb.finish_and_clear();
    print!("{}", r.report);
    crate::term::notice(&format!("scores written to {}", output.display()));
    Ok(())
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

/// `orlik score` flags: the inputs, then the recipe's `[score]` settings as flags.
#[derive(Args, Debug, Clone)]
pub struct ScoreArgs {
    /// HF model directory.
    pub model: PathBuf,
    /// Calibration text files (paragraphs separated by blank lines).
    #[arg(long, num_args = 1.., required = true)]
    pub data: Vec<PathBuf>,
    #[command(flatten)]
    pub settings: ScoreSettings,
    /// Output directory (written atomically).
    #[arg(short, long)]
    pub output: PathBuf,
    #[arg(long)]
    pub force: bool,
}

pub fn score_cmd(a: ScoreArgs) -> Result<()> {
    score(&a.settings, &a.model, &a.data, &a.output, a.force)
}

/// `orlik prune` flags: the inputs, then the recipe's `[prune]` settings as flags.
#[derive(Args, Debug, Clone)]
pub struct PruneArgs {
    /// HF model directory.
    pub model: PathBuf,
    /// Scores from `orlik score` (for --importance minitron).
    #[arg(long)]
    pub scores: Option<PathBuf>,
    /// Re-apply an existing prune_plan.json instead of choosing units.
    #[arg(long, conflicts_with_all = ["scores", "layers", "hidden", "heads", "kv_heads", "ffn", "params"])]
    pub plan: Option<PathBuf>,
    /// Held-out text for ranking candidates (the last paragraphs are used).
    #[arg(long, num_args = 1..)]
    pub data: Vec<PathBuf>,
    #[command(flatten)]
    pub settings: PruneSettings,
    #[arg(short, long)]
    pub output: PathBuf,
    #[arg(long)]
    pub force: bool,
}

pub fn prune_cmd(a: PruneArgs) -> Result<()> {
    let inputs = PruneInputs {
        model: &a.model,
        scores: a.scores.as_deref(),
        plan: a.plan.as_deref(),
        data: &a.data,
    };
    prune(&a.settings, &inputs, &a.output, a.force)
}

/// `orlik sweep` flags: the inputs, then the sweep's settings.
#[derive(Args, Debug, Clone)]
pub struct SweepArgs {
    /// HF model directory.
    pub model: PathBuf,
    /// Scores from `orlik score` (for --importance minitron, the default).
    #[arg(long)]
    pub scores: Option<PathBuf>,
    /// Held-out text for the budget search's KL ranking (the last paragraphs are used).
    #[arg(long, num_args = 1..)]
    pub data: Vec<PathBuf>,
    /// Texts measured: bits/byte on each, KL and top-1 agreement on the first.
    #[arg(long, num_args = 1.., required = true)]
    pub val: Vec<PathBuf>,
    #[command(flatten)]
    pub settings: orlik_pipeline::sweep::SweepSettings,
    /// Output directory.
    #[arg(short, long)]
    pub output: PathBuf,
    /// Replace an earlier sweep in --output.
    #[arg(long)]
    pub force: bool,
    /// Continue a sweep in --output: its points of the same settings and inputs are kept.
    #[arg(long, conflicts_with = "force")]
    pub resume: bool,
}

pub fn sweep_cmd(a: SweepArgs) -> Result<()> {
    use orlik_pipeline::sweep::{run, SweepControl, SweepInputs};
    let pb = crate::term::bar("{msg:16} [{bar:30}] {pos}/{len} eta {eta}");
    let show = |what: &str, i: usize, n: usize| crate::term::show(&pb, what, i, n);
    let inputs =
        SweepInputs { model: &a.model, scores: a.scores.as_deref(), data: &a.data, val: &a.val };
    let ctl = SweepControl {
        force: a.force,
        resume: a.resume,
        progress: &show,
        after_point: crate::term::step_delay(),
    };
    let o = run(&a.settings, &inputs, &a.output, &ctl)?;
    pb.finish_and_clear();
    print!("{}", o.table);
    if a.resume {
        crate::term::notice(&format!(
            "{} of {} points kept from the earlier sweep, the rest measured",
            o.kept,
            o.points.len()
        ));
    }
    crate::term::notice(&format!(
        "sweep written to {} (sweep.json, sweep.md, sweep_bpb.png, sweep_kl.png)",
        a.output.display()
    ));
    Ok(())
}
