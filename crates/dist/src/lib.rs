//! The process's place in a data-parallel job. A launcher (`mpirun`, `srun --mpi=pmix`) starts
//! N copies of `orlik`; each finds its rank and the world size here and reduces through the MPI
//! library it was started with. Nothing here needs MPI at build time: the library is loaded at
//! run time (`mpi.rs`), and only when a launcher's environment variables are present. A process
//! started without a launcher is world size 1 ([`Single`]) and calls no MPI at all, so the
//! default binary runs where no libmpi exists (the GPU machine, a laptop).
//!
//! The communicator is process-wide, as `MPI_COMM_WORLD` is: [`init`] once in the binary,
//! [`world`] anywhere after.

mod mpi;

use std::sync::OnceLock;

#[derive(Debug, thiserror::Error)]
pub enum DistError {
    /// The launcher's variables are there but its MPI library is not usable.
    #[error("{0}")]
    Load(String),
    /// An MPI call failed (with the default error handler MPI aborts the job first; this is
    /// what a library with another handler returns).
    #[error("MPI: {call} returned error code {code}")]
    Call { call: &'static str, code: i32 },
    /// The launcher's variables disagree with what MPI says.
    #[error("{0}")]
    Launch(String),
    /// A collective called with buffers that do not fit its counts (orlik's bug, not the user's).
    #[error("internal error in a collective: {0}")]
    Internal(String),
}

/// A group of ranks that reduce together. Every collective must be called by every rank, in
/// the same order, with the same length.
pub trait Comm: Send + Sync {
    fn rank(&self) -> usize;
    fn size(&self) -> usize;
    /// The rank among the ranks on this machine (which GPU a rank takes).
    fn local_rank(&self) -> usize;
    /// Element-wise sum over ranks, in place; every rank gets the sum.
    fn sum_f32(&self, buf: &mut [f32]) -> Result<(), DistError>;
    fn sum_f64(&self, buf: &mut [f64]) -> Result<(), DistError>;
    /// Element-wise maximum over ranks, in place.
    fn max_f64(&self, buf: &mut [f64]) -> Result<(), DistError>;
    /// Element-wise sum over ranks of `send` (Σ counts elements, the same everywhere), scattered:
    /// rank r's `recv` (counts[r] elements) gets the sum's r-th piece, the pieces in rank order.
    /// Each count below 2³¹ (callers split larger buffers into rounds).
    fn reduce_scatter_f32(
        &self,
        send: &[f32],
        recv: &mut [f32],
        counts: &[usize],
    ) -> Result<(), DistError>;
    /// In place: rank r's piece of `buf` (pieces of `counts` elements in rank order) copied
    /// into every rank's `buf`. Each count and Σ counts below 2³¹.
    fn all_gather_f32(&self, buf: &mut [f32], counts: &[usize]) -> Result<(), DistError>;
    /// Every rank's `bytes` (any length, each below 2³¹), concatenated in rank order, on rank
    /// 0; the other ranks get nothing back. For what only rank 0 writes (GRPO's samples).
    fn gather_bytes(&self, bytes: &[u8]) -> Result<Vec<u8>, DistError>;
    /// Return when every rank has called it.
    fn barrier(&self) -> Result<(), DistError>;
    /// One line for logs: the library and the world.
    fn describe(&self) -> String;
    /// End the whole job with `code` (every rank, not only this one).
    fn abort(&self, code: i32) -> !;
    /// Shut MPI down at a normal exit (collective).
    fn finalize(&self);
}

/// The world of a process started without a launcher: rank 0 of 1, every collective the
/// identity.
pub struct Single;

impl Comm for Single {
    fn rank(&self) -> usize {
        0
    }
    fn size(&self) -> usize {
        1
    }
    fn local_rank(&self) -> usize {
        0
    }
    fn sum_f32(&self, _: &mut [f32]) -> Result<(), DistError> {
        Ok(())
    }
    fn sum_f64(&self, _: &mut [f64]) -> Result<(), DistError> {
        Ok(())
    }
    fn max_f64(&self, _: &mut [f64]) -> Result<(), DistError> {
        Ok(())
    }
    fn reduce_scatter_f32(
        &self,
        send: &[f32],
        recv: &mut [f32],
        _: &[usize],
    ) -> Result<(), DistError> {
        recv.copy_from_slice(&send[..recv.len()]);
        Ok(())
    }
    fn all_gather_f32(&self, _: &mut [f32], _: &[usize]) -> Result<(), DistError> {
        Ok(())
    }
    fn gather_bytes(&self, bytes: &[u8]) -> Result<Vec<u8>, DistError> {
        Ok(bytes.to_vec())
    }
    fn barrier(&self) -> Result<(), DistError> {
        Ok(())
    }
    fn describe(&self) -> String {
        "1 process (no launcher)".into()
    }
    fn abort(&self, code: i32) -> ! {
        std::process::exit(code)
    }
    fn finalize(&self) {}
}

/// What the launcher said about this process, from its environment variables.
#[derive(Debug, Clone, PartialEq)]
pub struct Launch {
    /// Which variables were found (for messages).
    pub by: &'static str,
    pub rank: usize,
    pub size: usize,
    pub local_rank: usize,
    /// Ranks on this machine (1 when the launcher does not say).
    pub local_size: usize,
}

/// The launcher's environment read through `var`: OpenMPI's `mpirun` / `prterun`
/// (`OMPI_COMM_WORLD_*`), PMIx as `srun --mpi=pmix` sets it (`PMIX_RANK`, with Slurm's task
/// counts), PMI-1/2 (`PMI_RANK` / `PMI_SIZE`, MPICH's hydra and `srun --mpi=pmi2`). Slurm's own
/// `SLURM_PROCID` alone is not a launch: a batch script runs once with it set.
pub fn launch_from(var: &dyn Fn(&str) -> Option<String>) -> Option<Launch> {
    let num = |k: &str| var(k).and_then(|v| v.trim().parse::<usize>().ok());
    if let (Some(rank), Some(size)) = (num("OMPI_COMM_WORLD_RANK"), num("OMPI_COMM_WORLD_SIZE")) {
        let local_rank = num("OMPI_COMM_WORLD_LOCAL_RANK").unwrap_or(0);
        let local_size = num("OMPI_COMM_WORLD_LOCAL_SIZE").unwrap_or(1);
        return Some(Launch { by: "OMPI_COMM_WORLD_*", rank, size, local_rank, local_size });
    }
    if let Some(rank) = num("PMIX_RANK") {
        let size = num("SLURM_NTASKS").or(num("PMIX_SIZE")).unwrap_or(0);
        let local_rank = num("SLURM_LOCALID").unwrap_or(0);
        let local_size = slurm_local_size(&num, var);
        return Some(Launch { by: "PMIX_RANK", rank, size, local_rank, local_size });
    }
    if let (Some(rank), Some(size)) = (num("PMI_RANK"), num("PMI_SIZE")) {
        let local_rank = num("MPI_LOCALRANKID").or(num("SLURM_LOCALID")).unwrap_or(0);
        let local_size = num("MPI_LOCALNRANKS").unwrap_or_else(|| slurm_local_size(&num, var));
        return Some(Launch { by: "PMI_RANK / PMI_SIZE", rank, size, local_rank, local_size });
    }
    None
}

/// Slurm's tasks on this node: `SLURM_TASKS_PER_NODE` is like `2(x3),1`; the first count is
/// taken (a node's own count is not in the environment; the first is right for even layouts).
fn slurm_local_size(
    num: &dyn Fn(&str) -> Option<usize>,
    var: &dyn Fn(&str) -> Option<String>,
) -> usize {
    let first = var("SLURM_TASKS_PER_NODE")
        .and_then(|v| v.split(['(', ',']).next().and_then(|n| n.trim().parse::<usize>().ok()));
    first.or(num("SLURM_NTASKS_PER_NODE")).unwrap_or(1)
}

static WORLD: OnceLock<Box<dyn Comm>> = OnceLock::new();

/// Join the job this process was launched into: MPI when a launcher's variables are present
/// (the library from `ORLIK_MPI_LIB`, else OpenMPI's `libmpi.so.40`), else [`Single`]. Call it
/// once, early, in the binary; later calls return the same world.
pub fn init() -> Result<&'static dyn Comm, DistError> {
    if let Some(w) = WORLD.get() {
        return Ok(w.as_ref());
    }
    let comm: Box<dyn Comm> = match launch_from(&|k| std::env::var(k).ok()) {
        None => Box::new(Single),
        Some(l) => Box::new(mpi::Mpi::init(&l)?),
    };
    Ok(WORLD.get_or_init(|| comm).as_ref())
}

/// The world [`init`] joined ([`Single`] when it was not called: libraries and tests).
pub fn world() -> &'static dyn Comm {
    match WORLD.get() {
        Some(w) => w.as_ref(),
        None => &Single,
    }
}

/// True on every rank when `flag` is true on any (a stop request seen by one rank).
pub fn any(c: &dyn Comm, flag: bool) -> Result<bool, DistError> {
    let mut v = [if flag { 1.0 } else { 0.0 }];
    c.sum_f64(&mut v)?;
    Ok(v[0] > 0.0)
}

/// Rank 0 runs `f` (claims an output, writes a file) while the others wait: every rank has
/// arrived before it starts, and none goes on before it is done. Where rank 0 fails, it exits
/// through MPI_Abort (the binary's error path), which ends the waiting ranks too.
pub fn on_root<E: From<DistError>>(f: impl FnOnce() -> Result<(), E>) -> Result<(), E> {
    let w = world();
    if w.size() == 1 {
        return f();
    }
    w.barrier()?;
    if w.rank() == 0 {
        f()?;
    }
    w.barrier()?;
    Ok(())
}

/// True on rank 0 (and in a world of one): the rank that writes outputs and prints.
pub fn is_root() -> bool {
    world().rank() == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| pairs.iter().find(|p| p.0 == k).map(|p| p.1.to_string())
    }

    #[test]
    fn launchers_are_read_from_their_variables() {
        assert_eq!(launch_from(&env(&[])), None);
        assert_eq!(launch_from(&env(&[("SLURM_PROCID", "0"), ("SLURM_NTASKS", "4")])), None);
        let o = launch_from(&env(&[
            ("OMPI_COMM_WORLD_RANK", "1"),
            ("OMPI_COMM_WORLD_SIZE", "2"),
            ("OMPI_COMM_WORLD_LOCAL_RANK", "1"),
        ]))
        .unwrap();
        assert_eq!((o.rank, o.size, o.local_rank, o.local_size), (1, 2, 1, 1));
        let p =
            launch_from(&env(&[("PMIX_RANK", "3"), ("SLURM_NTASKS", "8"), ("SLURM_LOCALID", "3")]))
                .unwrap();
        assert_eq!((p.by, p.rank, p.size, p.local_rank), ("PMIX_RANK", 3, 8, 3));
        let h = launch_from(&env(&[("PMI_RANK", "0"), ("PMI_SIZE", "2")])).unwrap();
        assert_eq!((h.rank, h.size), (0, 2));
    }

    #[test]
    fn one_process_is_a_world_of_one() {
        let w = world();
        assert_eq!((w.rank(), w.size()), (0, 1));
        let mut x = [1.5f32, -2.0];
        w.sum_f32(&mut x).unwrap();
        assert_eq!(x, [1.5, -2.0]);
        assert!(any(w, true).unwrap());
        assert!(!any(w, false).unwrap());
    }
}
