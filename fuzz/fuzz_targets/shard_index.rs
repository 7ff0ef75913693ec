//! `model.safetensors.index.json`: the weight map and its shard names.
#![no_main]
use libfuzzer_sys::fuzz_target;

#[path = "../targets.rs"]
mod targets;

fuzz_target!(|data: &[u8]| targets::shard_index(data));
