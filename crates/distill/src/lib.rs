//! Logit-only knowledge distillation (Minitron / Bielik-Minitron: forward KL from the unpruned
//! teacher, no cross-entropy term by default) on orlik's trainer. The teacher's distributions
//! come from the teacher model run online (`OnlineTeacher`) or from a sharded on-disk cache of
//! its top-k log-probabilities with the tail mass (`cache.rs`), written once and reused by every
//! run on the same data.

pub mod cache;
pub mod cache_run;
pub mod rank;
pub mod run;

use candle_core::Tensor;
use orlik_model::infer::{Infer, Rows};
use orlik_train::losses::{log_softmax, top_k};
use orlik_train::trainer::Split;
use orlik_train::{StepRows, TeacherSource, TrainError};
use rayon::prelude::*;

#[derive(Debug, thiserror::Error)]
pub enum DistillError {
    #[error("{0}")]
    Mismatch(String),
    #[error("{path}: {msg}")]
    Cache { path: std::path::PathBuf, msg: String },
    #[error(transparent)]
    Train(#[from] TrainError),
    #[error(transparent)]
    Io(#[from] orlik_io::IoError),
    #[error(transparent)]
    Model(#[from] orlik_model::ModelError),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

pub use orlik_io::tokenizer::vocab_sha256;

/// Teacher and student must share the vocabulary id for id: checked before any compute.
pub fn check_vocab(
    teacher: (&orlik_model::Config, &tokenizers::Tokenizer),
    student: (&orlik_model::Config, &tokenizers::Tokenizer),
) -> Result<(), DistillError> {
    orlik_io::tokenizer::same_vocab(teacher, student).map_err(|e| {
        DistillError::Mismatch(format!("{e}: logit distillation needs the same vocabulary"))
    })
}

/// How a student's vocabulary sits in the teacher's (`orlik_io::tokenizer::id_map`): `None`
/// when they are the same id for id, else each student id's teacher id of the same token
/// string. The KD loss is then computed on the student's vocabulary: the teacher's logits at
/// those ids, renormalised over them.
pub fn vocab_map(
    teacher: (&orlik_model::Config, &tokenizers::Tokenizer),
    student: (&orlik_model::Config, &tokenizers::Tokenizer),
) -> Result<Option<Vec<u32>>, DistillError> {
    orlik_io::tokenizer::id_map(teacher, student).map_err(|e| {
        DistillError::Mismatch(
            e.replace("vocabularies are mapped", "distillation maps vocabularies"),
        )
    })
}

/// Per-position teacher rows from logits (rows, vocab) at temperature `t`: the full log-softmax
/// (`topk` = 0) or the top-k with the tail mass.
pub fn rows_from_logits(z: &[f32], vocab: usize, t: f32, topk: usize) -> StepRows {
    if topk == 0 {
        let logp: Vec<f32> = z
            .par_chunks(vocab)
            .flat_map_iter(|r| log_softmax(r, t).into_iter().map(|x| x as f32))
            .collect();
        return StepRows::Full { vocab, logp };
    }
    let parts: Vec<(Vec<u32>, Vec<f32>, f32)> =
        z.par_chunks(vocab).map(|r| top_k(&log_softmax(r, t), topk)).collect();
    let k = topk.min(vocab);
    let mut ids = Vec::with_capacity(parts.len() * k);
    let mut logp = Vec::with_capacity(parts.len() * k);
    let mut tail = Vec::with_capacity(parts.len());
    for (i, l, r) in parts {
        ids.extend(i);
        logp.extend(l);
        tail.push(r);
    }
    StepRows::TopK { k, ids, logp, tail }
}

/// A teacher's head over a student's vocabulary: its whole head when they share the vocabulary,
/// else only the logits of the student's tokens (in student order), for the online teacher and
/// the teacher cache alike.
pub struct MappedHead {
    /// student id -> teacher id when the vocabularies differ ([`vocab_map`]).
    map: Option<Vec<u32>>,
    /// The same as a host tensor selecting the teacher's logit columns (the logits come back
    /// on the host, `Infer`), for an executor without a subset head.
    cols: Option<Tensor>,
    /// The teacher's head over the mapped ids only, where its executor has one.
    sub: Option<orlik_model::infer::SubHead>,
}

impl MappedHead {
    pub fn new(teacher: &dyn Infer, map: Option<Vec<u32>>) -> Result<MappedHead, DistillError> {
        let (cols, sub) = match &map {
            Some(m) => (
                Some(Tensor::from_slice(m, m.len(), &candle_core::Device::Cpu)?),
                teacher.head_subset(m)?,
            ),
            None => (None, None),
        };
        Ok(MappedHead { map, cols, sub })
    }

    /// The student's vocabulary size, or None when it is the teacher's.
    pub fn vocab(&self) -> Option<usize> {
        self.map.as_ref().map(Vec::len)
    }

    /// The teacher's ids of the same token strings as the student's `ids`.
    pub fn teacher_ids(&self, ids: &[u32]) -> Vec<u32> {
        match &self.map {
            Some(m) => ids.iter().map(|&i| m[i as usize]).collect(),
            None => ids.to_vec(),
        }
    }

    /// Logits (n, student vocab) of the teacher's hidden states (n, hidden).
    pub fn logits(&self, teacher: &dyn Infer, h: &Tensor) -> Result<Tensor, TrainError> {
        Ok(match (&self.sub, &self.cols) {
            (Some(f), _) => f(h)?,
            (None, Some(cols)) => teacher.head(h)?.index_select(cols, 1)?,
            (None, None) => teacher.head(h)?,
        })
    }
}

/// The teacher model run on each micro-batch (inference path: fused kernels, no autograd).
pub struct OnlineTeacher {
    model: Box<dyn Infer>,
    temperature: f32,
    topk: usize,
    hidden: Option<Tensor>, // (rows, hidden)
    head: MappedHead,
}

impl OnlineTeacher {
    pub fn new(model: impl Infer + 'static, temperature: f32, topk: usize) -> OnlineTeacher {
        OnlineTeacher::from_boxed(Box::new(model), temperature, topk)
    }

    /// The same for a model already boxed (a frozen model on the device a setting names).
    pub fn from_boxed(model: Box<dyn Infer>, temperature: f32, topk: usize) -> OnlineTeacher {
        let head = MappedHead { map: None, cols: None, sub: None };
        OnlineTeacher { model, temperature, topk, hidden: None, head }
    }
    /// The teacher `hf` loaded for distillation with `cfg`'s compute dtype on `cfg`'s device
    /// (the student's GPU where it has one), over the student's vocabulary when `map` says
    /// they differ; also the dtype it computes in. `notice` gets what loading said.
    pub fn load(
        hf: &orlik_io::hfdir::HfModel,
        map: Option<Vec<u32>>,
        cfg: &orlik_train::TrainConfig,
        notice: &dyn Fn(&str),
    ) -> Result<(OnlineTeacher, orlik_model::infer::ComputeDtype), DistillError> {
        let local = orlik_dist::world().local_rank();
        let f = orlik_cuda::frozen::load(hf, cfg.teacher_compute_dtype, &cfg.device, local)
            .map_err(TrainError::from)?;
        if let Some(said) = &f.said {
            notice(&format!("teacher: {said}"));
        }
        let t = OnlineTeacher::from_boxed(f.model, cfg.temperature, cfg.topk);
        let t = match map {
            Some(m) => t.with_vocab_map(m)?,
            None => t,
        };
        Ok((t, f.compute))
    }

    /// Distil into a student whose vocabulary is a subset of the teacher's (see [`vocab_map`]).
    pub fn with_vocab_map(mut self, map: Vec<u32>) -> Result<OnlineTeacher, DistillError> {
        self.head = MappedHead::new(self.model.as_ref(), Some(map))?;
        Ok(self)
    }
}

impl TeacherSource for OnlineTeacher {
    fn prepare(
        &mut self,
        _split: Split,
        _windows: &[usize],
        ids: &[u32],
        b: usize,
        t: usize,
    ) -> Result<bool, TrainError> {
        let teacher_ids = self.head.teacher_ids(ids);
        let h = self.model.hidden(Rows::new(&teacher_ids, b, t), None)?; // (b, t, hidden)
        let (b, t, d) = h.dims3()?;
        self.hidden = Some(h.reshape((b * t, d))?);
        Ok(true)
    }
    fn rows(&mut self, start: usize, n: usize) -> Result<StepRows, TrainError> {
        let h = self
            .hidden
            .as_ref()
            .ok_or_else(|| TrainError::Teacher("rows() before prepare()".into()))?;
        // (n, teacher vocab); timed apart, inside the step's loss_backward phase
        let rows = h.narrow(0, start, n)?;
        // (n, student vocab) when the vocabularies differ: renormalised below
        let logits = orlik_train::phase::time("teacher_head", || {
            self.head.logits(self.model.as_ref(), &rows)
        })?;
        let vocab = logits.dim(1)?;
        Ok(rows_from_logits(
            &logits.flatten_all()?.to_vec1::<f32>()?,
            vocab,
            self.temperature,
            self.topk,
        ))
    }
}

impl From<orlik_dist::DistError> for DistillError {
    fn from(e: orlik_dist::DistError) -> DistillError {
        DistillError::Train(e.into())
    }
}
