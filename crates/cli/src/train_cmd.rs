//! distill, train, teacher-cache, bench --train: argument resolution and wiring; the work is in
//! orlik-train and orlik-distill.

use anyhow::{Context, Result};
use clap::Args;
use orlik_train::lm::{Finished, RunDir};
use orlik_train::{Outcome, TrainConfig};
use serde_json::json;
use std::path::{Path, PathBuf};

/// Options shared by `orlik train` and `orlik distill`. Each overrides the same key of
/// `--config FILE.toml`; unset ones keep the file's value or the default.
#[derive(Args, Debug, Clone)]
pub struct TrainArgs {
    /// Training text files (documents = paragraphs separated by a blank line), or one dataset
    /// directory made by `orlik tokenize` (read mapped, nothing tokenized at start).
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
    /// Activation checkpointing: keep each layer's input only and re-run the layer's forward
    /// in the backward (one layer's activations at a time, the same gradients; about one more
    /// forward per step). Use it when every layer's activations do not fit in memory.
    #[arg(long)]
    pub checkpoint_layers: bool,
    /// Under mpirun: every rank keeps all AdamW moments (default: each keeps 1/N of them,
    /// ZeRO-1, with the same result).
    #[arg(long)]
    pub no_shard_optimizer: bool,
    /// Where the student trains: cpu, cuda (the first NVIDIA GPU, or the local rank's under
    /// mpirun), cuda:N, or auto (a GPU when there is one) [default: cpu]. On a GPU: f32 master
    /// weights and activations; the online teacher stays on the CPU so far.
    #[arg(long, value_parser = parse_device)]
    pub device: Option<String>,
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
    /// The online teacher's matrices in memory: auto (as stored: a bf16 / f16 teacher stays
    /// 16-bit, half the memory, f32 accumulation), f32, bf16, f16 [default: auto].
    #[arg(long, value_parser = orlik_model::ComputeDtype::parse)]
    pub teacher_compute_dtype: Option<orlik_model::ComputeDtype>,
}

fn parse_device(s: &str) -> Result<String, String> {
    orlik_cuda::DeviceChoice::parse(s).map(|d| d.to_string()).map_err(|e| e.to_string())
}

pub(crate) fn resolve(a: &TrainArgs, kd: Option<&KdArgs>) -> Result<TrainConfig> {
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
        val_tokens,
        device
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
    if a.no_shard_optimizer {
        c.shard_optimizer = false;
    }
    if let Some(k) = kd {
        set!(k, loss, temperature, jsd_beta, ce_weight, topk, teacher_compute_dtype);
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
    let f = orlik_distill::run::run(cfg, &a.student, teachers, &dir, ctl, &crate::term::notice)?;
    report_finished(&f)
}

/// `orlik train`: plain next-token cross-entropy on the same trainer, from the model's weights
/// or (`random`) from a random initialisation of its architecture.
pub fn train(model: &Path, init: &str, a: TrainArgs) -> Result<()> {
    let cfg = resolve(&a, None)?;
    let dir = run_dir(&a, "train", &[Some(model)])?;
    let f =
        orlik_train::lm::train(cfg, model, init == "random", &dir, crate::term::control(), &|m| {
            crate::term::notice(m)
        })?;
    report_finished(&f)
}

/// `orlik teacher-cache` flags.
#[derive(Args, Debug, Clone)]
pub struct CacheArgs {
    /// Teacher HF directory.
    #[arg(long)]
    pub teacher: PathBuf,
    /// A student whose vocabulary is trimmed from the teacher's (`orlik trim-vocab`): the text
    /// is read in the student's tokens and the cache keeps the teacher's distribution over
    /// them, so that `orlik distill --teacher-cache` can train that student.
    #[arg(long)]
    pub student: Option<PathBuf>,
    /// Training text (the windows a distillation run will read), or one `orlik tokenize` dataset.
    #[arg(long, num_args = 1.., required = true)]
    pub data: Vec<PathBuf>,
    /// Validation text, cached too.
    #[arg(long, num_args = 1..)]
    pub val: Vec<PathBuf>,
    #[command(flatten)]
    pub settings: orlik_distill::cache_run::CacheSettings,
    #[arg(short, long)]
    pub output: PathBuf,
    /// Replace a cache of other settings in --output.
    #[arg(long)]
    pub force: bool,
}

pub fn teacher_cache(a: CacheArgs) -> Result<()> {
    let i = orlik_distill::cache_run::CacheInputs {
        teacher: &a.teacher,
        student: a.student.as_deref(),
        data: &a.data,
        val: &a.val,
        out: &a.output,
        force: a.force,
    };
    let pb = crate::term::bar(
        "teacher {bar:30} {pos}/{len} windows {per_sec} [{elapsed_precise}<{eta_precise}]",
    );
    if !orlik_dist::is_root() {
        pb.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let said = orlik_distill::cache_run::run(&a.settings, &i, &mut |d, n| {
        crate::term::show(&pb, "", d, n)
    })?;
    pb.finish_and_clear();
    if !said.is_empty() {
        println!("{said}");
    }
    Ok(())
}

/// Training-step speed: forward + backward + AdamW on deterministic tokens, plain CE, the
/// model's own weights; the median of the timed steps (all of them with --json).
pub fn bench_train(
    model: &Path,
    batch: usize,
    seq_len: usize,
    steps: usize,
    checkpoint_layers: bool,
    device: &str,
    json_out: bool,
) -> Result<()> {
    let tps =
        orlik_train::bench::train_steps(model, batch, seq_len, steps, checkpoint_layers, device)?;
    let mut sorted = tps.clone();
    sorted.sort_by(f64::total_cmp);
    let median = sorted.get(sorted.len() / 2).copied().unwrap_or(f64::NAN);
    if json_out {
        let rss = orlik_io::peak_rss_kb().map(|kb| kb as f64 / 1024.0);
        println!(
            "{}",
            json!({"batch": batch, "seq_len": seq_len, "tokens_per_s": tps, "median_tokens_per_s": median, "peak_rss_mb": rss})
        );
    } else {
        println!("train step {batch}x{seq_len}: median {median:.1} tokens/s over {steps} steps");
    }
    Ok(())
}

#[derive(clap::Args)]
pub struct TokenizeArgs {
    /// HF model directory whose tokenizer.json (and config.json's EOS, the separator between
    /// documents) the dataset is made with; train with this model or one of the same vocabulary.
    #[arg(long)]
    pub model: PathBuf,
    /// Source files: plain text (documents = paragraphs separated by a blank line) or JSONL
    /// (.jsonl / .json: one object per line, the document under --text-field). Each is packed
    /// on its own.
    #[arg(long, num_args = 1.., required = true)]
    pub data: Vec<PathBuf>,
    /// Mixing weight per --data source, in order (default all 1): source i contributes
    /// round(w_i x its windows) windows, repeated (w > 1) or evenly thinned (w < 1).
    #[arg(long, num_args = 1.., value_delimiter = ',')]
    pub weights: Vec<f64>,
    /// Validation text: the dataset's val split (`--val DATASET` in training reads it).
    #[arg(long, num_args = 1..)]
    pub val: Vec<PathBuf>,
    #[command(flatten)]
    pub settings: orlik_train::dataset::TokenizeSettings,
    /// Dataset directory to write (or to continue, when re-run with the same sources).
    #[arg(short, long)]
    pub output: PathBuf,
    /// Start over when --output holds a dataset (or an unfinished one) of other sources or
    /// settings; without it a re-run with the same ones continues from the last shard.
    #[arg(long)]
    pub force: bool,
}

pub fn tokenize(a: TokenizeArgs) -> Result<()> {
    let i = orlik_train::dataset::TokenizeInputs {
        model: &a.model,
        data: &a.data,
        weights: &a.weights,
        val: &a.val,
        out: &a.output,
        force: a.force,
        after_shard: crate::term::step_delay(),
    };
    let pb =
        crate::term::bar("{msg:24} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}");
    let s = orlik_train::dataset::tokenize(&i, &a.settings, &mut |what, d, n| {
        pb.set_message(what.to_string());
        pb.set_length(n);
        pb.set_position(d);
    })?;
    pb.finish_and_clear();
    let m = &s.manifest;
    if s.up_to_date {
        println!("{}: already tokenized with these sources and settings", a.output.display());
    }
    for (name, sp) in [("train", Some(&m.train)), ("val", m.val.as_ref())] {
        let Some(sp) = sp else { continue };
        for src in &sp.sources {
            println!(
                "{name} {}: {} documents, {} tokens, {} windows x weight {} = {}",
                src.path,
                src.documents,
                src.tokens,
                src.windows,
                src.weight,
                src.mixed_windows()
            );
        }
        println!("{name}: {} windows of {} tokens", sp.windows, m.seq_len + 1);
    }
    if !s.up_to_date {
        let tokens: u64 = m
            .train
            .sources
            .iter()
            .chain(m.val.iter().flat_map(|v| &v.sources))
            .map(|x| x.tokens)
            .sum();
        println!(
            "wrote {} ({} shards written, {} kept from an interrupted run) in {:.1} s, {:.0} tokens/s",
            a.output.display(),
            s.written_shards,
            s.kept_shards,
            s.seconds,
            tokens as f64 / s.seconds.max(1e-9)
        );
    }
    Ok(())
}
