//! sft, dpo, grpo and `eval reward`: argument resolution and wiring; the work is in orlik-align.

use crate::train_cmd::{peak_rss_mb, step_delay, stop_flag};
use anyhow::{bail, Context, Result};
use candle_core::DType;
use clap::Args;
use orlik_align::chat::ChatTemplate;
use orlik_align::data::{self, Cuts, Encoder};
use orlik_align::dpo::{sequence_logps, DpoLoss, DpoTask, PairIds};
use orlik_align::grpo::{GrpoOptions, GrpoTask, PromptRow};
use orlik_align::reward::Reward;
use orlik_align::rollout::{sample_group, SampleOptions};
use orlik_align::sft::Sft;
use orlik_align::AlignError;
use orlik_io::hfdir::HfModel;
use orlik_model::ModelOptions;
use orlik_train::lm::{save_final, stored_dtype};
use orlik_train::params::Params;
use orlik_train::runner::{self, Options, Outcome, Task};
use orlik_train::TrainConfig;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::Duration;

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

/// Everything the three commands set up the same way.
struct Setup {
    hf: HfModel,
    tok: tokenizers::Tokenizer,
    template: ChatTemplate,
    eos: Vec<u32>,
    /// --max-len and --max-prompt, resolved.
    max_len: usize,
    max_prompt: usize,
}

fn setup(a: &AlignArgs) -> Result<Setup> {
    let hf = HfModel::open(&a.model)?;
    let tok = hf.tokenizer()?;
    let template = ChatTemplate::for_model(&a.model)?;
    let mut eos: Vec<u32> = hf.config.eos_ids();
    if let Some(id) = tok.token_to_id(&template.eos) {
        if !eos.contains(&id) {
            eos.push(id);
        }
    }
    if eos.is_empty() {
        bail!(
            "{}: no eos_token_id in config.json and no eos_token in tokenizer_config.json",
            a.model.display()
        );
    }
    let limit = hf.config.max_position_embeddings;
    let max_len = a.max_len.unwrap_or(512.min(limit));
    let max_prompt = a.max_prompt.unwrap_or(max_len / 2);
    if max_prompt >= max_len || max_prompt == 0 {
        bail!("--max-prompt {max_prompt} must be above 0 and below --max-len {max_len}");
    }
    if max_len > limit {
        bail!("--max-len {max_len} is above the model's max_position_embeddings {limit}");
    }
    Ok(Setup { hf, tok, template, eos, max_len, max_prompt })
}

fn encoder(s: &Setup) -> Encoder<'_> {
    Encoder {
        tok: &s.tok,
        template: &s.template,
        eos: s.eos.clone(),
        max_len: s.max_len,
        max_prompt: s.max_prompt,
    }
}

fn train_config(a: &AlignArgs, s: &Setup, units: usize, default_lr: f64) -> Result<TrainConfig> {
    let per_step = (a.batch * a.grad_accum).max(1);
    let c = TrainConfig {
        steps: Some(a.steps.unwrap_or(units.div_ceil(per_step) as u64)),
        tokens: None,
        seq_len: s.max_len,
        batch: a.batch,
        grad_accum: a.grad_accum,
        lr: a.lr.unwrap_or(default_lr),
        warmup: a.warmup,
        schedule: a.schedule,
        min_lr: a.min_lr,
        weight_decay: a.weight_decay,
        clip: a.clip,
        seed: a.seed,
        save_every: a.save_every,
        ..TrainConfig::default()
    };
    c.validate()?;
    Ok(c)
}

fn report_cuts(what: &str, rows: usize, bad: usize, cuts: Cuts) {
    eprintln!(
        "{what}: {rows} rows used; {bad} malformed skipped; {} truncated, {} dropped by the length rules",
        cuts.truncated, cuts.dropped
    );
}

/// Train `task` from `s`'s weights into `a.output`, then write OUT/final/.
fn train(
    a: &AlignArgs,
    s: &Setup,
    task: &mut dyn Task<Error = AlignError>,
    cfg: &TrainConfig,
    mut params: Params,
) -> Result<()> {
    let stop = stop_flag();
    let hook = step_delay();
    let opts = Options {
        quiet: false,
        stop: Some(&stop),
        after_step: hook.as_ref().map(|h| h as &(dyn Fn(u64) + Sync)),
    };
    let mut st = runner::start(task, &mut params, cfg, &a.output, a.resume)?;
    let outcome = runner::run(task, &mut params, cfg, &a.output, &mut st, opts)?;
    if let Outcome::Interrupted { step } = outcome {
        eprintln!("stopped at step {step}; continue with the same command and --resume");
        std::process::exit(130);
    }
    let target = a.output.join("final");
    let dtype = match a.save_dtype.as_deref() {
        Some("f16") => candle_core::DType::F16,
        Some("bf16") => candle_core::DType::BF16,
        Some(_) => candle_core::DType::F32,
        None => stored_dtype(&s.hf),
    };
    save_final(&a.model, &s.hf.config, &params.named_weights(), &target, dtype)?;
    let rows = orlik_train::curves::read(&a.output.join("metrics.jsonl"))?;
    let mean = |k: &str, from: usize, to: usize| -> Option<f64> {
        let v: Vec<f64> = rows[from.min(rows.len())..to.min(rows.len())]
            .iter()
            .filter_map(|r| r.get(k)?.as_f64())
            .collect();
        (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
    };
    let q = (rows.len() / 4).max(1);
    println!("trained {} steps in {:.0} s", st.step, st.train_seconds);
    for k in ["loss", "rewards_accuracy", "rewards_margin", "reward_mean", "completion_length"] {
        if let (Some(a0), Some(a1)) =
            (mean(k, 0, q), mean(k, rows.len().saturating_sub(q), rows.len()))
        {
            println!("{k}: first quarter {a0:.4}, last quarter {a1:.4}");
        }
    }
    if let Some(mb) = peak_rss_mb() {
        println!("peak RSS {mb:.0} MB");
    }
    println!("model: {}", target.display());
    Ok(())
}

/// Check --output before any work: not an input, not someone else's, not another command's.
fn check_output(a: &AlignArgs, kind: &str, data: &Path) -> Result<()> {
    orlik_io::output::check(
        &a.output,
        kind,
        &[&a.model, data],
        orlik_io::output::Mode::from_flags(a.force, a.resume),
    )?;
    Ok(())
}

/// Claim --output for this run (or check that --resume continues the same run) before any
/// file is written there.
fn begin(
    a: &AlignArgs,
    s: &Setup,
    cfg: &TrainConfig,
    mut run: Value,
    kind: &str,
    data: &Path,
) -> Result<()> {
    orlik_io::output::claim_dir(
        &a.output,
        kind,
        &[&a.model, data],
        orlik_io::output::Mode::from_flags(a.force, a.resume),
    )?;
    run["model"] = json!({"path": a.model, "sha256": s.hf.content_sha256()?});
    run["template"] = json!(s.template.origin);
    let run_json = json!({"config": serde_json::to_value(cfg)?, "run": run});
    orlik_train::config::open_run(&a.output, &run_json, a.resume)?;
    Ok(())
}

fn params(s: &Setup) -> Result<Params> {
    Ok(Params::new(&s.hf.config, s.hf.checkpoint.load_all(DType::F32)?)?)
}

pub fn sft(a: SftArgs) -> Result<()> {
    check_output(&a.common, "sft", &a.data)?;
    let s = setup(&a.common)?;
    let enc = encoder(&s);
    let mut cuts = Cuts::default();
    let (convs, bad) = data::read_jsonl(&a.data, a.common.skip_bad, |v| {
        data::messages(v.get("messages").unwrap_or(&Value::Null), "messages")
    })?;
    let mut examples = Vec::new();
    for m in &convs {
        if !m.iter().any(|x| x.role == "assistant") {
            bail!(
                "{}: a conversation has no assistant message (nothing to learn): {:?}",
                a.data.display(),
                m.first().map(|x| &x.content)
            );
        }
        if let Some(e) = enc.conversation(m, &mut cuts)? {
            examples.push(e);
        }
    }
    if examples.is_empty() {
        bail!(
            "{}: no conversation left after the length rules (raise --max-len)",
            a.data.display()
        );
    }
    let cfg = train_config(&a.common, &s, examples.len(), 2e-5)?;
    let run = json!({"kind": "sft", "data": {"path": a.data, "sha256": orlik_io::hfdir::sha256_files(std::slice::from_ref(&a.data))?}, "max_prompt": s.max_prompt, "skipped_rows": bad, "cuts": cuts});
    begin(&a.common, &s, &cfg, run, "sft", &a.data)?;
    report_cuts("sft", examples.len(), bad, cuts);
    let mut task = Sft { examples, pad: s.eos[0], chunk: 256 };
    let p = params(&s)?;
    train(&a.common, &s, &mut task, &cfg, p)
}

pub fn dpo(a: DpoArgs) -> Result<()> {
    check_output(&a.common, "dpo", &a.data)?;
    let s = setup(&a.common)?;
    let enc = encoder(&s);
    let mut cuts = Cuts::default();
    let (rows, bad) = data::read_jsonl(&a.data, a.common.skip_bad, |v| {
        Ok((data::prompt(v, "prompt")?, data::answer(v, "chosen")?, data::answer(v, "rejected")?))
    })?;
    let mut pairs = Vec::with_capacity(rows.len());
    for (p, c, r) in &rows {
        let (prompt, _) = enc.prompt(p, &mut cuts)?;
        let room = s.max_len + 1 - prompt.len();
        let (mut chosen, mut rejected) = (enc.answer(p, c)?, enc.answer(p, r)?);
        if chosen.len() > room || rejected.len() > room {
            chosen.truncate(room);
            rejected.truncate(room);
            cuts.truncated += 1;
        }
        pairs.push(PairIds { prompt, chosen, rejected });
    }
    let kind = match a.loss.as_str() {
        "ipo" => DpoLoss::Ipo,
        "dpop" => DpoLoss::Dpop,
        _ => DpoLoss::Sigmoid,
    };
    if a.beta <= 0.0 || a.lambda < 0.0 {
        bail!("--beta must be > 0 and --lambda >= 0");
    }
    let cfg = train_config(&a.common, &s, pairs.len(), 1e-6)?;
    let data_sha = orlik_io::hfdir::sha256_files(std::slice::from_ref(&a.data))?;
    let run = json!({"kind": "dpo", "loss": a.loss, "beta": a.beta, "lambda": a.lambda, "max_prompt": s.max_prompt,
        "data": {"path": a.data, "sha256": data_sha}, "skipped_rows": bad, "cuts": cuts});
    begin(&a.common, &s, &cfg, run, "dpo", &a.data)?;
    report_cuts("dpo", pairs.len(), bad, cuts);
    let p = params(&s)?;
    let reference = reference_logps(&a.common, &s, &p, &pairs, &data_sha)?;
    let mut task = DpoTask {
        pairs,
        reference,
        kind,
        beta: a.beta,
        lambda: a.lambda,
        pad: s.eos[0],
        chunk: 256,
    };
    train(&a.common, &s, &mut task, &cfg, p)
}

/// The reference model's log-probabilities of every pair (the model before training), computed
/// once and kept in OUT/ref_logps.json (reused by --resume; recomputed if model or data changed).
fn reference_logps(
    a: &AlignArgs,
    s: &Setup,
    p: &Params,
    pairs: &[PairIds],
    data_sha: &str,
) -> Result<Vec<[f64; 2]>> {
    let path = a.output.join("ref_logps.json");
    let key = json!({"model": s.hf.content_sha256()?, "data": data_sha, "max_len": s.max_len, "max_prompt": s.max_prompt});
    if let Ok(text) = std::fs::read_to_string(&path) {
        let v: Value = serde_json::from_str(&text).with_context(|| path.display().to_string())?;
        if v["key"] == key {
            let l: Vec<[f64; 2]> = serde_json::from_value(v["logps"].clone())?;
            if l.len() == pairs.len() {
                eprintln!("reference log-probabilities: {} (cached)", path.display());
                return Ok(l);
            }
        }
    }
    let pb = indicatif::ProgressBar::new(pairs.len() as u64).with_message("reference log-probs");
    let mut out = Vec::with_capacity(pairs.len());
    let idx: Vec<usize> = (0..pairs.len()).collect();
    for ch in idx.chunks(a.batch.max(1)) {
        let (l, _, _) = sequence_logps(p, pairs, ch, s.eos[0], 256)?;
        out.extend(l);
        pb.inc(ch.len() as u64);
    }
    pb.finish_and_clear();
    orlik_io::atomic::write_file_atomically(
        &path,
        serde_json::to_string(&json!({"key": key, "logps": out}))?.as_bytes(),
    )?;
    Ok(out)
}

fn read_prompts(
    path: &Path,
    skip_bad: bool,
    enc: &Encoder,
    needs_answer: bool,
    cuts: &mut Cuts,
) -> Result<(Vec<PromptRow>, usize)> {
    let (rows, bad) = data::read_jsonl(path, skip_bad, |v| {
        let p = data::prompt(v, "prompt")?;
        let answer = match v.get("answer") {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Number(n)) => n.to_string(),
            None if !needs_answer => String::new(),
            _ => {
                return Err(
                    "missing \"answer\" (a string or number; the reward compares with it)".into()
                )
            }
        };
        Ok((p, answer, v.clone()))
    })?;
    let mut out = Vec::with_capacity(rows.len());
    for (p, answer, row) in rows {
        let (ids, text) = enc.prompt(&p, cuts)?;
        out.push(PromptRow { ids, text, answer, row });
    }
    Ok((out, bad))
}

fn rewards(specs: &[String], timeout: f64) -> Result<Vec<Reward>> {
    if timeout.is_nan() || timeout <= 0.0 {
        bail!("--reward-timeout must be > 0");
    }
    let mut out = Vec::with_capacity(specs.len());
    for r in specs {
        out.push(Reward::parse(r, Duration::from_secs_f64(timeout))?);
    }
    Ok(out)
}

pub fn grpo(a: GrpoArgs) -> Result<()> {
    check_output(&a.common, "grpo", &a.prompts)?;
    let s = setup(&a.common)?;
    let enc = encoder(&s);
    let rewards = rewards(&a.reward, a.reward_timeout)?;
    if a.group < 2 {
        bail!("--group must be at least 2 (advantages compare completions of one prompt)");
    }
    if s.max_prompt + a.max_new_tokens > s.hf.config.max_position_embeddings {
        bail!(
            "--max-prompt + --max-new-tokens is above the model's max_position_embeddings {}",
            s.hf.config.max_position_embeddings
        );
    }
    let mut cuts = Cuts::default();
    let (prompts, bad) = read_prompts(
        &a.prompts,
        a.common.skip_bad,
        &enc,
        rewards.iter().any(Reward::needs_answer),
        &mut cuts,
    )?;
    let cfg = train_config(&a.common, &s, prompts.len(), 1e-6)?;
    let run = json!({"kind": "grpo", "reward": a.reward, "group": a.group, "max_new_tokens": a.max_new_tokens, "temperature": a.temperature,
        "top_p": a.top_p, "eps": a.eps, "eps_high": a.eps_high, "kl_beta": a.kl_beta, "dr_grpo": a.dr_grpo, "max_prompt": s.max_prompt,
        "data": {"path": a.prompts, "sha256": orlik_io::hfdir::sha256_files(std::slice::from_ref(&a.prompts))?}, "skipped_rows": bad, "cuts": cuts});
    begin(&a.common, &s, &cfg, run, "grpo", &a.prompts)?;
    report_cuts("grpo", prompts.len(), bad, cuts);
    let reference = if a.kl_beta > 0.0 { Some(s.hf.load(ModelOptions::default())?) } else { None };
    let mut task = GrpoTask {
        prompts,
        rewards,
        sampling: SampleOptions {
            group: a.group,
            max_new_tokens: a.max_new_tokens,
            temperature: a.temperature,
            top_p: a.top_p,
        },
        options: GrpoOptions {
            eps_low: a.eps,
            eps_high: a.eps_high.unwrap_or(a.eps),
            beta: a.kl_beta,
            dr_grpo: a.dr_grpo,
            max_len: a.max_new_tokens,
        },
        config: s.hf.config.clone(),
        reference,
        tokenizer: &s.tok,
        stop: s.eos.clone(),
        seed: a.common.seed,
        chunk: 256,
        samples: Some(a.common.output.join("samples.jsonl")),
        log_every: a.log_samples,
    };
    let p = params(&s)?;
    train(&a.common, &s, &mut task, &cfg, p)
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
    let common = AlignArgs {
        model: model.into(),
        output: PathBuf::new(),
        steps: None,
        batch: 1,
        grad_accum: 1,
        lr: None,
        warmup: 0,
        schedule: orlik_train::optim::Schedule::Constant,
        min_lr: None,
        weight_decay: 0.0,
        clip: 1.0,
        seed: 0,
        save_every: 0,
        max_len: None,
        max_prompt: None,
        skip_bad: false,
        resume: false,
        force: false,
        save_dtype: None,
    };
    let s = setup(&common)?;
    let enc = encoder(&s);
    let rewards = rewards(reward, 30.0)?;
    let mut cuts = Cuts::default();
    let (mut rows, _) =
        read_prompts(prompts, false, &enc, rewards.iter().any(Reward::needs_answer), &mut cuts)?;
    if limit > 0 {
        rows.truncate(limit);
    }
    let m = s.hf.load(ModelOptions::default())?;
    let o = SampleOptions { group: 1, max_new_tokens, temperature: 0.0, top_p: 1.0 };
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(0);
    let pb = indicatif::ProgressBar::new(rows.len() as u64);
    let (mut total, mut examples) = (0.0, Vec::new());
    for r in &rows {
        let c = sample_group(&m, &r.ids, &s.eos, &o, &mut rng)?.remove(0);
        let text = s.tok.decode(&c, true).map_err(|e| anyhow::anyhow!("tokenizer: {e}"))?;
        let mut score = 0.0;
        for rw in &rewards {
            score += rw.score(&r.text, &text, &r.answer, &r.row)?;
        }
        total += score;
        if examples.len() < 5 {
            examples.push(json!({"answer": r.answer, "completion": text, "reward": score}));
        }
        pb.inc(1);
    }
    pb.finish_and_clear();
    let mean = total / rows.len().max(1) as f64;
    let out = json!({"model": model, "prompts": prompts, "n": rows.len(), "reward_mean": mean, "reward": reward, "examples": examples});
    if json_out {
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!("{}: mean reward {mean:.4} over {} prompts (greedy, {max_new_tokens} new tokens at most)", model.display(), rows.len());
        for e in &examples {
            println!("  answer {:?} -> {:?} ({})", e["answer"], e["completion"], e["reward"]);
        }
    }
    Ok(())
}
