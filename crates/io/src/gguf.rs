//! GGUF v2/v3 reader (https://github.com/ggml-org/ggml/blob/master/docs/gguf.md) with bounds
//! checks on every length, so a corrupt file is an error, never a huge allocation or a panic.
//! Dequantisation uses candle's GGML block kernels.

use crate::{io_err, IoError};
use candle_core::quantized::{ggml_file::qtensor_from_ggml, GgmlDType};
use candle_core::{Device, Tensor};
use memmap2::Mmap;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 4] = b"GGUF";

#[derive(Debug, Clone, PartialEq)]
pub enum GValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    Str(String),
    Array(Vec<GValue>),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl GValue {
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            GValue::U8(x) => Some(x as u64),
            GValue::U16(x) => Some(x as u64),
            GValue::U32(x) => Some(x as u64),
            GValue::U64(x) => Some(x),
            GValue::I8(x) if x >= 0 => Some(x as u64),
            GValue::I16(x) if x >= 0 => Some(x as u64),
            GValue::I32(x) if x >= 0 => Some(x as u64),
            GValue::I64(x) if x >= 0 => Some(x as u64),
            _ => None,
        }
    }
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            GValue::F32(x) => Some(x as f64),
            GValue::F64(x) => Some(x),
            _ => self.as_u64().map(|x| x as f64),
        }
    }
    pub fn as_str(&self) -> Option<&str> {
        match self {
            GValue::Str(s) => Some(s),
            _ => None,
        }
    }
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            GValue::Bool(b) => Some(b),
            _ => None,
        }
    }
    pub fn as_array(&self) -> Option<&[GValue]> {
        match self {
            GValue::Array(a) => Some(a),
            _ => None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct GTensor {
    pub name: String,
    /// GGML order: ne[0] is the innermost (contiguous) dimension.
    pub ne: Vec<u64>,
    pub ty: u32,
    /// Offset relative to the start of the data section.
    pub offset: u64,
}

pub struct Gguf {
    pub path: PathBuf,
    pub version: u32,
    pub metadata: BTreeMap<String, GValue>,
    pub tensors: Vec<GTensor>,
    data_start: usize,
    align: usize,
    mmap: Mmap,
    _guard: crate::guard::MapGuard,
}

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if n > self.buf.len() - self.pos {
            return Err(format!(
                "truncated: need {n} bytes at offset {}, file has {}",
                self.pos,
                self.buf.len()
            ));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    fn arr<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }
    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.arr()?))
    }
    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.arr()?))
    }
    fn string(&mut self) -> Result<String, String> {
        let n = self.u64()?;
        if n > (self.buf.len() - self.pos) as u64 {
            return Err(format!(
                "string length {n} at offset {} runs past the end of the file",
                self.pos
            ));
        }
        let b = self.take(n as usize)?;
        String::from_utf8(b.to_vec())
            .map_err(|_| format!("string at offset {} is not UTF-8", self.pos))
    }
    fn value(&mut self, ty: u32, depth: usize) -> Result<GValue, String> {
        Ok(match ty {
            0 => GValue::U8(self.arr::<1>()?[0]),
            1 => GValue::I8(self.arr::<1>()?[0] as i8),
            2 => GValue::U16(u16::from_le_bytes(self.arr()?)),
            3 => GValue::I16(i16::from_le_bytes(self.arr()?)),
            4 => GValue::U32(self.u32()?),
            5 => GValue::I32(i32::from_le_bytes(self.arr()?)),
            6 => GValue::F32(f32::from_le_bytes(self.arr()?)),
            7 => GValue::Bool(self.arr::<1>()?[0] != 0),
            8 => GValue::Str(self.string()?),
            9 => {
                if depth > 2 {
                    return Err("arrays nested too deeply".into());
                }
                let ety = self.u32()?;
                let n = self.u64()?;
                // every element takes at least one byte: a length beyond the file is corrupt
                if n > (self.buf.len() - self.pos) as u64 {
                    return Err(format!(
                        "array length {n} at offset {} runs past the end of the file",
                        self.pos
                    ));
                }
                let mut v = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    v.push(self.value(ety, depth + 1)?);
                }
                GValue::Array(v)
            }
            10 => GValue::U64(self.u64()?),
            11 => GValue::I64(i64::from_le_bytes(self.arr()?)),
            12 => GValue::F64(f64::from_le_bytes(self.arr()?)),
            t => return Err(format!("unknown metadata value type {t} at offset {}", self.pos)),
        })
    }
}

/// GGML type id -> candle dtype, for the types orlik dequantises.
pub fn ggml_dtype(ty: u32) -> Option<GgmlDType> {
    Some(match ty {
        0 => GgmlDType::F32,
        1 => GgmlDType::F16,
        2 => GgmlDType::Q4_0,
        3 => GgmlDType::Q4_1,
        6 => GgmlDType::Q5_0,
        7 => GgmlDType::Q5_1,
        8 => GgmlDType::Q8_0,
        10 => GgmlDType::Q2K,
        11 => GgmlDType::Q3K,
        12 => GgmlDType::Q4K,
        13 => GgmlDType::Q5K,
        14 => GgmlDType::Q6K,
        30 => GgmlDType::BF16,
        _ => return None,
    })
}

pub fn ggml_type_name(ty: u32) -> String {
    let names = [
        "F32", "F16", "Q4_0", "Q4_1", "Q4_2", "Q4_3", "Q5_0", "Q5_1", "Q8_0", "Q8_1", "Q2_K",
        "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q8_K", "IQ2_XXS", "IQ2_XS", "IQ3_XXS", "IQ1_S", "IQ4_NL",
        "IQ3_S", "IQ2_S", "IQ4_XS", "I8", "I16", "I32", "I64", "F64", "IQ1_M", "BF16",
    ];
    names.get(ty as usize).map_or(format!("type {ty}"), |n| format!("{n} (type {ty})"))
}

impl Gguf {
    pub fn open(path: &Path) -> Result<Gguf, IoError> {
        let f = std::fs::File::open(path).map_err(io_err(path))?;
        // SAFETY: read-only mapping of a file orlik does not modify.
        let mmap = unsafe { Mmap::map(&f) }.map_err(io_err(path))?;
        let fmt = |msg: String| IoError::Format {
            path: path.to_path_buf(),
            msg: format!("corrupt GGUF: {msg}"),
        };
        let mut c = Cursor { buf: &mmap, pos: 0 };
        let magic = c.take(4).map_err(|_| fmt("shorter than the magic".into()))?;
        if magic != MAGIC {
            return Err(IoError::Format {
                path: path.into(),
                msg: "not a GGUF file (bad magic)".into(),
            });
        }
        let version = c.u32().map_err(fmt)?;
        if !(2..=3).contains(&version) {
            return Err(fmt(format!("unsupported GGUF version {version} (2 and 3 are supported)")));
        }
        let n_tensors = c.u64().map_err(fmt)?;
        let n_kv = c.u64().map_err(fmt)?;
        if n_tensors > mmap.len() as u64 || n_kv > mmap.len() as u64 {
            return Err(fmt(format!(
                "tensor count {n_tensors} / metadata count {n_kv} larger than the file"
            )));
        }
        let mut metadata = BTreeMap::new();
        for _ in 0..n_kv {
            let key = c.string().map_err(fmt)?;
            let ty = c.u32().map_err(fmt)?;
            let v = c.value(ty, 0).map_err(|e| fmt(format!("key {key}: {e}")))?;
            if metadata.contains_key(&key) {
                return Err(fmt(format!("metadata key {key} appears twice")));
            }
            metadata.insert(key, v);
        }
        let mut tensors = Vec::with_capacity(n_tensors as usize);
        let mut names = std::collections::HashSet::new();
        for _ in 0..n_tensors {
            let name = c.string().map_err(fmt)?;
            if !names.insert(name.clone()) {
                return Err(fmt(format!("tensor {name} appears twice in the tensor table")));
            }
            let nd = c.u32().map_err(fmt)?;
            if nd == 0 || nd > 4 {
                return Err(fmt(format!("tensor {name}: {nd} dimensions (1..=4 allowed)")));
            }
            let ne = (0..nd).map(|_| c.u64()).collect::<Result<Vec<_>, _>>().map_err(fmt)?;
            let ty = c.u32().map_err(fmt)?;
            let offset = c.u64().map_err(fmt)?;
            tensors.push(GTensor { name, ne, ty, offset });
        }
        let align =
            metadata.get("general.alignment").and_then(GValue::as_u64).unwrap_or(32) as usize;
        if align == 0 || !align.is_power_of_two() {
            return Err(fmt(format!("general.alignment {align} is not a power of two")));
        }
        let data_start = c.pos.div_ceil(align) * align;
        let _guard = crate::guard::register(path, &mmap);
        let g =
            Gguf { path: path.into(), version, metadata, tensors, data_start, align, mmap, _guard };
        for t in &g.tensors {
            // Check ranges for the types we know; unknown types are reported when loaded.
            if let Some(dt) = ggml_dtype(t.ty) {
                g.range(t, dt).map_err(|m| IoError::Tensor {
                    path: path.into(),
                    name: t.name.clone(),
                    msg: format!("corrupt GGUF: {m}"),
                })?;
            }
        }
        Ok(g)
    }

    fn range(&self, t: &GTensor, dt: GgmlDType) -> Result<(usize, usize), String> {
        let numel =
            t.ne.iter().try_fold(1u64, |a, &d| a.checked_mul(d)).ok_or("shape overflows")?;
        let bs = dt.block_size() as u64;
        if numel % bs != 0 {
            return Err(format!("{numel} elements not a multiple of block size {bs}"));
        }
        let len = (numel / bs).checked_mul(dt.type_size() as u64).ok_or("size overflows")?;
        let start = (self.data_start as u64).checked_add(t.offset).ok_or("offset overflows")?;
        if !t.offset.is_multiple_of(self.align as u64) {
            return Err(format!("data offset {} is not aligned", t.offset));
        }
        if start.checked_add(len).is_none_or(|e| e > self.mmap.len() as u64) {
            return Err(format!(
                "data [{}, {}) runs past the end of the file ({} bytes): truncated?",
                start,
                start.saturating_add(len),
                self.mmap.len()
            ));
        }
        Ok((start as usize, len as usize))
    }

    pub fn get(&self, key: &str) -> Option<&GValue> {
        self.metadata.get(key)
    }
    pub fn tensor_info(&self, name: &str) -> Option<&GTensor> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// Dequantise one tensor to f32, shape in PyTorch order (ne reversed).
    pub fn dequantize(&self, t: &GTensor) -> Result<Tensor, IoError> {
        let dt = ggml_dtype(t.ty).ok_or_else(|| IoError::UnsupportedQuant {
            path: self.path.clone(),
            name: t.name.clone(),
            ty: ggml_type_name(t.ty),
        })?;
        let (start, len) = self.range(t, dt).map_err(|m| IoError::Tensor {
            path: self.path.clone(),
            name: t.name.clone(),
            msg: m,
        })?;
        let dims: Vec<usize> = t.ne.iter().rev().map(|&d| d as usize).collect();
        let cand = |source| IoError::Candle {
            context: format!("{}: tensor {}", self.path.display(), t.name),
            source,
        };
        // Copy into an 8-byte aligned buffer: candle reinterprets the bytes as block structs.
        let mut aligned = vec![0u64; len.div_ceil(8)];
        let bytes: &mut [u8] = bytemuck_cast(&mut aligned);
        bytes[..len].copy_from_slice(&self.mmap[start..start + len]);
        let q = qtensor_from_ggml(dt, &bytes[..len], dims, &Device::Cpu).map_err(cand)?;
        q.dequantize(&Device::Cpu).map_err(cand)
    }
}

fn bytemuck_cast(v: &mut [u64]) -> &mut [u8] {
    // SAFETY: u8 has alignment 1 and every bit pattern is valid; the length is exact.
    unsafe { std::slice::from_raw_parts_mut(v.as_mut_ptr() as *mut u8, v.len() * 8) }
}
