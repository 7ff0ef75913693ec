//! Sharded optimizer state (ZeRO stage 1, Rajbhandari et al. 2020) for data parallel: each rank
//! keeps the AdamW moments of about 1/N of the parameters (whole tensors: a contiguous run of
//! the executor's `names`, balanced by element count), updates only those tensors, and
//! broadcasts their new weights to the other ranks. Every rank still holds all f32 weights (the
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

/// Which rank keeps the moments of, and updates, each tensor.
pub struct Shard {
    pub comm: &'static dyn Comm,
    /// Owner rank of every tensor, in the executor's `names` order.
    pub owners: Vec<usize>,
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
        Shard { comm, owners: owners(sizes, comm.size()) }
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

    /// Every tensor's new weights from the rank that updated it.
    pub fn share_weights(&self, slots: &mut [Slot]) -> Result<(), TrainError> {
        for (s, &o) in slots.iter_mut().zip(&self.owners) {
            self.comm.bcast_f32(o, &mut s.w)?;
        }
        Ok(())
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
        let other = Shard { comm: &orlik_dist::Single, owners: vec![0, 1, 0] };
        assert_eq!(other.drop_others(&mut dropped), (2 * 5, 2 * 5));
        assert!(dropped[1].m.is_empty() && dropped[0].m == slots[0].m);
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
