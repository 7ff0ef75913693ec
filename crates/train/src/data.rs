//! Training data: documents (paragraphs separated by a blank line) tokenized, joined with EOS
//! separators into one stream and cut into non-overlapping windows of `seq_len + 1` tokens
//! (inputs and shifted targets). Attention may cross an EOS inside a window (standard packing,
//! as nanoGPT and NeMo do by default).
//!
//! Order: sample number `c` (the data cursor) is window `perm_e[c mod N]` of epoch e = c / N, where
//! `perm_e` is a Fisher–Yates shuffle seeded by (seed, e). The order is a pure function of (seed,
//! cursor), so resuming only needs the cursor.

use crate::dataset::Mapped;
use crate::TrainError;
use orlik_model::init::SplitMix64;
use sha2::{Digest, Sha256};
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Clone)]
pub struct Packed {
    store: Store,
    pub seq_len: usize,
    /// UTF-8 bytes of the documents the stream holds (for bits per byte).
    pub bytes: usize,
    /// Tokens the documents produced before packing (EOS included).
    pub stream_tokens: usize,
}

/// Where the windows are: tokenized at start, or mapped from a dataset (`orlik tokenize`).
#[derive(Clone)]
enum Store {
    /// The token stream cut to a whole number of windows.
    Owned(Vec<u32>),
    Mapped(Arc<Mapped>),
}

impl std::fmt::Debug for Packed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = if matches!(self.store, Store::Owned(_)) { "owned" } else { "mapped" };
        write!(f, "Packed({kind}, {} windows of {})", self.windows(), self.seq_len + 1)
    }
}

impl Packed {
    /// Windows from a token stream already cut to whole windows of `seq_len + 1`.
    pub fn from_tokens(tokens: Vec<u32>, seq_len: usize, bytes: usize, stream: usize) -> Packed {
        Packed { store: Store::Owned(tokens), seq_len, bytes, stream_tokens: stream }
    }
    pub(crate) fn mapped(m: Mapped, seq_len: usize, bytes: usize, stream: usize) -> Packed {
        Packed { store: Store::Mapped(Arc::new(m)), seq_len, bytes, stream_tokens: stream }
    }
    pub fn windows(&self) -> usize {
        match &self.store {
            Store::Owned(t) => t.len() / (self.seq_len + 1),
            Store::Mapped(m) => m.windows,
        }
    }
    /// Tokens of all windows.
    pub fn len_tokens(&self) -> usize {
        self.windows() * (self.seq_len + 1)
    }
    /// Tokens of window `i`: seq_len + 1 ids.
    pub fn window(&self, i: usize) -> &[u32] {
        let w = self.seq_len + 1;
        match &self.store {
            Store::Owned(t) => &t[i * w..(i + 1) * w],
            Store::Mapped(m) => m.window(i),
        }
    }
    /// sha256 of the packed windows and the sequence length: what a teacher cache is tied to.
    /// A dataset's was computed once by `orlik tokenize` (the same definition, see
    /// [`hash_windows`]), so opening one reads no tokens.
    pub fn hash(&self) -> String {
        match &self.store {
            Store::Owned(_) => hash_windows(self),
            Store::Mapped(m) => m.hash.clone(),
        }
    }
}

/// sha256 of (seq_len as u64 LE, every window's ids as u32 LE, in order).
pub fn hash_windows(p: &Packed) -> String {
    let mut h = Sha256::new();
    h.update((p.seq_len as u64).to_le_bytes());
    let mut buf = Vec::with_capacity((p.seq_len + 1) * 4);
    for i in 0..p.windows() {
        buf.clear();
        buf.extend(p.window(i).iter().flat_map(|t| t.to_le_bytes()));
        h.update(&buf);
    }
    format!("{:x}", h.finalize())
}

/// Split text files into documents (blank-line separated paragraphs, trimmed, empty ones dropped:
/// [`crate::dataset::docs`], the one definition `orlik tokenize` also reads).
pub fn read_documents(files: &[PathBuf]) -> Result<Vec<String>, TrainError> {
    use crate::dataset::docs::{Docs, Format};
    let mut docs = Vec::new();
    for f in files {
        let before = docs.len();
        let mut r = Docs::open(f, &Format::Text)?;
        while let Some(d) = r.next_doc()? {
            docs.push(d);
        }
        if docs.len() == before {
            return Err(TrainError::Data(format!("{}: no text (empty file)", f.display())));
        }
    }
    Ok(docs)
}

/// Tokenize and pack `files`; errors when they give fewer than `min_windows` windows.
pub fn pack(
    tok: &tokenizers::Tokenizer,
    files: &[PathBuf],
    seq_len: usize,
    eos: u32,
    min_windows: usize,
) -> Result<Packed, TrainError> {
    let docs = read_documents(files)?;
    let mut tokens = Vec::new();
    let mut bytes = 0;
    // Tokenize in batches (the tokenizers crate parallelises a batch).
    for chunk in docs.chunks(512) {
        let enc = tok
            .encode_batch(chunk.to_vec(), false)
            .map_err(|e| TrainError::Data(format!("tokenizing {}: {e}", names(files))))?;
        for (d, e) in chunk.iter().zip(enc) {
            tokens.extend_from_slice(e.get_ids());
            tokens.push(eos);
            bytes += d.len();
        }
    }
    let stream_tokens = tokens.len();
    let w = seq_len + 1;
    let n = tokens.len() / w;
    if n < min_windows.max(1) {
        return Err(TrainError::Data(format!(
            "{}: {} tokens make {n} windows of {w} tokens; need at least {}",
            names(files),
            tokens.len(),
            min_windows.max(1)
        )));
    }
    tokens.truncate(n * w);
    Ok(Packed::from_tokens(tokens, seq_len, bytes, stream_tokens))
}

fn names(files: &[PathBuf]) -> String {
    files.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
}

/// Window index of sample `cursor` in a shuffled, epoch-wise order over `n` windows.
pub struct Order {
    n: usize,
    seed: u64,
    epoch: Option<(u64, Vec<u32>)>,
}

impl Order {
    pub fn new(n: usize, seed: u64) -> Order {
        Order { n, seed, epoch: None }
    }
    pub fn window(&mut self, cursor: u64) -> usize {
        let e = cursor / self.n as u64;
        if self.epoch.as_ref().map(|(k, _)| *k) != Some(e) {
            let mut rng =
                SplitMix64(self.seed ^ e.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0x0D15_71A7);
            let mut p: Vec<u32> = (0..self.n as u32).collect();
            for i in (1..p.len()).rev() {
                let j = (rng.next_u64() % (i as u64 + 1)) as usize;
                p.swap(i, j);
            }
            self.epoch = Some((e, p));
        }
        let p = &self.epoch.as_ref().map(|(_, p)| p.as_slice()).unwrap_or(&[]);
        p[(cursor % self.n as u64) as usize] as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_is_a_pure_function_of_seed_and_cursor_and_each_epoch_is_a_permutation() {
        let mut a = Order::new(10, 7);
        let seq: Vec<usize> = (0..30).map(|c| a.window(c)).collect();
        let mut b = Order::new(10, 7);
        // Jumping straight to a cursor gives the same windows as walking there.
        assert_eq!((15..30).map(|c| b.window(c)).collect::<Vec<_>>(), seq[15..].to_vec());
        for e in 0..3 {
            let mut ep = seq[e * 10..(e + 1) * 10].to_vec();
            ep.sort();
            assert_eq!(ep, (0..10).collect::<Vec<_>>());
        }
        assert_ne!(seq[..10], seq[10..20], "epochs reshuffled");
        let mut c = Order::new(10, 8);
        assert_ne!((0..10).map(|x| c.window(x)).collect::<Vec<_>>(), seq[..10].to_vec());
    }
}
