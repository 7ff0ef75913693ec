//! distill, train, teacher-cache, bench --train: argument resolution and wiring; the work is in
//! orlik-train and orlik-distill.

use crate::commands::provenance;
use anyhow::{bail, Context, Result};
use candle_core::DType;
use clap::Args;
use orlik_distill::cache::CacheSpec;
use orlik_distill::vocab_sha256;
use orlik_io::hfdir::HfModel;
use orlik_model::ModelOptions;
use orlik_train::data::{pack, Packed};
use orlik_train::lm::{Finished, RunDir};
use orlik_train::{Outcome, TrainConfig, Trainer};
use serde_json::json;
use std::path::{Path, PathBuf};

/// Options shared by `orlik train` and `orlik distill`. Each overrides the same key of
/// `--config FILE.toml`; unset ones keep the file's value or the default.
#[derive(Args, Debug, Clone)]
pub struct TrainArgs {
    /// Training text files (documents = paragraphs separated by a blank line).
    #[arg(long, num_args = 1.., required = true)]
    pub data: Vec<PathBuf>,
    /// Validation text files (bits/byte, loss and KL reported in metrics.jsonl).
    #[arg(long, num_args = 1..)]
    pub val: Vec<PathBuf>,
    /// Optimizer steps.
    #[arg(long)]
    pub steps: Option<u64>,
    /// Training tokens (converted to steps: tokens / (batch · grad-accum · seq-len), rounded up).
    #[arg(long)]
    pub tokens: Option<u64>,
    /// Tokens per window [default: 256].
    #[arg(long)]
    pub seq_len: Option<usize>,
    /// Windows per micro-batch [default: 8].
    #[arg(long)]
    pub batch: Option<usize>,
    /// Micro-batches per optimizer step [default: 1].
    #[arg(long)]
    pub grad_accum: Option<usize>,
    /// Peak learning rate [default: 3e-4].
    #[arg(long)]
    pub lr: Option<f64>,
    /// Warmup steps [default: 2% of the steps].
    #[arg(long)]
    pub warmup: Option<u64>,
    /// cosine, wsd or constant [default: cosine].
    #[arg(long)]
    pub schedule: Option<orlik_train::optim::Schedule>,
    /// Final learning rate [default: lr / 10].
    #[arg(long)]
    pub min_lr: Option<f64>,
    /// Decoupled weight decay on matrices [default: 0.01].
    #[arg(long)]
    pub weight_decay: Option<f64>,
    /// Global gradient-norm clip, 0 = off [default: 1.0].
    #[arg(long)]
    pub clip: Option<f64>,
    /// Seed of the data order (and of --init random) [default: 0].
    #[arg(long)]
    pub seed: Option<u64>,
    /// Checkpoint every N steps (the last 2 are kept) [default: 100].
    #[arg(long)]
    pub save_every: Option<u64>,
    /// Validate every N steps, 0 = at the end only [default: 0].
    #[arg(long)]
    pub eval_every: Option<u64>,
    /// Validation tokens per evaluation, 0 = all [default: 32768].
    #[arg(long)]
    pub val_tokens: Option<usize>,
    /// Activation checkpointing: keep each layer's input only and recompute the layer under
    /// candle's autograd in the backward (one layer's activations at a time). Slower than the
    /// default hand-written backward of Llama/Mistral/Qwen2 blocks, which keeps every layer's
    /// activations; use it when those do not fit in memory.
    #[arg(long)]
    pub checkpoint_layers: bool,
    /// Settings file (TOML, keys as in run.json's "config"; unknown keys are errors).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Output directory: final/ (HF model), checkpoints/, metrics.jsonl, run.json, PNG curves.
    #[arg(short, long)]
    pub output: PathBuf,
    /// Continue the run in --output from its last checkpoint (same settings required).
    #[arg(long)]
    pub resume: bool,
    /// Replace --output if it holds another run.
    #[arg(long, conflicts_with = "resume")]
    pub force: bool,
    /// Stored dtype of final/ [default: the student's].
    #[arg(long, value_parser = ["f32", "f16", "bf16"])]
    pub save_dtype: Option<String>,
}

/// Knowledge-distillation options.
#[derive(Args, Debug, Clone, Default)]
pub struct KdArgs {
    /// fkl (forward KL, Minitron's choice), rkl (reverse KL), jsd (generalised JSD) [default: fkl].
    #[arg(long)]
    pub loss: Option<orlik_train::losses::KdLoss>,
    /// Temperature; the loss is scaled by T² [default: 1].
    #[arg(long)]
    pub temperature: Option<f32>,
    /// β of --loss jsd [default: 0.5].
    #[arg(long)]
    pub jsd_beta: Option<f32>,
    /// Weight of a cross-entropy term added to the KD loss [default: 0].
    #[arg(long)]
    pub ce_weight: Option<f32>,
    /// Distil from the teacher's top-k tokens plus a tail bucket; 0 = full vocabulary [default: 0].
    #[arg(long)]
    pub topk: Option<usize>,
}

fn resolve(a: &TrainArgs, kd: Option<&KdArgs>) -> Result<TrainConfig> {
    let mut c = match &a.config {
        Some(p) => TrainConfig::from_toml(
            &std::fs::read_to_string(p).with_context(|| p.display().to_string())?,
            &p.display().to_string(),
        )?,
        None => TrainConfig::default(),
    };
    macro_rules! set {
        ($src:expr, $($f:ident),*) => { $( if let Some(v) = $src.$f.clone() { c.$f = v; } )* };
    }
    set!(
        a,
        seq_len,
        batch,
        grad_accum,
        lr,
        warmup,
        schedule,
        weight_decay,
        clip,
        seed,
        save_every,
        eval_every,
        val_tokens
    );
    if a.steps.is_some() || a.tokens.is_some() {
        c.steps = a.steps;
        c.tokens = a.tokens;
    }
    if a.min_lr.is_some() {
        c.min_lr = a.min_lr;
    }
    if a.checkpoint_layers {
        c.checkpoint_layers = true;
    }
    if let Some(k) = kd {
        set!(k, loss, temperature, jsd_beta, ce_weight, topk);
    }
    c.validate()?;
    Ok(c)
}

/// The run directory of a training command's flags; `models` are the models it reads.
fn run_dir<'a>(
    a: &'a TrainArgs,
    kind: &'static str,
    models: &[Option<&'a Path>],
) -> Result<RunDir<'a>> {
    let mut inputs: Vec<&Path> = models.iter().flatten().copied().collect();
    inputs.extend(a.data.iter().chain(&a.val).chain(&a.config).map(PathBuf::as_path));
    let save_dtype = orlik_train::lm::save_dtype(a.save_dtype.as_deref());
    Ok(RunDir {
        kind,
        inputs,
        data: &a.data,
        val: &a.val,
        out: &a.output,
        resume: a.resume,
        force: a.force,
        save_dtype,
    })
}

/// Print how a run ended; an interrupted run exits 130 (the checkpoint is saved).
fn report_finished(f: &Finished) -> Result<()> {
    if let Outcome::Interrupted { step } = f.outcome {
        crate::term::interrupted(step);
    }
    println!("{}", f.summary());
    Ok(())
}

pub struct DistillArgs {
    pub teacher: Option<PathBuf>,
    pub student: PathBuf,
    pub teacher_cache: Option<PathBuf>,
    pub train: TrainArgs,
    pub kd: KdArgs,
}

/// `orlik distill`: the flags (over `--config`) as the library's settings.
pub fn distill(a: DistillArgs) -> Result<()> {
    let cfg = resolve(&a.train, Some(&a.kd))?;
    let models = [Some(a.student.as_path()), a.teacher.as_deref(), a.teacher_cache.as_deref()];
    let dir = run_dir(&a.train, "distill", &models)?;
    let teachers = orlik_distill::run::Teachers {
        model: a.teacher.as_deref(),
        cache: a.teacher_cache.as_deref(),
    };
    let ctl = crate::term::control();
    let f = orlik_distill::run::run(cfg, &a.student, teachers, &dir, ctl, &|m| eprintln!("{m}"))?;
    report_finished(&f)
}

/// `orlik train`: plain next-token cross-entropy on the same trainer, from the model's weights
/// or (`random`) from a random initialisation of its architecture.
pub fn train(model: &Path, init: &str, a: TrainArgs) -> Result<()> {
    let cfg = resolve(&a, None)?;
    let dir = run_dir(&a, "train", &[Some(model)])?;
    let f =
        orlik_train::lm::train(cfg, model, init == "random", &dir, crate::term::control(), &|m| {
            eprintln!("{m}")
        })?;
    report_finished(&f)
}

/// `orlik teacher-cache` flags.
#[derive(Args, Debug, Clone)]
pub struct CacheArgs {
    /// Teacher HF directory.
    #[arg(long)]
    pub teacher: PathBuf,
    #[arg(long, num_args = 1.., required = true)]
    pub data: Vec<PathBuf>,
    #[arg(long, num_args = 1..)]
    pub val: Vec<PathBuf>,
    /// Tokens kept per position (the rest is one tail bucket).
    #[arg(long, default_value_t = 64)]
    pub topk: usize,
    /// Must equal the distillation run's --seq-len.
    #[arg(long, default_value_t = 256)]
    pub seq_len: usize,
    /// Must equal the distillation run's --temperature.
    #[arg(long, default_value_t = 1.0)]
    pub temperature: f32,
    /// Windows per teacher forward pass.
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    /// Windows per shard file.
    #[arg(long, default_value_t = 256)]
    pub shard_windows: usize,
    #[arg(short, long)]
    pub output: PathBuf,
    /// Replace a cache of other settings in --output.
    #[arg(long)]
    pub force: bool,
}

pub fn teacher_cache(a: CacheArgs) -> Result<()> {
    if a.seq_len < 2 {
        bail!("--seq-len {}: must be at least 2 (a window predicts its next tokens)", a.seq_len);
    }
    if !a.temperature.is_finite() || a.temperature <= 0.0 {
        bail!("--temperature {}: must be a positive number", a.temperature);
    }
    for (flag, v) in
        [("--batch", a.batch), ("--shard-windows", a.shard_windows), ("--topk", a.topk)]
    {
        if v == 0 {
            bail!("{flag} 0: must be at least 1");
        }
    }
    let ins: Vec<&Path> = std::iter::once(a.teacher.as_path())
        .chain(a.data.iter().chain(&a.val).map(PathBuf::as_path))
        .collect();
    // A cache of the same kind is continued (or, with other settings, replaced under --force) by
    // `cache::build`; anything else there is refused.
    orlik_io::output::check(&a.output, "teacher-cache", &ins, orlik_io::output::Mode::Resume)?;
    let hf = HfModel::open(&a.teacher)?;
    let tok = hf.tokenizer()?;
    if a.seq_len > hf.config.max_position_embeddings {
        bail!(
            "--seq-len {} is above the teacher's max_position_embeddings {}",
            a.seq_len,
            hf.config.max_position_embeddings
        );
    }
    let eos_id = hf.config.eos_ids().first().copied().with_context(|| {
        format!(
            "{}: config.json has no eos_token_id (needed to separate documents)",
            a.teacher.display()
        )
    })?;
    let train = pack(&tok, &a.data, a.seq_len, eos_id, 1)?;
    let val = if a.val.is_empty() { None } else { Some(pack(&tok, &a.val, a.seq_len, eos_id, 1)?) };
    let model = hf.load(ModelOptions::default())?;
    let spec = CacheSpec {
        teacher: &model,
        teacher_sha256: hf.content_sha256()?,
        tokenizer_sha256: vocab_sha256(&tok),
        topk: a.topk,
        temperature: a.temperature,
        batch: a.batch,
        shard_windows: a.shard_windows,
    };
    let pb = crate::term::bar(
        "teacher {bar:30} {pos}/{len} windows {per_sec} [{elapsed_precise}<{eta_precise}]",
    );
    let started = std::time::Instant::now();
    std::fs::create_dir_all(&a.output).with_context(|| a.output.display().to_string())?;
    if orlik_io::output::read_marker(&a.output).is_none() {
        orlik_io::output::write_marker(&a.output, "teacher-cache")?;
    }
    let m = orlik_distill::cache::build(
        &spec,
        &train,
        val.as_ref(),
        &a.output,
        a.force,
        &mut |d, n| {
            pb.set_length(n as u64);
            pb.set_position(d as u64);
        },
    )?;
    pb.finish_and_clear();
    if orlik_io::output::read_marker(&a.output).is_none() {
        orlik_io::output::write_marker(&a.output, "teacher-cache")?; // build() replaced the directory
    }
    let bytes: u64 = orlik_distill::cache::shard_paths(&a.output, &m)
        .iter()
        .filter_map(|p| p.metadata().ok())
        .map(|m| m.len())
        .sum();
    std::fs::write(a.output.join("orlik.json"), provenance()).context("writing orlik.json")?;
    println!(
        "teacher cache {}: top-{} of {} at T={}, train {} windows{}, {:.1} MB, {:.0} s",
        a.output.display(),
        m.topk,
        m.vocab_size,
        m.temperature,
        m.train.windows,
        m.val.as_ref().map(|v| format!(", val {} windows", v.windows)).unwrap_or_default(),
        bytes as f64 / 1e6,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Training-step speed: forward + backward + AdamW on random tokens, plain CE, model's own
/// weights. Prints tokens/s of each timed step (after one warm-up step).
pub fn bench_train(
    model: &Path,
    batch: usize,
    seq_len: usize,
    steps: usize,
    checkpoint_layers: bool,
    json_out: bool,
) -> Result<()> {
    let hf = HfModel::open(model)?;
    let cfg = TrainConfig {
        steps: Some(steps as u64 + 1),
        batch,
        seq_len,
        // time_steps never saves; a positive interval past the last step keeps the config valid
        save_every: steps as u64 + 2,
        checkpoint_layers,
        ..Default::default()
    };
    let n = (batch * (steps + 1) + 1) * (seq_len + 1);
    let tokens = orlik_eval::speed::bench_ids(n, hf.config.vocab_size);
    let data = Packed { tokens, seq_len, bytes: n, stream_tokens: n };
    let dir = tempfile_dir()?;
    let weights = hf.checkpoint.load_all(DType::F32)?;
    let mut t = Trainer::new(
        cfg,
        &hf.config,
        weights,
        data,
        None,
        None,
        &dir,
        json!({"kind": "bench"}),
        false,
    )?;
    let secs = t.time_steps(steps + 1)?;
    let _ = std::fs::remove_dir_all(&dir);
    let tps: Vec<f64> = secs[1..].iter().map(|s| (batch * seq_len) as f64 / s).collect();
    let mut sorted = tps.clone();
    sorted.sort_by(f64::total_cmp);
    let median = sorted[sorted.len() / 2];
    if json_out {
        println!(
            "{}",
            json!({"batch": batch, "seq_len": seq_len, "tokens_per_s": tps, "median_tokens_per_s": median, "peak_rss_mb": orlik_io::peak_rss_kb().map(|kb| kb as f64 / 1024.0)})
        );
    } else {
        println!("train step {batch}x{seq_len}: median {median:.1} tokens/s over {steps} steps");
    }
    Ok(())
}

fn tempfile_dir() -> Result<PathBuf> {
    let d = std::env::temp_dir().join(format!("orlik-bench-{}", std::process::id()));
    if d.exists() {
        std::fs::remove_dir_all(&d)?;
    }
    Ok(d)
}
