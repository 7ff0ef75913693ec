//! JSONL rows of `orlik sft` / `dpo` / `grpo`: messages, prompts and answers as the readers take them.
#![no_main]
use libfuzzer_sys::fuzz_target;

#[path = "../targets.rs"]
mod targets;

fuzz_target!(|data: &[u8]| targets::jsonl_rows(data));
