//! The distill stage as one call: [`run`] takes the student, the teacher (a model run online, or
//! a teacher cache), the text and a `TrainConfig` (the recipe's `[distill]` section; `orlik
//! distill`'s flags and `--config` fill the same struct), trains into OUT/ and writes
//! OUT/final/.

use crate::cache::CacheTeacher;
use crate::{vocab_map, vocab_sha256, DistillError, OnlineTeacher};
use orlik_io::hfdir::HfModel;
use orlik_train::data::Packed;
use orlik_train::lm::{with_teacher, Control, Finished, RunDir};
use orlik_train::mem::{estimate, Plan, Side};
use orlik_train::{TeacherSource, TrainConfig};
use std::path::Path;

/// Where the teacher's distributions come from.
#[derive(Debug, Clone, Copy)]
pub struct Teachers<'a> {
    /// The teacher model, run online (or, with a cache, used to check that the cache is its).
    pub model: Option<&'a Path>,
    /// A cache from `orlik teacher-cache`.
    pub cache: Option<&'a Path>,
}

fn mismatch(msg: String) -> DistillError {
    DistillError::Mismatch(msg)
}

/// Distil `student` from `teachers` with `cfg` into `dir`. `notice` gets one-line messages
/// (the vocabulary map, the data) for the caller to print.
pub fn run(
    cfg: TrainConfig,
    student_dir: &Path,
    teachers: Teachers,
    dir: &RunDir,
    ctl: Control,
    notice: &dyn Fn(&str),
) -> Result<Finished, DistillError> {
    cfg.validate()?;
    dir.check()?;
    let student = HfModel::open(student_dir)?;
    let s_tok = student.tokenizer()?;
    let mut map = None;
    let teacher = match teachers.model {
        Some(p) => {
            let hf = HfModel::open(p)?;
            let tok = hf.tokenizer()?;
            map = vocab_map((&hf.config, &tok), (&student.config, &s_tok))?;
            // With a cache, a trimmed student's cache must be in its vocabulary (`orlik
            // teacher-cache --student`): CacheTeacher::open checks the tokenizer.
            if let (Some(m), None) = (&map, teachers.cache) {
                notice(&format!("vocabulary: the student's {} tokens are mapped to the teacher's by token string; KD on the shared vocabulary", m.len()));
            }
            Some(hf)
        }
        None if teachers.cache.is_none() => {
            return Err(mismatch(
                "give --teacher (run it online) or --teacher-cache (from `orlik teacher-cache`)"
                    .into(),
            ))
        }
        None => None,
    };
    let limit = student.config.max_position_embeddings;
    if cfg.seq_len > limit {
        return Err(mismatch(format!(
            "--seq-len {} is above the student's max_position_embeddings {limit}",
            cfg.seq_len
        )));
    }
    let online = teacher
        .as_ref()
        .filter(|_| teachers.cache.is_none())
        .map(|hf| Side::frozen(hf, cfg.teacher_compute_dtype));
    let mut plan = Plan::lm(&cfg, Side::of(&student), online);
    plan.cache_bytes = teachers.cache.map_or(0, crate::cache::shard_bytes);
    // Refused here, before anything is read or written; said once the run is set up.
    let memory = orlik_train::mem::check_on(&estimate(&plan), &plan, ctl.memory, &cfg.device)?;
    dir.claim()?;
    let (train, val) = dir.pack(&s_tok, &student.config, student_dir, cfg.seq_len)?;
    let teacher_sha = match &teacher {
        Some(hf) => Some(hf.content_sha256()?),
        None => None,
    };
    let teacher_compute;
    let source: Box<dyn TeacherSource> = match (teachers.cache, &teacher) {
        (Some(cache), _) => {
            let c = CacheTeacher::open(
                cache,
                teacher_sha.as_deref(),
                &vocab_sha256(&s_tok),
                cfg.temperature,
                cfg.topk,
                &train,
                val.as_ref(),
            )?;
            if c.manifest().vocab_size != student.config.vocab_size {
                return Err(mismatch(format!(
                    "{}: cache vocabulary {} != student vocab_size {}",
                    cache.display(),
                    c.manifest().vocab_size,
                    student.config.vocab_size
                )));
            }
            teacher_compute = c.manifest().compute_dtype;
            Box::new(c)
        }
        (None, Some(hf)) => {
            let (t, compute) = OnlineTeacher::load(hf, map, &cfg, notice)?;
            teacher_compute = compute;
            Box::new(t)
        }
        (None, None) => return Err(mismatch("internal: no teacher after the checks".into())),
    };
    let mut run = serde_json::json!({
        "kind": "distill",
        "student": student_dir.display().to_string(),
        "student_sha256": student.content_sha256()?,
        "teacher": teachers.model.map(|p| p.display().to_string()),
        "teacher_sha256": teacher_sha,
        "teacher_cache": teachers.cache.map(|p| p.display().to_string()),
        "data": dir.data.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
        "data_sha256": train.hash(),
        "val_sha256": val.as_ref().map(Packed::hash),
    });
    // The teacher's numerics: recorded when not f32 (runs from before the key resume as they were).
    if !teacher_compute.is_f32() {
        run["teacher_compute_dtype"] = serde_json::json!(teacher_compute);
    }
    let done = with_teacher(
        cfg,
        &student,
        student_dir,
        train,
        val,
        source,
        run,
        dir,
        ctl,
        notice,
        &memory,
    )?;
    Ok(done)
}
