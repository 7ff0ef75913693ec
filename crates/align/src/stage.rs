//! SFT, DPO and GRPO as library calls ([`sft`], [`dpo`], [`grpo`]): typed settings (the
//! recipe's `[sft]`, `[dpo]`, `[grpo]` sections; `orlik sft|dpo|grpo`'s flags fill the same
//! structs), the model and the data read and checked, the task trained on the one loop
//! (`orlik_train::runner`) into OUT/, OUT/final/ written. [`eval_reward`] is the held-out
//! measure (greedy completions scored by verifiers) the report shows for every stage.

use crate::chat::ChatTemplate;
use crate::data::{self, Cuts, Encoder};
use crate::dpo::{sequence_logps, DpoLoss, DpoTask, PairIds};
use crate::grpo::{GrpoOptions, GrpoTask, PromptRow};
use crate::reward::Reward;
use crate::rollout::{sample_group, SampleOptions};
use crate::sft::Sft;
use crate::AlignError;
use candle_core::DType;
use orlik_io::hfdir::HfModel;
use orlik_model::ModelOptions;
use orlik_train::checkpoint::State;
use orlik_train::lm::{save_final, stored_dtype, Control};
use orlik_train::mem;
use orlik_train::optim::Schedule;
use orlik_train::runner::{self, Outcome, Task};
use orlik_train::TrainConfig;
use orlik_train::{Backend, Executor};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The optimisation settings every alignment task shares: the keys of a recipe's
/// `[sft.train]` (`[dpo.train]`, `[grpo.train]`) and the flags of `orlik sft|dpo|grpo`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::Args))]
#[serde(deny_unknown_fields, default)]
pub struct AlignSettings {
    /// Optimizer steps [default: one pass over the data].
    #[cfg_attr(feature = "clap", arg(long))]
    pub steps: Option<u64>,
    /// Rows (conversations / pairs / prompts) per micro-batch.
    #[cfg_attr(feature = "clap", arg(long, default_value_t = AlignSettings::default().batch))]
    pub batch: usize,
    /// Micro-batches per optimizer step.
    #[cfg_attr(feature = "clap", arg(long, default_value_t = AlignSettings::default().grad_accum))]
    pub grad_accum: usize,
    /// Peak learning rate [default: sft 2e-5, dpo 1e-6, grpo 1e-6].
    #[cfg_attr(feature = "clap", arg(long))]
    pub lr: Option<f64>,
    /// Warmup steps; 0 = 2% of the steps.
    #[cfg_attr(feature = "clap", arg(long, default_value_t = AlignSettings::default().warmup))]
    pub warmup: u64,
    /// Learning-rate schedule.
    #[cfg_attr(feature = "clap", arg(long, value_enum, default_value_t = AlignSettings::default().schedule))]
    pub schedule: Schedule,
    /// Final learning rate [default: lr / 10].
    #[cfg_attr(feature = "clap", arg(long))]
    pub min_lr: Option<f64>,
    /// AdamW's decoupled weight decay.
    #[cfg_attr(feature = "clap", arg(long, default_value_t = AlignSettings::default().weight_decay))]
    pub weight_decay: f64,
    /// Global gradient-norm clip, 0 = off.
    #[cfg_attr(feature = "clap", arg(long, default_value_t = AlignSettings::default().clip))]
    pub clip: f64,
    /// Seed of the data order (and of GRPO's sampling).
    #[cfg_attr(feature = "clap", arg(long, default_value_t = AlignSettings::default().seed))]
    pub seed: u64,
    /// Checkpoint every N steps (the last 2 are kept while training, the last one when done).
    #[cfg_attr(feature = "clap", arg(long, default_value_t = AlignSettings::default().save_every))]
    pub save_every: u64,
    /// Longest training sequence in tokens: SFT conversations are cut at the end to it, DPO
    /// answers so that prompt + answer fits [default: 512, or the model's limit if lower].
    #[cfg_attr(feature = "clap", arg(long))]
    pub max_len: Option<usize>,
    /// Longest prompt (DPO, GRPO): longer prompts keep their last tokens (counted, reported)
    /// [default: half of max_len].
    #[cfg_attr(feature = "clap", arg(long))]
    pub max_prompt: Option<usize>,
    /// Skip malformed JSONL rows (counted) instead of stopping at the first.
    #[cfg_attr(feature = "clap", arg(long))]
    pub skip_bad: bool,
    /// Where the policy trains: cpu, cuda (the first NVIDIA GPU, or the local rank's), cuda:N,
    /// or auto (a GPU when there is one) [default: cpu]. GRPO samples on the same device.
    #[cfg_attr(feature = "clap", arg(long, default_value = "cpu"))]
    #[serde(skip_serializing_if = "is_cpu")]
    pub device: String,
}

fn is_cpu(d: &str) -> bool {
    d == "cpu"
}

impl Default for AlignSettings {
    fn default() -> Self {
        AlignSettings {
            steps: None,
            batch: 4,
            grad_accum: 1,
            lr: None,
            warmup: 0,
            schedule: Schedule::Cosine,
            min_lr: None,
            weight_decay: 0.0,
            clip: 1.0,
            seed: 0,
            save_every: 50,
            max_len: None,
            max_prompt: None,
            skip_bad: false,
            device: "cpu".into(),
        }
    }
}

/// A held-out measure of a stage: greedy completions of `prompts` scored by `reward`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Heldout {
    /// JSONL rows {"prompt", "answer"} the stage never trains on.
    pub prompts: PathBuf,
    /// Verifiers (as GRPO's `reward`): exact, numeric, choice, regex:..., cmd:...
    #[serde(default = "default_reward")]
    pub reward: Vec<String>,
    /// First N prompts, 0 = all. Default 50.
    #[serde(default = "default_limit")]
    pub limit: usize,
    /// Default 32.
    #[serde(default = "default_new_tokens")]
    pub max_new_tokens: usize,
}

fn default_reward() -> Vec<String> {
    vec!["exact".into()]
}
fn default_limit() -> usize {
    50
}
fn default_new_tokens() -> usize {
    32
}

/// `orlik sft`: supervised fine-tuning on conversations (loss on assistant turns only).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::Args))]
#[serde(deny_unknown_fields)]
pub struct SftSettings {
    /// JSONL rows {"messages": [{"role", "content"}, ...]}; the loss is on assistant turns only.
    #[cfg_attr(feature = "clap", arg(long))]
    pub data: PathBuf,
    #[serde(default)]
    #[cfg_attr(feature = "clap", command(flatten))]
    pub train: AlignSettings,
    /// Held-out prompts measured before and after the stage (recipes only).
    #[cfg_attr(feature = "clap", arg(skip))]
    pub heldout: Option<Heldout>,
}

/// `orlik dpo`: preference optimisation against the stage's input model as the reference.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::Args))]
#[serde(deny_unknown_fields)]
pub struct DpoSettings {
    /// JSONL rows {"prompt", "chosen", "rejected"}: plain text, or a list of messages for the
    /// prompt (rendered with the chat template) and answer strings.
    #[cfg_attr(feature = "clap", arg(long))]
    pub data: PathBuf,
    /// sigmoid (DPO), ipo, dpop (DPO-Positive, Smaug).
    #[serde(default = "default_dpo_loss")]
    #[cfg_attr(feature = "clap", arg(long, value_enum, default_value_t = default_dpo_loss()))]
    pub loss: DpoLoss,
    /// β: the strength of the implicit KL to the reference.
    #[serde(default = "default_beta")]
    #[cfg_attr(feature = "clap", arg(long, default_value_t = default_beta()))]
    pub beta: f64,
    /// DPO-P's λ: weight of the penalty on the chosen answer losing likelihood.
    #[serde(default = "default_lambda")]
    #[cfg_attr(feature = "clap", arg(long, default_value_t = default_lambda()))]
    pub lambda: f64,
    #[serde(default)]
    #[cfg_attr(feature = "clap", command(flatten))]
    pub train: AlignSettings,
    /// Held-out prompts measured before and after the stage (recipes only).
    #[cfg_attr(feature = "clap", arg(skip))]
    pub heldout: Option<Heldout>,
}

fn default_dpo_loss() -> DpoLoss {
    DpoLoss::Sigmoid
}
fn default_beta() -> f64 {
    0.1
}
fn default_lambda() -> f64 {
    50.0
}

/// `orlik grpo`: group-relative policy optimisation with verifiable rewards.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::Args))]
#[serde(deny_unknown_fields, default)]
pub struct GrpoSettings {
    /// JSONL rows {"prompt": text or messages, "answer": ...} (other keys go to cmd: rewards).
    #[cfg_attr(feature = "clap", arg(long))]
    pub prompts: PathBuf,
    /// exact, numeric, choice (compare with "answer"), regex:PATTERN, format:PATTERN, or
    /// cmd:COMMAND (JSON on stdin, a number on stdout). Repeat to sum rewards.
    #[cfg_attr(feature = "clap", arg(long, default_values_t = GrpoSettings::default().reward))]
    pub reward: Vec<String>,
    /// Seconds a reward command may take before the run stops with an error.
    #[cfg_attr(feature = "clap", arg(long, default_value_t = GrpoSettings::default().reward_timeout))]
    pub reward_timeout: f64,
    /// Completions sampled per prompt (G).
    #[cfg_attr(feature = "clap", arg(long, default_value_t = GrpoSettings::default().group))]
    pub group: usize,
    /// Longest completion, in tokens.
    #[cfg_attr(feature = "clap", arg(long, default_value_t = GrpoSettings::default().max_new_tokens))]
    pub max_new_tokens: usize,
    /// Sampling temperature.
    #[cfg_attr(feature = "clap", arg(long, default_value_t = GrpoSettings::default().temperature))]
    pub temperature: f64,
    /// Nucleus sampling's p.
    #[cfg_attr(feature = "clap", arg(long, default_value_t = GrpoSettings::default().top_p))]
    pub top_p: f64,
    /// Ratio clip ε (1 − ε below).
    #[cfg_attr(feature = "clap", arg(long, default_value_t = GrpoSettings::default().eps))]
    pub eps: f64,
    /// Upper ratio clip (1 + ε_high) [default: = eps].
    #[cfg_attr(feature = "clap", arg(long))]
    pub eps_high: Option<f64>,
    /// Weight of the k3 KL to the reference model (0 = no reference).
    #[cfg_attr(feature = "clap", arg(long, default_value_t = GrpoSettings::default().kl_beta))]
    pub kl_beta: f64,
    /// How the frozen KL reference (kl_beta > 0) holds its matrices: auto = as stored (a bf16
    /// or f16 checkpoint stays 16-bit, half the memory and bytes read; products accumulate in
    /// f32), or f32, bf16, f16. The policy is f32 whatever this says. The resolved value goes
    /// into run.json when it is not f32.
    #[serde(skip_serializing_if = "orlik_model::ComputeDtype::is_auto")]
    #[cfg_attr(
        feature = "clap",
        arg(long, default_value = "auto", value_parser = orlik_model::ComputeDtype::parse)
    )]
    pub reference_compute_dtype: orlik_model::ComputeDtype,
    /// Dr. GRPO: advantages not divided by the group's std; token sums divided by
    /// max_new_tokens instead of each completion's length.
    #[cfg_attr(feature = "clap", arg(long))]
    pub dr_grpo: bool,
    /// Write sampled completions to OUT/samples.jsonl every N steps (0 = never).
    #[cfg_attr(feature = "clap", arg(long, default_value_t = GrpoSettings::default().log_samples))]
    pub log_samples: u64,
    #[cfg_attr(feature = "clap", command(flatten))]
    pub train: AlignSettings,
    /// Held-out prompts measured before and after the stage (recipes only).
    #[cfg_attr(feature = "clap", arg(skip))]
    pub heldout: Option<Heldout>,
}

impl Default for GrpoSettings {
    fn default() -> Self {
        GrpoSettings {
            prompts: PathBuf::new(),
            reward: default_reward(),
            reward_timeout: 30.0,
            group: 8,
            max_new_tokens: 64,
            temperature: 1.0,
            top_p: 1.0,
            eps: 0.2,
            eps_high: None,
            kl_beta: 0.0,
            reference_compute_dtype: orlik_model::ComputeDtype::Auto,
            dr_grpo: false,
            log_samples: 10,
            train: AlignSettings::default(),
            heldout: None,
        }
    }
}

/// Where a stage reads and writes.
pub struct AlignRun<'a> {
    /// The model to align (its chat template is used; ChatML when it has none).
    pub model: &'a Path,
    pub out: &'a Path,
    pub resume: bool,
    pub force: bool,
    /// Stored dtype of OUT/final/ (None: the model's).
    pub save_dtype: Option<DType>,
    pub ctl: Control<'a>,
    /// One-line messages (rows used, cuts, cached reference) for the caller to print.
    pub notice: &'a dyn Fn(&str),
}

/// How a stage ended.
pub struct AlignOutcome {
    pub outcome: Outcome,
    pub state: State,
    pub final_dir: PathBuf,
    /// Training metrics: (key, mean over the first quarter of steps, over the last quarter).
    pub quarters: Vec<(String, f64, f64)>,
}

impl AlignOutcome {
    /// What a person reads when the stage finished: steps, each metric's first and last
    /// quarter, the peak memory and where the model is.
    pub fn summary(&self) -> String {
        let mut s =
            format!("trained {} steps in {:.0} s\n", self.state.step, self.state.train_seconds);
        for (k, a0, a1) in &self.quarters {
            s += &format!("{k}: first quarter {a0:.4}, last quarter {a1:.4}\n");
        }
        if let Some(kb) = orlik_io::peak_rss_kb() {
            s += &format!("peak RSS {:.0} MB\n", kb as f64 / 1024.0);
        }
        s + &format!("model: {}", self.final_dir.display())
    }
}

fn cfg_err(msg: String) -> AlignError {
    AlignError::Config(msg)
}

/// Everything the three tasks set up the same way.
struct Setup {
    hf: HfModel,
    tok: tokenizers::Tokenizer,
    template: ChatTemplate,
    eos: Vec<u32>,
    max_len: usize,
    max_prompt: usize,
}

/// An alignment stage, for the memory planner.
pub enum StageKind<'s> {
    Sft(&'s SftSettings),
    Dpo(&'s DpoSettings),
    Grpo(&'s GrpoSettings),
}

/// What a stage on `hf` holds at its peak (`orlik_train::mem`), with the sequence lengths
/// resolved as `setup` resolves them: SFT trains `batch` conversations of up to max_len tokens,
/// DPO a chosen and a rejected answer per pair, GRPO `group` completions per prompt (sampled
/// with a KV cache first; the reference model loaded when kl_beta > 0).
pub fn memory_plan<'a>(k: &StageKind, hf: &'a HfModel) -> mem::Plan<'a> {
    let train = match k {
        StageKind::Sft(s) => &s.train,
        StageKind::Dpo(s) => &s.train,
        StageKind::Grpo(s) => &s.train,
    };
    let max_len = train.max_len.unwrap_or(512.min(hf.config.max_position_embeddings));
    let max_prompt = train.max_prompt.unwrap_or(max_len / 2);
    let b = train.batch;
    let (rows, len, rollout, reference) = match k {
        StageKind::Sft(_) => (b, max_len, None, None),
        StageKind::Dpo(_) => (2 * b, max_len, None, None),
        StageKind::Grpo(g) => {
            let len = max_prompt + g.max_new_tokens;
            let reference = (g.kl_beta > 0.0).then_some(g.reference_compute_dtype);
            (b * g.group, len, Some((b * g.group, len)), reference)
        }
    };
    mem::Plan {
        student: mem::Side::of(hf),
        teacher: reference.map(|c| mem::Side::frozen(hf, c)),
        rows,
        seq_len: len,
        grad_accum: train.grad_accum,
        loss_chunk: 256,
        path: mem::BodyPath::of(&hf.config, false),
        rollout,
        cache_bytes: 0,
        checkpointable: false,
    }
}

/// Refuse the stage when it will not fit (unless told not to), before anything is read or
/// written; the estimate's line is said once the run is set up (`train`), so that a bad input
/// fails with its one-line error alone.
fn memory(r: &AlignRun, k: &StageKind, s: &Setup) -> Result<String, AlignError> {
    let plan = memory_plan(k, &s.hf);
    let device = match k {
        StageKind::Sft(a) => &a.train.device,
        StageKind::Dpo(a) => &a.train.device,
        StageKind::Grpo(a) => &a.train.device,
    };
    Ok(mem::check_on(&mem::estimate(&plan), &plan, r.ctl.memory, device)?)
}

fn setup(model: &Path, a: &AlignSettings) -> Result<Setup, AlignError> {
    let hf = HfModel::open(model)?;
    let tok = hf.tokenizer()?;
    let template = ChatTemplate::for_model(model)?;
    let mut eos: Vec<u32> = hf.config.eos_ids();
    if let Some(id) = tok.token_to_id(&template.eos) {
        if !eos.contains(&id) {
            eos.push(id);
        }
    }
    if eos.is_empty() {
        return Err(cfg_err(format!(
            "{}: no eos_token_id in config.json and no eos_token in tokenizer_config.json",
            model.display()
        )));
    }
    let limit = hf.config.max_position_embeddings;
    let max_len = a.max_len.unwrap_or(512.min(limit));
    let max_prompt = a.max_prompt.unwrap_or(max_len / 2);
    if max_prompt >= max_len || max_prompt == 0 {
        return Err(cfg_err(format!(
            "--max-prompt {max_prompt} must be above 0 and below --max-len {max_len}"
        )));
    }
    if max_len > limit {
        return Err(cfg_err(format!(
            "--max-len {max_len} is above the model's max_position_embeddings {limit}"
        )));
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

fn train_config(
    a: &AlignSettings,
    s: &Setup,
    units: usize,
    default_lr: f64,
) -> Result<TrainConfig, AlignError> {
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
        device: a.device.clone(),
        ..TrainConfig::default()
    };
    c.validate()?;
    Ok(c)
}

fn cuts_notice(r: &AlignRun, what: &str, rows: usize, bad: usize, cuts: Cuts) {
    (r.notice)(&format!(
        "{what}: {rows} rows used; {bad} malformed skipped; {} truncated, {} dropped by the length rules",
        cuts.truncated, cuts.dropped
    ));
}

fn mode(r: &AlignRun) -> orlik_io::output::Mode {
    orlik_io::output::Mode::from_flags(r.force, r.resume)
}

/// Claim the output for this run (or check that `resume` continues the same run).
fn begin(
    r: &AlignRun,
    s: &Setup,
    cfg: &TrainConfig,
    mut run: Value,
    kind: &str,
    data: &Path,
) -> Result<(), AlignError> {
    run["model"] = json!({"path": r.model, "sha256": s.hf.content_sha256()?});
    run["template"] = json!(s.template.origin);
    let config = serde_json::to_value(cfg).map_err(|e| cfg_err(e.to_string()))?;
    orlik_dist::on_root(|| -> Result<(), AlignError> {
        orlik_io::output::claim_dir(r.out, kind, &[r.model, data], mode(r))?;
        orlik_train::config::open_run(r.out, &json!({"config": config, "run": run}), r.resume)?;
        Ok(())
    })
}

/// The executor holding the model's weights, for `cfg`'s settings.
fn executor(s: &Setup, cfg: &TrainConfig) -> Result<Box<dyn Executor>, AlignError> {
    let weights = s.hf.checkpoint.load_all(DType::F32)?;
    Ok(orlik_train::exec::open(&s.hf.config, weights, cfg, Backend::of(cfg)?)?)
}

fn data_sha(p: &Path) -> Result<String, AlignError> {
    Ok(orlik_io::hfdir::sha256_files(&[p.to_path_buf()])?)
}

/// Train `task` from `s`'s weights into the run's output, then write OUT/final/.
fn train(
    r: &AlignRun,
    s: &Setup,
    task: &mut dyn Task<Error = AlignError>,
    cfg: &TrainConfig,
    mut exec: Box<dyn Executor>,
) -> Result<AlignOutcome, AlignError> {
    let opts = r.ctl;
    let mut st = runner::start(task, exec.as_mut(), cfg, r.out, r.resume)?;
    let outcome = runner::run(task, exec.as_mut(), cfg, r.out, &mut st, opts)?;
    let final_dir = r.out.join("final");
    if !orlik_dist::is_root() {
        return Ok(AlignOutcome { outcome, state: st, final_dir, quarters: Vec::new() });
    }
    if outcome == Outcome::Finished {
        let dtype = r.save_dtype.unwrap_or_else(|| stored_dtype(&s.hf));
        save_final(r.model, &s.hf.config, &exec.weights()?, &final_dir, dtype)?;
    }
    let quarters = quarters(&r.out.join("metrics.jsonl"))?;
    Ok(AlignOutcome { outcome, state: st, final_dir, quarters })
}

/// A run's training metrics as (key, mean over its first quarter of steps, over its last).
pub fn quarters(metrics: &Path) -> Result<Vec<(String, f64, f64)>, AlignError> {
    let rows = orlik_train::curves::read(metrics)?;
    let mean = |k: &str, from: usize, to: usize| -> Option<f64> {
        let v: Vec<f64> = rows[from.min(rows.len())..to.min(rows.len())]
            .iter()
            .filter_map(|r| r.get(k)?.as_f64())
            .collect();
        (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
    };
    let q = (rows.len() / 4).max(1);
    let quarters =
        ["loss", "rewards_accuracy", "rewards_margin", "reward_mean", "completion_length"]
            .iter()
            .filter_map(|k| {
                let a0 = mean(k, 0, q)?;
                let a1 = mean(k, rows.len().saturating_sub(q), rows.len())?;
                Some((k.to_string(), a0, a1))
            })
            .collect();
    Ok(quarters)
}

pub fn sft(a: &SftSettings, r: &AlignRun) -> Result<AlignOutcome, AlignError> {
    orlik_io::output::check(r.out, "sft", &[r.model, &a.data], mode(r))?;
    let s = setup(r.model, &a.train)?;
    let memory = memory(r, &StageKind::Sft(a), &s)?;
    let enc = encoder(&s);
    let mut cuts = Cuts::default();
    let (convs, bad) = data::read_jsonl(&a.data, a.train.skip_bad, |v| {
        data::messages(v.get("messages").unwrap_or(&Value::Null), "messages")
    })?;
    let mut examples = Vec::new();
    for m in &convs {
        if !m.iter().any(|x| x.role == "assistant") {
            return Err(AlignError::Data(format!(
                "{}: a conversation has no assistant message (nothing to learn): {:?}",
                a.data.display(),
                m.first().map(|x| &x.content)
            )));
        }
        if let Some(e) = enc.conversation(m, &mut cuts)? {
            examples.push(e);
        }
    }
    if examples.is_empty() {
        return Err(AlignError::Data(format!(
            "{}: no conversation left after the length rules (raise --max-len)",
            a.data.display()
        )));
    }
    let cfg = train_config(&a.train, &s, examples.len(), 2e-5)?;
    let run = json!({"kind": "sft", "data": {"path": a.data, "sha256": data_sha(&a.data)?}, "max_prompt": s.max_prompt, "skipped_rows": bad, "cuts": cuts});
    begin(r, &s, &cfg, run, "sft", &a.data)?;
    cuts_notice(r, "sft", examples.len(), bad, cuts);
    let mut task = Sft { examples, pad: s.eos[0], chunk: 256 };
    (r.notice)(&memory);
    train(r, &s, &mut task, &cfg, executor(&s, &cfg)?)
}

pub fn dpo(a: &DpoSettings, r: &AlignRun) -> Result<AlignOutcome, AlignError> {
    orlik_io::output::check(r.out, "dpo", &[r.model, &a.data], mode(r))?;
    if a.beta <= 0.0 || a.lambda < 0.0 {
        return Err(cfg_err("--beta must be > 0 and --lambda >= 0".into()));
    }
    let s = setup(r.model, &a.train)?;
    let memory = memory(r, &StageKind::Dpo(a), &s)?;
    let enc = encoder(&s);
    let mut cuts = Cuts::default();
    let (rows, bad) = data::read_jsonl(&a.data, a.train.skip_bad, |v| {
        Ok((data::prompt(v, "prompt")?, data::answer(v, "chosen")?, data::answer(v, "rejected")?))
    })?;
    let mut pairs = Vec::with_capacity(rows.len());
    for (p, c, rj) in &rows {
        let (prompt, _) = enc.prompt(p, &mut cuts)?;
        let room = s.max_len + 1 - prompt.len();
        let (mut chosen, mut rejected) = (enc.answer(p, c)?, enc.answer(p, rj)?);
        if chosen.len() > room || rejected.len() > room {
            chosen.truncate(room);
            rejected.truncate(room);
            cuts.truncated += 1;
        }
        pairs.push(PairIds { prompt, chosen, rejected });
    }
    let cfg = train_config(&a.train, &s, pairs.len(), 1e-6)?;
    let sha = data_sha(&a.data)?;
    let run = json!({"kind": "dpo", "loss": a.loss, "beta": a.beta, "lambda": a.lambda, "max_prompt": s.max_prompt,
        "data": {"path": a.data, "sha256": sha}, "skipped_rows": bad, "cuts": cuts});
    begin(r, &s, &cfg, run, "dpo", &a.data)?;
    cuts_notice(r, "dpo", pairs.len(), bad, cuts);
    let mut p = executor(&s, &cfg)?;
    let reference = reference_logps(r, &s, p.as_mut(), &a.train, &pairs, &sha)?;
    let mut task = DpoTask {
        pairs,
        reference,
        kind: a.loss,
        beta: a.beta,
        lambda: a.lambda,
        pad: s.eos[0],
        chunk: 256,
    };
    (r.notice)(&memory);
    train(r, &s, &mut task, &cfg, p)
}

/// The reference model's log-probabilities of every pair (the model before training), computed
/// once and kept in OUT/ref_logps.json (reused on resume; recomputed if model or data changed).
fn reference_logps(
    r: &AlignRun,
    s: &Setup,
    p: &mut dyn Executor,
    a: &AlignSettings,
    pairs: &[PairIds],
    data_sha: &str,
) -> Result<Vec<[f64; 2]>, AlignError> {
    let path = r.out.join("ref_logps.json");
    let key = json!({"model": s.hf.content_sha256()?, "data": data_sha, "max_len": s.max_len, "max_prompt": s.max_prompt});
    if let Ok(text) = std::fs::read_to_string(&path) {
        let v: Value = serde_json::from_str(&text)
            .map_err(|e| AlignError::Data(format!("{}: {e}", path.display())))?;
        if v["key"] == key {
            if let Ok(l) = serde_json::from_value::<Vec<[f64; 2]>>(v["logps"].clone()) {
                if l.len() == pairs.len() {
                    (r.notice)(&format!(
                        "reference log-probabilities: {} (cached)",
                        path.display()
                    ));
                    return Ok(l);
                }
            }
        }
    }
    let pb = if r.ctl.quiet {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::new(pairs.len() as u64).with_message("reference log-probs")
    };
    let mut out = Vec::with_capacity(pairs.len());
    let idx: Vec<usize> = (0..pairs.len()).collect();
    for ch in idx.chunks(a.batch.max(1)) {
        let (l, _, _) = sequence_logps(p, pairs, ch, s.eos[0], 256, false)?;
        out.extend(l);
        pb.inc(ch.len() as u64);
    }
    pb.finish_and_clear();
    let text = json!({"key": key, "logps": out}).to_string();
    if orlik_dist::is_root() {
        orlik_io::atomic::write_file_atomically(&path, text.as_bytes())?;
    }
    Ok(out)
}

fn read_prompts(
    path: &Path,
    skip_bad: bool,
    enc: &Encoder,
    needs_answer: bool,
    cuts: &mut Cuts,
) -> Result<(Vec<PromptRow>, usize), AlignError> {
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

fn rewards(specs: &[String], timeout: f64) -> Result<Vec<Reward>, AlignError> {
    if timeout.is_nan() || timeout <= 0.0 {
        return Err(cfg_err("--reward-timeout must be > 0".into()));
    }
    specs.iter().map(|r| Reward::parse(r, Duration::from_secs_f64(timeout))).collect()
}

pub fn grpo(a: &GrpoSettings, r: &AlignRun) -> Result<AlignOutcome, AlignError> {
    orlik_io::output::check(r.out, "grpo", &[r.model, &a.prompts], mode(r))?;
    let s = setup(r.model, &a.train)?;
    let memory = memory(r, &StageKind::Grpo(a), &s)?;
    let enc = encoder(&s);
    let rewards = rewards(&a.reward, a.reward_timeout)?;
    if a.group < 2 {
        return Err(cfg_err(
            "--group must be at least 2 (advantages compare completions of one prompt)".into(),
        ));
    }
    if s.max_prompt + a.max_new_tokens > s.hf.config.max_position_embeddings {
        return Err(cfg_err(format!(
            "--max-prompt + --max-new-tokens is above the model's max_position_embeddings {}",
            s.hf.config.max_position_embeddings
        )));
    }
    let mut cuts = Cuts::default();
    let needs = rewards.iter().any(Reward::needs_answer);
    let (prompts, bad) = read_prompts(&a.prompts, a.train.skip_bad, &enc, needs, &mut cuts)?;
    let cfg = train_config(&a.train, &s, prompts.len(), 1e-6)?;
    let mut run = json!({"kind": "grpo", "reward": a.reward, "group": a.group, "max_new_tokens": a.max_new_tokens, "temperature": a.temperature,
        "top_p": a.top_p, "eps": a.eps, "eps_high": a.eps_high, "kl_beta": a.kl_beta, "dr_grpo": a.dr_grpo, "max_prompt": s.max_prompt,
        "data": {"path": a.prompts, "sha256": data_sha(&a.prompts)?}, "skipped_rows": bad, "cuts": cuts});
    // The reference's resolved dtype is part of the run (a 16-bit reference gives other
    // log-probabilities); f32, the only kind before the key existed, is left out so those resume.
    let ref_dtype = a.reference_compute_dtype.resolve(&s.hf.stored_dtypes());
    if a.kl_beta > 0.0 && !ref_dtype.is_f32() {
        run["reference_compute_dtype"] = json!(ref_dtype);
    }
    begin(r, &s, &cfg, run, "grpo", &a.prompts)?;
    cuts_notice(r, "grpo", prompts.len(), bad, cuts);
    let reference: Option<Box<dyn orlik_model::Infer>> = if a.kl_beta > 0.0 {
        let (m, resolved) = s.hf.load_frozen(a.reference_compute_dtype)?;
        if let Some(d) = resolved.describe() {
            (r.notice)(&format!("KL reference: {d}"));
        }
        Some(Box::new(m))
    } else {
        None
    };
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
        reference,
        tokenizer: &s.tok,
        stop: s.eos.clone(),
        seed: a.train.seed,
        chunk: 256,
        samples: Some(r.out.join("samples.jsonl")),
        log_every: a.log_samples,
    };
    (r.notice)(&memory);
    train(r, &s, &mut task, &cfg, executor(&s, &cfg)?)
}

/// Greedy completions of held-out prompts and their mean reward.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RewardEval {
    pub n: usize,
    pub reward_mean: f64,
    /// The first five: answer, completion, reward.
    pub examples: Vec<Value>,
}

/// `model`'s greedy completions of `h.prompts` (at most `h.limit`, `h.max_new_tokens` new
/// tokens each) scored by `h.reward`; `progress(done, total)`.
pub fn eval_reward(
    model: &Path,
    h: &Heldout,
    progress: &dyn Fn(usize, usize),
) -> Result<RewardEval, AlignError> {
    let s = setup(model, &AlignSettings { batch: 1, ..AlignSettings::default() })?;
    let enc = encoder(&s);
    let rewards = rewards(&h.reward, 30.0)?;
    let mut cuts = Cuts::default();
    let needs = rewards.iter().any(Reward::needs_answer);
    let (mut rows, _) = read_prompts(&h.prompts, false, &enc, needs, &mut cuts)?;
    if h.limit > 0 {
        rows.truncate(h.limit);
    }
    let m = s.hf.load(ModelOptions::default())?;
    let o =
        SampleOptions { group: 1, max_new_tokens: h.max_new_tokens, temperature: 0.0, top_p: 1.0 };
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(0);
    let (mut total, mut examples) = (0.0, Vec::new());
    for (i, r) in rows.iter().enumerate() {
        let c = sample_group(&m, &r.ids, &s.eos, &o, &mut rng)?.remove(0);
        let text =
            s.tok.decode(&c, true).map_err(|e| AlignError::Template(format!("tokenizer: {e}")))?;
        let mut score = 0.0;
        for rw in &rewards {
            score += rw.score(&r.text, &text, &r.answer, &r.row)?;
        }
        total += score;
        if examples.len() < 5 {
            examples.push(json!({"answer": r.answer, "completion": text, "reward": score}));
        }
        progress(i + 1, rows.len());
    }
    Ok(RewardEval { n: rows.len(), reward_mean: total / rows.len().max(1) as f64, examples })
}
