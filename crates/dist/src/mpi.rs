//! MPI through the launcher's own library, loaded at run time (`dlopen`), so that the binary
//! builds and runs without MPI. The handles are OpenMPI's ABI: `MPI_Comm`, `MPI_Datatype` and
//! `MPI_Op` are pointers to the library's predefined objects (`&ompi_mpi_comm_world`,
//! `&ompi_mpi_float`, `&ompi_mpi_op_sum`, as OpenMPI's `mpi.h` defines the constants), and
//! `MPI_IN_PLACE` is `(void *) 1`. MPICH's ABI (integer handles) is refused with a message.
//!
//! The job's error handler stays MPI's default, `MPI_ERRORS_ARE_FATAL`: a failed collective
//! (a peer that died) aborts every rank instead of hanging, and `mpirun` names the rank.

use crate::{Comm, DistError, Launch};
use libloading::os::unix::{Library, RTLD_GLOBAL, RTLD_NOW};
use std::ffi::{c_int, c_void};
use std::sync::Mutex;

type Handle = *mut c_void;
type InitThread = unsafe extern "C" fn(*mut c_int, *mut c_void, c_int, *mut c_int) -> c_int;
type CommInt = unsafe extern "C" fn(Handle, *mut c_int) -> c_int;
type Allreduce =
    unsafe extern "C" fn(*const c_void, *mut c_void, c_int, Handle, Handle, Handle) -> c_int;
type CommOnly = unsafe extern "C" fn(Handle) -> c_int;
type Abort = unsafe extern "C" fn(Handle, c_int) -> c_int;
type ReduceScatter =
    unsafe extern "C" fn(*const c_void, *mut c_void, *const c_int, Handle, Handle, Handle) -> c_int;
type Gather = unsafe extern "C" fn(
    *const c_void,
    c_int,
    Handle,
    *mut c_void,
    c_int,
    Handle,
    c_int,
    Handle,
) -> c_int;
type Gatherv = unsafe extern "C" fn(
    *const c_void,
    c_int,
    Handle,
    *mut c_void,
    *const c_int,
    *const c_int,
    Handle,
    c_int,
    Handle,
) -> c_int;
type Allgatherv = unsafe extern "C" fn(
    *const c_void,
    c_int,
    Handle,
    *mut c_void,
    *const c_int,
    *const c_int,
    Handle,
    Handle,
) -> c_int;
type NoArgs = unsafe extern "C" fn() -> c_int;

/// OpenMPI's `MPI_THREAD_SERIALIZED`: any thread may call, one at a time (the mutex below).
const THREAD_SERIALIZED: c_int = 2;
/// OpenMPI's `MPI_IN_PLACE`.
const IN_PLACE: *const c_void = std::ptr::without_provenance(1);
/// Elements per `MPI_Allreduce` (its count is a C int).
const CHUNK: usize = 1 << 28;

struct Fns {
    allreduce: Allreduce,
    reduce_scatter: ReduceScatter,
    allgatherv: Allgatherv,
    gather: Gather,
    gatherv: Gatherv,
    barrier: CommOnly,
    abort: Abort,
    finalize: NoArgs,
    comm: Handle,
    float: Handle,
    double: Handle,
    int: Handle,
    byte: Handle,
    sum: Handle,
    max: Handle,
}

pub(crate) struct Mpi {
    fns: Mutex<Fns>,
    rank: usize,
    size: usize,
    local_rank: usize,
    path: String,
}

// SAFETY: the handles are addresses of the library's static objects, valid for the process's
// life (the library is never unloaded); every call goes through the mutex (MPI_THREAD_SERIALIZED).
unsafe impl Send for Mpi {}
unsafe impl Sync for Mpi {}

fn load(l: &Launch) -> Result<(Library, String), DistError> {
    let names = match std::env::var("ORLIK_MPI_LIB") {
        Ok(p) => vec![p],
        Err(_) => vec!["libmpi.so.40".to_string(), "libmpi.so".to_string()],
    };
    let mut errs = Vec::new();
    for n in &names {
        // RTLD_GLOBAL: OpenMPI's plugins (dlopened by libmpi itself) resolve libmpi's symbols.
        // SAFETY: loading a shared library runs its initialisers; libmpi's are MPI's own.
        match unsafe { Library::open(Some(n), RTLD_NOW | RTLD_GLOBAL) } {
            Ok(lib) => return Ok((lib, n.clone())),
            Err(e) => errs.push(e.to_string()),
        }
    }
    Err(DistError::Load(format!(
        "launched as rank {} of {} ({} is set) but no MPI library could be loaded ({}); install \
         OpenMPI (Debian: openmpi-bin) or set ORLIK_MPI_LIB to its libmpi.so",
        l.rank,
        l.size,
        l.by,
        errs.join("; ")
    )))
}

/// The value of symbol `name`: a function pointer, or (with `T` = `Handle`) the address of a
/// predefined object.
fn sym<T: Copy>(lib: &Library, path: &str, name: &str) -> Result<T, DistError> {
    let z = format!("{name}\0");
    // SAFETY: T is the symbol's C type as OpenMPI's mpi.h declares it.
    unsafe { lib.get::<T>(z.as_bytes()) }.map(|s| *s).map_err(|_| {
        DistError::Load(format!(
            "{path} has no symbol {name}: only OpenMPI's libmpi is supported (MPICH's ABI is not, \
             yet); set ORLIK_MPI_LIB to OpenMPI's libmpi.so"
        ))
    })
}

/// Per-rank counts as MPI's C ints: one per rank, each below 2³¹ (the callers' rounds).
fn c_counts(counts: &[usize], size: usize) -> Result<Vec<c_int>, DistError> {
    if counts.len() != size || counts.iter().any(|&n| n > c_int::MAX as usize) {
        return Err(DistError::Internal(format!(
            "{} counts for {size} ranks, largest {} (at most 2^31 - 1 each)",
            counts.len(),
            counts.iter().max().unwrap_or(&0)
        )));
    }
    Ok(counts.iter().map(|&n| n as c_int).collect())
}

fn check(call: &'static str, code: c_int) -> Result<(), DistError> {
    if code == 0 {
        Ok(())
    } else {
        Err(DistError::Call { call, code })
    }
}

impl Mpi {
    pub(crate) fn init(l: &Launch) -> Result<Mpi, DistError> {
        let (lib, path) = load(l)?;
        let comm: Handle = sym(&lib, &path, "ompi_mpi_comm_world")?;
        let init: InitThread = sym(&lib, &path, "MPI_Init_thread")?;
        let rank_fn: CommInt = sym(&lib, &path, "MPI_Comm_rank")?;
        let size_fn: CommInt = sym(&lib, &path, "MPI_Comm_size")?;
        let fns = Fns {
            allreduce: sym(&lib, &path, "MPI_Allreduce")?,
            reduce_scatter: sym(&lib, &path, "MPI_Reduce_scatter")?,
            allgatherv: sym(&lib, &path, "MPI_Allgatherv")?,
            gather: sym(&lib, &path, "MPI_Gather")?,
            gatherv: sym(&lib, &path, "MPI_Gatherv")?,
            barrier: sym(&lib, &path, "MPI_Barrier")?,
            abort: sym(&lib, &path, "MPI_Abort")?,
            finalize: sym(&lib, &path, "MPI_Finalize")?,
            comm,
            float: sym(&lib, &path, "ompi_mpi_float")?,
            double: sym(&lib, &path, "ompi_mpi_double")?,
            int: sym(&lib, &path, "ompi_mpi_int")?,
            byte: sym(&lib, &path, "ompi_mpi_byte")?,
            sum: sym(&lib, &path, "ompi_mpi_op_sum")?,
            max: sym(&lib, &path, "ompi_mpi_op_max")?,
        };
        // The library stays loaded for the process's life: the handles point into it.
        std::mem::forget(lib);
        let (mut provided, mut rank, mut size) = (0, 0, 0);
        // SAFETY: argc / argv may be NULL (MPI-2); the out-pointers are live locals.
        unsafe {
            let (argc, argv) = (std::ptr::null_mut(), std::ptr::null_mut());
            check("MPI_Init_thread", init(argc, argv, THREAD_SERIALIZED, &mut provided))?;
            check("MPI_Comm_rank", rank_fn(comm, &mut rank))?;
            check("MPI_Comm_size", size_fn(comm, &mut size))?;
        }
        let (rank, size) = (rank as usize, size as usize);
        if provided < THREAD_SERIALIZED {
            return Err(DistError::Launch(format!(
                "{path}: MPI gives thread level {provided}, orlik needs MPI_THREAD_SERIALIZED (2)"
            )));
        }
        if (l.size != 0 && size != l.size) || rank != l.rank {
            return Err(DistError::Launch(format!(
                "the launcher says rank {} of {} ({}), MPI says rank {rank} of {size}: was the \
                 job started by another MPI than {path}?",
                l.rank, l.size, l.by
            )));
        }
        Ok(Mpi { fns: Mutex::new(fns), rank, size, local_rank: l.local_rank, path })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Fns> {
        // A panic while holding the lock leaves MPI as it was (calls are atomic to us).
        self.fns.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn allreduce(
        &self,
        ptr: *mut c_void,
        n: usize,
        dtype: fn(&Fns) -> Handle,
        width: usize,
        op: fn(&Fns) -> Handle,
    ) -> Result<(), DistError> {
        let f = self.lock();
        let mut done = 0;
        while done < n {
            let c = (n - done).min(CHUNK);
            // SAFETY: ptr + done·width .. + c·width lies inside the caller's buffer; in place.
            let p = unsafe { ptr.cast::<u8>().add(done * width).cast::<c_void>() };
            let code = unsafe { (f.allreduce)(IN_PLACE, p, c as c_int, dtype(&f), op(&f), f.comm) };
            check("MPI_Allreduce", code)?;
            done += c;
        }
        Ok(())
    }
}

impl Comm for Mpi {
    fn rank(&self) -> usize {
        self.rank
    }
    fn size(&self) -> usize {
        self.size
    }
    fn local_rank(&self) -> usize {
        self.local_rank
    }
    fn sum_f32(&self, buf: &mut [f32]) -> Result<(), DistError> {
        self.allreduce(buf.as_mut_ptr().cast(), buf.len(), |f| f.float, 4, |f| f.sum)
    }
    fn sum_f64(&self, buf: &mut [f64]) -> Result<(), DistError> {
        self.allreduce(buf.as_mut_ptr().cast(), buf.len(), |f| f.double, 8, |f| f.sum)
    }
    fn max_f64(&self, buf: &mut [f64]) -> Result<(), DistError> {
        self.allreduce(buf.as_mut_ptr().cast(), buf.len(), |f| f.double, 8, |f| f.max)
    }
    fn reduce_scatter_f32(
        &self,
        send: &[f32],
        recv: &mut [f32],
        counts: &[usize],
    ) -> Result<(), DistError> {
        let c = c_counts(counts, self.size)?;
        let total: usize = counts.iter().sum();
        if send.len() != total || recv.len() != counts[self.rank] {
            return Err(DistError::Internal(format!(
                "reduce-scatter of {} elements into {} here, counts {counts:?}",
                send.len(),
                recv.len()
            )));
        }
        let f = self.lock();
        // SAFETY: send holds Σ counts floats and recv this rank's count (checked above); the
        // counts array has one entry per rank.
        let code = unsafe {
            (f.reduce_scatter)(
                send.as_ptr().cast(),
                recv.as_mut_ptr().cast(),
                c.as_ptr(),
                f.float,
                f.sum,
                f.comm,
            )
        };
        check("MPI_Reduce_scatter", code)
    }
    fn all_gather_f32(&self, buf: &mut [f32], counts: &[usize]) -> Result<(), DistError> {
        let c = c_counts(counts, self.size)?;
        let total: usize = counts.iter().sum();
        if buf.len() != total || total > c_int::MAX as usize {
            return Err(DistError::Internal(format!(
                "all-gather into {} elements, counts {counts:?}",
                buf.len()
            )));
        }
        let displs: Vec<c_int> = counts
            .iter()
            .scan(0usize, |at, &n| {
                let d = *at;
                *at += n;
                Some(d as c_int)
            })
            .collect();
        let f = self.lock();
        // SAFETY: in place (MPI_IN_PLACE: each rank's piece is already at its displacement);
        // buf holds Σ counts floats, counts and displs one entry per rank.
        let code = unsafe {
            (f.allgatherv)(
                IN_PLACE,
                0,
                f.float,
                buf.as_mut_ptr().cast(),
                c.as_ptr(),
                displs.as_ptr(),
                f.float,
                f.comm,
            )
        };
        check("MPI_Allgatherv", code)
    }
    fn gather_bytes(&self, bytes: &[u8]) -> Result<Vec<u8>, DistError> {
        let n = c_int::try_from(bytes.len())
            .map_err(|_| DistError::Internal(format!("gather of {} bytes", bytes.len())))?;
        let root = self.rank == 0;
        let mut lens = vec![0 as c_int; if root { self.size } else { 0 }];
        let f = self.lock();
        // SAFETY: one int sent per rank; on rank 0 `lens` has room for one per rank (the
        // receive buffer is not read elsewhere).
        let code = unsafe {
            (f.gather)(
                (&n as *const c_int).cast(),
                1,
                f.int,
                lens.as_mut_ptr().cast(),
                1,
                f.int,
                0,
                f.comm,
            )
        };
        check("MPI_Gather", code)?;
        let displs: Vec<c_int> = lens
            .iter()
            .scan(0 as c_int, |at, &l| {
                let d = *at;
                *at = at.saturating_add(l);
                Some(d)
            })
            .collect();
        let total: usize = lens.iter().map(|&l| l as usize).sum();
        if root && total > c_int::MAX as usize {
            return Err(DistError::Internal(format!("gather of {total} bytes in all")));
        }
        let mut out = vec![0u8; total];
        // SAFETY: each rank sends its n bytes; rank 0 receives Σ lens bytes at displs (both
        // arrays one entry per rank, only read on the root).
        let code = unsafe {
            (f.gatherv)(
                bytes.as_ptr().cast(),
                n,
                f.byte,
                out.as_mut_ptr().cast(),
                lens.as_ptr(),
                displs.as_ptr(),
                f.byte,
                0,
                f.comm,
            )
        };
        check("MPI_Gatherv", code)?;
        Ok(out)
    }
    fn barrier(&self) -> Result<(), DistError> {
        let f = self.lock();
        // SAFETY: the world communicator of an initialised MPI.
        check("MPI_Barrier", unsafe { (f.barrier)(f.comm) })
    }
    fn describe(&self) -> String {
        format!("rank {} of {} (MPI: {})", self.rank, self.size, self.path)
    }
    fn abort(&self, code: i32) -> ! {
        let f = self.lock();
        // SAFETY: as above; MPI_Abort does not return when it works.
        unsafe { (f.abort)(f.comm, code) };
        std::process::exit(code)
    }
    fn finalize(&self) {
        let f = self.lock();
        // SAFETY: called once, at exit, after the last collective.
        unsafe { (f.finalize)() };
    }
}
