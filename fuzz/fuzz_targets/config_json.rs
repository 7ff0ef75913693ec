//! config.json: parsing, range checks, and the derived quantities every command relies on.
#![no_main]
use libfuzzer_sys::fuzz_target;

#[path = "../targets.rs"]
mod targets;

fuzz_target!(|data: &[u8]| targets::config_json(data));
