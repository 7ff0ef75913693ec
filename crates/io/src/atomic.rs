//! Atomic directory writes: build everything in a hidden temp directory beside the target (same
//! filesystem), fsync every file and the directory, then rename into place. A killed writer
//! leaves only `.NAME.orlik-tmp-*`, never a half-written directory under the final name.

use crate::{io_err, IoError};
use std::fs::{self, File};
use std::path::{Path, PathBuf};

fn fsync_dir(dir: &Path) -> Result<(), IoError> {
    File::open(dir).and_then(|f| f.sync_all()).map_err(io_err(dir))
}

/// Write a directory at `target` through `fill(temp_dir)`. An existing `target` is an error
/// unless `overwrite`, in which case it is replaced only after the new one is complete.
pub fn write_dir_atomically<E: From<IoError>>(
    target: &Path,
    overwrite: bool,
    fill: impl FnOnce(&Path) -> Result<(), E>,
) -> Result<(), E> {
    if target.exists() && !overwrite {
        return Err(IoError::Exists(target.to_path_buf()).into());
    }
    let parent = match target.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    fs::create_dir_all(&parent).map_err(|e| E::from(io_err(&parent)(e)))?;
    let name = target.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_else(|| "out".into());
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let tmp = parent.join(format!(".{name}.orlik-tmp-{}-{nanos}", std::process::id()));
    fs::create_dir(&tmp).map_err(|e| E::from(io_err(&tmp)(e)))?;
    let result = (|| -> Result<(), E> {
        fill(&tmp)?;
        for entry in fs::read_dir(&tmp).map_err(|e| E::from(io_err(&tmp)(e)))? {
            let p = entry.map_err(|e| E::from(io_err(&tmp)(e)))?.path();
            if p.is_file() {
                File::open(&p).and_then(|f| f.sync_all()).map_err(|e| E::from(io_err(&p)(e)))?;
            }
        }
        fsync_dir(&tmp)?;
        if target.exists() {
            let old = parent.join(format!(".{name}.orlik-old-{}-{nanos}", std::process::id()));
            fs::rename(target, &old).map_err(|e| E::from(io_err(target)(e)))?;
            fs::rename(&tmp, target).map_err(|e| E::from(io_err(target)(e)))?;
            let _ = fs::remove_dir_all(&old);
        } else {
            fs::rename(&tmp, target).map_err(|e| E::from(io_err(target)(e)))?;
        }
        fsync_dir(&parent)?;
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_dir_all(&tmp);
    }
    result
}

/// Write one file atomically: a temp file beside it, fsync, rename over `target`.
pub fn write_file_atomically(target: &Path, bytes: &[u8]) -> Result<(), IoError> {
    let name = target.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_else(|| "out".into());
    let tmp = target.with_file_name(format!(".{name}.orlik-tmp-{}", std::process::id()));
    let r = (|| {
        let mut f = File::create(&tmp)?;
        std::io::Write::write_all(&mut f, bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, target)
    })();
    if r.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    r.map_err(io_err(target))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_leaves_nothing_under_the_final_name() {
        let d = tempfile::tempdir().unwrap();
        let target = d.path().join("out");
        let r: Result<(), IoError> = write_dir_atomically(&target, false, |tmp| {
            fs::write(tmp.join("a"), b"x").unwrap();
            Err(IoError::Format { path: tmp.into(), msg: "boom".into() })
        });
        assert!(r.is_err());
        assert!(!target.exists());
        assert_eq!(fs::read_dir(d.path()).unwrap().count(), 0, "temp dir not cleaned");
        write_dir_atomically::<IoError>(&target, false, |tmp| Ok(fs::write(tmp.join("a"), b"1").unwrap())).unwrap();
        let e = write_dir_atomically::<IoError>(&target, false, |_| Ok(())).unwrap_err();
        assert!(e.to_string().contains("already exists"));
        write_dir_atomically::<IoError>(&target, true, |tmp| Ok(fs::write(tmp.join("b"), b"2").unwrap())).unwrap();
        assert!(target.join("b").exists() && !target.join("a").exists());
    }
}
