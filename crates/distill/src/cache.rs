//! Teacher logit cache: the teacher's top-k token ids, log-probabilities (at the distillation
//! temperature) and remaining tail mass for every position of every packed window, so distillation
//! runs never execute the teacher.
//!
//! Layout of `CACHE/`:
//! - `cache.json`: the manifest — format version, teacher sha256 (config + weights), tokenizer
//!   vocabulary sha256, vocab size, k, temperature, seq_len, and per split (`train`, `val`) the
//!   packed-data sha256, window count, windows per shard and shard file names.
//! - `{split}-NNNNN.bin`: raw little-endian records, one per position in window order:
//!   `k × u32 ids | k × f32 log-probs | f32 tail mass` (8k + 4 bytes), mmap'd when read.
//!
//! Shards are written to a temp file, fsync'd and renamed, so an interrupted build resumes by
//! skipping complete shards (right size) and redoing the rest.

use crate::{rows_from_logits, DistillError};
use orlik_model::infer::{Infer, Rows};
use orlik_model::ComputeDtype;
use orlik_train::data::Packed;
use orlik_train::trainer::Split;
use orlik_train::{StepRows, TeacherSource, TrainError};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};

pub const FORMAT: &str = "orlik-teacher-cache";
pub const VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SplitInfo {
    pub data_sha256: String,
    pub windows: usize,
    pub shard_windows: usize,
    pub shards: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: String,
    pub version: u32,
    pub teacher_sha256: String,
    pub tokenizer_sha256: String,
    pub vocab_size: usize,
    pub topk: usize,
    pub temperature: f32,
    pub seq_len: usize,
    /// How the teacher held its matrices (resolved; absent = f32, as in caches made before
    /// 16-bit inference existed).
    #[serde(default = "ComputeDtype::f32_default", skip_serializing_if = "ComputeDtype::is_f32")]
    pub compute_dtype: ComputeDtype,
    pub train: SplitInfo,
    pub val: Option<SplitInfo>,
}

impl Manifest {
    pub fn record_bytes(&self) -> usize {
        8 * self.topk + 4
    }
    pub fn read(dir: &Path) -> Result<Manifest, DistillError> {
        let p = dir.join("cache.json");
        let err = |msg: String| DistillError::Cache { path: p.clone(), msg };
        let text =
            std::fs::read_to_string(&p).map_err(|e| err(format!("{e} (not a teacher cache?)")))?;
        Manifest::parse(&text).map_err(err)
    }

    /// Parse and check `cache.json`'s text: every count consistent with the others before
    /// anything is sized by it, shard names plain file names inside the cache directory.
    pub fn parse(text: &str) -> Result<Manifest, String> {
        let m: Manifest = serde_json::from_str(text).map_err(|e| e.to_string())?;
        if m.format != FORMAT || m.version != VERSION {
            return Err(format!(
                "format {} v{} (this orlik reads {FORMAT} v{VERSION})",
                m.format, m.version
            ));
        }
        if m.vocab_size == 0
            || m.topk == 0
            || m.topk > m.vocab_size
            || m.topk > 1 << 24
            || m.seq_len == 0
        {
            return Err(format!(
                "vocab_size {}, topk {}, seq_len {}: need 1 <= topk <= vocab_size and seq_len >= 1",
                m.vocab_size, m.topk, m.seq_len
            ));
        }
        if !(m.temperature.is_finite() && m.temperature > 0.0) {
            return Err(format!("temperature {} is not a positive number", m.temperature));
        }
        for (name, s) in
            std::iter::once(("train", &m.train)).chain(m.val.as_ref().map(|v| ("val", v)))
        {
            if s.shard_windows == 0 || s.shards.len() != s.windows.div_ceil(s.shard_windows) {
                return Err(format!(
                    "{name}: {} shards for {} windows of {} per shard",
                    s.shards.len(),
                    s.windows,
                    s.shard_windows
                ));
            }
            s.shard_windows
                .checked_mul(m.seq_len)
                .and_then(|x| x.checked_mul(m.record_bytes()))
                .ok_or_else(|| format!("{name}: shard size overflows"))?;
            for f in &s.shards {
                if !orlik_io::output::plain_file_name(f) {
                    return Err(format!(
                        "{name}: shard {f:?} is not a file name inside the cache directory"
                    ));
                }
            }
        }
        Ok(m)
    }
}

/// One record of a shard: the top-k token ids, their log-probabilities and the tail bucket's.
/// Ids outside the vocabulary and non-finite values are corruption, named.
pub fn parse_record(b: &[u8], k: usize, vocab: usize) -> Result<(Vec<u32>, Vec<f32>, f32), String> {
    if b.len() != 8 * k + 4 {
        return Err(format!("record of {} bytes, expected {}", b.len(), 8 * k + 4));
    }
    let word = |i: usize| [b[4 * i], b[4 * i + 1], b[4 * i + 2], b[4 * i + 3]];
    let ids: Vec<u32> = (0..k).map(|i| u32::from_le_bytes(word(i))).collect();
    let logp: Vec<f32> = (k..2 * k).map(|i| f32::from_le_bytes(word(i))).collect();
    let tail = f32::from_le_bytes(word(2 * k));
    if let Some(id) = ids.iter().find(|&&i| i as usize >= vocab) {
        return Err(format!("token id {id} outside the vocabulary of {vocab}"));
    }
    // log-probabilities are <= 0; -inf is allowed (a token the teacher gives probability 0)
    if let Some(x) = logp.iter().find(|x| x.is_nan() || **x > 1e-3) {
        return Err(format!("log-probability {x} is not a number <= 0"));
    }
    // the tail is a probability mass (not a logarithm): in [0, 1]
    if !(0.0..=1.0 + 1e-3).contains(&tail) {
        return Err(format!("tail mass {tail} is not a probability in [0, 1]"));
    }
    Ok((ids, logp, tail))
}

fn split_info(p: &Packed, name: &str, shard_windows: usize) -> SplitInfo {
    let n = p.windows();
    let shards = (0..n.div_ceil(shard_windows)).map(|i| format!("{name}-{i:05}.bin")).collect();
    SplitInfo { data_sha256: p.hash(), windows: n, shard_windows, shards }
}

/// What a cache is built from.
pub struct CacheSpec<'a> {
    pub teacher: &'a dyn Infer,
    /// The student's vocabulary in the teacher's when they differ (`vocab_map`): the windows
    /// hold student ids, the teacher reads the same tokens by its own ids, and the cache keeps
    /// the teacher's distribution over the student's tokens (its logits at those ids,
    /// renormalised), in student ids.
    pub map: Option<&'a [u32]>,
    pub teacher_sha256: String,
    pub tokenizer_sha256: String,
    pub topk: usize,
    pub temperature: f32,
    pub batch: usize,
    pub shard_windows: usize,
    /// How `teacher` holds its matrices (resolved; recorded in the manifest).
    pub compute_dtype: ComputeDtype,
}

/// Build (or finish building) the cache in `dir`. `progress(done, total)` counts windows.
/// A directory holding a cache of other settings is refused unless `overwrite`.
pub fn build(
    spec: &CacheSpec,
    train: &Packed,
    val: Option<&Packed>,
    dir: &Path,
    overwrite: bool,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Manifest, DistillError> {
    // Over the student's tokens: only those columns of the teacher's head.
    let head = crate::MappedHead::new(spec.teacher, spec.map.map(<[u32]>::to_vec))?;
    let vocab = head.vocab().unwrap_or(spec.teacher.config().vocab_size);
    if train.seq_len < 2
        || spec.batch == 0
        || spec.shard_windows == 0
        || !(spec.temperature.is_finite() && spec.temperature > 0.0)
    {
        return Err(DistillError::Mismatch(format!(
            "teacher cache: seq_len {} must be at least 2, batch {} and shard_windows {} at least 1, temperature {} positive",
            train.seq_len, spec.batch, spec.shard_windows, spec.temperature
        )));
    }
    if spec.topk == 0 || spec.topk > vocab {
        return Err(DistillError::Mismatch(format!(
            "--topk must be in 1..={vocab} (the vocabulary size)"
        )));
    }
    let m = Manifest {
        format: FORMAT.into(),
        version: VERSION,
        teacher_sha256: spec.teacher_sha256.clone(),
        tokenizer_sha256: spec.tokenizer_sha256.clone(),
        vocab_size: vocab,
        topk: spec.topk,
        temperature: spec.temperature,
        seq_len: train.seq_len,
        compute_dtype: spec.compute_dtype,
        train: split_info(train, "train", spec.shard_windows),
        val: val.map(|v| split_info(v, "val", spec.shard_windows)),
    };
    let mp = dir.join("cache.json");
    // Under data parallel rank 0 writes the manifest; rank r builds the shards whose number
    // (train then val, counted together) is r modulo the ranks.
    let world = orlik_dist::world();
    let mine = |shard: usize| shard % world.size() == world.rank();
    let ioe = |p: &Path| {
        let p = p.to_path_buf();
        move |e: std::io::Error| DistillError::Cache { path: p, msg: e.to_string() }
    };
    let manifest = || -> Result<(), DistillError> {
        if mp.exists() {
            let old = Manifest::read(dir);
            if old.as_ref().ok() != Some(&m) {
                if !overwrite {
                    return Err(DistillError::Cache {
                    path: dir.into(),
                    msg: "holds a cache of other settings, teacher or data (use --force to replace it)".into(),
                });
                }
                std::fs::remove_dir_all(dir)
                    .map_err(|e| DistillError::Cache { path: dir.into(), msg: e.to_string() })?;
            }
        }
        std::fs::create_dir_all(dir).map_err(ioe(dir))?;
        // Atomically: a build killed here must leave no half-written manifest (read as "other settings").
        orlik_io::atomic::write_file_atomically(
            &mp,
            &serde_json::to_vec_pretty(&m).unwrap_or_default(),
        )
        .map_err(|e| DistillError::Cache { path: mp.clone(), msg: e.to_string() })?;
        Ok(())
    };
    orlik_dist::on_root(manifest)?;
    // This rank's windows (all of them on one process), for the progress.
    let mut total = 0;
    for (j, (info, si)) in std::iter::once(&m.train)
        .chain(m.val.iter())
        .flat_map(|i| (0..i.shards.len()).map(move |s| (i, s)))
        .enumerate()
    {
        if mine(j) {
            let w0 = si * info.shard_windows;
            total += (w0 + info.shard_windows).min(info.windows) - w0;
        }
    }
    let mut g = 0usize; // shard number over both splits
    let mut done = 0;
    let rec = m.record_bytes();
    let t = m.seq_len;
    for (info, data) in std::iter::once((&m.train, train)).chain(m.val.iter().zip(val)) {
        for (si, file) in info.shards.iter().enumerate() {
            let w0 = si * info.shard_windows;
            let w1 = (w0 + info.shard_windows).min(info.windows);
            g += 1;
            if !mine(g - 1) {
                continue; // another rank's
            }
            let path = dir.join(file);
            let want = ((w1 - w0) * t * rec) as u64;
            if path.metadata().map(|md| md.len() == want).unwrap_or(false) {
                done += w1 - w0;
                progress(done, total);
                continue;
            }
            let tmp = dir.join(format!(".{file}.tmp"));
            let mut f = std::io::BufWriter::new(std::fs::File::create(&tmp).map_err(ioe(&tmp))?);
            let mut w = w0;
            while w < w1 {
                let b = spec.batch.min(w1 - w);
                let mut ids = Vec::with_capacity(b * t);
                for i in w..w + b {
                    ids.extend(head.teacher_ids(&data.window(i)[..t]));
                }
                let h = spec.teacher.hidden(Rows::new(&ids, b, t), None)?; // (b, t, hidden)
                let h = h.reshape((b * t, h.dim(2)?))?;
                for start in (0..b * t).step_by(256) {
                    let n = 256.min(b * t - start);
                    let z = head
                        .logits(spec.teacher, &h.narrow(0, start, n)?)?
                        .flatten_all()?
                        .to_vec1::<f32>()?;
                    let StepRows::TopK { k, ids, logp, tail } =
                        rows_from_logits(&z, vocab, spec.temperature, spec.topk)
                    else {
                        return Err(DistillError::Mismatch("top-k rows expected".into()));
                    };
                    let mut buf = Vec::with_capacity(n * rec);
                    for r in 0..n {
                        ids[r * k..(r + 1) * k]
                            .iter()
                            .for_each(|x| buf.extend_from_slice(&x.to_le_bytes()));
                        logp[r * k..(r + 1) * k]
                            .iter()
                            .for_each(|x| buf.extend_from_slice(&x.to_le_bytes()));
                        buf.extend_from_slice(&tail[r].to_le_bytes());
                    }
                    f.write_all(&buf).map_err(ioe(&tmp))?;
                }
                w += b;
                done += b;
                progress(done, total);
            }
            let f = f
                .into_inner()
                .map_err(|e| DistillError::Cache { path: tmp.clone(), msg: e.to_string() })?;
            f.sync_all().map_err(ioe(&tmp))?;
            std::fs::rename(&tmp, &path).map_err(ioe(&path))?;
        }
    }
    std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(ioe(dir))?;
    world.barrier().map_err(TrainError::from)?;
    Ok(m)
}

/// A cache opened for training: shards mmap'd per split.
pub struct CacheTeacher {
    m: Manifest,
    train: Vec<memmap2::Mmap>,
    val: Vec<memmap2::Mmap>,
    split: Split,
    windows: Vec<usize>,
    /// SIGBUS reports naming the shard if one is truncated while mapped.
    _guards: Vec<orlik_io::guard::MapGuard>,
}

impl CacheTeacher {
    /// Open `dir` and check it against what training will use: teacher (when known), tokenizer
    /// vocabulary, temperature, k, sequence length and the packed data of each split.
    pub fn open(
        dir: &Path,
        teacher_sha256: Option<&str>,
        tokenizer_sha256: &str,
        temperature: f32,
        topk: usize,
        train: &Packed,
        val: Option<&Packed>,
    ) -> Result<CacheTeacher, DistillError> {
        let m = Manifest::read(dir)?;
        let bad = |msg: String| Err(DistillError::Cache { path: dir.into(), msg });
        if let Some(t) = teacher_sha256 {
            if t != m.teacher_sha256 {
                return bad(format!(
                    "made by another teacher (sha256 {}…, this teacher {}…)",
                    &m.teacher_sha256[..12.min(m.teacher_sha256.len())],
                    &t[..12.min(t.len())]
                ));
            }
        }
        if m.tokenizer_sha256 != tokenizer_sha256 {
            return bad("made with another tokenizer vocabulary than the student's (for a student with a trimmed vocabulary, build the cache with `orlik teacher-cache --student STUDENT`)".into());
        }
        if m.temperature != temperature {
            return bad(format!(
                "made at temperature {}, training asks for {temperature}",
                m.temperature
            ));
        }
        if topk != 0 && topk != m.topk {
            return bad(format!("holds top-{} rows, training asks for --topk {topk}", m.topk));
        }
        if m.seq_len != train.seq_len {
            return bad(format!(
                "made with seq_len {}, training uses {}",
                m.seq_len, train.seq_len
            ));
        }
        if m.train.data_sha256 != train.hash() {
            return bad("made from other training data (packed-token sha256 differs)".into());
        }
        let open = |info: &SplitInfo| -> Result<Vec<memmap2::Mmap>, DistillError> {
            let mut out = Vec::new();
            for (i, s) in info.shards.iter().enumerate() {
                let p = dir.join(s);
                let w = (info.windows - i * info.shard_windows).min(info.shard_windows);
                let f = std::fs::File::open(&p).map_err(|e| DistillError::Cache {
                    path: p.clone(),
                    msg: format!("{e} (incomplete cache: rerun orlik teacher-cache)"),
                })?;
                // SAFETY: read-only mapping of a shard orlik wrote by rename and never modifies.
                let mm = unsafe { memmap2::Mmap::map(&f) }
                    .map_err(|e| DistillError::Cache { path: p.clone(), msg: e.to_string() })?;
                if mm.len() != w * m.seq_len * m.record_bytes() {
                    return Err(DistillError::Cache {
                        path: p,
                        msg: format!(
                            "{} bytes, expected {}",
                            mm.len(),
                            w * m.seq_len * m.record_bytes()
                        ),
                    });
                }
                out.push(mm);
            }
            Ok(out)
        };
        let tr = open(&m.train)?;
        let va = match (&m.val, val) {
            (Some(info), Some(v)) if info.data_sha256 == v.hash() => open(info)?,
            _ => Vec::new(), // no teacher rows for this validation text: val_kl is not reported
        };
        let _guards = shard_paths(dir, &m)
            .iter()
            .zip(tr.iter().chain(va.iter()))
            .map(|(p, mm)| orlik_io::guard::register(p, mm))
            .collect();
        Ok(CacheTeacher {
            m,
            train: tr,
            val: va,
            split: Split::Train,
            windows: Vec::new(),
            _guards,
        })
    }

    pub fn manifest(&self) -> &Manifest {
        &self.m
    }
}

impl TeacherSource for CacheTeacher {
    fn prepare(
        &mut self,
        split: Split,
        windows: &[usize],
        _ids: &[u32],
        _b: usize,
        _t: usize,
    ) -> Result<bool, TrainError> {
        self.split = split;
        self.windows = windows.to_vec();
        Ok(match split {
            Split::Train => true,
            Split::Val => !self.val.is_empty(),
        })
    }
    fn rows(&mut self, start: usize, n: usize) -> Result<StepRows, TrainError> {
        let (shards, info) = match self.split {
            Split::Train => (&self.train, &self.m.train),
            Split::Val => match &self.m.val {
                Some(i) => (&self.val, i),
                None => return Err(TrainError::Teacher("no validation rows in the cache".into())),
            },
        };
        let (k, t, rec) = (self.m.topk, self.m.seq_len, self.m.record_bytes());
        let mut ids = Vec::with_capacity(n * k);
        let mut logp = Vec::with_capacity(n * k);
        let mut tail = Vec::with_capacity(n);
        for r in start..start + n {
            let w = *self
                .windows
                .get(r / t)
                .ok_or_else(|| TrainError::Teacher(format!("row {r} outside the batch")))?;
            let shard = shards
                .get(w / info.shard_windows)
                .ok_or_else(|| TrainError::Teacher(format!("window {w} not in the cache")))?;
            let off = ((w % info.shard_windows) * t + r % t) * rec;
            let b = shard.get(off..off + rec).ok_or_else(|| {
                TrainError::Teacher(format!("window {w} past the end of its shard"))
            })?;
            let (i, l, tl) = parse_record(b, k, self.m.vocab_size).map_err(|e| {
                TrainError::Teacher(format!("corrupt teacher cache (window {w}): {e}"))
            })?;
            ids.extend(i);
            logp.extend(l);
            tail.push(tl);
        }
        Ok(StepRows::TopK { k, ids, logp, tail })
    }
}

/// Shard paths of a manifest (for tools and tests).
/// Bytes of the shard files in a cache directory (0 where there is none yet): what reading it
/// maps.
pub fn shard_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "bin"))
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum()
}

pub fn shard_paths(dir: &Path, m: &Manifest) -> Vec<PathBuf> {
    m.train
        .shards
        .iter()
        .chain(m.val.iter().flat_map(|v| v.shards.iter()))
        .map(|s| dir.join(s))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};
    use orlik_model::{init::random_weights, testing, Model, ModelOptions};

    fn teacher() -> Model {
        let cfg = testing::tiny("LlamaForCausalLM", serde_json::json!({}));
        let w = random_weights(&cfg, 4, 0.5).unwrap();
        Model::new(&cfg, &w, ModelOptions::default()).unwrap()
    }

    /// 5 windows of 6 + 1 tokens.
    fn packed(shift: u32) -> Packed {
        let tokens: Vec<u32> = (0..5 * 7).map(|i| (i * 7 + 3 + shift) % 13).collect();
        Packed::from_tokens(tokens, 6, 35, 35)
    }

    fn spec(m: &Model) -> CacheSpec<'_> {
        CacheSpec {
            map: None,
            teacher: m,
            teacher_sha256: "t".repeat(64),
            tokenizer_sha256: "v".repeat(64),
            topk: 3,
            temperature: 2.0,
            batch: 2,
            shard_windows: 2,
            compute_dtype: ComputeDtype::F32,
        }
    }

    fn open(
        dir: &Path,
        temperature: f32,
        topk: usize,
        tr: &Packed,
    ) -> Result<CacheTeacher, DistillError> {
        CacheTeacher::open(dir, Some(&"t".repeat(64)), &"v".repeat(64), temperature, topk, tr, None)
    }

    /// The cache's rows are exactly the top-k rows of the teacher's logits, across shards, and a
    /// build that lost a shard redoes only that one, byte for byte.
    #[test]
    fn rows_equal_the_teachers_top_k_and_a_lost_shard_is_rebuilt_identically() {
        let m = teacher();
        let (tr, va) = (packed(0), packed(5));
        let dir = tempfile::tempdir().unwrap();
        let man = build(&spec(&m), &tr, Some(&va), dir.path(), false, &mut |_, _| {}).unwrap();
        assert_eq!(man.train.shards.len(), 3, "5 windows, 2 per shard");
        let mut c = CacheTeacher::open(
            dir.path(),
            Some(&"t".repeat(64)),
            &"v".repeat(64),
            2.0,
            3,
            &tr,
            Some(&va),
        )
        .unwrap();
        // windows 4 (last shard) and 1 (first shard), in that order
        let wins = [4usize, 1];
        let ids: Vec<u32> = wins.iter().flat_map(|&w| tr.window(w)[..6].to_vec()).collect();
        let x = Tensor::from_vec(ids.clone(), (2, 6), &Device::Cpu).unwrap();
        assert!(c.prepare(Split::Train, &wins, &ids, 2, 6).unwrap());
        let StepRows::TopK { ids: got, logp: got_lp, tail: got_tail, .. } = c.rows(0, 12).unwrap()
        else {
            panic!("top-k rows expected")
        };
        let z = m.forward(&x, None, None, None).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        let StepRows::TopK { ids: want, logp: want_lp, tail: want_tail, .. } =
            rows_from_logits(&z, 13, 2.0, 3)
        else {
            panic!("top-k rows expected")
        };
        assert_eq!(got, want);
        for (a, b) in got_lp.iter().zip(&want_lp).chain(got_tail.iter().zip(&want_tail)) {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
        assert!(c.prepare(Split::Val, &[0], &ids, 2, 6).unwrap(), "the validation split is cached");
        // lose the middle shard: the rebuild writes it again, the same bytes
        let mid = dir.path().join(&man.train.shards[1]);
        let before = std::fs::read(&mid).unwrap();
        let first = dir.path().join(&man.train.shards[0]);
        let t0 = std::fs::metadata(&first).unwrap().modified().unwrap();
        std::fs::remove_file(&mid).unwrap();
        build(&spec(&m), &tr, Some(&va), dir.path(), false, &mut |_, _| {}).unwrap();
        assert_eq!(std::fs::read(&mid).unwrap(), before);
        assert_eq!(std::fs::metadata(&first).unwrap().modified().unwrap(), t0, "kept, not redone");
    }

    #[test]
    fn a_cache_is_refused_for_other_settings_and_data_naming_what_differs() {
        let m = teacher();
        let tr = packed(0);
        let dir = tempfile::tempdir().unwrap();
        build(&spec(&m), &tr, None, dir.path(), false, &mut |_, _| {}).unwrap();
        let msg = |r: Result<CacheTeacher, DistillError>| r.err().unwrap().to_string();
        assert!(msg(open(dir.path(), 1.0, 3, &tr)).contains("temperature 2"));
        assert!(msg(open(dir.path(), 2.0, 5, &tr)).contains("--topk 5"));
        assert!(msg(open(dir.path(), 2.0, 3, &packed(1))).contains("other training data"));
        let other = CacheTeacher::open(
            dir.path(),
            Some(&"x".repeat(64)),
            &"v".repeat(64),
            2.0,
            3,
            &tr,
            None,
        );
        assert!(msg(other).contains("another teacher"));
        let other = CacheTeacher::open(dir.path(), None, &"w".repeat(64), 2.0, 3, &tr, None);
        assert!(msg(other).contains("another tokenizer"));
        // rebuilding over it with other settings needs overwrite
        let mut s = spec(&m);
        s.topk = 4;
        let e = build(&s, &tr, None, dir.path(), false, &mut |_, _| {}).err().unwrap();
        assert!(e.to_string().contains("other settings"), "{e}");
        build(&s, &tr, None, dir.path(), true, &mut |_, _| {}).unwrap();
        assert!(open(dir.path(), 2.0, 4, &tr).is_ok());
        // a truncated shard is named with both sizes
        let man = Manifest::read(dir.path()).unwrap();
        let p = dir.path().join(&man.train.shards[0]);
        let len = std::fs::metadata(&p).unwrap().len();
        std::fs::write(&p, vec![0u8; len as usize - 4]).unwrap();
        let e = msg(open(dir.path(), 2.0, 4, &tr));
        assert!(e.contains(&format!("{} bytes, expected {len}", len - 4)), "{e}");
    }

    #[test]
    fn records_and_manifests_with_impossible_values_are_corruption() {
        let rec = |ids: [u32; 2], lp: [f32; 2], tail: f32| {
            let mut b = Vec::new();
            ids.iter().for_each(|x| b.extend_from_slice(&x.to_le_bytes()));
            lp.iter().for_each(|x| b.extend_from_slice(&x.to_le_bytes()));
            b.extend_from_slice(&tail.to_le_bytes());
            b
        };
        let ok = parse_record(&rec([1, 2], [-0.5, -1.0], 0.25), 2, 13).unwrap();
        assert_eq!(ok, (vec![1, 2], vec![-0.5, -1.0], 0.25));
        assert!(parse_record(&rec([1, 2], [-0.5, f32::NEG_INFINITY], 0.25), 2, 13).is_ok());
        let e = parse_record(&rec([1, 13], [-0.5, -1.0], 0.25), 2, 13).unwrap_err();
        assert!(e.contains("token id 13 outside the vocabulary of 13"), "{e}");
        let e = parse_record(&rec([1, 2], [f32::NAN, -1.0], 0.25), 2, 13).unwrap_err();
        assert!(e.contains("NaN"), "{e}");
        assert!(parse_record(&rec([1, 2], [0.5, -1.0], 0.25), 2, 13).is_err());
        assert!(parse_record(&[0u8; 7], 2, 13).unwrap_err().contains("expected 20"));
        // the tail is a mass: a logarithm there (or a NaN) is corruption
        for bad in [-3.0, 1.5, f32::NAN] {
            let e = parse_record(&rec([1, 2], [-0.5, -1.0], bad), 2, 13).unwrap_err();
            assert!(e.contains("tail mass"), "{e}");
        }
        let m = Manifest {
            format: FORMAT.into(),
            version: VERSION,
            teacher_sha256: "t".into(),
            tokenizer_sha256: "v".into(),
            vocab_size: 13,
            topk: 3,
            temperature: 1.0,
            seq_len: 6,
            compute_dtype: ComputeDtype::F32,
            train: SplitInfo {
                data_sha256: "d".into(),
                windows: 5,
                shard_windows: 2,
                shards: vec!["a.bin".into(), "b.bin".into(), "c.bin".into()],
            },
            val: None,
        };
        let text = |m: &Manifest| serde_json::to_string(m).unwrap();
        assert_eq!(Manifest::parse(&text(&m)).unwrap(), m);
        let mut bad = m.clone();
        bad.train.shards.pop();
        assert!(Manifest::parse(&text(&bad)).unwrap_err().contains("2 shards for 5 windows"));
        let mut bad = m.clone();
        bad.train.shards[0] = "../escape.bin".into();
        assert!(Manifest::parse(&text(&bad)).unwrap_err().contains("not a file name"));
        let mut bad = m.clone();
        bad.topk = 14;
        assert!(Manifest::parse(&text(&bad)).is_err());
        let mut bad = m;
        bad.version = 99;
        assert!(Manifest::parse(&text(&bad)).unwrap_err().contains("v99"));
    }
}
