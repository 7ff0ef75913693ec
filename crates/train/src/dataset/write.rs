//! `orlik tokenize`: text and JSONL sources tokenized once into a dataset directory (layout in
//! the module above). Documents stream from each file (nothing holds a whole corpus), batches of
//! them are tokenized in parallel (the tokenizers crate's `encode_batch`, on rayon), and every
//! finished shard is recorded in `progress.json`, so a killed run continues from its last shard:
//! the document the shard ended in is found from the boundaries file, tokenized again and the
//! tokens already stored are dropped.

use super::docs::{Docs, Format};
use super::{Manifest, Shard, SourceManifest, SplitManifest, MANIFEST, PROGRESS, VERSION};
use crate::{file_err, TrainError};
use orlik_io::output::{claim_dir, Mode};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// The flags of `orlik tokenize`.
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "clap", derive(clap::Args))]
pub struct TokenizeSettings {
    /// Window length in tokens (+1 for the shifted targets): training must use the same --seq-len.
    #[cfg_attr(feature = "clap", arg(long, default_value_t = TokenizeSettings::default().seq_len))]
    pub seq_len: usize,
    /// JSONL sources (.jsonl / .json): the string field holding each document.
    #[cfg_attr(feature = "clap", arg(long, default_value_t = TokenizeSettings::default().text_field))]
    pub text_field: String,
    /// Target size of one shard file (whole windows; e.g. 64MiB, 1GB).
    #[cfg_attr(feature = "clap", arg(long, default_value = "64MiB", value_parser = orlik_io::text::parse_size))]
    pub shard_size: u64,
}

impl Default for TokenizeSettings {
    fn default() -> Self {
        TokenizeSettings { seq_len: 256, text_field: "text".into(), shard_size: 64 << 20 }
    }
}

/// What is tokenized, with which model's tokenizer, into which directory.
pub struct TokenizeInputs<'a> {
    /// HF model directory: its tokenizer.json and config.json's EOS (the document separator).
    pub model: &'a Path,
    pub data: &'a [PathBuf],
    /// Mixing weight of each `data` source (empty: all 1).
    pub weights: &'a [f64],
    pub val: &'a [PathBuf],
    pub out: &'a Path,
    /// Start over: replace a dataset (or an unfinished one) of other settings in `out`.
    pub force: bool,
    /// Called after each shard is recorded with the number written (the interruption tests'
    /// delay; None otherwise).
    pub after_shard: Option<&'a (dyn Fn(u64) + Sync)>,
}

/// What a run did, for the caller to print.
pub struct Summary {
    pub manifest: Manifest,
    /// Shards kept from an earlier, interrupted run.
    pub kept_shards: usize,
    pub written_shards: usize,
    /// The dataset was already complete with these settings: nothing was done.
    pub up_to_date: bool,
    pub seconds: f64,
}

/// `progress.json`: what a re-run continues from.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Progress {
    key: Value,
    sources: Vec<Building>,
}

#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Building {
    split: String,
    complete: bool,
    source: SourceManifest,
}

fn sha256_file(p: &Path) -> Result<String, TrainError> {
    let mut f = std::fs::File::open(p).map_err(file_err(p))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(file_err(p))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(format!("{:x}", h.finalize()))
}

fn bad(msg: String) -> TrainError {
    TrainError::Data(msg)
}

/// Tokenize `i`'s sources into `i.out` (or finish an interrupted run there). `progress(what,
/// done, total)` counts the bytes of the source being read.
pub fn tokenize(
    i: &TokenizeInputs,
    s: &TokenizeSettings,
    progress: &mut dyn FnMut(&str, u64, u64),
) -> Result<Summary, TrainError> {
    let started = std::time::Instant::now();
    check_inputs(i, s)?;
    let hf = orlik_io::hfdir::HfModel::open(i.model)?;
    let tok = hf.tokenizer()?;
    let eos = hf.config.eos_ids().first().copied().ok_or_else(|| {
        let m = i.model.display();
        bad(format!("{m}: config.json has no eos_token_id (needed to separate documents)"))
    })?;
    let w = s.seq_len + 1;
    let wps = ((s.shard_size / (4 * w as u64)) as usize).max(1);
    let mut sources = Vec::new();
    for (split, files) in [("train", i.data), ("val", i.val)] {
        for (k, f) in files.iter().enumerate() {
            let weight =
                if split == "train" { i.weights.get(k).copied().unwrap_or(1.0) } else { 1.0 };
            let source = SourceManifest {
                path: f.display().to_string(),
                sha256: sha256_file(f)?,
                format: Format::guess(f, &s.text_field),
                weight,
                documents: 0,
                bytes: 0,
                tokens: 0,
                windows: 0,
                shards: Vec::new(),
                boundaries: format!("{split}-{k:03}.docs"),
            };
            sources.push(Building { split: split.into(), complete: false, source });
        }
    }
    let vocab_sha256 = orlik_io::tokenizer::vocab_sha256(&tok);
    let tokenizer_sha256 = sha256_file(&i.model.join("tokenizer.json"))?;
    let settings = json!({
        "seq_len": s.seq_len, "text_field": s.text_field, "shard_size": s.shard_size,
        "windows_per_shard": wps, "model": i.model.display().to_string(),
    });
    let key = json!({
        "version": VERSION, "seq_len": s.seq_len, "eos": eos, "vocab_sha256": vocab_sha256,
        "tokenizer_sha256": tokenizer_sha256, "windows_per_shard": wps,
        "sources": sources.iter().map(|b| json!([b.split, b.source.path, b.source.sha256,
            b.source.format, b.source.weight])).collect::<Vec<_>>(),
    });
    let ins: Vec<&Path> =
        std::iter::once(i.model).chain(i.data.iter().chain(i.val).map(PathBuf::as_path)).collect();
    let mode = if i.force { Mode::Replace } else { Mode::Resume };
    claim_dir(i.out, "tokenize", &ins, mode)?;
    let o = i.out.display();
    if let Ok(m) = Manifest::read(i.out) {
        if manifest_key(&m) == key {
            let seconds = started.elapsed().as_secs_f64();
            return Ok(Summary {
                manifest: m,
                kept_shards: 0,
                written_shards: 0,
                up_to_date: true,
                seconds,
            });
        }
        return Err(bad(format!(
            "{o} holds a dataset of other sources or settings: --force replaces it, or choose another -o"
        )));
    }
    let pp = i.out.join(PROGRESS);
    let mut kept_shards = 0;
    if let Ok(text) = std::fs::read_to_string(&pp) {
        let p: Progress =
            serde_json::from_str(&text).map_err(|e| bad(format!("{}: {e}", pp.display())))?;
        if p.key != key {
            return Err(bad(format!(
                "{o} holds an unfinished dataset of other sources or settings: --force starts over"
            )));
        }
        kept_shards = p.sources.iter().map(|b| b.source.shards.len()).sum();
        sources = p.sources;
    }
    let save = |sources: &[Building]| -> Result<(), TrainError> {
        let p = Progress { key: key.clone(), sources: sources.to_vec() };
        let bytes = serde_json::to_vec_pretty(&p).map_err(|e| bad(e.to_string()))?;
        orlik_io::atomic::write_file_atomically(&pp, &bytes)?;
        Ok(())
    };
    let mut job =
        Job { dir: i.out, tok: &tok, eos, w, wps, written: 0, after_shard: i.after_shard };
    for k in 0..sources.len() {
        if sources[k].complete {
            continue;
        }
        let mut b = sources[k].clone();
        let idx = sources[..k].iter().filter(|x| x.split == b.split).count();
        let what = format!(
            "{} {}",
            b.split,
            Path::new(&b.source.path)
                .file_name()
                .map(|n| n.to_string_lossy().to_string())
                .unwrap_or_default()
        );
        job.source(
            &mut b,
            idx,
            &mut |b| {
                sources[k] = b.clone();
                save(&sources)
            },
            &mut |d, t| progress(&what, d, t),
        )?;
        b.complete = true;
        sources[k] = b;
        save(&sources)?;
    }
    let split = |name: &str| -> Option<SplitManifest> {
        let v: Vec<SourceManifest> =
            sources.iter().filter(|b| b.split == name).map(|b| b.source.clone()).collect();
        let windows = v.iter().map(SourceManifest::mixed_windows).sum();
        (!v.is_empty()).then(|| SplitManifest { sources: v, windows, packed_sha256: String::new() })
    };
    let mut m = Manifest {
        version: VERSION,
        seq_len: s.seq_len,
        eos,
        vocab_sha256,
        tokenizer_sha256,
        windows_per_shard: wps,
        train: split("train").ok_or_else(|| bad("no --data".into()))?,
        val: split("val"),
        settings,
        command: orlik_io::output::command_line(),
    };
    // The packed sha256 of each split, read back from the shards as training will read them.
    m.train.packed_sha256 = crate::data::hash_windows(&super::map_split(i.out, &m, &m.train)?);
    let val_hash = match &m.val {
        Some(v) => Some(crate::data::hash_windows(&super::map_split(i.out, &m, v)?)),
        None => None,
    };
    if let (Some(v), Some(h)) = (m.val.as_mut(), val_hash) {
        v.packed_sha256 = h;
    }
    let bytes = serde_json::to_vec_pretty(&m).map_err(|e| bad(e.to_string()))?;
    orlik_io::atomic::write_file_atomically(&i.out.join(MANIFEST), &bytes)?;
    std::fs::remove_file(&pp).map_err(file_err(&pp))?;
    let seconds = started.elapsed().as_secs_f64();
    Ok(Summary {
        manifest: m,
        kept_shards,
        written_shards: job.written,
        up_to_date: false,
        seconds,
    })
}

/// The resume key of a finished manifest (the same fields `tokenize` builds it from).
fn manifest_key(m: &Manifest) -> Value {
    let mut sources = Vec::new();
    for (split, sm) in [("train", Some(&m.train)), ("val", m.val.as_ref())] {
        for s in sm.map(|x| x.sources.as_slice()).unwrap_or(&[]) {
            sources.push(json!([split, s.path, s.sha256, s.format, s.weight]));
        }
    }
    json!({
        "version": m.version, "seq_len": m.seq_len, "eos": m.eos, "vocab_sha256": m.vocab_sha256,
        "tokenizer_sha256": m.tokenizer_sha256, "windows_per_shard": m.windows_per_shard,
        "sources": sources,
    })
}

fn check_inputs(i: &TokenizeInputs, s: &TokenizeSettings) -> Result<(), TrainError> {
    if i.data.is_empty() {
        return Err(bad("nothing to tokenize: give --data FILE...".into()));
    }
    if s.seq_len == 0 {
        return Err(bad("--seq-len must be at least 1".into()));
    }
    if s.text_field.is_empty() {
        return Err(bad("--text-field must name a field".into()));
    }
    if !i.weights.is_empty() && i.weights.len() != i.data.len() {
        return Err(bad(format!(
            "--weights has {} values for {} --data sources (one each, or none for all 1)",
            i.weights.len(),
            i.data.len()
        )));
    }
    if let Some(w) = i.weights.iter().find(|w| !(w.is_finite() && **w > 0.0)) {
        return Err(bad(format!("--weights: {w} is not a positive number")));
    }
    Ok(())
}

/// Tokenizing one source after another into one directory.
struct Job<'a> {
    dir: &'a Path,
    tok: &'a tokenizers::Tokenizer,
    eos: u32,
    /// Window length (seq_len + 1) and windows per shard.
    w: usize,
    wps: usize,
    written: usize,
    after_shard: Option<&'a (dyn Fn(u64) + Sync)>,
}

/// Documents per `encode_batch` call.
const BATCH_DOCS: usize = 1024;

impl Job<'_> {
    /// Tokenize `b`'s source from its last recorded shard to the end; `commit(b)` after every
    /// shard made durable. `idx` is the source's number within its split.
    fn source(
        &mut self,
        b: &mut Building,
        idx: usize,
        commit: &mut dyn FnMut(&Building) -> Result<(), TrainError>,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<(), TrainError> {
        let path = PathBuf::from(&b.source.path);
        let total = std::fs::metadata(&path).map_err(file_err(&path))?.len();
        let bpath = self.dir.join(&b.source.boundaries);
        let stored: u64 = b.source.shards.iter().map(|s| (s.windows * self.w) as u64).sum();
        let (skip, mut pos, mut text_bytes) = resume_point(&bpath, stored)?;
        let mut bounds = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&bpath)
            .map_err(file_err(&bpath))?;
        let mut docs = Docs::open(&path, &b.source.format)?;
        for n in 0..skip {
            if docs.next_doc()?.is_none() {
                return Err(bad(format!(
                    "{}: has {n} documents, the interrupted run had read {skip} (was it changed?)",
                    path.display()
                )));
            }
        }
        let mut count = skip;
        let (mut carry, mut carry_start) = (Vec::<u32>::new(), pos);
        let mut pending = Vec::<u8>::new();
        loop {
            let mut batch = Vec::with_capacity(BATCH_DOCS);
            while batch.len() < BATCH_DOCS {
                match docs.next_doc()? {
                    Some(d) => batch.push(d),
                    None => break,
                }
            }
            if batch.is_empty() {
                break;
            }
            let enc = self
                .tok
                .encode_batch(batch.clone(), false)
                .map_err(|e| bad(format!("tokenizing {}: {e}", path.display())))?;
            for (d, e) in batch.iter().zip(enc) {
                pending.extend(pos.to_le_bytes().into_iter().chain(text_bytes.to_le_bytes()));
                carry.extend_from_slice(e.get_ids());
                carry.push(self.eos);
                pos += e.get_ids().len() as u64 + 1;
                text_bytes += d.len() as u64;
                count += 1;
            }
            // Tokens of a resumed document that an earlier shard already holds.
            let drop = (stored.saturating_sub(carry_start) as usize).min(carry.len());
            carry.drain(..drop);
            carry_start += drop as u64;
            // Every shard is recorded once durable, after the boundaries of all documents read
            // so far (the resume point is found among them).
            while carry.len() >= self.wps * self.w {
                self.shard(b, idx, &carry[..self.wps * self.w])?;
                carry.drain(..self.wps * self.w);
                carry_start += (self.wps * self.w) as u64;
                append_durable(&mut bounds, &bpath, &mut pending)?;
                commit(b)?;
                if let Some(f) = self.after_shard {
                    f(self.written as u64);
                }
            }
            progress(docs.bytes_read(), total);
        }
        let n = carry.len() / self.w;
        if n > 0 {
            self.shard(b, idx, &carry[..n * self.w])?;
        }
        append_durable(&mut bounds, &bpath, &mut pending)?;
        let s = &mut b.source;
        (s.documents, s.bytes, s.tokens) = (count, text_bytes, pos);
        s.windows = s.shards.iter().map(|x| x.windows).sum();
        if s.windows == 0 {
            return Err(bad(format!(
                "{}: {pos} tokens make no window of {} tokens (--seq-len {}); give more text",
                path.display(),
                self.w,
                self.w - 1
            )));
        }
        Ok(())
    }

    /// Write the next shard of `b` (whole windows) atomically and record it.
    fn shard(&mut self, b: &mut Building, idx: usize, tokens: &[u32]) -> Result<(), TrainError> {
        let file = format!("{}-{idx:03}-{:05}.bin", b.split, b.source.shards.len());
        let mut h = Sha256::new();
        let bytes: Vec<u8> = tokens.iter().flat_map(|t| t.to_le_bytes()).collect();
        h.update(&bytes);
        orlik_io::atomic::write_file_atomically(&self.dir.join(&file), &bytes)?;
        let windows = tokens.len() / self.w;
        b.source.shards.push(Shard { file, windows, sha256: format!("{:x}", h.finalize()) });
        self.written += 1;
        Ok(())
    }
}

/// Where an interrupted source continues: (documents to skip, stream token offset and text-byte
/// offset of the first one read again), given the `stored` tokens its recorded shards hold.
/// The boundaries file is cut back to the skipped documents (later entries are written again).
fn resume_point(bpath: &Path, stored: u64) -> Result<(u64, u64, u64), TrainError> {
    if stored == 0 {
        if bpath.exists() {
            std::fs::remove_file(bpath).map_err(file_err(bpath))?;
        }
        return Ok((0, 0, 0));
    }
    let raw = std::fs::read(bpath).map_err(file_err(bpath))?;
    let pairs: Vec<(u64, u64)> = raw
        .chunks_exact(16)
        .map(|c| {
            let (a, b) = c.split_at(8);
            (
                u64::from_le_bytes(a.try_into().unwrap_or([0; 8])),
                u64::from_le_bytes(b.try_into().unwrap_or([0; 8])),
            )
        })
        .collect();
    // The last document starting at or before the first token not stored.
    let d = pairs.partition_point(|p| p.0 <= stored);
    if d == 0 {
        return Err(bad(format!(
            "{}: no document boundary before token {stored}; --force starts over",
            bpath.display()
        )));
    }
    let f = std::fs::OpenOptions::new().write(true).open(bpath).map_err(file_err(bpath))?;
    f.set_len(((d - 1) * 16) as u64).map_err(file_err(bpath))?;
    let (t, by) = pairs[d - 1];
    Ok(((d - 1) as u64, t, by))
}

fn append_durable(
    f: &mut std::fs::File,
    p: &Path,
    pending: &mut Vec<u8>,
) -> Result<(), TrainError> {
    f.write_all(pending).and_then(|_| f.sync_data()).map_err(file_err(p))?;
    pending.clear();
    Ok(())
}
