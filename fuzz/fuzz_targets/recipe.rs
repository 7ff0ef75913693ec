//! Recipe TOML with `--set` edits: the pipeline's settings parser.
#![no_main]
use libfuzzer_sys::fuzz_target;

use orlik_pipeline::Recipe;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    // The last line, when it looks like `key=value`, is also tried as a --set edit.
    let sets: Vec<String> = text
        .lines()
        .last()
        .filter(|l| l.contains('='))
        .map(|l| vec![l.to_string()])
        .unwrap_or_default();
    if let Ok(r) = Recipe::parse(text, "fuzz.toml", &sets) {
        let _ = r.to_toml();
    }
});
