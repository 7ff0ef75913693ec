//! NVRTC: the kernel modules compiled at run time for the GPU found, to PTX for its virtual
//! architecture (`compute_90` on H100 / H200), which the driver turns into machine code. The
//! library is the machine's own (it must not be newer than the driver: the driver refuses PTX
//! of a newer ISA), found by its soname on the library path, or the file `ORLIK_NVRTC_LIB`
//! names (CI points it at the `nvidia-cuda-nvrtc` package's library: compiling needs no GPU).
//! PTX is cached under `$ORLIK_CACHE/cuda-kernels` (default `~/.cache/orlik`), keyed by the
//! sha256 of the source, the architecture, the options and the NVRTC version.

use crate::kernels::Module;
use crate::CudaError;
use cudarc::nvrtc::{self, CompileError, CompileOptions};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// NVRTC options besides the architecture (part of the cache key).
const OPTIONS: [&str; 1] = ["--std=c++17"];

/// Make NVRTC loadable: open `ORLIK_NVRTC_LIB` when set (cudarc then finds the loaded library
/// by its soname), then check that the library is there.
pub fn load() -> Result<(), CudaError> {
    static PRELOADED: OnceLock<Result<(), String>> = OnceLock::new();
    let pre = PRELOADED.get_or_init(|| match std::env::var_os("ORLIK_NVRTC_LIB") {
        None => Ok(()),
        Some(path) => preload(Path::new(&path))
            .map_err(|e| format!("ORLIK_NVRTC_LIB={}: {e}", Path::new(&path).display())),
    });
    pre.clone().map_err(CudaError::Nvrtc)?;
    // SAFETY: only tries to dlopen the library.
    if unsafe { nvrtc::sys::is_culib_present() } {
        Ok(())
    } else {
        Err(CudaError::Nvrtc(
            "libnvrtc.so.13 is not on the library path (install CUDA 13's NVRTC, or set \
             ORLIK_NVRTC_LIB to the file)"
                .into(),
        ))
    }
}

/// Open libnvrtc-builtins (which NVRTC itself opens by soname at its first compile) from the
/// directory of `lib`, then `lib`; both stay loaded for the process, so later opens by soname,
/// cudarc's and NVRTC's own, find them.
fn preload(lib: &Path) -> Result<(), String> {
    let dir = lib.parent().unwrap_or(Path::new("."));
    let mut builtins: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libnvrtc-builtins.so"))
        })
        .collect();
    builtins.sort();
    for path in builtins.iter().chain(std::iter::once(&lib.to_path_buf())) {
        // SAFETY: loading NVRTC's libraries runs only their initialisers.
        let handle = unsafe { libloading::Library::new(path) }.map_err(|e| e.to_string())?;
        std::mem::forget(handle);
    }
    Ok(())
}

/// NVRTC's version, "13.0".
pub fn version() -> Result<String, CudaError> {
    load()?;
    let (mut major, mut minor) = (0, 0);
    // SAFETY: two out-pointers to live integers.
    let r = unsafe { nvrtc::sys::nvrtcVersion(&mut major, &mut minor) };
    r.result().map_err(|e| CudaError::Nvrtc(format!("nvrtcVersion: {e:?}")))?;
    Ok(format!("{major}.{minor}"))
}

/// The PTX target for a compute capability: (9, 0) -> "compute_90".
pub fn arch_for(capability: (i32, i32)) -> String {
    format!("compute_{}{}", capability.0, capability.1)
}

/// `module` compiled for `arch` ("compute_90"), without the cache.
pub fn compile(module: &Module, arch: &str) -> Result<String, CudaError> {
    let version = version()?;
    // CompileOptions takes the architecture as &'static str: one leaked string per
    // architecture compiled, a handful per process at most.
    static ARCHS: OnceLock<std::sync::Mutex<Vec<&'static str>>> = OnceLock::new();
    let arch_static: &'static str = {
        let mut known = ARCHS.get_or_init(Default::default).lock().map_err(|_| {
            CudaError::Internal("the NVRTC architecture list's lock was poisoned".into())
        })?;
        match known.iter().find(|a| **a == arch) {
            Some(a) => a,
            None => {
                let a: &'static str = Box::leak(arch.to_string().into_boxed_str());
                known.push(a);
                a
            }
        }
    };
    let opts = CompileOptions {
        arch: Some(arch_static),
        options: OPTIONS.iter().map(|s| s.to_string()).collect(),
        name: Some(format!("{}.cu", module.name)),
        ..Default::default()
    };
    match nvrtc::compile_ptx_with_opts(module.full_source(), opts) {
        Ok(ptx) => Ok(ptx.to_src()),
        Err(CompileError::CompileError { log, .. }) => Err(CudaError::Compile {
            module: module.name.into(),
            arch: arch.into(),
            version,
            log: log.to_string_lossy().into_owned(),
        }),
        Err(e) => Err(CudaError::Nvrtc(format!("kernels/{}.cu: {e}", module.name))),
    }
}

/// The directory of cached PTX.
pub fn cache_dir() -> PathBuf {
    let base = std::env::var_os("ORLIK_CACHE").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| ".".into())).join(".cache/orlik")
    });
    base.join("cuda-kernels")
}

/// `module` for `arch` from the cache in `dir`, compiled and stored there when missing. A cache
/// that cannot be written is not an error: the PTX is returned all the same.
pub fn compile_cached(module: &Module, arch: &str, dir: &Path) -> Result<String, CudaError> {
    let version = version()?;
    let mut h = Sha256::new();
    for part in [module.full_source().as_str(), arch, &OPTIONS.join(" "), &version] {
        h.update(part.as_bytes());
        h.update([0u8]);
    }
    let key: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
    let path = dir.join(format!("{}-{arch}-{}.ptx", module.name, &key[..16]));
    if let Ok(ptx) = std::fs::read_to_string(&path) {
        return Ok(ptx);
    }
    let ptx = compile(module, arch)?;
    // Written under a temporary name and renamed: a killed run never leaves half a file that a
    // later run would load.
    let tmp = dir.join(format!(".{}.{}.tmp", module.name, std::process::id()));
    let stored = std::fs::create_dir_all(dir)
        .and_then(|_| std::fs::write(&tmp, &ptx))
        .and_then(|_| std::fs::rename(&tmp, &path));
    if stored.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    Ok(ptx)
}
