//! The terminal side of every command: progress bars, the stop flag (SIGINT / SIGTERM), the
//! interruption tests' step delay, and the pipeline's [`orlik_pipeline::Ui`].

use indicatif::{ProgressBar, ProgressStyle};
use orlik_train::lm::Control;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::OnceLock;

/// A progress bar drawn with `template` (indicatif's syntax).
pub fn bar(template: &str) -> ProgressBar {
    let pb = ProgressBar::new(0);
    let style =
        ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar());
    pb.set_style(style.progress_chars("=> "));
    pb
}

/// A bar that counts `len` things called `what`, with a rate and an ETA.
pub fn counter(len: u64, what: &str) -> ProgressBar {
    let pb = bar("{msg:12} [{bar:30}] {pos}/{len} {per_sec} eta {eta}");
    pb.set_length(len);
    pb.set_message(what.to_string());
    pb
}

/// Set the bar from a (what, done, total) progress callback.
pub fn show(pb: &ProgressBar, what: &str, done: usize, total: usize) {
    pb.set_message(what.to_string());
    pb.set_length(total as u64);
    pb.set_position(done as u64);
}

/// The process's stop flag, raised by SIGINT / SIGTERM. One handler per process (ctrlc allows
/// no second), so every training stage of a pipeline sees the same flag. A second signal while
/// the checkpoint is written is ignored; SIGKILL still works.
pub fn stop_flag() -> &'static AtomicBool {
    static FLAG: OnceLock<&'static AtomicBool> = OnceLock::new();
    FLAG.get_or_init(|| {
        let flag: &'static AtomicBool = Box::leak(Box::new(AtomicBool::new(false)));
        let _ = ctrlc::set_handler(move || {
            if !flag.swap(true, Ordering::SeqCst) && orlik_dist::is_root() {
                eprintln!("\ninterrupt: finishing this step and saving a checkpoint...");
            }
        });
        flag
    })
}

/// A one-line notice on stderr, from rank 0 only (N ranks would say it N times).
pub fn notice(m: &str) {
    if orlik_dist::is_root() {
        eprintln!("{m}");
    }
}

static DELAY_MS: AtomicU64 = AtomicU64::new(0);

fn pause(_step: u64) {
    std::thread::sleep(std::time::Duration::from_millis(DELAY_MS.load(Ordering::Relaxed)));
}

/// Testing aid: `ORLIK_STEP_DELAY_MS=N` pauses N ms after each training step (and each shard
/// `orlik tokenize` records), so that the
/// interruption tests can kill a run mid-way on any machine. Read here in the binary and handed
/// to the loop as its `after_step` hook; the libraries never read it.
pub fn step_delay() -> Option<&'static (dyn Fn(u64) + Sync)> {
    let ms = std::env::var("ORLIK_STEP_DELAY_MS").ok()?.parse::<u64>().ok()?;
    DELAY_MS.store(ms, Ordering::Relaxed);
    Some(&pause)
}

static NO_MEMORY_CHECK: AtomicBool = AtomicBool::new(false);
static MEMORY_LIMIT: AtomicU64 = AtomicU64::new(0);

/// `--no-memory-check` / `--memory-limit SIZE`, for every training command of this process.
pub fn set_memory_gate(off: bool, limit: Option<u64>) {
    NO_MEMORY_CHECK.store(off, Ordering::Relaxed);
    MEMORY_LIMIT.store(limit.unwrap_or(0), Ordering::Relaxed);
}

pub fn memory_gate() -> orlik_train::mem::Gate {
    use orlik_train::mem::Gate;
    match (NO_MEMORY_CHECK.load(Ordering::Relaxed), MEMORY_LIMIT.load(Ordering::Relaxed)) {
        (true, _) => Gate::Off,
        (false, 0) => Gate::Available,
        (false, b) => Gate::Limit(b),
    }
}

/// The training loop's controls for a command: the stop flag, the test hook, the memory check.
pub fn control() -> Control<'static> {
    Control {
        quiet: false,
        stop: Some(stop_flag()),
        after_step: step_delay(),
        memory: memory_gate(),
        reduce: None,
        pause_at: None,
    }
}

/// A training command stopped by a signal after its checkpoint: say how to continue, exit 130
/// (128 + SIGINT, as shells do).
pub fn interrupted(step: u64) -> ! {
    notice(&format!("stopped at step {step}; continue with the same command and --resume"));
    // Under a launcher: wait for every rank (rank 0 may still write the pipeline's state), so
    // that no rank's exit status makes mpirun end the others first.
    orlik_dist::world().finalize();
    std::process::exit(130);
}

/// The pipeline's output on this terminal: notices and bars on stderr, tables on stdout. A
/// finished bar is replaced by a fresh one for the next step.
pub struct Term(std::sync::Mutex<ProgressBar>);

const STEP_BAR: &str = "{msg:16} [{bar:30}] {pos}/{len} eta {eta}";

impl Term {
    pub fn new() -> Term {
        let pb = bar(STEP_BAR);
        if !orlik_dist::is_root() {
            pb.set_draw_target(indicatif::ProgressDrawTarget::hidden());
        }
        Term(std::sync::Mutex::new(pb))
    }

    fn with(&self, f: impl FnOnce(&mut ProgressBar)) {
        let mut pb = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&mut pb);
    }
}

impl orlik_pipeline::Ui for Term {
    fn notice(&self, msg: &str) {
        if orlik_dist::is_root() {
            self.with(|pb| pb.suspend(|| eprintln!("{msg}")));
        }
    }
    fn print(&self, text: &str) {
        self.with(|pb| pb.suspend(|| println!("{}", text.trim_end())));
    }
    fn progress(&self, what: &str, done: usize, total: usize) {
        self.with(|pb| show(pb, what, done, total));
    }
    fn progress_done(&self) {
        self.with(|pb| {
            pb.finish_and_clear();
            *pb = bar(STEP_BAR);
        });
    }
}
