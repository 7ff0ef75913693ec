//! Guards on what orlik reads: non-finite weights, and input files that change under a mapping.
//!
//! orlik memory-maps checkpoints. A file truncated by another program while it is mapped makes
//! the next read of a vanished page raise SIGBUS, which by default kills the process without a
//! word. [`install_sigbus_handler`] turns that into a one-line error naming the file (every
//! mapping orlik makes is registered here with [`register`]) and exit status 1. Outputs are
//! written through temp directories, so an exit at that point leaves nothing complete-looking.

use crate::IoError;
use candle_core::DType;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

const SLOTS: usize = 256;

const NAME_MAX: usize = 512;

/// Registered mappings: start address, length, and the file name in a fixed buffer per slot.
/// Plain atomics and static buffers, so that the signal handler reads them without locks or
/// allocation, and nothing is leaked per mapping.
static START: [AtomicUsize; SLOTS] = [const { AtomicUsize::new(0) }; SLOTS];
static LEN: [AtomicUsize; SLOTS] = [const { AtomicUsize::new(0) }; SLOTS];
static NAME_LEN: [AtomicUsize; SLOTS] = [const { AtomicUsize::new(0) }; SLOTS];

struct Names(std::cell::UnsafeCell<[[u8; NAME_MAX]; SLOTS]>);
// SAFETY: slot i's buffer is written only by the thread that won slot i's compare-exchange on
// START, before it publishes LEN (SeqCst); readers read it only while LEN is non-zero.
unsafe impl Sync for Names {}
static NAMES: Names = Names(std::cell::UnsafeCell::new([[0; NAME_MAX]; SLOTS]));

/// A registered mapping; unregistered when dropped (keep it beside the mapping).
#[derive(Debug)]
pub struct MapGuard(Option<usize>);

impl Drop for MapGuard {
    fn drop(&mut self) {
        if let Some(i) = self.0 {
            LEN[i].store(0, Ordering::SeqCst);
            NAME_LEN[i].store(0, Ordering::SeqCst);
            START[i].store(0, Ordering::SeqCst);
        }
    }
}

/// Register the mapping `bytes` of `path` so that a SIGBUS inside it names the file.
pub fn register(path: &Path, bytes: &[u8]) -> MapGuard {
    let name = path.display().to_string();
    let name = &name.as_bytes()[..name.len().min(NAME_MAX)];
    // An empty mapping cannot fault, and address 0 marks a free slot.
    if bytes.is_empty() {
        return MapGuard(None);
    }
    for i in 0..SLOTS {
        if START[i]
            .compare_exchange(0, bytes.as_ptr() as usize, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
        {
            // SAFETY: this thread owns slot i (won the exchange above); see `Names`.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    name.as_ptr(),
                    (NAMES.0.get() as *mut u8).add(i * NAME_MAX),
                    name.len(),
                )
            };
            NAME_LEN[i].store(name.len(), Ordering::SeqCst);
            LEN[i].store(bytes.len(), Ordering::SeqCst);
            return MapGuard(Some(i));
        }
    }
    MapGuard(None) // table full: the fault is still reported, without the file's name
}

fn write_stderr(b: &[u8]) {
    // SAFETY: write(2) on fd 2 with a valid buffer; async-signal-safe.
    unsafe {
        libc::write(2, b.as_ptr().cast(), b.len());
    }
}

extern "C" fn on_sigbus(_sig: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo for SA_SIGINFO handlers; si_addr is the fault.
    let addr = unsafe { (*info).si_addr() } as usize;
    write_stderr(b"error: ");
    let mut named = false;
    for i in 0..SLOTS {
        let (s, l) = (START[i].load(Ordering::SeqCst), LEN[i].load(Ordering::SeqCst));
        if s != 0 && l != 0 && addr >= s && addr < s + l {
            let n = NAME_LEN[i].load(Ordering::SeqCst).min(NAME_MAX);
            // SAFETY: static buffer, published before LEN; see `Names`.
            write_stderr(unsafe {
                std::slice::from_raw_parts((NAMES.0.get() as *const u8).add(i * NAME_MAX), n)
            });
            named = true;
            break;
        }
    }
    if !named {
        write_stderr(b"an input file");
    }
    write_stderr(b": changed while orlik was reading it (truncated or rewritten by another program); stopped, no output was completed\n");
    // SAFETY: _exit is async-signal-safe; nothing may be unwound from a signal handler.
    unsafe { libc::_exit(1) }
}

/// Install the SIGBUS handler (once, at start-up of the binary).
pub fn install_sigbus_handler() {
    // SAFETY: a zeroed sigaction with a valid handler and SA_SIGINFO is a well-formed request.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_sigbus as *const () as usize;
        sa.sa_flags = libc::SA_SIGINFO;
        libc::sigemptyset(&mut sa.sa_mask);
        libc::sigaction(libc::SIGBUS, &sa, std::ptr::null_mut());
    }
}

/// Count the non-finite values of little-endian `bytes` of `dtype` (NaN or ±inf: every exponent
/// bit set), with the index and value of the first. Integer dtypes have none.
pub fn non_finite(bytes: &[u8], dtype: DType) -> (usize, Option<(usize, f32)>) {
    fn scan<const N: usize>(
        bytes: &[u8],
        bad: impl Fn([u8; N]) -> bool,
        val: impl Fn([u8; N]) -> f32,
    ) -> (usize, Option<(usize, f32)>) {
        let mut count = 0usize;
        let mut first = None;
        // Count in blocks without branching (vectorises), then locate the first bad element.
        for (b, block) in bytes.chunks(N * 4096).enumerate() {
            let c =
                block.chunks_exact(N).filter(|x| bad(x[..N].try_into().unwrap_or([0; N]))).count();
            if c > 0 && first.is_none() {
                first = block
                    .chunks_exact(N)
                    .position(|x| bad(x[..N].try_into().unwrap_or([0; N])))
                    .map(|i| {
                        let x: [u8; N] = block[i * N..i * N + N].try_into().unwrap_or([0; N]);
                        (b * 4096 + i, val(x))
                    });
            }
            count += c;
        }
        (count, first)
    }
    match dtype {
        DType::F32 => scan::<4>(
            bytes,
            |x| u32::from_le_bytes(x) & 0x7f80_0000 == 0x7f80_0000,
            f32::from_le_bytes,
        ),
        DType::BF16 => scan::<2>(
            bytes,
            |x| u16::from_le_bytes(x) & 0x7f80 == 0x7f80,
            |x| half::bf16::from_le_bytes(x).to_f32(),
        ),
        DType::F16 => scan::<2>(
            bytes,
            |x| u16::from_le_bytes(x) & 0x7c00 == 0x7c00,
            |x| half::f16::from_le_bytes(x).to_f32(),
        ),
        DType::F64 => scan::<8>(
            bytes,
            |x| u64::from_le_bytes(x) & 0x7ff0_0000_0000_0000 == 0x7ff0_0000_0000_0000,
            |x| f64::from_le_bytes(x) as f32,
        ),
        _ => (0, None),
    }
}

/// [`non_finite`] as an error naming the file and the tensor.
pub fn check_finite(path: &Path, name: &str, bytes: &[u8], dtype: DType) -> Result<(), IoError> {
    finite_or_error(path, name, non_finite(bytes, dtype))
}

/// [`check_finite`] for values already decoded to f32 (a dequantised GGUF tensor), without
/// re-encoding them to bytes.
pub fn check_finite_f32(path: &Path, name: &str, v: &[f32]) -> Result<(), IoError> {
    let count = v.iter().filter(|x| !x.is_finite()).count();
    let first =
        (count > 0).then(|| v.iter().position(|x| !x.is_finite()).map(|i| (i, v[i]))).flatten();
    finite_or_error(path, name, (count, first))
}

fn finite_or_error(
    path: &Path,
    name: &str,
    (count, first): (usize, Option<(usize, f32)>),
) -> Result<(), IoError> {
    if count == 0 {
        return Ok(());
    }
    let (first, value) = first.unwrap_or((0, f32::NAN));
    Err(IoError::NonFinite { path: path.into(), name: name.into(), count, first, value })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// In a child process (this same test, re-run with ORLIK_SIGBUS_CHILD=FILE): map a
    /// checkpoint, truncate it behind the mapping's back, read the tensor.
    fn truncated_read_child(path: &Path) {
        let n = 1 << 18;
        let header = format!(
            "{{\"w\":{{\"dtype\":\"F32\",\"shape\":[{n}],\"data_offsets\":[0,{}]}}}}",
            4 * n
        );
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(header.as_bytes());
        bytes.resize(bytes.len() + 4 * n, 0);
        std::fs::write(path, &bytes).unwrap();
        let ck = crate::safetensors::Checkpoint::open(path).unwrap();
        install_sigbus_handler();
        std::fs::OpenOptions::new().write(true).open(path).unwrap().set_len(100).unwrap();
        let t = ck.tensor("w"); // faults: the pages past byte 100 are gone
        panic!("read a truncated mapping without a fault: {:?}", t.map(|t| t.dims().to_vec()));
    }

    #[test]
    fn a_file_truncated_under_its_mapping_is_a_one_line_error_naming_it() {
        if let Some(p) = std::env::var_os("ORLIK_SIGBUS_CHILD") {
            return truncated_read_child(Path::new(&p));
        }
        let d = tempfile::tempdir().unwrap();
        let file = d.path().join("model.safetensors");
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "guard::tests::a_file_truncated_under_its_mapping_is_a_one_line_error_naming_it",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("ORLIK_SIGBUS_CHILD", &file)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "child: {:?} {err}", out.status);
        let line = err.lines().find(|l| l.starts_with("error: ")).unwrap_or_default();
        assert!(
            line.contains(&file.display().to_string())
                && line.contains("changed while orlik was reading it"),
            "{err}"
        );
    }

    #[test]
    fn non_finite_values_are_counted_in_every_float_dtype() {
        let v =
            [1.0f32, f32::NAN, -2.0, f32::INFINITY, f32::NEG_INFINITY, 0.0, 1e5, f32::MIN_POSITIVE];
        let f32b: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        assert_eq!(non_finite(&f32b, DType::F32).0, 3);
        assert_eq!(non_finite(&f32b, DType::F32).1.map(|f| f.0), Some(1));
        let bf: Vec<u8> = v.iter().flat_map(|x| half::bf16::from_f32(*x).to_le_bytes()).collect();
        assert_eq!(non_finite(&bf, DType::BF16).0, 3);
        // 1e5 overflows f16 (max 65504) to +inf: four non-finite there.
        let h: Vec<u8> = v.iter().flat_map(|x| half::f16::from_f32(*x).to_le_bytes()).collect();
        assert_eq!(non_finite(&h, DType::F16).0, 4);
        let d: Vec<u8> = v.iter().flat_map(|x| (*x as f64).to_le_bytes()).collect();
        assert_eq!(non_finite(&d, DType::F64).0, 3);
        // the first bad element past the first block is located exactly
        let mut big = vec![0u8; 4 * 10_000];
        big[4 * 9_000..4 * 9_001].copy_from_slice(&f32::NAN.to_le_bytes());
        assert_eq!(non_finite(&big, DType::F32).0, 1);
        assert_eq!(non_finite(&big, DType::F32).1.map(|f| f.0), Some(9_000));
        let e2 = check_finite_f32(Path::new("m.safetensors"), "w", &v).unwrap_err().to_string();
        let e = check_finite(Path::new("m.safetensors"), "w", &f32b, DType::F32)
            .unwrap_err()
            .to_string();
        assert_eq!(e, e2, "bytes and decoded values give the same report");
        assert!(check_finite_f32(Path::new("m"), "w", &[0.0, -1.5]).is_ok());
        assert!(
            e.contains("m.safetensors") && e.contains("tensor w") && e.contains("3 non-finite"),
            "{e}"
        );
    }
}
