//! Where a training step's time goes: wall seconds per phase, summed over the step's
//! micro-batches and written to metrics.jsonl as `"phase_seconds"` (teacher: an online
//! teacher's body; forward: the student's; loss_backward: lm_head, the loss and the whole
//! backward, which includes teacher_head, the online teacher's lm_head chunks; update: clip and
//! AdamW; comm under data parallel). One clock read per phase, so every run
//! measures it. Kept per thread: the loop runs on one thread (the kernels parallelise inside a
//! phase), and tests training side by side in one process do not mix their figures.

use std::cell::RefCell;
use std::time::Instant;

thread_local! {
    static SPENT: RefCell<Vec<(&'static str, f64)>> = const { RefCell::new(Vec::new()) };
}

/// Run `f`, adding its wall time to phase `name`.
pub fn time<R>(name: &'static str, f: impl FnOnce() -> R) -> R {
    let t0 = Instant::now();
    let r = f();
    let dt = t0.elapsed().as_secs_f64();
    SPENT.with(|s| {
        let mut s = s.borrow_mut();
        match s.iter_mut().find(|x| x.0 == name) {
            Some(x) => x.1 += dt,
            None => s.push((name, dt)),
        }
    });
    r
}

/// The phases timed since the last call, in first-timed order; clears them.
pub fn take() -> Vec<(&'static str, f64)> {
    SPENT.with(|s| std::mem::take(&mut *s.borrow_mut()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_add_up_in_order_and_take_clears() {
        let _ = take();
        let wait = || std::thread::sleep(std::time::Duration::from_millis(5));
        time("a", wait);
        time("b", wait);
        time("a", wait);
        assert_eq!(time("c", || 7), 7);
        let got = take();
        assert_eq!(got.iter().map(|x| x.0).collect::<Vec<_>>(), ["a", "b", "c"]);
        // Sleeps last at least as long as asked (only lower bounds: a busy machine adds time).
        assert!(got[0].1 >= 0.010 && got[1].1 >= 0.005, "{got:?}");
        assert!(take().is_empty());
    }
}
