//! sft, dpo, grpo and `eval reward`: the flags as `orlik_align::stage`'s settings, printing.

use anyhow::Result;
use clap::Args;
use orlik_align::stage::{AlignOutcome, AlignRun, DpoSettings, GrpoSettings, Heldout, SftSettings};
use orlik_train::runner::Outcome;
use std::path::{Path, PathBuf};

/// Where `orlik sft`, `orlik dpo` and `orlik grpo` read and write (their settings follow).
#[derive(Args, Debug, Clone)]
pub struct AlignArgs {
    /// HF model directory to align (its tokenizer_config.json chat template is used; ChatML
    /// when it has none).
    pub model: PathBuf,
    /// Output directory: final/ (HF model), checkpoints/, metrics.jsonl, run.json, PNG curves.
    #[arg(short, long)]
    pub output: PathBuf,
    /// Continue the run in --output from its last checkpoint (same settings required).
    #[arg(long)]
    pub resume: bool,
    /// Replace --output if it holds another run.
    #[arg(long, conflicts_with = "resume")]
    pub force: bool,
    /// Stored dtype of final/ [default: the model's].
    #[arg(long, value_parser = ["f32", "f16", "bf16"])]
    pub save_dtype: Option<String>,
}

#[derive(Args, Debug, Clone)]
pub struct SftArgs {
    #[command(flatten)]
    pub common: AlignArgs,
    #[command(flatten)]
    pub settings: SftSettings,
}

#[derive(Args, Debug, Clone)]
pub struct DpoArgs {
    #[command(flatten)]
    pub common: AlignArgs,
    #[command(flatten)]
    pub settings: DpoSettings,
}

#[derive(Args, Debug, Clone)]
pub struct GrpoArgs {
    #[command(flatten)]
    pub common: AlignArgs,
    #[command(flatten)]
    pub settings: GrpoSettings,
}

/// Run one stage with the signal flag and the test hook; print how it ended.
fn stage(a: &AlignArgs, go: impl FnOnce(&AlignRun) -> Result<AlignOutcome>) -> Result<()> {
    let r = AlignRun {
        model: &a.model,
        out: &a.output,
        resume: a.resume,
        force: a.force,
        save_dtype: orlik_train::lm::save_dtype(a.save_dtype.as_deref()),
        ctl: crate::term::control(),
        notice: &crate::term::notice,
    };
    let o = go(&r)?;
    if let Outcome::Interrupted { step } = o.outcome {
        crate::term::interrupted(step);
    }
    println!("{}", o.summary());
    Ok(())
}

pub fn sft(a: SftArgs) -> Result<()> {
    stage(&a.common, |r| Ok(orlik_align::stage::sft(&a.settings, r)?))
}

pub fn dpo(a: DpoArgs) -> Result<()> {
    stage(&a.common, |r| Ok(orlik_align::stage::dpo(&a.settings, r)?))
}

pub fn grpo(a: GrpoArgs) -> Result<()> {
    stage(&a.common, |r| Ok(orlik_align::stage::grpo(&a.settings, r)?))
}

/// `orlik eval reward`: greedy completions of each prompt and their mean reward (accuracy for
/// 0/1 verifiers).
pub fn eval_reward(
    model: &Path,
    prompts: &Path,
    reward: &[String],
    limit: usize,
    max_new_tokens: usize,
    json_out: bool,
) -> Result<()> {
    let h = Heldout { prompts: prompts.into(), reward: reward.to_vec(), limit, max_new_tokens };
    let pb = crate::term::counter(0, "prompts");
    let e = orlik_align::stage::eval_reward(model, &h, &|i, n| {
        crate::term::show(&pb, "prompts", i, n)
    })?;
    pb.finish_and_clear();
    let mean = e.reward_mean;
    let out = serde_json::json!({"model": model, "prompts": prompts, "n": e.n, "reward_mean": mean, "reward": reward, "examples": e.examples});
    if json_out {
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!("{}: mean reward {mean:.4} over {} prompts (greedy, {max_new_tokens} new tokens at most)", model.display(), e.n);
        for x in &e.examples {
            println!("  answer {:?} -> {:?} ({})", x["answer"], x["completion"], x["reward"]);
        }
    }
    Ok(())
}
