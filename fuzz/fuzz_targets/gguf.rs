//! GGUF: header, metadata, tensor table, the config built from the metadata, and dequantisation
//! of small tensors. The reader maps a file, so each input is written to a scratch file first.
#![no_main]
use libfuzzer_sys::fuzz_target;

#[path = "../targets.rs"]
mod targets;

fuzz_target!(|data: &[u8]| targets::gguf(data));
