//! Sharded optimizer state (ZeRO stage 1, Rajbhandari et al. 2020) for data parallel: each rank
//! keeps the AdamW moments of about 1/N of the parameters (whole tensors: a contiguous run of
//! the executor's `names`, balanced by element count). A step reduce-scatters the gradients (each
//! rank receives the summed gradient of its own tensors only), forms the global norm from the
//! ranks' per-tensor sums of squares, updates its tensors and all-gathers the new weights: the
//! bytes of one all-reduce in all, as ZeRO has it. Every rank still holds all f32 weights (the
//! CPU executor's master weights are also the copy its forward reads), so the saving is the two
//! moments: 8 bytes × (1 − 1/N) per parameter and rank.
//!
//! The update is elementwise, so who computes a tensor's step does not change it: sharded and
//! unsharded runs are bit-identical (`crates/cli/tests/mpi.rs`).
//!
//! Checkpoints: every rank writes the moments it keeps into `optimizer-rank-R-of-N.safetensors`
//! of the checkpoint, and rank 0 writes the weights and `state.json` last, once every shard is
//! durable (`checkpoint::save_sharded`). Loading reads each tensor's moments from whichever
//! file holds them, so `--resume` works on any world size: the new owners take their moments,
//! the others are dropped.

use crate::optim::Slot;
use crate::TrainError;
use orlik_dist::Comm;
use std::ops::Range;

/// Which rank keeps the moments of, and updates, each tensor.
pub struct Shard {
    pub comm: &'static dyn Comm,
    /// Owner rank of every tensor, in the executor's `names` order.
    pub owners: Vec<usize>,
    /// Elements per rank and round of the collectives ([`ROUND`]; tests make it small).
    pub round: usize,
}

/// Owners for tensors of `sizes` elements on `world` ranks: contiguous runs, a tensor going to
/// the rank whose 1/world of the elements holds its midpoint.
pub fn owners(sizes: &[usize], world: usize) -> Vec<usize> {
    let total: usize = sizes.iter().sum::<usize>().max(1);
    let mut start = 0usize;
    sizes
        .iter()
        .map(|&n| {
            let mid = start as u128 * 2 + n as u128; // 2 × midpoint
            start += n;
            ((mid * world as u128 / (2 * total as u128)) as usize).min(world.max(1) - 1)
        })
        .collect()
}

impl Shard {
    pub fn new(comm: &'static dyn Comm, sizes: &[usize]) -> Shard {
        Shard { comm, owners: owners(sizes, comm.size()), round: ROUND }
    }

    pub fn mine(&self, i: usize) -> bool {
        self.owners[i] == self.comm.rank()
    }

    /// Drop the moments of the tensors another rank keeps; returns the elements of moments kept
    /// and dropped here.
    pub fn drop_others(&self, slots: &mut [Slot]) -> (usize, usize) {
        let (mut kept, mut dropped) = (0, 0);
        for (i, s) in slots.iter_mut().enumerate() {
            if self.mine(i) {
                kept += s.m.len() + s.v.len();
            } else {
                dropped += s.m.len() + s.v.len();
                s.m = Vec::new();
                s.v = Vec::new();
            }
        }
        (kept, dropped)
    }

    /// Each rank's range of elements in the concatenation of the tensors (`sizes`, in `names`
    /// order; owners are contiguous runs, so a rank's tensors are one range).
    fn ranges(&self, sizes: &[usize]) -> Vec<Range<usize>> {
        let mut r = vec![0..0; self.comm.size()];
        let mut at = 0;
        for (&o, &n) in self.owners.iter().zip(sizes) {
            if r[o].is_empty() {
                r[o] = at..at;
            }
            r[o].end = at + n;
            at += n;
        }
        r
    }

    /// Round `k` of a collective over `ranges`: each rank's next ≤ `self.round` elements.
    fn round(&self, ranges: &[Range<usize>], k: usize) -> Vec<Range<usize>> {
        let n = self.round;
        ranges
            .iter()
            .map(|r| (r.start + k * n).min(r.end)..(r.start + (k + 1) * n).min(r.end))
            .collect()
    }

    fn rounds(&self, ranges: &[Range<usize>]) -> usize {
        ranges.iter().map(|r| r.len().div_ceil(self.round)).max().unwrap_or(0)
    }

    /// Sum `grads` over ranks, each rank receiving only the sums of its own tensors (a
    /// reduce-scatter: half the bytes of an all-reduce). The other tensors' gradients are left
    /// as they were, and must not be used.
    pub fn reduce_scatter(&self, grads: &mut [Vec<f32>]) -> Result<(), TrainError> {
        let sizes: Vec<usize> = grads.iter().map(Vec::len).collect();
        let ranges = self.ranges(&sizes);
        let me = self.comm.rank();
        let (mut send, mut recv) = (Vec::new(), Vec::new());
        let rounds = self.rounds(&ranges);
        for k in 0..rounds {
            let pieces = self.round(&ranges, k);
            send.clear();
            pieces.iter().for_each(|p| gather(grads, p.clone(), &mut send));
            recv.resize(pieces[me].len(), 0.0);
            let counts: Vec<usize> = pieces.iter().map(Range::len).collect();
            crate::phase::time("comm", || self.comm.reduce_scatter_f32(&send, &mut recv, &counts))?;
            scatter(grads, pieces[me].start, &recv);
        }
        Ok(())
    }

    /// The global gradient norm after [`Shard::reduce_scatter`]: each rank's sums of squares of
    /// its own tensors, summed over ranks tensor by tensor (adding zeros is exact), then added
    /// in `names` order: bit for bit [`crate::optim::global_norm`] of the summed gradients.
    pub fn global_norm(&self, grads: &[Vec<f32>]) -> Result<f64, TrainError> {
        let mut sq: Vec<f64> = grads
            .iter()
            .enumerate()
            .map(|(i, g)| if self.mine(i) { crate::optim::sum_squares(g) } else { 0.0 })
            .collect();
        crate::phase::time("comm", || self.comm.sum_f64(&mut sq))?;
        Ok(sq.iter().sum::<f64>().sqrt())
    }

    /// Every tensor's new weights from the rank that updated it (an all-gather).
    pub fn share_weights(&self, slots: &mut [Slot]) -> Result<(), TrainError> {
        let mut w: Vec<Vec<f32>> = slots.iter_mut().map(|s| std::mem::take(&mut s.w)).collect();
        let r = self.all_gather(&mut w);
        slots.iter_mut().zip(w).for_each(|(s, w)| s.w = w);
        r
    }

    fn all_gather(&self, w: &mut [Vec<f32>]) -> Result<(), TrainError> {
        let sizes: Vec<usize> = w.iter().map(Vec::len).collect();
        let ranges = self.ranges(&sizes);
        let me = self.comm.rank();
        let mut buf = Vec::new();
        let rounds = self.rounds(&ranges);
        for k in 0..rounds {
            let pieces = self.round(&ranges, k);
            let counts: Vec<usize> = pieces.iter().map(Range::len).collect();
            buf.clear();
            buf.resize(counts.iter().sum(), 0.0);
            let at: usize = counts[..me].iter().sum();
            let mut mine = Vec::with_capacity(counts[me]);
            gather(w, pieces[me].clone(), &mut mine);
            buf[at..at + counts[me]].copy_from_slice(&mine);
            crate::phase::time("comm", || self.comm.all_gather_f32(&mut buf, &counts))?;
            let mut off = 0;
            for p in &pieces {
                scatter(w, p.start, &buf[off..off + p.len()]);
                off += p.len();
            }
        }
        Ok(())
    }
}

/// Elements per rank and round of the reduce-scatter and all-gather (256 Ki floats, 1 MiB).
/// MPI's counts are C ints, so large buffers need rounds anyway, and OpenMPI's reduce-scatter is
/// slow on large ones: on 2 ranks over TCP (SmolLM2-135M, 513 MiB of gradient) its share of a
/// step took 1.1–1.6 s in rounds of 64 MiB, 0.3–0.6 s in rounds of 4 MiB and 0.2–0.5 s in
/// rounds of 1 MiB (phase_seconds.comm, three steps each).
const ROUND: usize = 1 << 18;

/// Append elements `range` of the concatenation of `parts` to `out`.
fn gather(parts: &[Vec<f32>], range: Range<usize>, out: &mut Vec<f32>) {
    let mut at = 0;
    for p in parts {
        let (a, b) = (range.start.max(at), range.end.min(at + p.len()));
        if a < b {
            out.extend_from_slice(&p[a - at..b - at]);
        }
        at += p.len();
    }
}

/// Write `src` into the concatenation of `parts` from element `start`.
fn scatter(parts: &mut [Vec<f32>], start: usize, src: &[f32]) {
    let end = start + src.len();
    let mut at = 0;
    for p in parts.iter_mut() {
        let (a, b) = (start.max(at), end.min(at + p.len()));
        if a < b {
            p[a - at..b - at].copy_from_slice(&src[a - start..b - start]);
        }
        at += p.len();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::{self, State};

    fn slot(n: usize, x: f32) -> Slot {
        let f = |k: f32| (0..n).map(|i| x + k + i as f32).collect::<Vec<f32>>();
        Slot { w: f(0.0), m: f(0.25), v: f(0.5), decay: true }
    }

    /// A sharded checkpoint of one rank (the layout of N, with N = 1) loads back into full
    /// slots bit for bit, and a rank's dropped moments are not written.
    #[test]
    fn sharded_checkpoints_load_back_whole() {
        let names: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        let slots = vec![slot(3, 1.0), slot(5, 2.0), slot(2, 3.0)];
        let sh = Shard::new(&orlik_dist::Single, &[3, 5, 2]);
        let dir = tempfile::tempdir().unwrap();
        let st = State { step: 4, ..State::fresh(7) };
        let ck = checkpoint::save_sharded(dir.path(), &st, &names, &slots, &sh).unwrap();
        assert!(ck.join("optimizer-rank-0000-of-0001.safetensors").exists());
        assert!(!dir.path().join(".shards-step-00000004").exists(), "staging removed");
        let mut back = vec![slot(3, 0.0), slot(5, 0.0), slot(2, 0.0)];
        assert_eq!(checkpoint::load(&ck, &names, &mut back).unwrap(), st);
        for (a, b) in back.iter().zip(&slots) {
            assert_eq!((&a.w, &a.m, &a.v), (&b.w, &b.m, &b.v));
        }
        let mut dropped = slots.clone();
        let other = Shard { comm: &orlik_dist::Single, owners: vec![0, 1, 0], round: ROUND };
        assert_eq!(other.drop_others(&mut dropped), (2 * 5, 2 * 5));
        assert!(dropped[1].m.is_empty() && dropped[0].m == slots[0].m);
    }

    #[test]
    fn pieces_of_the_concatenation_round_trip() {
        let parts = vec![vec![0.0, 1.0, 2.0], vec![], vec![3.0, 4.0], vec![5.0]];
        let mut out = Vec::new();
        gather(&parts, 1..5, &mut out);
        assert_eq!(out, [1.0, 2.0, 3.0, 4.0]);
        let mut p2 = parts.clone();
        scatter(&mut p2, 2, &[-2.0, -3.0, -4.0, -5.0]);
        assert_eq!(p2, vec![vec![0.0, 1.0, -2.0], vec![], vec![-3.0, -4.0], vec![-5.0]]);
        // Ranks' ranges follow the owners; a rank without tensors has an empty range.
        let sh = Shard { comm: &orlik_dist::Single, owners: vec![0, 0, 0, 0], round: 4 };
        assert_eq!(sh.ranges(&[3, 0, 2, 1]), vec![0..6]);
        let rs = sh.round(&[0..5, 5..5, 5..10], 1);
        assert_eq!(rs, vec![4..5, 5..5, 9..10]);
        assert_eq!(sh.rounds(&[0..5, 5..5, 5..14]), 3);
    }

    /// Two ranks as two threads of this process: each collective deposits its buffer, waits
    /// for the other, and computes its result from both (the semantics of MPI's, not its
    /// algorithm).
    struct Pair {
        rank: usize,
        slots: std::sync::Arc<(std::sync::Mutex<[Vec<f64>; 2]>, std::sync::Barrier)>,
    }

    impl Pair {
        /// Both ranks' buffers (as f64), after each has deposited its own.
        fn exchange(&self, mine: Vec<f64>) -> [Vec<f64>; 2] {
            let (m, b) = &*self.slots;
            m.lock().unwrap()[self.rank] = mine;
            b.wait();
            let both = m.lock().unwrap().clone();
            b.wait();
            both
        }
    }

    impl Comm for Pair {
        fn rank(&self) -> usize {
            self.rank
        }
        fn size(&self) -> usize {
            2
        }
        fn local_rank(&self) -> usize {
            self.rank
        }
        fn sum_f32(&self, _: &mut [f32]) -> Result<(), orlik_dist::DistError> {
            unreachable!("not used by the sharded update")
        }
        fn sum_f64(&self, buf: &mut [f64]) -> Result<(), orlik_dist::DistError> {
            let [a, b] = self.exchange(buf.to_vec());
            buf.iter_mut().enumerate().for_each(|(i, x)| *x = a[i] + b[i]);
            Ok(())
        }
        fn max_f64(&self, _: &mut [f64]) -> Result<(), orlik_dist::DistError> {
            unreachable!("not used by the sharded update")
        }
        fn reduce_scatter_f32(
            &self,
            send: &[f32],
            recv: &mut [f32],
            counts: &[usize],
        ) -> Result<(), orlik_dist::DistError> {
            let [a, b] = self.exchange(send.iter().map(|&x| x as f64).collect());
            let at: usize = counts[..self.rank].iter().sum();
            // f32 + f32 in f32, as MPI_SUM on MPI_FLOAT.
            let sum = |i: usize| a[at + i] as f32 + b[at + i] as f32;
            recv.iter_mut().enumerate().for_each(|(i, x)| *x = sum(i));
            Ok(())
        }
        fn all_gather_f32(
            &self,
            buf: &mut [f32],
            counts: &[usize],
        ) -> Result<(), orlik_dist::DistError> {
            let both = self.exchange(buf.iter().map(|&x| x as f64).collect());
            let mut at = 0;
            for (r, &n) in counts.iter().enumerate() {
                buf[at..at + n]
                    .iter_mut()
                    .zip(&both[r][at..at + n])
                    .for_each(|(x, y)| *x = *y as f32);
                at += n;
            }
            Ok(())
        }
        fn gather_bytes(&self, _: &[u8]) -> Result<Vec<u8>, orlik_dist::DistError> {
            unreachable!("not used by the sharded update")
        }
        fn barrier(&self) -> Result<(), orlik_dist::DistError> {
            self.exchange(Vec::new());
            Ok(())
        }
        fn describe(&self) -> String {
            "two threads".into()
        }
        fn abort(&self, _: i32) -> ! {
            panic!("abort")
        }
        fn finalize(&self) {}
    }

    /// The sharded step's collectives in rounds of 3 elements over uneven tensors: each rank's
    /// own tensors get the elementwise sum, the global norm is `optim::global_norm` of the sums
    /// bit for bit, and the gathered weights are every owner's.
    #[test]
    fn reduce_scatter_norm_and_all_gather_in_rounds_on_two_ranks() {
        const SIZES: [usize; 6] = [5, 3, 0, 7, 2, 4];
        let sizes = SIZES;
        fn grad(rank: usize) -> Vec<Vec<f32>> {
            let mut k = 0.0f32;
            SIZES
                .iter()
                .map(|&n| {
                    (0..n)
                        .map(|_| {
                            k += 1.0;
                            (k * 0.37 + rank as f32 * 1.9).sin()
                        })
                        .collect()
                })
                .collect()
        }
        let want: Vec<Vec<f32>> = grad(0)
            .iter()
            .zip(grad(1))
            .map(|(a, b)| a.iter().zip(b).map(|(x, y)| x + y).collect())
            .collect();
        let want_norm = crate::optim::global_norm(&want);
        let shared = std::sync::Arc::new((
            std::sync::Mutex::new([Vec::new(), Vec::new()]),
            std::sync::Barrier::new(2),
        ));
        let results: Vec<_> = (0..2)
            .map(|rank| {
                let slots = shared.clone();
                std::thread::spawn(move || {
                    let comm: &'static Pair = Box::leak(Box::new(Pair { rank, slots }));
                    let mut sh = Shard::new(comm, &SIZES);
                    sh.round = 3;
                    let mut g = grad(rank);
                    sh.reduce_scatter(&mut g).unwrap();
                    let norm = sh.global_norm(&g).unwrap();
                    let mut w: Vec<Vec<f32>> = sizes
                        .iter()
                        .enumerate()
                        .map(|(i, &n)| vec![if sh.mine(i) { i as f32 } else { -1.0 }; n])
                        .collect();
                    sh.all_gather(&mut w).unwrap();
                    (sh.owners.clone(), g, norm, w)
                })
            })
            .collect::<Vec<_>>() // both threads started before either is joined
            .into_iter()
            .map(|t| t.join().unwrap())
            .collect();
        let owners = &results[0].0;
        assert!(owners.contains(&0) && owners.contains(&1), "both ranks own tensors: {owners:?}");
        for (rank, (_, g, norm, w)) in results.iter().enumerate() {
            for (i, o) in owners.iter().enumerate() {
                if *o == rank {
                    assert_eq!(g[i], want[i], "rank {rank} tensor {i}");
                }
                assert_eq!(w[i], vec![i as f32; sizes[i]], "rank {rank} gathered tensor {i}");
            }
            assert_eq!(norm.to_bits(), want_norm.to_bits(), "rank {rank}");
        }
    }

    #[test]
    fn owners_are_contiguous_balanced_and_cover_every_rank_they_can() {
        assert_eq!(owners(&[10, 10, 10, 10], 2), vec![0, 0, 1, 1]);
        assert_eq!(owners(&[10, 10, 10, 10], 1), vec![0; 4]);
        assert_eq!(owners(&[10, 10, 10, 10], 4), vec![0, 1, 2, 3]);
        // a large tensor goes where its middle is; the rest stay in order
        assert_eq!(owners(&[100, 1, 1, 1], 2), vec![0, 1, 1, 1]);
        let o = owners(&[3, 50, 7, 7, 7, 50, 3], 3);
        assert!(o.windows(2).all(|w| w[0] <= w[1]), "{o:?}");
        assert_eq!((o[0], o[6]), (0, 2));
        assert_eq!(owners(&[], 2), Vec::<usize>::new());
    }
}
