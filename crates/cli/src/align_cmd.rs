//! sft, dpo, grpo and `eval reward`: the flags as `orlik_align::stage`'s settings, printing.

use anyhow::Result;
use clap::Args;
use orlik_align::stage::{
    AlignOutcome, AlignRun, AlignSettings, DpoSettings, GrpoSettings, Heldout, SftSettings,
};
use orlik_train::runner::Outcome;
use std::path::{Path, PathBuf};

/// Options shared by `orlik sft`, `orlik dpo` and `orlik grpo`.
#[derive(Args, Debug, Clone)]
pub struct AlignArgs {
    /// HF model directory to align (its tokenizer_config.json chat template is used; ChatML
    /// when it has none).
    pub model: PathBuf,
    /// Output directory: final/ (HF model), checkpoints/, metrics.jsonl, run.json, PNG curves.
    #[arg(short, long)]
    pub output: PathBuf,
    /// Optimizer steps [default: one pass over the data].
    #[arg(long)]
    pub steps: Option<u64>,
    /// Rows (conversations / pairs / prompts) per micro-batch.
    #[arg(long, default_value_t = 4)]
    pub batch: usize,
    /// Micro-batches per optimizer step.
    #[arg(long, default_value_t = 1)]
    pub grad_accum: usize,
    /// Peak learning rate [default: sft 2e-5, dpo 1e-6, grpo 1e-6].
    #[arg(long)]
    pub lr: Option<f64>,
    /// Warmup steps; 0 = 2% of the steps.
    #[arg(long, default_value_t = 0)]
    pub warmup: u64,
    /// cosine, wsd or constant.
    #[arg(long, default_value = "cosine")]
    pub schedule: orlik_train::optim::Schedule,
    /// Final learning rate [default: lr / 10].
    #[arg(long)]
    pub min_lr: Option<f64>,
    #[arg(long, default_value_t = 0.0)]
    pub weight_decay: f64,
    /// Global gradient-norm clip, 0 = off.
    #[arg(long, default_value_t = 1.0)]
    pub clip: f64,
    /// Seed of the data order (and of GRPO's sampling).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Checkpoint every N steps (the last 2 are kept).
    #[arg(long, default_value_t = 50)]
    pub save_every: u64,
    /// Longest training sequence in tokens: SFT conversations are cut at the end to it, DPO
    /// answers are cut so prompt + answer fits [default: 512, or the model's limit if lower].
    #[arg(long)]
    pub max_len: Option<usize>,
    /// Longest prompt (DPO, GRPO): longer prompts keep their last tokens (counted, reported)
    /// [default: half of --max-len].
    #[arg(long)]
    pub max_prompt: Option<usize>,
    /// Skip malformed JSONL rows (counted) instead of stopping at the first.
    #[arg(long)]
    pub skip_bad: bool,
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
    /// JSONL rows {"messages": [{"role", "content"}, ...]}; the loss is on assistant turns only.
    #[arg(long)]
    pub data: PathBuf,
}

#[derive(Args, Debug, Clone)]
pub struct DpoArgs {
    #[command(flatten)]
    pub common: AlignArgs,
    /// JSONL rows {"prompt", "chosen", "rejected"}: plain text, or a list of messages for the
    /// prompt (rendered with the chat template) and answer strings.
    #[arg(long)]
    pub data: PathBuf,
    /// sigmoid (DPO), ipo, dpop (DPO-Positive, Smaug).
    #[arg(long, default_value = "sigmoid", value_parser = ["sigmoid", "ipo", "dpop"])]
    pub loss: String,
    /// β: strength of the implicit KL to the reference.
    #[arg(long, default_value_t = 0.1)]
    pub beta: f64,
    /// DPO-P's λ: weight of the penalty on the chosen answer losing likelihood.
    #[arg(long, default_value_t = 50.0)]
    pub lambda: f64,
}

#[derive(Args, Debug, Clone)]
pub struct GrpoArgs {
    #[command(flatten)]
    pub common: AlignArgs,
    /// JSONL rows {"prompt": text or messages, "answer": ...} (other keys go to --reward cmd:).
    #[arg(long)]
    pub prompts: PathBuf,
    /// exact, numeric, choice (compare with "answer"), regex:PATTERN, format:PATTERN, or
    /// cmd:COMMAND (JSON on stdin, a number on stdout). Repeat to sum rewards.
    #[arg(long, required = true)]
    pub reward: Vec<String>,
    /// Seconds a reward command may take before the run stops with an error.
    #[arg(long, default_value_t = 30.0)]
    pub reward_timeout: f64,
    /// Completions sampled per prompt (G).
    #[arg(long, default_value_t = 8)]
    pub group: usize,
    #[arg(long, default_value_t = 64)]
    pub max_new_tokens: usize,
    #[arg(long, default_value_t = 1.0)]
    pub temperature: f64,
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f64,
    /// Ratio clip ε (1 − ε below).
    #[arg(long, default_value_t = 0.2)]
    pub eps: f64,
    /// Upper ratio clip (1 + ε_high) [default: = eps].
    #[arg(long)]
    pub eps_high: Option<f64>,
    /// Weight of the k3 KL to the reference model (0 = no reference).
    #[arg(long, default_value_t = 0.0)]
    pub kl_beta: f64,
    /// Dr. GRPO: advantages not divided by the group's std; token sums divided by
    /// --max-new-tokens instead of each completion's length.
    #[arg(long)]
    pub dr_grpo: bool,
    /// Write sampled completions to OUT/samples.jsonl every N steps (0 = never).
    #[arg(long, default_value_t = 10)]
    pub log_samples: u64,
}

impl AlignArgs {
    fn settings(&self) -> AlignSettings {
        AlignSettings {
            steps: self.steps,
            batch: self.batch,
            grad_accum: self.grad_accum,
            lr: self.lr,
            warmup: self.warmup,
            schedule: self.schedule,
            min_lr: self.min_lr,
            weight_decay: self.weight_decay,
            clip: self.clip,
            seed: self.seed,
            save_every: self.save_every,
            max_len: self.max_len,
            max_prompt: self.max_prompt,
            skip_bad: self.skip_bad,
        }
    }
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
        notice: &|m| eprintln!("{m}"),
    };
    let o = go(&r)?;
    if let Outcome::Interrupted { step } = o.outcome {
        crate::term::interrupted(step);
    }
    println!("{}", o.summary());
    Ok(())
}

pub fn sft(a: SftArgs) -> Result<()> {
    let s = SftSettings { data: a.data.clone(), train: a.common.settings(), heldout: None };
    stage(&a.common, |r| Ok(orlik_align::stage::sft(&s, r)?))
}

pub fn dpo(a: DpoArgs) -> Result<()> {
    let s = DpoSettings {
        data: a.data.clone(),
        loss: crate::prune_cmd::parse_name("--loss", &a.loss)?,
        beta: a.beta,
        lambda: a.lambda,
        train: a.common.settings(),
        heldout: None,
    };
    stage(&a.common, |r| Ok(orlik_align::stage::dpo(&s, r)?))
}

pub fn grpo(a: GrpoArgs) -> Result<()> {
    let s = GrpoSettings {
        prompts: a.prompts.clone(),
        reward: a.reward.clone(),
        reward_timeout: a.reward_timeout,
        group: a.group,
        max_new_tokens: a.max_new_tokens,
        temperature: a.temperature,
        top_p: a.top_p,
        eps: a.eps,
        eps_high: a.eps_high,
        kl_beta: a.kl_beta,
        dr_grpo: a.dr_grpo,
        log_samples: a.log_samples,
        train: a.common.settings(),
        heldout: None,
    };
    stage(&a.common, |r| Ok(orlik_align::stage::grpo(&s, r)?))
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
