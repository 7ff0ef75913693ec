//! `orlik trim-vocab`: keep the tokens a corpus uses (plus specials, bytes and the merge
//! closure; see orlik_prune::vocab), cut the embedding / lm_head rows, renumber every id, and
//! check on the corpus that the trimmed tokenizer produces exactly the original token strings.

use crate::vocab::{plan, remap_id_fields, trim_tokenizer, trim_tokenizer_config, Bpe};
use crate::PruneError;
use candle_core::{DType, Tensor};
use orlik_io::hfdir::{save_pretrained, side_files, HfModel, SaveOptions};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

type Result<T> = std::result::Result<T, PruneError>;

/// What `orlik trim-vocab` is asked to do.
pub struct TrimArgs {
    pub model: PathBuf,
    /// The corpus whose tokens are kept (with specials, bytes and the merge closure).
    pub data: Vec<PathBuf>,
    /// Keep a token the corpus uses at least this many times (1 when 0).
    pub min_count: u64,
    /// A file of extra token strings to keep, one a line.
    pub keep: Option<PathBuf>,
    pub output: PathBuf,
    pub force: bool,
}

fn input(what: &dyn std::fmt::Display, e: impl std::fmt::Display) -> PruneError {
    PruneError::Input(format!("{what}: {e}"))
}

fn tokens_of(tok: &tokenizers::Tokenizer, text: &str, what: &Path) -> Result<tokenizers::Encoding> {
    tok.encode(text, false).map_err(|e| input(&what.display(), format!("tokenizing: {e}")))
}

fn json_of<T: serde::Serialize>(v: &T, pretty: bool) -> Vec<u8> {
    let r = if pretty { serde_json::to_vec_pretty(v) } else { serde_json::to_vec(v) };
    r.unwrap_or_default() // serialising a serde_json value cannot fail
}

/// Trim the vocabulary into `a.output`; returns what a person reads (three lines).
pub fn run(a: &TrimArgs) -> Result<String> {
    let mut inputs: Vec<&std::path::Path> = vec![a.model.as_path()];
    inputs.extend(a.data.iter().chain(&a.keep).map(PathBuf::as_path));
    orlik_io::output::check(
        &a.output,
        "trim-vocab",
        &inputs,
        orlik_io::output::Mode::from_flags(a.force, false),
    )?;
    let hf = HfModel::open(&a.model)?;
    let tj_path = a.model.join("tokenizer.json");
    let tj_bytes = std::fs::read(&tj_path).map_err(|e| input(&tj_path.display(), e))?;
    let tj: Value = serde_json::from_slice(&tj_bytes).map_err(|e| input(&tj_path.display(), e))?;
    let bpe = Bpe::from_json(&tj).map_err(|e| input(&tj_path.display(), e))?;
    let tok = hf.tokenizer()?;
    let keep: Vec<String> = match &a.keep {
        Some(p) => std::fs::read_to_string(p)
            .map_err(|e| input(&p.display(), e))?
            .lines()
            .filter(|l| !l.is_empty())
            .map(String::from)
            .collect(),
        None => Vec::new(),
    };
    // Usage counts over the corpus, and its token strings for the check afterwards.
    let mut counts = vec![0u64; hf.config.vocab_size.max(bpe.vocab.len())];
    let mut texts = Vec::new();
    let (mut n_tokens, mut n_bytes) = (0usize, 0usize);
    for f in &a.data {
        let text = orlik_io::text::read_text(f)?;
        let enc = tokens_of(&tok, &text, f)?;
        for &id in enc.get_ids() {
            if let Some(c) = counts.get_mut(id as usize) {
                *c += 1;
            }
        }
        n_tokens += enc.len();
        n_bytes += text.len();
        texts.push((f.clone(), text, enc.get_tokens().to_vec()));
    }
    let p = plan(&bpe, &counts, a.min_count, &keep)?;
    if p.keep.iter().any(|&i| i as usize >= hf.config.vocab_size) {
        let msg =
            format!("the tokenizer has ids beyond the model's vocab_size {}", hf.config.vocab_size);
        return Err(input(&a.model.display(), msg));
    }
    let new_tj = trim_tokenizer(&tj, &bpe, &p)?;
    let new_tok = tokenizers::Tokenizer::from_bytes(json_of(&new_tj, false))
        .map_err(|e| input(&"trimmed tokenizer.json", e))?;
    // The guarantee, checked: the corpus tokenizes to exactly the same token strings.
    for (f, text, want) in &texts {
        let got = tokens_of(&new_tok, text, f)?;
        if got.get_tokens() != want.as_slice() {
            let i = got
                .get_tokens()
                .iter()
                .zip(want)
                .position(|(x, y)| x != y)
                .unwrap_or(want.len().min(got.len()));
            let msg = format!("the trimmed tokenizer differs from the original at token {i} (a bug: please report)");
            return Err(input(&f.display(), msg));
        }
    }
    // Weights: embedding and lm_head rows of the kept ids, everything else as it is.
    let idx = Tensor::new(p.keep.as_slice(), &candle_core::Device::Cpu)?;
    let stored = hf.stored_dtypes().first().copied().unwrap_or(DType::F32);
    let mut tensors = Vec::new();
    for info in hf.checkpoint.infos() {
        let t = hf.checkpoint.tensor(&info.name)?;
        let t = if info.name == "model.embed_tokens.weight" || info.name == "lm_head.weight" {
            t.index_select(&idx, 0)?
        } else {
            t
        };
        tensors.push((info.name.clone(), t));
    }
    tensors.sort_by(|x, y| {
        orlik_model::config::layer_order(&x.0).cmp(&orlik_model::config::layer_order(&y.0))
    });
    let mut cfg = hf.config.clone();
    cfg.vocab_size = p.keep.len();
    let mut ids = serde_json::Map::new();
    for (k, v) in [
        ("bos_token_id", &cfg.bos_token_id),
        ("eos_token_id", &cfg.eos_token_id),
        ("pad_token_id", &cfg.pad_token_id),
    ] {
        if let Some(v) = v {
            ids.insert(k.into(), v.clone());
        }
    }
    remap_id_fields(&mut ids, &p)?;
    cfg.bos_token_id = ids.get("bos_token_id").cloned();
    cfg.eos_token_id = ids.get("eos_token_id").cloned();
    cfg.pad_token_id = ids.get("pad_token_id").cloned();
    let mut files: Vec<(String, Vec<u8>)> = Vec::new();
    for (name, bytes) in side_files(&a.model)? {
        let out = match name.as_str() {
            "tokenizer.json" => json_of(&new_tj, false),
            "tokenizer_config.json" => {
                let tc = serde_json::from_slice(&bytes).map_err(|e| input(&name, e))?;
                json_of(&trim_tokenizer_config(&tc, &p), true)
            }
            "generation_config.json" => {
                let mut g: serde_json::Map<String, Value> =
                    serde_json::from_slice(&bytes).map_err(|e| input(&name, e))?;
                remap_id_fields(&mut g, &p)?;
                json_of(&g, true)
            }
            "orlik.json" => continue,
            _ => bytes,
        };
        files.push((name, out));
    }
    files.push(("orlik.json".into(), orlik_io::text::provenance()));
    let before = hf.config.param_count();
    let after = cfg.param_count();
    let report = json!({
        "format_version": 1,
        "model": a.model.display().to_string(),
        "data": a.data.iter().map(|d| d.display().to_string()).collect::<Vec<_>>(),
        "min_count": a.min_count,
        "vocab_before": hf.config.vocab_size,
        "vocab_after": p.keep.len(),
        "kept": {"used_by_corpus": p.used, "special": p.special, "bytes": p.bytes, "requested": p.requested, "merge_closure": p.closure},
        "parameters_before": before,
        "parameters_after": after,
        "corpus_tokens": n_tokens,
        "corpus_bytes": n_bytes,
        "bytes_per_token_before": n_bytes as f64 / n_tokens.max(1) as f64,
        "bytes_per_token_after": n_bytes as f64 / n_tokens.max(1) as f64,
        "kept_ids": p.keep,
    });
    files.push(("trim.json".into(), json_of(&report, true)));
    let opts = SaveOptions {
        dtype: stored,
        max_shard_bytes: 2_000_000_000,
        overwrite: a.force,
        kind: "trim-vocab",
    };
    save_pretrained(&a.output, &cfg, &tensors, &files, &opts)?;
    Ok(format!(
        "vocabulary {} -> {} tokens ({} used by the corpus >= {} times, {} special, {} byte, {} requested, {} for merges)\n\
         parameters {before} -> {after} ({:.1}% removed); corpus: {n_tokens} tokens, {:.3} bytes/token before and after (identical tokenization, checked)\n\
         model: {}",
        hf.config.vocab_size, p.keep.len(), p.used, a.min_count.max(1), p.special, p.bytes, p.requested, p.closure,
        100.0 * (before - after) as f64 / before as f64,
        n_bytes as f64 / n_tokens.max(1) as f64,
        a.output.display()
    ))
}
