//! Training checkpoints: `checkpoints/step-NNNNNNNN/` holding the f32 master weights
//! (`weights.safetensors`, HF names), the AdamW moments (`optimizer.safetensors`, `m.`/`v.`
//! prefixes; with a sharded optimizer one `optimizer-rank-R-of-N.safetensors` per rank, see
//! `shard.rs`) and `state.json` (step, data cursor, seed, counters). Each is written atomically
//! (temp dir + fsync + rename); only the newest `KEEP` are kept while training, and the newest
//! alone once a run has finished.

use crate::optim::Slot;
use crate::{file_err, TrainError};
use candle_core::{DType, Device, Tensor};
use orlik_io::safetensors::Checkpoint;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

pub const KEEP: usize = 2;
pub const STATE_VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct State {
    pub version: u32,
    /// Optimizer steps taken (the next step is `step`, 0-based).
    pub step: u64,
    /// Data cursor: samples (windows) consumed.
    pub cursor: u64,
    /// The seed of the data order (the only randomness in training).
    pub seed: u64,
    pub tokens_seen: u64,
    /// Non-finite steps in a row when the checkpoint was written.
    pub bad_in_a_row: u32,
    pub skipped_steps: u64,
    /// Wall seconds spent training before this checkpoint (summed over resumptions).
    pub train_seconds: f64,
}

impl State {
    /// The state before the first step of a run with data-order seed `seed`.
    pub fn fresh(seed: u64) -> State {
        State {
            version: STATE_VERSION,
            step: 0,
            cursor: 0,
            seed,
            tokens_seen: 0,
            bad_in_a_row: 0,
            skipped_steps: 0,
            train_seconds: 0.0,
        }
    }
}

fn step_dir(root: &Path, step: u64) -> PathBuf {
    root.join(format!("step-{step:08}"))
}

/// Checkpoint directories under `root`, oldest first.
pub fn list(root: &Path) -> Result<Vec<(u64, PathBuf)>, TrainError> {
    let mut out = Vec::new();
    if !root.exists() {
        return Ok(out);
    }
    for e in std::fs::read_dir(root).map_err(file_err(root))? {
        let p = e.map_err(file_err(root))?.path();
        let name = p.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
        if let Some(n) = name.strip_prefix("step-").and_then(|s| s.parse::<u64>().ok()) {
            if p.join("state.json").exists() {
                out.push((n, p));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Write `specs` (name, 1-D shape) from the slices `pick(i)` gives, one tensor at a time.
fn write_slices<'s>(
    path: &Path,
    specs: &[(String, Vec<usize>)],
    pick: &dyn Fn(usize) -> &'s [f32],
) -> Result<u64, orlik_io::IoError> {
    let refs: Vec<&(String, Vec<usize>)> = specs.iter().collect();
    orlik_io::safetensors::write_file_with(path, &refs, DType::F32, &mut |name| {
        let i = specs.iter().position(|s| s.0 == name).unwrap_or(0); // the writer asks by spec
        let v = pick(i);
        Tensor::from_slice(v, v.len(), &Device::Cpu).map_err(|source| orlik_io::IoError::Candle {
            context: format!("{}: checkpoint tensor {name}", path.display()),
            source,
        })
    })
}

pub fn save(
    root: &Path,
    state: &State,
    names: &[String],
    slots: &[Slot],
) -> Result<PathBuf, TrainError> {
    let all: Vec<usize> = (0..names.len()).collect();
    save_with(root, state, names, slots, &|tmp| {
        write_moments(&tmp.join("optimizer.safetensors"), names, slots, &all)
    })
}

/// The AdamW moments of the tensors `which` (indices into `names`) as `m.NAME`, `v.NAME`.
fn write_moments(
    path: &Path,
    names: &[String],
    slots: &[Slot],
    which: &[usize],
) -> Result<(), TrainError> {
    let specs: Vec<(String, Vec<usize>)> = which
        .iter()
        .flat_map(|&i| ["m", "v"].map(|k| (format!("{k}.{}", names[i]), vec![slots[i].w.len()])))
        .collect();
    write_slices(path, &specs, &|j| {
        let s = &slots[which[j / 2]];
        if j % 2 == 0 {
            &s.m
        } else {
            &s.v
        }
    })?;
    Ok(())
}

/// A checkpoint of the weights and `state`, its moments written by `moments(temp_dir)`.
fn save_with<'s>(
    root: &Path,
    state: &State,
    names: &[String],
    slots: &'s [Slot],
    moments: &dyn Fn(&Path) -> Result<(), TrainError>,
) -> Result<PathBuf, TrainError> {
    for (n, s) in names.iter().zip(slots) {
        if s.w.iter().any(|x| !x.is_finite()) {
            return Err(TrainError::NonFinite(format!(
                "refusing to save non-finite weights ({n})"
            )));
        }
    }
    std::fs::create_dir_all(root).map_err(file_err(root))?;
    let target = step_dir(root, state.step);
    orlik_io::atomic::write_dir_atomically::<TrainError>(&target, "checkpoint", true, |tmp| {
        // One tensor copied at a time (write_file_with streams): the save costs the largest
        // tensor, not another copy of the weights and both moments.
        let write =
            |file: &str, specs: Vec<(String, Vec<usize>)>, pick: &dyn Fn(usize) -> &'s [f32]| {
                write_slices(&tmp.join(file), &specs, pick)
            };
        let len = |i: usize| vec![slots[i].w.len()];
        let specs = names.iter().enumerate().map(|(i, n)| (n.clone(), len(i))).collect();
        write("weights.safetensors", specs, &|i| &slots[i].w)?;
        moments(tmp)?;
        let p = tmp.join("state.json");
        std::fs::write(&p, serde_json::to_vec_pretty(state).unwrap_or_default())
            .map_err(file_err(&p))?;
        Ok(())
    })?;
    keep_newest(root, KEEP)?;
    Ok(target)
}

/// The checkpoint of a sharded optimizer (`shard.rs`), written by every rank together: each
/// rank's moments into a staging directory beside the checkpoints (fsynced), then rank 0
/// writes the checkpoint atomically with the weights, the shards moved in, and `state.json`
/// last. A barrier ends it, so no rank goes on before the checkpoint is there.
pub fn save_sharded(
    root: &Path,
    state: &State,
    names: &[String],
    slots: &[Slot],
    shard: &crate::shard::Shard,
) -> Result<PathBuf, TrainError> {
    let (rank, world) = (shard.comm.rank(), shard.comm.size());
    let stage = root.join(format!(".shards-step-{:08}", state.step));
    let shard_file = |r: usize| format!("optimizer-rank-{r:04}-of-{world:04}.safetensors");
    if rank == 0 {
        std::fs::create_dir_all(root).map_err(file_err(root))?;
        // Killed saves' leftovers, of this step or any other.
        for e in std::fs::read_dir(root).map_err(file_err(root))?.flatten() {
            if e.file_name().to_string_lossy().starts_with(".shards-step-") {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
        std::fs::create_dir_all(&stage).map_err(file_err(&stage))?;
    }
    shard.comm.barrier()?;
    let file = stage.join(shard_file(rank));
    let own: Vec<usize> = (0..names.len()).filter(|&i| shard.mine(i)).collect();
    write_moments(&file, names, slots, &own)?;
    std::fs::File::open(&file).and_then(|f| f.sync_all()).map_err(file_err(&file))?;
    shard.comm.barrier()?;
    let target = step_dir(root, state.step);
    if rank == 0 {
        save_with(root, state, names, slots, &|tmp| {
            // Every rank's file by name (a directory listing on a network filesystem may not
            // show another machine's file yet; a missing one fails the save, not the resume).
            for r in 0..world {
                let p = stage.join(shard_file(r));
                std::fs::rename(&p, tmp.join(shard_file(r))).map_err(file_err(&p))?;
            }
            Ok(())
        })?;
        std::fs::remove_dir_all(&stage).map_err(file_err(&stage))?;
    }
    shard.comm.barrier()?;
    Ok(target)
}

/// Remove all but the newest `n` checkpoints under `root` (each was written atomically, so the
/// newest alone is enough to resume from).
pub fn keep_newest(root: &Path, n: usize) -> Result<(), TrainError> {
    let all = list(root)?;
    if all.len() > n {
        for (_, p) in &all[..all.len() - n] {
            std::fs::remove_dir_all(p).map_err(file_err(p))?;
        }
    }
    Ok(())
}

/// Load a checkpoint into `slots` (whose sizes fix what is expected) and return its state.
pub fn load(dir: &Path, names: &[String], slots: &mut [Slot]) -> Result<State, TrainError> {
    let sp = dir.join("state.json");
    let text = std::fs::read_to_string(&sp).map_err(file_err(&sp))?;
    let state: State = serde_json::from_str(&text)
        .map_err(|e| TrainError::Resume(format!("{}: {e}", sp.display())))?;
    if state.version != STATE_VERSION {
        return Err(TrainError::Resume(format!(
            "{}: state version {} (this orlik reads {STATE_VERSION})",
            sp.display(),
            state.version
        )));
    }
    let w = Checkpoint::open(&dir.join("weights.safetensors"))?;
    // optimizer.safetensors, or one file per rank of a sharded optimizer (any world size).
    let mut opt = Vec::new();
    for e in std::fs::read_dir(dir).map_err(file_err(dir))? {
        let p = e.map_err(file_err(dir))?.path();
        let n = p.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
        if n.starts_with("optimizer") && n.ends_with(".safetensors") {
            opt.push(Checkpoint::open(&p)?);
        }
    }
    let holder = |name: &str| -> Result<&Checkpoint, TrainError> {
        opt.iter().find(|c| c.info(name).is_some()).ok_or_else(|| {
            TrainError::Resume(format!("{}: no optimizer file holds {name}", dir.display()))
        })
    };
    let read = |ck: &Checkpoint, name: &str, want: usize| -> Result<Vec<f32>, TrainError> {
        let v = ck.tensor(name)?.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        if v.len() != want {
            return Err(TrainError::Resume(format!(
                "{}: {name} has {} values, the model needs {want}",
                dir.display(),
                v.len()
            )));
        }
        Ok(v)
    };
    for (n, s) in names.iter().zip(slots.iter_mut()) {
        let len = s.w.len();
        s.w = read(&w, n, len)?;
        let (m, v) = (format!("m.{n}"), format!("v.{n}"));
        s.m = read(holder(&m)?, &m, len)?;
        s.v = read(holder(&v)?, &v, len)?;
    }
    Ok(state)
}
