//! Tokenized datasets (`orlik tokenize`): the training text tokenized once, packed into windows
//! of `seq_len + 1` tokens and stored as little-endian u32 shards that training maps into memory,
//! so a rank reads only the pages of its own windows and nothing is tokenized at start.
//!
//! Layout of a dataset directory:
//! - `dataset.json` ([`Manifest`]), written last: tokenizer and vocabulary sha256, seq-len, EOS,
//!   per split (train, and val if given) its sources with their sha256, format, weight, counts
//!   and shards, and the sha256 of the packed windows in training order ([`Packed::hash`]'s);
//! - `{split}-{source:03}-{shard:05}.bin`: whole windows of one source's token stream;
//! - `{split}-{source:03}.docs`: the document boundaries, one (token offset, text-byte offset)
//!   pair of u64 per document, where it starts in the source's stream;
//! - `progress.json` while tokenizing (what a re-run continues from).
//!
//! Each source is packed on its own (documents joined with EOS, cut into windows, the tail
//! shorter than a window dropped), so a one-source dataset holds exactly the windows `orlik
//! train --data FILE` packs from the file, and the same packed sha256 (a teacher cache made from
//! either serves both). Mixing weights: source i with n_i windows and weight w_i contributes
//! m_i = max(1, round(w_i · n_i)) windows to the split, logical window k of it being its window
//! ⌊k · n_i / m_i⌋ (w > 1 repeats windows evenly, w < 1 takes evenly spaced ones); the training
//! order shuffles the concatenation of all sources' logical windows.

pub mod docs;
mod write;

pub use write::{tokenize, Summary, TokenizeInputs, TokenizeSettings};

use crate::data::Packed;
use crate::TrainError;
use docs::Format;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

pub const MANIFEST: &str = "dataset.json";
pub const PROGRESS: &str = "progress.json";
/// Version of the layout above; a reader refuses others.
pub const VERSION: u32 = 1;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub version: u32,
    pub seq_len: usize,
    pub eos: u32,
    /// `orlik_io::tokenizer::vocab_sha256`: what the ids mean (checked against the model).
    pub vocab_sha256: String,
    /// sha256 of the tokenizer.json bytes that tokenized the text (provenance).
    pub tokenizer_sha256: String,
    pub windows_per_shard: usize,
    pub train: SplitManifest,
    pub val: Option<SplitManifest>,
    /// The resolved settings and the command line that made the dataset.
    pub settings: serde_json::Value,
    pub command: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SplitManifest {
    pub sources: Vec<SourceManifest>,
    /// Windows after mixing: Σ m_i.
    pub windows: usize,
    /// [`Packed::hash`] of the split's windows in logical order.
    pub packed_sha256: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SourceManifest {
    pub path: String,
    pub sha256: String,
    pub format: Format,
    pub weight: f64,
    pub documents: u64,
    /// UTF-8 bytes of its documents (for bits per byte).
    pub bytes: u64,
    /// Tokens of its stream before packing (EOS included).
    pub tokens: u64,
    pub windows: usize,
    pub shards: Vec<Shard>,
    pub boundaries: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Shard {
    pub file: String,
    pub windows: usize,
    pub sha256: String,
}

impl SourceManifest {
    /// m_i: the windows it contributes after its weight.
    pub fn mixed_windows(&self) -> usize {
        mixed(self.windows, self.weight)
    }
}

fn mixed(n: usize, weight: f64) -> usize {
    ((weight * n as f64).round() as usize).max(1)
}

/// The stored window behind logical window `k` of a source with `n` stored windows mixed to `m`.
fn physical(k: usize, n: usize, m: usize) -> usize {
    (k as u128 * n as u128 / m as u128) as usize
}

/// Which split of a dataset a run reads.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Split {
    Train,
    Val,
}

/// Whether `path` is a dataset directory made by `orlik tokenize`.
pub fn is_dataset(path: &Path) -> bool {
    path.is_dir() && path.join(MANIFEST).is_file()
}

impl Manifest {
    pub fn read(dir: &Path) -> Result<Manifest, TrainError> {
        let p = dir.join(MANIFEST);
        let text = std::fs::read_to_string(&p).map_err(|e| {
            let hint = if dir.join(PROGRESS).exists() {
                " (tokenizing did not finish: re-run orlik tokenize to complete it)"
            } else {
                ""
            };
            TrainError::Data(format!("{}: {e}{hint}", p.display()))
        })?;
        let m: Manifest = serde_json::from_str(&text)
            .map_err(|e| TrainError::Data(format!("{}: {e}", p.display())))?;
        if m.version != VERSION {
            return Err(TrainError::Data(format!(
                "{}: dataset version {}, this orlik reads version {VERSION}",
                p.display(),
                m.version
            )));
        }
        Ok(m)
    }
}

/// What the run that reads a dataset uses: checked against the manifest.
pub struct Expect<'a> {
    /// The model whose tokenizer the run uses (named in errors).
    pub model: &'a Path,
    pub vocab_sha256: &'a str,
    pub seq_len: usize,
    pub eos: u32,
}

/// One source's shards, mapped.
struct MappedSource {
    shards: Vec<memmap2::Mmap>,
    windows_per_shard: usize,
    /// n_i and m_i (module docs).
    windows: usize,
    mixed: usize,
}

/// A split's shards mapped read-only; [`Packed`]'s storage for a dataset.
pub struct Mapped {
    sources: Vec<MappedSource>,
    /// Logical index of each source's first window.
    starts: Vec<usize>,
    window_len: usize,
    pub(crate) windows: usize,
    pub(crate) hash: String,
    _guards: Vec<orlik_io::guard::MapGuard>,
}

impl Mapped {
    /// Tokens of logical window `i`.
    pub(crate) fn window(&self, i: usize) -> &[u32] {
        let s = self.starts.partition_point(|&st| st <= i) - 1;
        let src = &self.sources[s];
        let phys = physical(i - self.starts[s], src.windows, src.mixed);
        let (shard, at) = (phys / src.windows_per_shard, phys % src.windows_per_shard);
        let bytes = &src.shards[shard][at * self.window_len * 4..(at + 1) * self.window_len * 4];
        // SAFETY: the mapping is page aligned and `at * window_len * 4` a multiple of 4, so the
        // slice is aligned for u32; every bit pattern is a valid u32; the shards are little
        // endian, and `open` refuses big-endian machines.
        unsafe { std::slice::from_raw_parts(bytes.as_ptr().cast::<u32>(), self.window_len) }
    }
}

/// Open split `split` of the dataset in `dir` as packed windows, checked against `want`.
pub fn open(dir: &Path, split: Split, want: &Expect) -> Result<Packed, TrainError> {
    if cfg!(target_endian = "big") {
        return Err(TrainError::Data("datasets are little endian; this machine is not".into()));
    }
    let m = Manifest::read(dir)?;
    let d = dir.display();
    if m.vocab_sha256 != want.vocab_sha256 {
        return Err(TrainError::Data(format!(
            "{d}: tokenized with another vocabulary than {}'s tokenizer (re-run orlik tokenize \
             with this model)",
            want.model.display()
        )));
    }
    if m.seq_len != want.seq_len {
        return Err(TrainError::Data(format!(
            "{d}: tokenized into windows of --seq-len {}, this run uses --seq-len {} (pass \
             --seq-len {} or re-run orlik tokenize with --seq-len {})",
            m.seq_len, want.seq_len, m.seq_len, want.seq_len
        )));
    }
    if m.eos != want.eos {
        return Err(TrainError::Data(format!(
            "{d}: documents separated by EOS id {}, {}'s config.json says {}",
            m.eos,
            want.model.display(),
            want.eos
        )));
    }
    let sm = match split {
        Split::Train => &m.train,
        Split::Val => m.val.as_ref().ok_or_else(|| {
            TrainError::Data(format!("{d}: no validation split (orlik tokenize --val FILE)"))
        })?,
    };
    map_split(dir, &m, sm)
}

fn map_split(dir: &Path, m: &Manifest, sm: &SplitManifest) -> Result<Packed, TrainError> {
    let w = m.seq_len + 1;
    let (mut sources, mut starts, mut guards) = (Vec::new(), Vec::new(), Vec::new());
    let (mut at, mut bytes, mut stream) = (0usize, 0f64, 0f64);
    for s in &sm.sources {
        check_source(dir, m, s)?;
        let mut shards = Vec::new();
        for sh in &s.shards {
            let p: PathBuf = dir.join(&sh.file);
            let f = std::fs::File::open(&p).map_err(crate::file_err(&p))?;
            // SAFETY: read-only mapping of a shard `orlik tokenize` wrote by rename and never
            // modifies; a truncation while mapped is reported by the SIGBUS guard.
            let mm = unsafe { memmap2::Mmap::map(&f) }.map_err(crate::file_err(&p))?;
            if mm.len() != sh.windows * w * 4 {
                return Err(TrainError::Data(format!(
                    "{}: {} bytes, the manifest says {} windows of {w} tokens ({} bytes)",
                    p.display(),
                    mm.len(),
                    sh.windows,
                    sh.windows * w * 4
                )));
            }
            guards.push(orlik_io::guard::register(&p, &mm));
            shards.push(mm);
        }
        let mixed = s.mixed_windows();
        let scale = mixed as f64 / s.windows.max(1) as f64;
        bytes += s.bytes as f64 * scale;
        stream += s.tokens as f64 * scale;
        starts.push(at);
        at += mixed;
        sources.push(MappedSource {
            shards,
            windows_per_shard: m.windows_per_shard,
            windows: s.windows,
            mixed,
        });
    }
    if at != sm.windows || at == 0 {
        return Err(TrainError::Data(format!(
            "{}: the split's sources give {at} windows, the manifest says {}",
            dir.join(MANIFEST).display(),
            sm.windows
        )));
    }
    let mapped = Mapped {
        sources,
        starts,
        window_len: w,
        windows: at,
        hash: sm.packed_sha256.clone(),
        _guards: guards,
    };
    Ok(Packed::mapped(mapped, m.seq_len, bytes.round() as usize, stream.round() as usize))
}

/// A manifest's counts must agree before any window is indexed through them: shards of whole
/// `windows_per_shard` windows (the last one fewer), summing to the source's windows, a
/// positive finite weight.
fn check_source(dir: &Path, m: &Manifest, s: &SourceManifest) -> Result<(), TrainError> {
    let bad = |msg: String| {
        Err(TrainError::Data(format!("{}: source {}: {msg}", dir.join(MANIFEST).display(), s.path)))
    };
    let wps = m.windows_per_shard;
    if wps == 0 {
        return bad("windows_per_shard is 0".into());
    }
    let n = s.shards.len();
    if let Some((k, sh)) =
        s.shards.iter().enumerate().find(|(k, sh)| {
            sh.windows == 0 || sh.windows > wps || (*k + 1 < n && sh.windows != wps)
        })
    {
        return bad(format!(
            "shard {k} holds {} windows, expected {wps} (fewer in the last)",
            sh.windows
        ));
    }
    let total: usize = s.shards.iter().map(|x| x.windows).sum();
    if total != s.windows || total == 0 {
        return bad(format!("its shards hold {total} windows, the manifest says {}", s.windows));
    }
    if !(s.weight.is_finite() && s.weight > 0.0) {
        return bad(format!("weight {} is not a positive number", s.weight));
    }
    Ok(())
}

/// `--data` / `--val` as a run reads them: one dataset directory (`orlik tokenize`; its train or
/// val split, mapped), or text files tokenized and packed now.
pub fn load(
    tok: &tokenizers::Tokenizer,
    files: &[PathBuf],
    split: Split,
    want: &Expect,
) -> Result<Packed, TrainError> {
    let dirs: Vec<&PathBuf> = files.iter().filter(|f| f.is_dir()).collect();
    match (dirs.len(), files.len()) {
        (0, _) => crate::data::pack(tok, files, want.seq_len, want.eos, 1),
        (1, 1) => open(dirs[0], split, want),
        _ => Err(TrainError::Data(format!(
            "{}: a dataset directory (orlik tokenize) must be the only --data / --val given, \
             not mixed with text files or other datasets (mix sources in orlik tokenize --weights)",
            dirs[0].display()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mixing_repeats_evenly_or_thins_evenly() {
        let count = |n: usize, m: usize| {
            let mut c = vec![0; n];
            (0..m).for_each(|k| c[physical(k, n, m)] += 1);
            c
        };
        assert_eq!(count(5, 5), [1; 5], "weight 1: every window once");
        assert_eq!(count(5, 15), [3; 5], "weight 3: every window three times");
        assert_eq!(count(4, 10), [3, 2, 3, 2], "weight 2.5: two or three times");
        let half: Vec<usize> = (0..5).map(|k| physical(k, 10, 5)).collect();
        assert_eq!(half, [0, 2, 4, 6, 8], "weight 0.5: every other window");
        assert_eq!((mixed(10, 0.5), mixed(3, 0.01), mixed(7, 1.0)), (5, 1, 7));
    }
}
