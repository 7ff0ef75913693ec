//! `orlik teacher-cache`: run the teacher once over the training (and validation) text and keep
//! its top-k next-token distributions on disk (see `cache.rs` for the format), so that a
//! distillation run can train without the teacher in memory.

use crate::cache::{build, shard_paths, CacheSpec};
use crate::{vocab_sha256, DistillError};
use orlik_io::hfdir::HfModel;
use orlik_io::output::{check, read_marker, write_marker, Mode};
use orlik_model::ComputeDtype;
use orlik_train::dataset::{load, Expect, Split};
use std::path::{Path, PathBuf};

/// The cache's settings (the flags of `orlik teacher-cache`).
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "clap", derive(clap::Args))]
pub struct CacheSettings {
    /// Tokens kept per position (the rest is one tail bucket).
    #[cfg_attr(feature = "clap", arg(long, default_value_t = CacheSettings::default().topk))]
    pub topk: usize,
    /// Window length: must equal the distillation run's seq_len.
    #[cfg_attr(feature = "clap", arg(long, default_value_t = CacheSettings::default().seq_len))]
    pub seq_len: usize,
    /// Softmax temperature: must equal the distillation run's temperature.
    #[cfg_attr(feature = "clap", arg(long, default_value_t = CacheSettings::default().temperature))]
    pub temperature: f32,
    /// Windows per teacher forward pass.
    #[cfg_attr(feature = "clap", arg(long, default_value_t = CacheSettings::default().batch))]
    pub batch: usize,
    /// Windows per shard file.
    #[cfg_attr(feature = "clap", arg(long, default_value_t = CacheSettings::default().shard_windows))]
    pub shard_windows: usize,
    /// The teacher's matrices in memory: auto (as stored: a bf16 / f16 teacher stays 16-bit,
    /// half the memory, f32 accumulation), f32, bf16, f16. Recorded in cache.json.
    #[cfg_attr(feature = "clap", arg(long, default_value_t = ComputeDtype::Auto, value_parser = ComputeDtype::parse))]
    pub compute_dtype: ComputeDtype,
    /// Where the teacher runs: cpu, cuda (the first NVIDIA GPU, or the local rank's under
    /// mpirun), cuda:N, or auto. On a GPU its weights are f32.
    #[cfg_attr(feature = "clap", arg(long, default_value = "cpu"))]
    pub device: String,
}

impl Default for CacheSettings {
    fn default() -> Self {
        CacheSettings {
            topk: 64,
            seq_len: 256,
            temperature: 1.0,
            batch: 8,
            shard_windows: 256,
            compute_dtype: ComputeDtype::Auto,
            device: "cpu".into(),
        }
    }
}

/// What the cache is made of and where it goes.
pub struct CacheInputs<'a> {
    pub teacher: &'a Path,
    /// A student whose vocabulary is a subset of the teacher's (`orlik trim-vocab`): the text
    /// is tokenized by the student's tokenizer and the cache holds the teacher's distribution
    /// over the student's tokens, for distilling that student from the cache.
    pub student: Option<&'a Path>,
    pub data: &'a [PathBuf],
    pub val: &'a [PathBuf],
    pub out: &'a Path,
    /// Replace a cache of other settings in `out`.
    pub force: bool,
}

fn bad(msg: String) -> DistillError {
    DistillError::Mismatch(msg)
}

impl CacheSettings {
    /// Every setting in range, named as its flag.
    pub fn validate(&self) -> Result<(), DistillError> {
        if self.seq_len < 2 {
            let n = self.seq_len;
            return Err(bad(format!(
                "--seq-len {n}: must be at least 2 (a window predicts its next tokens)"
            )));
        }
        if !self.temperature.is_finite() || self.temperature <= 0.0 {
            return Err(bad(format!(
                "--temperature {}: must be a positive number",
                self.temperature
            )));
        }
        let counts = [
            ("--batch", self.batch),
            ("--shard-windows", self.shard_windows),
            ("--topk", self.topk),
        ];
        match counts.iter().find(|(_, v)| *v == 0) {
            Some((flag, _)) => Err(bad(format!("{flag} 0: must be at least 1"))),
            None => Ok(()),
        }
    }
}

/// Build (or continue) the cache; returns the line a person reads. `progress(done, total)`
/// counts windows.
pub fn run(
    s: &CacheSettings,
    i: &CacheInputs,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<String, DistillError> {
    s.validate()?;
    let ins: Vec<&Path> = std::iter::once(i.teacher)
        .chain(i.student)
        .chain(i.data.iter().chain(i.val).map(PathBuf::as_path))
        .collect();
    // A cache of the same kind is continued (or, with other settings, replaced when `force`)
    // by `cache::build`; anything else there is refused.
    check(i.out, "teacher-cache", &ins, Mode::Resume)?;
    let hf = HfModel::open(i.teacher)?;
    let t_tok = hf.tokenizer()?;
    // The windows are in the student's tokens when a student is named.
    let student = i.student.map(HfModel::open).transpose()?;
    let (tok, words_of) = match &student {
        Some(s) => (s.tokenizer()?, i.student.unwrap_or(i.teacher)),
        None => (t_tok.clone(), i.teacher),
    };
    let map = match &student {
        Some(s) => crate::vocab_map((&hf.config, &t_tok), (&s.config, &tok))?,
        None => None,
    };
    let max = hf.config.max_position_embeddings;
    if s.seq_len > max {
        return Err(bad(format!(
            "--seq-len {} is above the teacher's max_position_embeddings {max}",
            s.seq_len
        )));
    }
    let eos_cfg = student.as_ref().map_or(&hf.config, |s| &s.config);
    let eos_id = eos_cfg.eos_ids().first().copied().ok_or_else(|| {
        let t = words_of.display();
        bad(format!("{t}: config.json has no eos_token_id (needed to separate documents)"))
    })?;
    let vocab = vocab_sha256(&tok);
    let want = Expect { model: words_of, vocab_sha256: &vocab, seq_len: s.seq_len, eos: eos_id };
    let train = load(&tok, i.data, Split::Train, &want)?;
    let val = if i.val.is_empty() { None } else { Some(load(&tok, i.val, Split::Val, &want)?) };
    let local = orlik_dist::world().local_rank();
    let frozen = orlik_cuda::frozen::load(&hf, s.compute_dtype, &s.device, local)
        .map_err(orlik_train::TrainError::from)?;
    let compute_dtype = frozen.compute;
    let spec = CacheSpec {
        map: map.as_deref(),
        compute_dtype,
        teacher: frozen.model.as_ref(),
        teacher_sha256: hf.content_sha256()?,
        tokenizer_sha256: vocab_sha256(&tok),
        topk: s.topk,
        temperature: s.temperature,
        batch: s.batch,
        shard_windows: s.shard_windows,
    };
    let started = std::time::Instant::now();
    // Under data parallel each rank builds its shards (`cache::build`); rank 0 the rest.
    orlik_dist::on_root(|| -> Result<(), DistillError> {
        std::fs::create_dir_all(i.out)
            .map_err(|e| orlik_io::IoError::Io { path: i.out.into(), source: e })?;
        if read_marker(i.out).is_none() {
            write_marker(i.out, "teacher-cache")?;
        }
        Ok(())
    })?;
    let m = build(&spec, &train, val.as_ref(), i.out, i.force, progress)?;
    if !orlik_dist::is_root() {
        return Ok(String::new());
    }
    if read_marker(i.out).is_none() {
        write_marker(i.out, "teacher-cache")?; // build() replaced the directory
    }
    let bytes: u64 =
        shard_paths(i.out, &m).iter().filter_map(|p| p.metadata().ok()).map(|m| m.len()).sum();
    orlik_io::atomic::write_file_atomically(
        &i.out.join("orlik.json"),
        &orlik_io::text::provenance(),
    )?;
    Ok(format!(
        "teacher cache {}: top-{} of {} at T={}, train {} windows{}, {:.1} MB, {:.0} s{}",
        i.out.display(),
        m.topk,
        m.vocab_size,
        m.temperature,
        m.train.windows,
        m.val.as_ref().map(|v| format!(", val {} windows", v.windows)).unwrap_or_default(),
        bytes as f64 / 1e6,
        started.elapsed().as_secs_f64(),
        m.compute_dtype.describe().map(|d| format!("; teacher {d}")).unwrap_or_default()
    ))
}
