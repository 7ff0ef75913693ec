//! The tokenizer built from a GGUF's embedded vocabulary (BPE merges or SentencePiece scores),
//! then used on a short Polish text. Slow: each input builds a tokenizer.
#![no_main]
use libfuzzer_sys::fuzz_target;

#[path = "../targets.rs"]
mod targets;

fuzz_target!(|data: &[u8]| targets::gguf_tokenizer(data));
