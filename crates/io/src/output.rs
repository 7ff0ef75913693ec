//! Output directories that can never destroy a user's data.
//!
//! Every directory orlik writes carries a marker file, [`MARKER`], saying which kind of output it
//! is and which command wrote it (not `orlik.json`, which travels into derived models). Before any
//! work, a command checks its output with [`check`]:
//! - an output equal to, inside or containing any input (compared after resolving links) is
//!   refused, `--force` or not;
//! - a directory holding files without a marker, or a file, is someone else's: refused;
//! - a directory whose marker names another kind of output is refused;
//! - a directory that is this command's own output is replaced only with `--force` (or continued
//!   with `--resume` where the command can resume).

use crate::{io_err, IoError};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The marker file inside every output directory orlik creates.
pub const MARKER: &str = ".orlik-output.json";

/// Kinds of output that `--resume` continues (training runs, the sensitivity sweep).
pub const RESUMABLE: &[&str] = &["train", "distill", "sft", "dpo", "grpo", "sweep"];

/// What a command intends to do with an output that already exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Write a new output: an existing one of the same kind is an error.
    New,
    /// Replace an existing output of the same kind (`--force`).
    Replace,
    /// Continue an existing output of the same kind (`--resume`).
    Resume,
}

impl Mode {
    pub fn from_flags(force: bool, resume: bool) -> Mode {
        if resume {
            Mode::Resume
        } else if force {
            Mode::Replace
        } else {
            Mode::New
        }
    }
}

/// What [`check`] found at the output path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Found {
    /// Nothing there.
    Absent,
    /// An empty directory.
    Empty,
    /// A directory that is this kind's own output (replace or resume it as the mode says).
    Own,
}

/// The marker's contents.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Marker {
    pub format: u32,
    /// The kind of output: the name of the command that writes it (`convert`, `prune`, `distill`, ...).
    pub kind: String,
    /// The command line that wrote it.
    pub command: String,
    /// Seconds since the Unix epoch when it was claimed.
    pub written: u64,
}

/// The command line of this process, as recorded in markers and outputs.
pub fn command_line() -> String {
    std::env::args()
        .map(|a| if a.contains(' ') { format!("'{a}'") } else { a })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Resolve links and `..` in a path that may not exist yet: the deepest existing ancestor is
/// canonicalised and the rest appended.
pub fn resolve(path: &Path) -> PathBuf {
    let abs = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir().map(|d| d.join(path)).unwrap_or_else(|_| path.to_path_buf())
    };
    let mut rest = Vec::new();
    let mut cur = abs.as_path();
    loop {
        if let Ok(c) = cur.canonicalize() {
            let mut out = c;
            for part in rest.iter().rev() {
                out.push(part);
            }
            return out;
        }
        match (cur.parent(), cur.file_name()) {
            (Some(p), Some(name)) => {
                rest.push(name.to_os_string());
                cur = p;
            }
            _ => return abs,
        }
    }
}

/// Whether `name` is a plain file name (one normal component: no directory, no `..`, not
/// absolute): what an index or manifest may name inside its own directory.
pub fn plain_file_name(name: &str) -> bool {
    // Checked on the text: `Path::components` forgets a trailing slash ("x/" names a directory;
    // found by the shard_index fuzz target).
    let mut c = Path::new(name).components();
    !name.contains('/')
        && !name.contains('\0')
        && matches!((c.next(), c.next()), (Some(std::path::Component::Normal(_)), None))
}

/// Read the marker of `dir`, if it has a readable one.
pub fn read_marker(dir: &Path) -> Option<Marker> {
    let text = std::fs::read(dir.join(MARKER)).ok()?;
    serde_json::from_slice(&text).ok()
}

/// Write the marker of `kind` into `dir` (which must exist).
pub fn write_marker(dir: &Path, kind: &str) -> Result<(), IoError> {
    let written = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let m = Marker { format: 1, kind: kind.into(), command: command_line(), written };
    // Atomically: a kill mid-write must not leave a marker that reads as someone else's file.
    crate::atomic::write_file_atomically(
        &dir.join(MARKER),
        &serde_json::to_vec_pretty(&m).unwrap_or_default(),
    )
}

fn refuse(out: &Path, msg: String) -> IoError {
    IoError::Output { path: out.to_path_buf(), msg }
}

/// Check `out` before a command of `kind` writes it; `inputs` are every file or directory the
/// command reads (missing ones are skipped: their own errors come later).
pub fn check(out: &Path, kind: &str, inputs: &[&Path], mode: Mode) -> Result<Found, IoError> {
    let o = resolve(out);
    for input in inputs {
        if !input.exists() {
            continue;
        }
        let i = resolve(input);
        let what = if o == i {
            "is"
        } else if i.starts_with(&o) {
            "contains"
        } else if o.starts_with(&i) {
            "is inside"
        } else {
            continue;
        };
        return Err(refuse(
            out,
            format!("the output {what} the input {}: choose another -o (orlik never writes over what it reads)", input.display()),
        ));
    }
    let meta = match std::fs::symlink_metadata(out) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Found::Absent),
        Err(e) => return Err(io_err(out)(e)),
        Ok(m) => m,
    };
    if !out.is_dir() {
        let what = if meta.file_type().is_symlink() {
            "a link that does not lead to a directory"
        } else {
            "a file"
        };
        return Err(refuse(
            out,
            format!("exists and is {what}, not an orlik output directory; choose another -o"),
        ));
    }
    let mut names: Vec<String> = std::fs::read_dir(out)
        .map_err(io_err(out))?
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().to_string()))
        // orlik's own temp files of a killed write (removed by the next atomic write)
        .filter(|n| !n.contains(".orlik-tmp-"))
        .collect();
    if names.is_empty() {
        return Ok(Found::Empty);
    }
    let Some(marker) = read_marker(out) else {
        names.sort();
        let shown: Vec<&str> = names.iter().take(4).map(String::as_str).collect();
        let more =
            if names.len() > 4 { format!(" and {} more", names.len() - 4) } else { String::new() };
        return Err(refuse(
            out,
            format!(
                "holds files orlik did not write ({}{more}; no {MARKER}); orlik replaces only its own outputs, even with --force: choose another -o",
                shown.join(", ")
            ),
        ));
    };
    if names.iter().all(|n| n == MARKER) && marker.kind == kind {
        // Claimed by a run of this command that stopped before writing anything: nothing to lose.
        return Ok(Found::Empty);
    }
    if marker.kind != kind {
        return Err(refuse(
            out,
            format!(
                "holds the output of another command (`orlik {}`, written by: {}); a `{kind}` output cannot replace it, even with --force: choose another -o",
                marker.kind, marker.command
            ),
        ));
    }
    match mode {
        Mode::Replace | Mode::Resume => Ok(Found::Own),
        Mode::New => {
            let resume = if RESUMABLE.contains(&kind) { " or --resume to continue it" } else { "" };
            Err(refuse(
                out,
                format!("already holds a `{kind}` output (written by: {}); pass --force to replace it{resume}", marker.command),
            ))
        }
    }
}

/// [`check`], then make `out` a claimed directory of `kind`: an own output is removed under
/// [`Mode::Replace`] (only after its marker said it is ours), kept under [`Mode::Resume`]; the
/// directory is created and marked.
pub fn claim_dir(out: &Path, kind: &str, inputs: &[&Path], mode: Mode) -> Result<Found, IoError> {
    let found = check(out, kind, inputs, mode)?;
    if found == Found::Own && mode == Mode::Replace {
        std::fs::remove_dir_all(out).map_err(io_err(out))?;
    }
    std::fs::create_dir_all(out).map_err(io_err(out))?;
    if found != Found::Own || mode == Mode::Replace {
        write_marker(out, kind)?;
        if let Ok(mut v) = CLAIMED.lock() {
            v.push(out.to_path_buf());
        }
    }
    Ok(found)
}

/// Directories this process claimed fresh (see [`abandon_unused`]).
static CLAIMED: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());

/// On a failed command: remove the directories this process claimed that still hold nothing
/// but the marker, so a bad input leaves no output behind. Anything with content is kept.
pub fn abandon_unused() {
    let claimed = CLAIMED.lock().map(|v| v.clone()).unwrap_or_default();
    for dir in claimed {
        let only_marker =
            std::fs::read_dir(&dir).is_ok_and(|d| d.flatten().all(|e| e.file_name() == MARKER));
        if only_marker {
            let _ = std::fs::remove_file(dir.join(MARKER));
            let _ = std::fs::remove_dir(&dir);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inputs_and_foreign_directories_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let model = d.path().join("model");
        std::fs::create_dir(&model).unwrap();
        std::fs::write(model.join("config.json"), b"{}").unwrap();
        let data = d.path().join("data.txt");
        std::fs::write(&data, b"x").unwrap();
        // equal, inside, containing
        for (out, want) in [
            (model.clone(), "is the input"),
            (model.join("sub"), "is inside"),
            (d.path().to_path_buf(), "contains"),
        ] {
            for mode in [Mode::New, Mode::Replace, Mode::Resume] {
                let e = check(&out, "train", &[&model, &data], mode).unwrap_err().to_string();
                assert!(e.contains(want), "{e}");
            }
        }
        // through a link
        let link = d.path().join("link");
        std::os::unix::fs::symlink(&model, &link).unwrap();
        assert!(check(&link, "train", &[&model], Mode::Replace)
            .unwrap_err()
            .to_string()
            .contains("is the input"));
        // foreign contents, even with --force
        let foreign = d.path().join("foreign");
        std::fs::create_dir(&foreign).unwrap();
        std::fs::write(foreign.join("notes.txt"), b"mine").unwrap();
        let e = check(&foreign, "train", &[], Mode::Replace).unwrap_err().to_string();
        assert!(e.contains("did not write") && e.contains("notes.txt"), "{e}");
        assert!(check(&data, "train", &[], Mode::Replace)
            .unwrap_err()
            .to_string()
            .contains("is a file"));
        assert_eq!(std::fs::read(foreign.join("notes.txt")).unwrap(), b"mine");
    }

    #[test]
    fn own_outputs_are_replaced_only_with_force_and_only_by_their_kind() {
        let d = tempfile::tempdir().unwrap();
        let out = d.path().join("out");
        assert_eq!(check(&out, "prune", &[], Mode::New).unwrap(), Found::Absent);
        assert_eq!(claim_dir(&out, "prune", &[], Mode::New).unwrap(), Found::Absent);
        // claimed but nothing written yet (a run killed at once): free to use again
        assert_eq!(check(&out, "prune", &[], Mode::New).unwrap(), Found::Empty);
        std::fs::write(out.join("w"), b"1").unwrap();
        assert!(check(&out, "prune", &[], Mode::New).unwrap_err().to_string().contains("--force"));
        let e = check(&out, "score", &[], Mode::Replace).unwrap_err().to_string();
        assert!(e.contains("another command") && e.contains("orlik prune"), "{e}");
        assert_eq!(claim_dir(&out, "prune", &[], Mode::Resume).unwrap(), Found::Own);
        assert!(out.join("w").exists());
        assert_eq!(claim_dir(&out, "prune", &[], Mode::Replace).unwrap(), Found::Own);
        assert!(!out.join("w").exists() && out.join(MARKER).exists());
        let empty = d.path().join("empty");
        std::fs::create_dir(&empty).unwrap();
        assert_eq!(check(&empty, "prune", &[], Mode::New).unwrap(), Found::Empty);
    }

    #[test]
    fn only_plain_file_names_are_plain() {
        for ok in ["model-00001-of-00002.safetensors", "a b", ".hidden"] {
            assert!(plain_file_name(ok), "{ok}");
        }
        for bad in ["", ".", "..", "../x", "/etc/passwd", "x/", "a/b", "./x", "x\0y"] {
            assert!(!plain_file_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn resolve_handles_missing_tails_and_dots() {
        let d = tempfile::tempdir().unwrap();
        let base = d.path().canonicalize().unwrap();
        assert_eq!(resolve(&d.path().join("a/b")), base.join("a/b"));
        std::fs::create_dir(d.path().join("x")).unwrap();
        assert_eq!(resolve(&d.path().join("x/../y")), base.join("y"));
    }
}
