//! A KD / CE run in a directory as one call, shared by `orlik train` ([`train`]) and
//! distillation (`orlik_distill::run`): the output checked and claimed, the text packed, the
//! loop run (`Trainer`), the trained weights written as OUT/final/ (HF, with the model's side
//! files), and a summary returned for the caller to print.

use crate::checkpoint::State;
use crate::data::Packed;
use crate::dataset::{load, Expect, Split};
use crate::runner::Outcome;
use crate::{TeacherSource, TrainConfig, TrainError, Trainer};
use candle_core::{DType, Tensor};
use orlik_io::hfdir::{save_pretrained, side_files, HfModel, SaveOptions};
use orlik_io::output::Mode;
use orlik_model::Config;
use serde_json::Value;
use std::path::{Path, PathBuf};

/// Where a run reads and writes, and how it treats an existing output.
pub struct RunDir<'a> {
    /// The command's kind in the output marker: `train`, `distill`.
    pub kind: &'static str,
    /// Every file or directory the run reads: the output may be none of them.
    pub inputs: Vec<&'a Path>,
    /// Training text (paragraphs separated by a blank line), or one dataset directory.
    pub data: &'a [PathBuf],
    /// Validation text.
    pub val: &'a [PathBuf],
    pub out: &'a Path,
    pub resume: bool,
    pub force: bool,
    /// Stored dtype of OUT/final/ (None: the model's own).
    pub save_dtype: Option<DType>,
}

impl RunDir<'_> {
    fn mode(&self) -> Mode {
        Mode::from_flags(self.force, self.resume)
    }

    /// Refuse the output before any work (an input, someone else's files, another command's).
    pub fn check(&self) -> Result<(), TrainError> {
        orlik_io::output::check(self.out, self.kind, &self.inputs, self.mode())?;
        Ok(())
    }

    /// Claim the output: a replaced own run removed, the directory created and marked.
    /// Under data parallel, rank 0 claims it while the other ranks wait.
    pub fn claim(&self) -> Result<(), TrainError> {
        orlik_dist::on_root(|| -> Result<(), TrainError> {
            orlik_io::output::claim_dir(self.out, self.kind, &self.inputs, self.mode())?;
            Ok(())
        })
    }

    /// The training and validation text packed into windows of `seq_len` + 1 tokens.
    pub fn pack(
        &self,
        tok: &tokenizers::Tokenizer,
        cfg: &Config,
        model_dir: &Path,
        seq_len: usize,
    ) -> Result<(Packed, Option<Packed>), TrainError> {
        let eos = cfg.eos_ids().first().copied().ok_or_else(|| {
            TrainError::Config(format!(
                "{}: config.json has no eos_token_id (needed to separate documents)",
                model_dir.display()
            ))
        })?;
        let vocab = orlik_io::tokenizer::vocab_sha256(tok);
        let want = Expect { model: model_dir, vocab_sha256: &vocab, seq_len, eos };
        let train = load(tok, self.data, Split::Train, &want)?;
        let val =
            if self.val.is_empty() { None } else { Some(load(tok, self.val, Split::Val, &want)?) };
        Ok((train, val))
    }
}

/// One line about the packed data.
pub fn describe(train: &Packed, val: Option<&Packed>) -> String {
    format!(
        "data: {} windows x {} tokens ({} tokens, {} bytes){}",
        train.windows(),
        train.seq_len + 1,
        train.len_tokens(),
        train.bytes,
        val.map(|v| format!("; validation {} windows", v.windows())).unwrap_or_default()
    )
}

/// What the caller controls besides the settings: the training loop's own options.
pub use crate::runner::Options as Control;

/// How a run ended, for the caller to print.
pub struct Finished {
    pub outcome: Outcome,
    pub state: State,
    /// OUT/final/ (written only when the run finished).
    pub final_dir: PathBuf,
    pub last_loss: Option<f64>,
    /// The last validation row of metrics.jsonl.
    pub last_val: Option<Value>,
}

/// `--save-dtype f16 | bf16 | f32` (any other name: f32; the flag's parser lists the three).
pub fn save_dtype(name: Option<&str>) -> Option<DType> {
    name.map(|n| match n {
        "f16" => DType::F16,
        "bf16" => DType::BF16,
        _ => DType::F32,
    })
}

impl Finished {
    /// What a person reads when the run finished: steps, tokens, speed, the last loss and
    /// validation, the peak memory and where the model is.
    pub fn summary(&self) -> String {
        let st = &self.state;
        let mut s = format!(
            "trained {} steps, {} tokens in {:.0} s ({:.0} tokens/s); final loss {}\n",
            st.step,
            st.tokens_seen,
            st.train_seconds,
            st.tokens_seen as f64 / st.train_seconds.max(1e-9),
            self.last_loss.map(|v| format!("{v:.4}")).unwrap_or_default()
        );
        if let Some(v) = &self.last_val {
            s += &format!("validation: {v}\n");
        }
        if let Some(kb) = orlik_io::peak_rss_kb() {
            s += &format!("peak RSS {:.0} MB\n", kb as f64 / 1024.0);
        }
        s + &format!("model: {}", self.final_dir.display())
    }
}

/// Run `t` to the end and, when it finished, write OUT/final/ from `model_dir`'s side files.
pub fn finish<'t>(
    mut t: Trainer<'t>,
    dir: &RunDir,
    cfg: &Config,
    model_dir: &Path,
    stored: DType,
    ctl: Control<'t>,
) -> Result<Finished, TrainError> {
    t.set_quiet(ctl.quiet);
    if let Some(h) = ctl.after_step {
        t.set_after_step(h);
    }
    let outcome = t.run(ctl.stop)?;
    let final_dir = dir.out.join("final");
    if !orlik_dist::is_root() {
        // Rank 0 writes OUT/final/ and holds the metrics (its disk may be another machine's).
        let state = t.state().clone();
        return Ok(Finished { outcome, state, final_dir, last_loss: None, last_val: None });
    }
    if outcome == Outcome::Finished {
        let dtype = dir.save_dtype.unwrap_or(stored);
        save_final(model_dir, cfg, &t.named_weights()?, &final_dir, dtype)?;
    }
    let rows = crate::curves::read(&t.metrics_path())?;
    let last_loss = rows.iter().rev().find_map(|r| r.get("loss").and_then(Value::as_f64));
    let last_val = rows.iter().rev().find(|r| r.get("val_loss").is_some()).cloned();
    Ok(Finished { outcome, state: t.state().clone(), final_dir, last_loss, last_val })
}

/// Write trained `weights` as an HF directory at `target` with `model_dir`'s side files
/// (tokenizer, templates, licences; not its provenance or prune plan) and this command's
/// provenance, stored as `dtype`.
pub fn save_final(
    model_dir: &Path,
    cfg: &Config,
    weights: &[(String, Tensor)],
    target: &Path,
    dtype: DType,
) -> Result<(), TrainError> {
    let mut files = side_files(model_dir)?;
    files.retain(|(n, _)| n != "orlik.json" && n != "prune_plan.json");
    files.push(("orlik.json".into(), orlik_io::text::provenance()));
    let opts =
        SaveOptions { dtype, max_shard_bytes: 2_000_000_000, overwrite: true, kind: "final" };
    Ok(save_pretrained(target, cfg, weights, &files, &opts)?)
}

/// The dtype a checkpoint stores its weights in (f32 when it cannot tell).
pub fn stored_dtype(hf: &HfModel) -> DType {
    hf.stored_dtypes().first().copied().unwrap_or(DType::F32)
}

/// `orlik train`: next-token cross-entropy from `model`'s weights or, with `random_init`, from
/// a random initialisation of its architecture.
pub fn train(
    cfg: TrainConfig,
    model: &Path,
    random_init: bool,
    dir: &RunDir,
    ctl: Control,
    notice: &dyn Fn(&str),
) -> Result<Finished, TrainError> {
    cfg.validate()?;
    dir.check()?;
    let hf = HfModel::open(model)?;
    let plan = crate::mem::Plan::lm(&cfg, crate::mem::Side::of(&hf), None);
    // Refused here, before anything is read or written; said once the run is set up (a bad
    // input fails with its one-line error alone).
    let memory =
        crate::mem::check_on(&crate::mem::estimate(&plan), &plan, ctl.memory, &cfg.device)?;
    let tok = hf.tokenizer()?;
    dir.claim()?;
    let (train, val) = dir.pack(&tok, &hf.config, model, cfg.seq_len)?;
    let weights = if random_init {
        orlik_model::init::random_weights(&hf.config, cfg.seed, 0.02)?
    } else {
        hf.checkpoint.load_all(DType::F32)?
    };
    let run = serde_json::json!({
        "kind": "train",
        "model": model.display().to_string(),
        "model_sha256": hf.content_sha256()?,
        "init": if random_init { "random" } else { "model" },
        "data": dir.data.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
        "data_sha256": train.hash(),
        "val_sha256": val.as_ref().map(Packed::hash),
    });
    let about = describe(&train, val.as_ref());
    let t = Trainer::new(cfg, &hf.config, weights, train, val, None, dir.out, run, dir.resume)?;
    notice(&memory);
    notice(&about);
    finish(t, dir, &hf.config, model, stored_dtype(&hf), ctl)
}

/// Distillation's half of the run: a trainer with `teacher` (see `orlik_distill::run`).
#[allow(clippy::too_many_arguments)]
pub fn with_teacher<'t>(
    cfg: TrainConfig,
    student: &HfModel,
    student_dir: &Path,
    train: Packed,
    val: Option<Packed>,
    teacher: Box<dyn TeacherSource + 't>,
    run: Value,
    dir: &RunDir,
    ctl: Control<'t>,
    notice: &dyn Fn(&str),
    memory: &str,
) -> Result<Finished, TrainError> {
    let about = describe(&train, val.as_ref());
    let weights = student.checkpoint.load_all(DType::F32)?;
    let t = Trainer::new(
        cfg,
        &student.config,
        weights,
        train,
        val,
        Some(teacher),
        dir.out,
        run,
        dir.resume,
    )?;
    notice(memory);
    notice(&about);
    finish(t, dir, &student.config, student_dir, stored_dtype(student), ctl)
}
