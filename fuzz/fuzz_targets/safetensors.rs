//! safetensors: header JSON, dtypes, shapes, data_offsets tiling, as `Checkpoint::open` parses them.
#![no_main]
use libfuzzer_sys::fuzz_target;

#[path = "../targets.rs"]
mod targets;

fuzz_target!(|data: &[u8]| targets::safetensors(data));
