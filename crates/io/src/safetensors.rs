//! safetensors: mmap'd reading of single files and sharded checkpoints with strict validation,
//! and a sharded writer. Format: u64 LE header length, JSON header, raw little-endian data
//! (https://github.com/huggingface/safetensors). Our own parser so that duplicate keys, absurd
//! header sizes and out-of-range offsets are caught and named.

use crate::{io_err, IoError};
use candle_core::{DType, Device, Tensor};
use memmap2::Mmap;
use serde::de::{Deserializer, MapAccess, Visitor};
use serde_json::Value;
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

/// The safetensors reference implementation refuses headers above 100 MB.
pub const MAX_HEADER: u64 = 100_000_000;
pub const INDEX_NAME: &str = "model.safetensors.index.json";
pub const SINGLE_NAME: &str = "model.safetensors";

#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<usize>,
    pub file: usize,
    /// Byte range in the file (absolute).
    pub start: usize,
    pub end: usize,
}

pub struct Checkpoint {
    files: Vec<(PathBuf, Mmap)>,
    tensors: BTreeMap<String, TensorInfo>,
    /// SIGBUS reports for the mappings (see [`crate::guard`]); dropped with them.
    _guards: Vec<crate::guard::MapGuard>,
}

/// JSON object entries in file order, keeping duplicates so we can report them.
struct Entries(Vec<(String, Value)>);

impl<'de> serde::Deserialize<'de> for Entries {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Entries;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Entries, A::Error> {
                let mut v = Vec::new();
                while let Some((k, val)) = m.next_entry::<String, Value>()? {
                    v.push((k, val));
                }
                Ok(Entries(v))
            }
        }
        d.deserialize_map(V)
    }
}

fn parse_dtype(s: &str) -> Option<DType> {
    Some(match s {
        "F32" => DType::F32,
        "F16" => DType::F16,
        "BF16" => DType::BF16,
        "F64" => DType::F64,
        "I64" => DType::I64,
        "U32" => DType::U32,
        "U8" => DType::U8,
        _ => return None,
    })
}

pub fn dtype_name(d: DType) -> &'static str {
    match d {
        DType::F32 => "F32",
        DType::F16 => "F16",
        DType::BF16 => "BF16",
        DType::F64 => "F64",
        DType::U8 => "U8",
        DType::U32 => "U32",
        DType::I64 => "I64",
        _ => "?",
    }
}

/// Parse and validate a whole safetensors file's bytes (header and data layout); `path` names
/// it in errors. Returns tensors with absolute offsets.
pub fn parse(path: &Path, buf: &[u8]) -> Result<Vec<TensorInfo>, IoError> {
    read_header(path, 0, buf)
}

/// The shard file names a `model.safetensors.index.json` (text) refers to, sorted and
/// deduplicated; each must be a plain file name inside the model directory.
pub fn index_shards(index: &Path, text: &str) -> Result<Vec<String>, IoError> {
    let v: Value = serde_json::from_str(text)
        .map_err(|e| IoError::Format { path: index.into(), msg: e.to_string() })?;
    let map = v.get("weight_map").and_then(Value::as_object).ok_or_else(|| IoError::Format {
        path: index.into(),
        msg: "no weight_map object".into(),
    })?;
    let mut shards: Vec<String> = Vec::new();
    for (name, s) in map {
        let s = s.as_str().ok_or_else(|| IoError::Format {
            path: index.into(),
            msg: format!("weight_map[{name:?}] is not a file name"),
        })?;
        // A shard is a plain file name in the model directory: no directories, no `..`, no
        // absolute paths (an index must not read files elsewhere).
        if !crate::output::plain_file_name(s) {
            return Err(IoError::Format {
                path: index.into(),
                msg: format!(
                    "weight_map[{name:?}] = {s:?} is not a file name inside the model directory"
                ),
            });
        }
        shards.push(s.to_string());
    }
    shards.sort();
    shards.dedup();
    Ok(shards)
}

/// Parse and validate one file's header. Returns tensors with absolute offsets.
fn read_header(path: &Path, file_idx: usize, buf: &[u8]) -> Result<Vec<TensorInfo>, IoError> {
    let fmt = |msg: String| IoError::Format { path: path.to_path_buf(), msg };
    if buf.len() < 8 {
        return Err(fmt(format!("truncated: {} bytes, not even a header length", buf.len())));
    }
    let n = u64::from_le_bytes(buf[..8].try_into().unwrap_or([0; 8]));
    if n > MAX_HEADER {
        return Err(fmt(format!("header too large: {n} bytes (limit {MAX_HEADER})")));
    }
    if n > (buf.len() - 8) as u64 {
        return Err(fmt(format!("truncated: header says {n} bytes, file has {}", buf.len() - 8)));
    }
    let data_start = 8 + n as usize;
    let data_len = buf.len() - data_start;
    let entries: Entries = serde_json::from_slice(&buf[8..data_start])
        .map_err(|e| fmt(format!("header is not a JSON object: {e}")))?;
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    for (name, v) in entries.0 {
        if name == "__metadata__" {
            continue;
        }
        let terr =
            |msg: String| IoError::Tensor { path: path.to_path_buf(), name: name.clone(), msg };
        if !seen.insert(name.clone()) {
            return Err(IoError::Duplicate { name, first: path.into(), second: path.into() });
        }
        let dt = v.get("dtype").and_then(Value::as_str).ok_or_else(|| terr("no dtype".into()))?;
        let dtype = parse_dtype(dt).ok_or_else(|| {
            terr(format!("dtype {dt} is not supported (F32, F16, BF16, F64, I64, U32, U8)"))
        })?;
        let shape: Vec<usize> = v
            .get("shape")
            .and_then(Value::as_array)
            .and_then(|a| a.iter().map(|x| x.as_u64().map(|x| x as usize)).collect())
            .ok_or_else(|| terr("bad or missing shape".into()))?;
        let off: Vec<u64> = v
            .get("data_offsets")
            .and_then(Value::as_array)
            .and_then(|a| a.iter().map(Value::as_u64).collect())
            .ok_or_else(|| terr("bad or missing data_offsets".into()))?;
        if off.len() != 2 || off[0] > off[1] || off[1] > data_len as u64 {
            return Err(terr(format!(
                "data_offsets {off:?} outside the {data_len} data bytes (truncated file?)"
            )));
        }
        let numel = shape
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .ok_or_else(|| terr("shape overflows".into()))?;
        let want = numel
            .checked_mul(dtype.size_in_bytes())
            .ok_or_else(|| terr("shape overflows".into()))?;
        if (off[1] - off[0]) as usize != want {
            return Err(terr(format!(
                "shape {shape:?} {dt} needs {want} bytes, data_offsets give {}",
                off[1] - off[0]
            )));
        }
        out.push(TensorInfo {
            name,
            dtype,
            shape,
            file: file_idx,
            start: data_start + off[0] as usize,
            end: data_start + off[1] as usize,
        });
    }
    // As the reference implementation: the tensors tile the data exactly, no byte aliased by two
    // tensors and none left over after the last one.
    let mut ranges: Vec<(usize, usize, &str)> =
        out.iter().map(|t| (t.start, t.end, t.name.as_str())).collect();
    ranges.sort();
    for w in ranges.windows(2) {
        if w[1].0 < w[0].1 {
            return Err(IoError::Tensor {
                path: path.to_path_buf(),
                name: w[1].2.to_string(),
                msg: format!(
                    "data_offsets overlap tensor {} (two tensors aliasing the same bytes)",
                    w[0].2
                ),
            });
        }
    }
    let mut at = data_start;
    for (s, e, name) in &ranges {
        if *s != at {
            let what =
                if *s < at { "overlaps the previous tensor" } else { "leaves a gap before it" };
            return Err(IoError::Tensor {
                path: path.to_path_buf(),
                name: name.to_string(),
                msg: format!(
                    "data_offsets start at {} but the previous tensor ends at {}: {what}",
                    s - data_start,
                    at - data_start
                ),
            });
        }
        at = *e;
    }
    if at != buf.len() {
        return Err(fmt(format!(
            "{} bytes after the last tensor's data (corrupt or appended file)",
            buf.len() - at
        )));
    }
    Ok(out)
}

fn mmap(path: &Path) -> Result<Mmap, IoError> {
    let f = File::open(path).map_err(io_err(path))?;
    // SAFETY: the file is opened read-only; orlik never writes a checkpoint in place (writes go
    // to a temp directory and are renamed), so the mapping is not mutated under us by orlik.
    unsafe { Mmap::map(&f) }.map_err(io_err(path))
}

impl Checkpoint {
    /// Open a directory (`model.safetensors.index.json` or `model.safetensors`) or one file.
    pub fn open(path: &Path) -> Result<Checkpoint, IoError> {
        let mut files = Vec::new();
        if path.is_dir() {
            let index = path.join(INDEX_NAME);
            if index.exists() {
                let text = std::fs::read_to_string(&index).map_err(io_err(&index))?;
                let shards = index_shards(&index, &text)?;
                for s in shards {
                    let p = path.join(&s);
                    if !p.exists() {
                        return Err(IoError::MissingShard { index, shard: p });
                    }
                    files.push(p);
                }
            } else if path.join(SINGLE_NAME).exists() {
                files.push(path.join(SINGLE_NAME));
            } else {
                return Err(IoError::Format {
                    path: path.into(),
                    msg: format!("no {INDEX_NAME} or {SINGLE_NAME}"),
                });
            }
        } else {
            files.push(path.to_path_buf());
        }
        let mut ck =
            Checkpoint { files: Vec::new(), tensors: BTreeMap::new(), _guards: Vec::new() };
        for (i, p) in files.into_iter().enumerate() {
            let m = mmap(&p)?;
            ck._guards.push(crate::guard::register(&p, &m));
            for t in read_header(&p, i, &m)? {
                if let Some(prev) = ck.tensors.get(&t.name) {
                    return Err(IoError::Duplicate {
                        name: t.name,
                        first: ck.files[prev.file].0.clone(),
                        second: p,
                    });
                }
                ck.tensors.insert(t.name.clone(), t);
            }
            ck.files.push((p, m));
        }
        Ok(ck)
    }

    pub fn infos(&self) -> impl Iterator<Item = &TensorInfo> {
        self.tensors.values()
    }
    pub fn info(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.get(name)
    }
    pub fn files(&self) -> Vec<&Path> {
        self.files.iter().map(|(p, _)| p.as_path()).collect()
    }
    /// Total size of the checkpoint files on disk.
    pub fn bytes_on_disk(&self) -> u64 {
        self.files.iter().map(|(_, m)| m.len() as u64).sum()
    }

    /// Refuse a checkpoint holding any NaN or infinity, naming the tensor and the count: one pass
    /// over the mapped bytes (each tensor's pages are released after it is checked).
    pub fn check_finite(&self) -> Result<(), IoError> {
        for t in self.tensors.values() {
            let (path, m) = &self.files[t.file];
            crate::guard::check_finite(path, &t.name, &m[t.start..t.end], t.dtype)?;
            self.release(&t.name);
        }
        Ok(())
    }

    /// [`Checkpoint::check_finite`] for one tensor: for a reader that streams the tensors it
    /// needs and checks each as it goes, instead of a whole pass over the checkpoint first.
    pub fn check_tensor_finite(&self, name: &str) -> Result<(), IoError> {
        let (bytes, t, path) = self.raw(name)?;
        crate::guard::check_finite(path, &t.name, bytes, t.dtype)
    }

    /// One tensor's stored bytes (little-endian, row-major, in the mapping: not copied) with
    /// its description and file.
    pub fn raw(&self, name: &str) -> Result<(&[u8], &TensorInfo, &Path), IoError> {
        let t = self.tensors.get(name).ok_or_else(|| IoError::Tensor {
            path: self.files.first().map(|f| f.0.clone()).unwrap_or_default(),
            name: name.into(),
            msg: "not in checkpoint".into(),
        })?;
        let (path, m) = &self.files[t.file];
        Ok((&m[t.start..t.end], t, path))
    }

    /// One tensor in its stored dtype.
    pub fn tensor(&self, name: &str) -> Result<Tensor, IoError> {
        let (bytes, t, path) = self.raw(name)?;
        Tensor::from_raw_buffer(bytes, t.dtype, &t.shape, &Device::Cpu).map_err(|source| {
            IoError::Candle { context: format!("{}: tensor {name}", path.display()), source }
        })
    }

    /// Drop the pages of a tensor already read from this process's memory (they stay in the page
    /// cache and come back on the next access), so streaming through a checkpoint larger than
    /// RAM keeps the resident set small.
    pub fn release(&self, name: &str) {
        if let Some(t) = self.tensors.get(name) {
            let (_, m) = &self.files[t.file];
            let page = 4096;
            let start = t.start / page * page;
            let end = t.end.div_ceil(page) * page;
            let end = end.min(m.len());
            if end > start {
                // SAFETY: read-only file mapping; MADV_DONTNEED only discards our page-table
                // entries, later reads fault the same file contents back in.
                let _ = unsafe {
                    m.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, start, end - start)
                };
            }
        }
    }

    /// Every tensor, converted to `dtype`.
    pub fn load_all(&self, dtype: DType) -> Result<orlik_model::Weights, IoError> {
        self.load_all_as(|_| dtype)
    }

    /// Every tensor, each converted to `dtype_of(its shape)` as it is read (so a checkpoint
    /// loaded with 16-bit matrices never holds them all in f32 at once).
    pub fn load_all_as(
        &self,
        dtype_of: impl Fn(&[usize]) -> DType,
    ) -> Result<orlik_model::Weights, IoError> {
        let mut w = orlik_model::Weights::new();
        for name in self.tensors.keys() {
            let t = self.tensor(name)?;
            let dtype = dtype_of(t.dims());
            let t = if t.dtype() == dtype {
                t
            } else {
                t.to_dtype(dtype).map_err(|source| IoError::Candle {
                    context: format!("tensor {name}"),
                    source,
                })?
            };
            w.insert(name.clone(), t);
        }
        Ok(w)
    }
}

/// Little-endian bytes of a tensor in `dtype`.
pub fn tensor_bytes(t: &Tensor, dtype: DType) -> candle_core::Result<Vec<u8>> {
    let t = t.to_dtype(dtype)?.flatten_all()?;
    // A contiguous CPU tensor is its little-endian bytes already (on a little-endian host): one
    // copy, where the element-wise path below took two passes (18% of a streaming prune, `perf`).
    #[cfg(target_endian = "little")]
    {
        use candle_core::{CpuStorage as C, Storage};
        let (storage, layout) = t.storage_and_layout();
        if let (Storage::Cpu(s), Some((a, b))) = (&*storage, layout.contiguous_offsets()) {
            match s {
                C::F32(v) => return Ok(bytemuck::cast_slice(&v[a..b]).to_vec()),
                C::F64(v) => return Ok(bytemuck::cast_slice(&v[a..b]).to_vec()),
                C::F16(v) => return Ok(bytemuck::cast_slice(&v[a..b]).to_vec()),
                C::BF16(v) => return Ok(bytemuck::cast_slice(&v[a..b]).to_vec()),
                _ => {}
            }
        }
    }
    Ok(match dtype {
        DType::F32 => t.to_vec1::<f32>()?.iter().flat_map(|x| x.to_le_bytes()).collect(),
        DType::F64 => t.to_vec1::<f64>()?.iter().flat_map(|x| x.to_le_bytes()).collect(),
        DType::F16 => t.to_vec1::<half::f16>()?.iter().flat_map(|x| x.to_le_bytes()).collect(),
        DType::BF16 => t.to_vec1::<half::bf16>()?.iter().flat_map(|x| x.to_le_bytes()).collect(),
        other => candle_core::bail!("cannot write dtype {other:?}"),
    })
}

/// A tensor to be written: its name and shape; the data comes from a producer when its turn
/// comes, so a checkpoint can be written while holding one tensor at a time.
pub type Spec = (String, Vec<usize>);

/// Write one safetensors file from specs, asking `produce(name)` for each tensor in order;
/// returns the data bytes written.
pub fn write_file_with(
    path: &Path,
    specs: &[&Spec],
    dtype: DType,
    produce: &mut dyn FnMut(&str) -> Result<Tensor, IoError>,
) -> Result<u64, IoError> {
    let size = |shape: &[usize]| (shape.iter().product::<usize>() * dtype.size_in_bytes()) as u64;
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), serde_json::json!({"format": "pt"}));
    let mut off = 0u64;
    for (name, shape) in specs {
        let s = size(shape);
        header.insert(
            name.clone(),
            serde_json::json!({"dtype": dtype_name(dtype), "shape": shape, "data_offsets": [off, off + s]}),
        );
        off += s;
    }
    let mut h = serde_json::to_vec(&Value::Object(header)).unwrap_or_default();
    while !h.len().is_multiple_of(8) {
        h.push(b' ');
    }
    let f = File::create(path).map_err(io_err(path))?;
    let mut w = BufWriter::with_capacity(1 << 20, f);
    w.write_all(&(h.len() as u64).to_le_bytes()).map_err(io_err(path))?;
    w.write_all(&h).map_err(io_err(path))?;
    for (name, shape) in specs {
        let t = produce(name)?;
        if t.dims() != shape.as_slice() {
            return Err(IoError::Tensor {
                path: path.into(),
                name: name.clone(),
                msg: format!("expected shape {shape:?}, produced {:?}", t.dims()),
            });
        }
        let b = tensor_bytes(&t, dtype).map_err(|source| IoError::Candle {
            context: format!("writing tensor {name}"),
            source,
        })?;
        w.write_all(&b).map_err(io_err(path))?;
    }
    w.flush().map_err(io_err(path))?;
    Ok(off)
}

/// Tensors already in memory, seen as the specs + producer the streaming writers take.
pub struct InMemory<'a> {
    pub specs: Vec<Spec>,
    by_name: std::collections::HashMap<&'a str, &'a Tensor>,
    path: &'a Path,
}

impl<'a> InMemory<'a> {
    /// `path` names the destination in errors.
    pub fn new(
        tensors: impl IntoIterator<Item = &'a (String, Tensor)>,
        path: &'a Path,
    ) -> InMemory<'a> {
        let (mut specs, mut by_name) = (Vec::new(), std::collections::HashMap::new());
        for (n, t) in tensors {
            specs.push((n.clone(), t.dims().to_vec()));
            by_name.insert(n.as_str(), t);
        }
        InMemory { specs, by_name, path }
    }

    pub fn produce(&self, name: &str) -> Result<Tensor, IoError> {
        self.by_name.get(name).map(|t| (*t).clone()).ok_or_else(|| IoError::Tensor {
            path: self.path.into(),
            name: name.into(),
            msg: "no such tensor".into(),
        })
    }
}

/// Write one safetensors file from tensors in memory; returns the data bytes written.
pub fn write_file(
    path: &Path,
    tensors: &[&(String, Tensor)],
    dtype: DType,
) -> Result<u64, IoError> {
    let m = InMemory::new(tensors.iter().copied(), path);
    let refs: Vec<&Spec> = m.specs.iter().collect();
    write_file_with(path, &refs, dtype, &mut |n| m.produce(n))
}

/// Write `tensors` as safetensors into `dir`: `model.safetensors` when they fit in one shard of
/// `max_shard_bytes`, else `model-0000i-of-0000n.safetensors` plus the index. Returns file names.
pub fn write_shards(
    dir: &Path,
    tensors: &[(String, Tensor)],
    dtype: DType,
    max_shard_bytes: u64,
) -> Result<Vec<String>, IoError> {
    let m = InMemory::new(tensors, dir);
    write_shards_with(dir, &m.specs, dtype, max_shard_bytes, &mut |n| m.produce(n))
}

/// Sharded writing from specs and a producer (see [`write_file_with`]).
pub fn write_shards_with(
    dir: &Path,
    specs: &[Spec],
    dtype: DType,
    max_shard_bytes: u64,
    produce: &mut dyn FnMut(&str) -> Result<Tensor, IoError>,
) -> Result<Vec<String>, IoError> {
    let size = |shape: &[usize]| (shape.iter().product::<usize>() * dtype.size_in_bytes()) as u64;
    let mut shards: Vec<Vec<&Spec>> = vec![vec![]];
    let mut cur = 0u64;
    for t in specs {
        let s = size(&t.1);
        if cur > 0 && cur + s > max_shard_bytes {
            shards.push(vec![]);
            cur = 0;
        }
        cur += s;
        if let Some(v) = shards.last_mut() {
            v.push(t);
        }
    }
    let n = shards.len();
    let mut names = Vec::new();
    let mut weight_map = serde_json::Map::new();
    let mut total = 0u64;
    for (i, shard) in shards.iter().enumerate() {
        let fname = if n == 1 {
            SINGLE_NAME.to_string()
        } else {
            format!("model-{:05}-of-{:05}.safetensors", i + 1, n)
        };
        for (name, _) in shard.iter() {
            weight_map.insert(name.clone(), Value::String(fname.clone()));
        }
        total += write_file_with(&dir.join(&fname), shard, dtype, produce)?;
        names.push(fname);
    }
    if n > 1 {
        let index =
            serde_json::json!({"metadata": {"total_size": total}, "weight_map": weight_map});
        let p = dir.join(INDEX_NAME);
        std::fs::write(&p, serde_json::to_string_pretty(&index).unwrap_or_default())
            .map_err(io_err(&p))?;
        names.push(INDEX_NAME.to_string());
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every dtype, contiguous, narrowed or transposed: the little-endian bytes of the values in
    /// row-major order, element by element.
    #[test]
    fn tensor_bytes_are_the_row_major_little_endian_values() {
        let t = Tensor::arange(0f32, 12.0, &Device::Cpu).unwrap().affine(0.37, -1.5).unwrap();
        let t = t.reshape((3, 4)).unwrap();
        let views = [t.clone(), t.narrow(0, 1, 2).unwrap(), t.t().unwrap()];
        for v in &views {
            let vals: Vec<f32> = v.flatten_all().unwrap().to_vec1().unwrap();
            let want32: Vec<u8> = vals.iter().flat_map(|x| x.to_le_bytes()).collect();
            assert_eq!(tensor_bytes(v, DType::F32).unwrap(), want32);
            let want64: Vec<u8> = vals.iter().flat_map(|&x| (x as f64).to_le_bytes()).collect();
            assert_eq!(tensor_bytes(v, DType::F64).unwrap(), want64);
            let bf: Vec<u8> =
                vals.iter().flat_map(|&x| half::bf16::from_f32(x).to_le_bytes()).collect();
            assert_eq!(tensor_bytes(v, DType::BF16).unwrap(), bf);
            let hf: Vec<u8> =
                vals.iter().flat_map(|&x| half::f16::from_f32(x).to_le_bytes()).collect();
            assert_eq!(tensor_bytes(v, DType::F16).unwrap(), hf);
        }
    }
}
