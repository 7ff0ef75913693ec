//! Teacher cache: `cache.json` (text up to the first NUL byte) and shard records (the bytes after).
#![no_main]
use libfuzzer_sys::fuzz_target;

#[path = "../targets.rs"]
mod targets;

fuzz_target!(|data: &[u8]| targets::teacher_cache(data));
