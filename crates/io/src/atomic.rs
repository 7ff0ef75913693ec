//! Atomic directory writes: build everything in a hidden temp directory beside the target (same
//! filesystem), fsync every file and the directory, then rename into place. A killed writer
//! leaves only `.NAME.orlik-tmp-*`, never a half-written directory under the final name; the
//! next atomic write into the same parent removes such leftovers once their writer is dead (each
//! temp directory records its writer's pid and start time in [`TMP_MARKER`]).

use crate::{io_err, IoError};
use std::fs::{self, File};
use std::path::{Path, PathBuf};

fn fsync_dir(dir: &Path) -> Result<(), IoError> {
    File::open(dir).and_then(|f| f.sync_all()).map_err(io_err(dir))
}

/// The file inside an unfinished temp directory naming its writer: `PID START_TICKS`.
pub const TMP_MARKER: &str = ".orlik-tmp-writer";

/// Start time of process `pid` in clock ticks since boot (field 22 of /proc/PID/stat), which
/// tells a live writer from a new process that reused its pid.
fn start_ticks(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces: count after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

fn writer_alive(pid: u32, ticks: Option<u64>) -> bool {
    match (start_ticks(pid), ticks) {
        (None, _) => false,
        (Some(now), Some(then)) => now == then,
        (Some(_), None) => true,
    }
}

/// Remove `parent`'s leftovers of killed orlik writers: `.NAME.orlik-tmp-PID-*` directories that
/// hold [`TMP_MARKER`] with a dead writer, and `.NAME.orlik-old-PID-*` directories (an output
/// being replaced, with orlik's output marker) whose writer is dead. Nothing else is touched.
pub fn clean_stale(parent: &Path) {
    let Ok(entries) = fs::read_dir(parent) else { return };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        let path = e.path();
        if !name.starts_with('.') || path.is_symlink() {
            continue;
        }
        if path.is_file() {
            // `write_file_atomically`'s temp file: `.NAME.orlik-tmp-PID`, no room for a marker.
            let pid = name.rsplit_once(".orlik-tmp-").and_then(|(_, p)| p.parse::<u32>().ok());
            if pid.is_some_and(|p| !writer_alive(p, None)) {
                let _ = fs::remove_file(&path);
            }
            continue;
        }
        let name_pid = |rest: &str| rest.split('-').next().and_then(|p| p.parse::<u32>().ok());
        let (ours, pid, ticks) = if let Some(rest) = name.split(".orlik-tmp-").nth(1) {
            // orlik's: it holds the writer marker (possibly half-written: killed while writing
            // it), or the output marker (killed after the writer marker came down, just before
            // the rename), or nothing yet (killed right after creating it).
            let writer = fs::read_to_string(path.join(TMP_MARKER)).ok();
            let ticks = writer
                .as_deref()
                .and_then(|t| t.split_whitespace().nth(1))
                .and_then(|t| t.parse().ok());
            let empty = fs::read_dir(&path).is_ok_and(|mut d| d.next().is_none());
            (
                writer.is_some() || path.join(crate::output::MARKER).is_file() || empty,
                name_pid(rest),
                ticks,
            )
        } else if let Some(rest) = name.split(".orlik-old-").nth(1) {
            (path.join(crate::output::MARKER).is_file(), name_pid(rest), None)
        } else {
            continue;
        };
        if ours && pid.is_some_and(|p| !writer_alive(p, ticks)) {
            let _ = fs::remove_dir_all(&path);
        }
    }
}

/// Write a directory of `kind` (see [`crate::output`]) at `target` through `fill(temp_dir)`; the
/// output marker is written first, so the finished directory carries it. An existing `target` is
/// an error unless `overwrite`, in which case it is replaced only after the new one is complete,
/// and only if its marker says it is a `kind` output.
pub fn write_dir_atomically<E: From<IoError>>(
    target: &Path,
    kind: &str,
    overwrite: bool,
    fill: impl FnOnce(&Path) -> Result<(), E>,
) -> Result<(), E> {
    if target.exists() && !overwrite {
        return Err(IoError::Exists(target.to_path_buf()).into());
    }
    if target.exists() {
        crate::output::check(target, kind, &[], crate::output::Mode::Replace)?;
    }
    let parent = match target.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    fs::create_dir_all(&parent).map_err(|e| E::from(io_err(&parent)(e)))?;
    clean_stale(&parent);
    let name =
        target.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_else(|| "out".into());
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let pid = std::process::id();
    let tmp = parent.join(format!(".{name}.orlik-tmp-{pid}-{nanos}"));
    fs::create_dir(&tmp).map_err(|e| E::from(io_err(&tmp)(e)))?;
    let writer = format!("{pid} {}", start_ticks(pid).map_or(String::new(), |t| t.to_string()));
    let result = (|| -> Result<(), E> {
        fs::write(tmp.join(TMP_MARKER), writer)
            .map_err(|e| E::from(io_err(tmp.join(TMP_MARKER))(e)))?;
        crate::output::write_marker(&tmp, kind)?;
        fill(&tmp)?;
        fs::remove_file(tmp.join(TMP_MARKER))
            .map_err(|e| E::from(io_err(tmp.join(TMP_MARKER))(e)))?;
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
    let name =
        target.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_else(|| "out".into());
    let tmp = target.with_file_name(format!(".{name}.orlik-tmp-{}", std::process::id()));
    if let Some(parent) = target.parent().filter(|p| !p.as_os_str().is_empty()) {
        clean_stale(parent);
    }
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

/// Write one file atomically from a stream: `write` fills a temp file beside `target` (fsynced),
/// which is renamed over `target` only when `write` succeeds; on error nothing is left behind.
/// A killed writer's temp file is removed by the next writer in the same directory
/// ([`clean_stale`]).
pub fn write_file_streaming(
    target: &Path,
    write: impl FnOnce(&mut std::io::BufWriter<File>) -> Result<(), IoError>,
) -> Result<(), IoError> {
    let name =
        target.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_else(|| "out".into());
    let tmp = target.with_file_name(format!(".{name}.orlik-tmp-{}", std::process::id()));
    let parent = target.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    clean_stale(parent);
    let r = (|| {
        let f = File::create(&tmp).map_err(io_err(&tmp))?;
        let mut w = std::io::BufWriter::with_capacity(1 << 20, f);
        write(&mut w)?;
        let f = w.into_inner().map_err(|e| io_err(&tmp)(e.into_error()))?;
        f.sync_all().map_err(io_err(&tmp))?;
        fs::rename(&tmp, target).map_err(io_err(target))?;
        fsync_dir(parent)
    })();
    if r.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_leaves_nothing_under_the_final_name() {
        let d = tempfile::tempdir().unwrap();
        let target = d.path().join("out");
        let r: Result<(), IoError> = write_dir_atomically(&target, "test", false, |tmp| {
            fs::write(tmp.join("a"), b"x").unwrap();
            Err(IoError::Format { path: tmp.into(), msg: "boom".into() })
        });
        assert!(r.is_err());
        assert!(!target.exists());
        assert_eq!(fs::read_dir(d.path()).unwrap().count(), 0, "temp dir not cleaned");
        write_dir_atomically::<IoError>(&target, "test", false, |tmp| {
            let _: () = fs::write(tmp.join("a"), b"1").unwrap();
            Ok(())
        })
        .unwrap();
        let e = write_dir_atomically::<IoError>(&target, "test", false, |_| Ok(())).unwrap_err();
        assert!(e.to_string().contains("already exists"));
        write_dir_atomically::<IoError>(&target, "test", true, |tmp| {
            let _: () = fs::write(tmp.join("b"), b"2").unwrap();
            Ok(())
        })
        .unwrap();
        assert!(target.join("b").exists() && !target.join("a").exists());
        let e = write_dir_atomically::<IoError>(&target, "other", true, |_| Ok(())).unwrap_err();
        assert!(e.to_string().contains("another command"), "{e}");
    }

    #[test]
    fn stale_temp_dirs_of_dead_writers_are_cleaned_and_live_ones_kept() {
        let d = tempfile::tempdir().unwrap();
        // A dead writer: a pid that exited (a child we waited for).
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        let stale = d.path().join(format!(".m.orlik-tmp-{dead}-1"));
        fs::create_dir(&stale).unwrap();
        fs::write(stale.join(TMP_MARKER), format!("{dead} 1")).unwrap();
        let live = d.path().join(format!(".m.orlik-tmp-{}-2", std::process::id()));
        fs::create_dir(&live).unwrap();
        let me = std::process::id();
        fs::write(live.join(TMP_MARKER), format!("{me} {}", start_ticks(me).unwrap())).unwrap();
        // A pid reused by another process: recorded start time differs.
        let reused = d.path().join(format!(".m.orlik-tmp-{me}-3"));
        fs::create_dir(&reused).unwrap();
        fs::write(reused.join(TMP_MARKER), format!("{me} 0")).unwrap();
        // Not orlik's: same name shape, no marker.
        let foreign = d.path().join(format!(".m.orlik-tmp-{dead}-4"));
        fs::create_dir(&foreign).unwrap();
        fs::write(foreign.join("data"), b"not orlik's").unwrap(); // same name shape, no marker, content
        let unmarked = d.path().join(format!(".m.orlik-tmp-{dead}-5")); // killed before its marker
        fs::create_dir(&unmarked).unwrap();
        let renaming = d.path().join(format!(".m.orlik-tmp-{dead}-6")); // killed just before the rename
        fs::create_dir(&renaming).unwrap();
        fs::write(renaming.join(crate::output::MARKER), b"{}").unwrap();
        let stale_file = d.path().join(format!(".state.json.orlik-tmp-{dead}"));
        fs::write(&stale_file, b"{").unwrap();
        write_dir_atomically::<IoError>(&d.path().join("m"), "test", false, |_| Ok(())).unwrap();
        assert!(
            !stale.exists()
                && !reused.exists()
                && !stale_file.exists()
                && !unmarked.exists()
                && !renaming.exists()
        );
        assert!(live.exists() && foreign.exists());
        assert!(!d.path().join("m").join(TMP_MARKER).exists());
        assert!(d.path().join("m").join(crate::output::MARKER).exists());
    }
}
