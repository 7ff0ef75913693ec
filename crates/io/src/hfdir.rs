//! Hugging Face model directories: `config.json` + safetensors (+ tokenizer files) in, the same
//! out, atomically. Loading validates the checkpoint against the config both ways before any
//! weight is touched.

use crate::atomic::write_dir_atomically;
use crate::safetensors::{write_shards_with, Checkpoint, InMemory, Spec};
use crate::{io_err, IoError};
use candle_core::{DType, Tensor};
use orlik_model::{llama::validate_shapes, ComputeDtype, Config, Model, ModelOptions};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

/// Files copied along with the weights when present (tokenizer, licence).
pub const SIDE_FILES: &[&str] = &[
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    // licence terms that must travel with the weights (the Gemma terms, notices)
    "LICENSE",
    "LICENSE.txt",
    "GEMMA_TERMS.html",
    "NOTICE.md",
];

/// The licence terms among [`SIDE_FILES`]: they travel with every model and export derived
/// from the weights.
pub fn licence_files() -> impl Iterator<Item = &'static str> {
    SIDE_FILES
        .iter()
        .copied()
        .filter(|n| n.contains("LICENSE") || n.contains("TERMS") || n.contains("NOTICE"))
}

/// Content hashes computed in this process: each file's (path, length, mtime), and the hash.
type Stamp = Vec<(PathBuf, u64, std::time::SystemTime)>;
static HASHED: std::sync::Mutex<Vec<(Stamp, String)>> = std::sync::Mutex::new(Vec::new());

pub struct HfModel {
    pub dir: PathBuf,
    pub config: Config,
    pub checkpoint: Checkpoint,
}

impl HfModel {
    /// Open and check an HF model directory: config, dtypes, shapes, and no NaN or infinity in
    /// any tensor (one pass over every byte).
    pub fn open(dir: &Path) -> Result<HfModel, IoError> {
        let hf = HfModel::open_streaming(dir)?;
        hf.checkpoint.check_finite()?;
        Ok(hf)
    }

    /// [`HfModel::open`] without the pass over every byte: for a reader that streams the
    /// tensors it uses once and checks each as it reads it ([`Checkpoint::check_tensor_finite`]),
    /// so a 14.5 GB checkpoint is read once, not twice (`orlik prune`).
    pub fn open_streaming(dir: &Path) -> Result<HfModel, IoError> {
        if dir.is_file() && dir.extension().is_some_and(|e| e == "gguf") {
            return Err(IoError::Format {
                path: dir.into(),
                msg: "is a GGUF file; convert it first: orlik convert FILE.gguf -o DIR".into(),
            });
        }
        if !dir.is_dir() {
            return Err(IoError::Format {
                path: dir.into(),
                msg: "not a directory (expected an HF model directory)".into(),
            });
        }
        let cpath = dir.join("config.json");
        if !cpath.exists() {
            return Err(IoError::Format { path: cpath, msg: "missing".into() });
        }
        let config = Config::from_file(&cpath)
            .map_err(|source| IoError::Model { path: cpath.clone(), source })?;
        let checkpoint = Checkpoint::open(dir)?;
        for t in checkpoint.infos() {
            if !t.dtype.is_float() {
                return Err(IoError::Tensor {
                    path: checkpoint.files()[t.file].to_path_buf(),
                    name: t.name.clone(),
                    msg: format!(
                        "dtype {} is not a float type (F32, F16, BF16, F64)",
                        crate::safetensors::dtype_name(t.dtype)
                    ),
                });
            }
        }
        validate_shapes(&config, checkpoint.infos().map(|t| (t.name.as_str(), t.shape.as_slice())))
            .map_err(|source| IoError::Model { path: dir.into(), source })?;
        Ok(HfModel { dir: dir.into(), config, checkpoint })
    }

    /// Stored dtypes of the tensors (sorted, deduplicated).
    /// sha256 over config.json and the safetensors files: what derived artefacts (scores,
    /// teacher caches) are tied to.
    /// Memoised per process by (path, length, mtime) of every file, so a command that records
    /// the same model at several stages reads it once.
    pub fn content_sha256(&self) -> Result<String, IoError> {
        let mut files = vec![self.dir.join("config.json")];
        files.extend(self.checkpoint.files().iter().map(|p| p.to_path_buf()));
        let stamp = files
            .iter()
            .map(|p| {
                let m = std::fs::metadata(p).map_err(io_err(p))?;
                Ok((p.clone(), m.len(), m.modified().map_err(io_err(p))?))
            })
            .collect::<Result<Vec<_>, IoError>>()?;
        let known = HASHED
            .lock()
            .ok()
            .and_then(|v| v.iter().find(|(s, _)| *s == stamp).map(|(_, h)| h.clone()));
        if let Some(h) = known {
            return Ok(h);
        }
        let h = sha256_files(&files)?;
        if let Ok(mut v) = HASHED.lock() {
            v.push((stamp, h.clone()));
        }
        Ok(h)
    }

    pub fn stored_dtypes(&self) -> Vec<DType> {
        let mut v: Vec<DType> = self.checkpoint.infos().map(|t| t.dtype).collect();
        v.sort_by_key(|d| d.as_str());
        v.dedup();
        v
    }

    pub fn load(&self, opts: ModelOptions) -> Result<Model, IoError> {
        let w = self.checkpoint.load_all_as(|shape| opts.dtype_of(shape))?;
        Model::new(&self.config, &w, opts)
            .map_err(|source| IoError::Model { path: self.dir.clone(), source })
    }

    /// A frozen model (f32 compute, no backward) with its matrices held as `compute` asks,
    /// `Auto` resolved from the stored dtypes; returns the model and the resolved dtype (what
    /// fingerprints and `run.json` record).
    pub fn load_frozen(&self, compute: ComputeDtype) -> Result<(Model, ComputeDtype), IoError> {
        let resolved = compute.resolve(&self.stored_dtypes());
        Ok((self.load(ModelOptions::inference(resolved.half()))?, resolved))
    }

    pub fn tokenizer(&self) -> Result<tokenizers::Tokenizer, IoError> {
        load_tokenizer(&self.dir)
    }
}

pub fn load_tokenizer(dir: &Path) -> Result<tokenizers::Tokenizer, IoError> {
    let p = dir.join("tokenizer.json");
    if !p.exists() {
        return Err(IoError::Tokenizer { path: p, msg: "missing".into() });
    }
    tokenizers::Tokenizer::from_file(&p)
        .map_err(|e| IoError::Tokenizer { path: p, msg: e.to_string() })
}

pub struct SaveOptions {
    /// Stored dtype of the weights.
    pub dtype: DType,
    pub max_shard_bytes: u64,
    /// Replace an existing directory (only one whose marker says it is a `kind` output).
    pub overwrite: bool,
    /// The kind of output recorded in its marker (see [`crate::output`]): the writing command.
    pub kind: &'static str,
}

pub fn torch_dtype_name(d: DType) -> &'static str {
    match d {
        DType::F16 => "float16",
        DType::BF16 => "bfloat16",
        DType::F64 => "float64",
        _ => "float32",
    }
}

/// Write an HF directory atomically: config.json (with `torch_dtype` set to the stored dtype),
/// generation_config.json, safetensors shards (+ index), and `files` (name, bytes) verbatim.
pub fn save_pretrained(
    target: &Path,
    config: &Config,
    tensors: &[(String, Tensor)],
    files: &[(String, Vec<u8>)],
    opts: &SaveOptions,
) -> Result<(), IoError> {
    let m = InMemory::new(tensors, target);
    save_pretrained_with(target, config, &m.specs, &mut |n| m.produce(n), files, opts)
}

/// [`save_pretrained`] from tensor specs and a producer called once per tensor, in order, so a
/// large checkpoint is written while holding one tensor at a time.
pub fn save_pretrained_with(
    target: &Path,
    config: &Config,
    specs: &[Spec],
    produce: &mut dyn FnMut(&str) -> Result<Tensor, IoError>,
    files: &[(String, Vec<u8>)],
    opts: &SaveOptions,
) -> Result<(), IoError> {
    validate_shapes(config, specs.iter().map(|(n, s)| (n.as_str(), s.as_slice())))
        .map_err(|source| IoError::Model { path: target.into(), source })?;
    let mut cfg = config.clone();
    cfg.extra.remove("dtype");
    cfg.extra.insert("torch_dtype".into(), json!(torch_dtype_name(opts.dtype)));
    let mut gen = serde_json::Map::new();
    gen.insert("_from_model_config".into(), json!(true));
    for (k, v) in [
        ("bos_token_id", &cfg.bos_token_id),
        ("eos_token_id", &cfg.eos_token_id),
        ("pad_token_id", &cfg.pad_token_id),
    ] {
        if let Some(v) = v {
            gen.insert(k.into(), v.clone());
        }
    }
    write_dir_atomically(target, opts.kind, opts.overwrite, |tmp| {
        let w = |name: &str, bytes: &[u8]| {
            std::fs::write(tmp.join(name), bytes).map_err(io_err(tmp.join(name)))
        };
        w("config.json", cfg.to_json_pretty().as_bytes())?;
        if !files.iter().any(|(n, _)| n == "generation_config.json") {
            w(
                "generation_config.json",
                serde_json::to_string_pretty(&Value::Object(gen)).unwrap_or_default().as_bytes(),
            )?;
        }
        for (name, bytes) in files {
            w(name, bytes)?;
        }
        write_shards_with(tmp, specs, opts.dtype, opts.max_shard_bytes, produce)?;
        Ok(())
    })
}

/// Side files of an existing HF directory, to carry over to a derived one.
pub fn side_files(dir: &Path) -> Result<Vec<(String, Vec<u8>)>, IoError> {
    let mut out = Vec::new();
    for name in SIDE_FILES.iter().chain(["generation_config.json"].iter()) {
        let p = dir.join(name);
        if p.exists() {
            out.push((name.to_string(), std::fs::read(&p).map_err(io_err(&p))?));
        }
    }
    Ok(out)
}

/// sha256 of the concatenated bytes of `paths`.
pub fn sha256_files(paths: &[std::path::PathBuf]) -> Result<String, IoError> {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for p in paths {
        let mut f = std::fs::File::open(p).map_err(io_err(p))?;
        std::io::copy(&mut f, &mut h).map_err(io_err(p))?;
    }
    Ok(format!("{:x}", h.finalize()))
}
