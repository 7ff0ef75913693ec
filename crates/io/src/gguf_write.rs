//! GGUF v3 writer (https://github.com/ggml-org/ggml/blob/master/docs/gguf.md): header, metadata,
//! tensor table, then the tensor data, each tensor at an offset that is a multiple of the
//! alignment. Tensors are produced one at a time and streamed to a temp file that is renamed into
//! place when complete, so a model larger than memory can be written and a failed or killed
//! export never leaves a partial file under the final name.
//!
//! Block quantisation (Q8_0, Q4_0, Q5_0, Q4_K, Q6_K) is candle's port of ggml's reference
//! quantisers (`quantize_row_*_ref`); `tests/fixtures/gguf/quants.json` (from
//! `scripts/gen_quant_fixture.py`, the `gguf` package's numpy quantisers) checks Q8_0 / Q4_0 /
//! Q5_0 byte for byte.

use crate::gguf::{ggml_dtype, GValue};
use crate::{io_err, IoError};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::Tensor;
use std::io::Write;
use std::path::Path;

/// The alignment orlik writes (GGUF's default; `general.alignment` is then not needed).
pub const ALIGN: u64 = 32;

/// One entry of the tensor table: llama.cpp name, GGML shape (`ne[0]` innermost) and type id.
#[derive(Debug, Clone, PartialEq)]
pub struct OutTensor {
    pub name: String,
    pub ne: Vec<u64>,
    pub ty: u32,
}

impl OutTensor {
    /// Bytes of this tensor's data (`None` for a type orlik cannot size, or a shape that is not
    /// a whole number of blocks).
    pub fn nbytes(&self) -> Option<u64> {
        let dt = ggml_dtype(self.ty)?;
        let n: u64 = self.ne.iter().product();
        let bs = dt.block_size() as u64;
        (self.ne.first()? % bs == 0).then(|| n / bs * dt.type_size() as u64)
    }
}

/// GGML type id of a candle GGML dtype (the inverse of [`ggml_dtype`]).
pub fn ggml_type_id(dt: GgmlDType) -> u32 {
    (0..=30).find(|&t| ggml_dtype(t) == Some(dt)).unwrap_or(u32::MAX)
}

/// The bytes of `t` (any shape; row-major, so its last dimension is `ne[0]`) stored as type `ty`.
pub fn encode(t: &Tensor, ty: u32) -> candle_core::Result<Vec<u8>> {
    use candle_core::DType;
    let dt = ggml_dtype(ty).ok_or_else(|| candle_core::Error::Msg(format!("GGML type {ty}")))?;
    let row = t.dims().last().copied().unwrap_or(1);
    if row % dt.block_size() != 0 {
        return Err(candle_core::Error::Msg(format!(
            "rows of {row} are not whole {dt:?} blocks of {}",
            dt.block_size()
        )));
    }
    Ok(match dt {
        GgmlDType::F32 => crate::safetensors::tensor_bytes(t, DType::F32)?,
        GgmlDType::F16 => crate::safetensors::tensor_bytes(t, DType::F16)?,
        GgmlDType::BF16 => crate::safetensors::tensor_bytes(t, DType::BF16)?,
        // llama-quantize's blocks (candle's k-quant search is an older ggml's)
        GgmlDType::Q4K | GgmlDType::Q6K => {
            let x: Vec<f32> = t.flatten_all()?.to_dtype(DType::F32)?.to_vec1()?;
            match dt {
                GgmlDType::Q4K => crate::kquants::quantize_q4_k(&x),
                _ => crate::kquants::quantize_q6_k(&x),
            }
        }
        _ => QTensor::quantize(&t.to_dtype(DType::F32)?, dt)?.data()?.into_owned(),
    })
}

fn put_str(w: &mut impl Write, s: &str) -> std::io::Result<()> {
    w.write_all(&(s.len() as u64).to_le_bytes())?;
    w.write_all(s.as_bytes())
}

fn type_id(v: &GValue) -> u32 {
    match v {
        GValue::U8(_) => 0,
        GValue::I8(_) => 1,
        GValue::U16(_) => 2,
        GValue::I16(_) => 3,
        GValue::U32(_) => 4,
        GValue::I32(_) => 5,
        GValue::F32(_) => 6,
        GValue::Bool(_) => 7,
        GValue::Str(_) => 8,
        GValue::Array(_) => 9,
        GValue::U64(_) => 10,
        GValue::I64(_) => 11,
        GValue::F64(_) => 12,
    }
}

fn put_value(w: &mut impl Write, v: &GValue) -> std::io::Result<()> {
    match v {
        GValue::U8(x) => w.write_all(&[*x]),
        GValue::I8(x) => w.write_all(&x.to_le_bytes()),
        GValue::U16(x) => w.write_all(&x.to_le_bytes()),
        GValue::I16(x) => w.write_all(&x.to_le_bytes()),
        GValue::U32(x) => w.write_all(&x.to_le_bytes()),
        GValue::I32(x) => w.write_all(&x.to_le_bytes()),
        GValue::F32(x) => w.write_all(&x.to_le_bytes()),
        GValue::Bool(x) => w.write_all(&[*x as u8]),
        GValue::Str(s) => put_str(w, s),
        GValue::U64(x) => w.write_all(&x.to_le_bytes()),
        GValue::I64(x) => w.write_all(&x.to_le_bytes()),
        GValue::F64(x) => w.write_all(&x.to_le_bytes()),
        GValue::Array(a) => {
            // Arrays are homogeneous in GGUF: the element type is the first element's (an
            // empty array is written as an empty array of strings).
            w.write_all(&a.first().map_or(8, type_id).to_le_bytes())?;
            w.write_all(&(a.len() as u64).to_le_bytes())?;
            a.iter().try_for_each(|x| put_value(w, x))
        }
    }
}

/// An array metadata value must hold one element type.
fn check_array(key: &str, v: &GValue) -> Result<(), String> {
    if let GValue::Array(a) = v {
        if let Some(f) = a.first() {
            if a.iter().any(|x| type_id(x) != type_id(f) || matches!(x, GValue::Array(_))) {
                return Err(format!("metadata {key}: array elements of mixed or nested types"));
            }
        }
    }
    Ok(())
}

/// Write a GGUF file at `path` atomically. `data(i)` produces tensor `i`'s bytes (checked
/// against the size its shape and type imply); `progress(i, n, name)` is called before each.
/// Returns the file's size in bytes.
pub fn write(
    path: &Path,
    metadata: &[(String, GValue)],
    tensors: &[OutTensor],
    mut data: impl FnMut(usize) -> Result<Vec<u8>, IoError>,
    mut progress: impl FnMut(usize, usize, &str),
) -> Result<u64, IoError> {
    let fmt = |msg: String| IoError::Format { path: path.into(), msg };
    for (k, v) in metadata {
        check_array(k, v).map_err(fmt)?;
    }
    let mut offsets = Vec::with_capacity(tensors.len());
    let mut at = 0u64;
    for t in tensors {
        let n = t.nbytes().ok_or_else(|| {
            fmt(format!(
                "tensor {}: shape {:?} cannot be stored as GGML type {}",
                t.name, t.ne, t.ty
            ))
        })?;
        offsets.push(at);
        at = (at + n).div_ceil(ALIGN) * ALIGN;
    }
    let mut total = 0u64;
    crate::atomic::write_file_streaming(path, |w| {
        let mut head = Vec::new();
        let e = |r: std::io::Result<()>| r.map_err(io_err(path));
        head.extend_from_slice(b"GGUF");
        head.extend_from_slice(&3u32.to_le_bytes());
        head.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
        head.extend_from_slice(&(metadata.len() as u64).to_le_bytes());
        for (k, v) in metadata {
            e(put_str(&mut head, k))?;
            head.extend_from_slice(&type_id(v).to_le_bytes());
            e(put_value(&mut head, v))?;
        }
        for (t, off) in tensors.iter().zip(&offsets) {
            e(put_str(&mut head, &t.name))?;
            head.extend_from_slice(&(t.ne.len() as u32).to_le_bytes());
            t.ne.iter().for_each(|d| head.extend_from_slice(&d.to_le_bytes()));
            head.extend_from_slice(&t.ty.to_le_bytes());
            head.extend_from_slice(&off.to_le_bytes());
        }
        head.resize((head.len() as u64).div_ceil(ALIGN) as usize * ALIGN as usize, 0);
        e(w.write_all(&head))?;
        let mut pos = 0u64;
        for (i, (t, off)) in tensors.iter().zip(&offsets).enumerate() {
            progress(i, tensors.len(), &t.name);
            let pad = (off - pos) as usize;
            e(w.write_all(&vec![0u8; pad]))?;
            let bytes = data(i)?;
            if Some(bytes.len() as u64) != t.nbytes() {
                // the producer and the table disagree: an internal error, said with the numbers
                return Err(fmt(format!(
                    "tensor {}: produced {} bytes, the table says {:?}",
                    t.name,
                    bytes.len(),
                    t.nbytes()
                )));
            }
            e(w.write_all(&bytes))?;
            pos = off + bytes.len() as u64;
        }
        progress(tensors.len(), tensors.len(), "done");
        total = head.len() as u64 + pos;
        Ok(())
    })?;
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::Gguf;
    use candle_core::Device;

    #[test]
    fn written_file_reads_back_metadata_and_tensors() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("m.gguf");
        let a = Tensor::arange(0f32, 64.0, &Device::Cpu).unwrap().reshape((2, 32)).unwrap();
        let b = Tensor::new(&[1.5f32, -2.0, 3.25], &Device::Cpu).unwrap();
        let meta = vec![
            ("general.architecture".to_string(), GValue::Str("llama".into())),
            ("x.n".to_string(), GValue::U32(7)),
            (
                "x.list".to_string(),
                GValue::Array(vec![GValue::Str("a".into()), GValue::Str("b c".into())]),
            ),
            ("x.flags".to_string(), GValue::Array(vec![GValue::Bool(true), GValue::Bool(false)])),
        ];
        let tensors = vec![
            OutTensor { name: "a".into(), ne: vec![32, 2], ty: 8 }, // Q8_0
            OutTensor { name: "b".into(), ne: vec![3], ty: 0 },
        ];
        let src = [a.clone(), b.clone()];
        let size = write(
            &p,
            &meta,
            &tensors,
            |i| Ok(encode(&src[i], tensors[i].ty).unwrap()),
            |_, _, _| {},
        )
        .unwrap();
        assert_eq!(size, std::fs::metadata(&p).unwrap().len());
        let g = Gguf::open(&p).unwrap();
        for (k, v) in &meta {
            assert_eq!(g.get(k), Some(v), "{k}");
        }
        let back_b = g.dequantize(g.tensor_info("b").unwrap()).unwrap();
        assert_eq!(back_b.to_vec1::<f32>().unwrap(), b.to_vec1::<f32>().unwrap());
        let back_a = g.dequantize(g.tensor_info("a").unwrap()).unwrap();
        assert_eq!(back_a.dims(), &[2, 32]);
        // Q8_0: one scale d = max|x| / 127 per 32 values, stored as f16: every value within
        // d / 2 of its level, plus up to 127 levels times the f16 rounding of d (2^-11 d).
        let (x, y) = (a.to_vec2::<f32>().unwrap(), back_a.to_vec2::<f32>().unwrap());
        for (xr, yr) in x.iter().zip(&y) {
            let d = xr.iter().fold(0f32, |m, v| m.max(v.abs())) / 127.0;
            for (u, v) in xr.iter().zip(yr) {
                assert!((u - v).abs() <= d * (0.5 + 127.0 / 2048.0), "{u} vs {v} (d {d})");
            }
        }
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1, "temp file left behind");
    }

    #[test]
    fn a_failing_producer_leaves_no_file() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("m.gguf");
        let tensors = vec![OutTensor { name: "a".into(), ne: vec![4], ty: 0 }];
        let r = write(
            &p,
            &[],
            &tensors,
            |_| Err(IoError::Format { path: "x".into(), msg: "boom".into() }),
            |_, _, _| {},
        );
        assert!(r.is_err());
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 0);
        // a shape that is not whole blocks of its type is refused before anything is written
        let bad = vec![OutTensor { name: "w".into(), ne: vec![20, 2], ty: 8 }];
        let e = write(&p, &[], &bad, |_| Ok(vec![]), |_, _, _| {}).unwrap_err();
        assert!(e.to_string().contains("tensor w: shape [20, 2]"), "{e}");
        assert!(!p.exists());
    }
}
