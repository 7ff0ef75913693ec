//! What the pipeline tests share: a Ui that keeps what it is told, the tiny GGUF fixtures
//! converted, seeded text, and a run that raises the stop flag after a given training step.

#![allow(dead_code)] // each test file uses its part

use orlik_pipeline::{Options, Outcome, Recipe, Ui};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

/// A Ui that keeps the notices and printed text.
#[derive(Default)]
pub struct Record(pub Mutex<Vec<String>>);

impl Ui for Record {
    fn notice(&self, msg: &str) {
        self.0.lock().unwrap().push(msg.to_string());
    }
    fn print(&self, msg: &str) {
        self.0.lock().unwrap().push(msg.to_string());
    }
    fn progress(&self, _: &str, _: usize, _: usize) {}
    fn progress_done(&self) {}
}

impl Record {
    pub fn has(&self, line: &str) -> bool {
        self.0.lock().unwrap().iter().any(|l| l == line)
    }
    pub fn starts(&self, prefix: &str) -> bool {
        self.0.lock().unwrap().iter().any(|l| l.starts_with(prefix))
    }
}

/// `tests/fixtures/gguf/NAME` converted to an f32 HF directory at `out`.
pub fn convert(name: &str, out: &Path) {
    let gguf = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/gguf").join(name);
    let opts = orlik_io::hfdir::SaveOptions {
        dtype: candle_core::DType::F32,
        max_shard_bytes: u64::MAX,
        overwrite: false,
        kind: "convert",
    };
    orlik_io::convert::convert_gguf(&gguf, out, &opts, vec![], |_, _, _| {}).unwrap();
}

/// ROOT/train.txt and ROOT/val.txt: `n_train` and `n_val` seeded words the tiny vocabularies
/// know.
pub fn texts(root: &Path, seed: u64, n_train: usize, n_val: usize) {
    let words = ["the", "theater", "then", "anthem", "in", "hearth", "heart", "earth", "at", "tea"];
    let mut x = seed;
    let mut text = |n: usize| orlik_model::testing::seeded_words(&words, n, &mut x);
    std::fs::write(root.join("train.txt"), text(n_train)).unwrap();
    std::fs::write(root.join("val.txt"), text(n_val)).unwrap();
}

/// Run `r`, raising the stop flag after the `at`-th training step of this run (0: never).
pub fn run(r: &Recipe, at: u64) -> (Outcome, Record) {
    let ui = Record::default();
    let stop = AtomicBool::new(false);
    let steps = AtomicU64::new(0);
    let hook = |_: u64| {
        if steps.fetch_add(1, Ordering::SeqCst) + 1 == at {
            stop.store(true, Ordering::SeqCst);
        }
    };
    let o = Options {
        resume: false,
        force: false,
        stop: Some(&stop),
        after_step: Some(&hook),
        memory: orlik_train::mem::Gate::Available,
        ui: &ui,
    };
    (orlik_pipeline::run(r, &o).unwrap(), ui)
}
