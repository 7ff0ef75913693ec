//! Rewards for GRPO: built-in verifiers of a completion against the prompt row's `answer`, or an
//! external command. Several rewards are summed.
//!
//! - `exact`: the completion, trimmed, equals the answer (case-insensitive) → 1, else 0.
//! - `numeric`: the last number in the completion (a Polish decimal comma is accepted) equals the
//!   answer's number within 1e-6 → 1.
//! - `choice`: the first standalone letter A–E in the completion is the answer letter → 1.
//! - `regex:PATTERN`: PATTERN matches somewhere in the completion → 1 (answer not used).
//! - `format:PATTERN`: PATTERN matches the whole trimmed completion → 1 (answer not used).
//! - `cmd:COMMAND`: `sh -c COMMAND` gets `{"prompt", "completion", "answer", "row"}` as JSON on
//!   stdin and prints a number on stdout. A failure, a timeout or a non-number is an error naming
//!   the command and the prompt: never silently scored 0.

use crate::AlignError;
use regex::Regex;
use serde_json::{json, Value};
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub enum Reward {
    Exact,
    Numeric,
    Choice,
    Regex(Regex),
    Format(Regex),
    Cmd { command: String, timeout: Duration },
}

impl Reward {
    pub fn parse(spec: &str, timeout: Duration) -> Result<Reward, AlignError> {
        let re = |p: &str, whole: bool| {
            let p = if whole { format!("^(?:{p})$") } else { p.to_string() };
            Regex::new(&p).map_err(|e| AlignError::Config(format!("reward {spec:?}: {e}")))
        };
        Ok(match spec.split_once(':') {
            None if spec == "exact" => Reward::Exact,
            None if spec == "numeric" => Reward::Numeric,
            None if spec == "choice" => Reward::Choice,
            Some(("regex", p)) => Reward::Regex(re(p, false)?),
            Some(("format", p)) => Reward::Format(re(p, true)?),
            Some(("cmd", c)) if !c.trim().is_empty() => Reward::Cmd { command: c.into(), timeout },
            _ => {
                return Err(AlignError::Config(format!(
                    "unknown reward {spec:?}: use exact, numeric, choice, regex:PATTERN, format:PATTERN or cmd:COMMAND"
                )))
            }
        })
    }

    /// Whether this reward compares against the row's `answer`.
    pub fn needs_answer(&self) -> bool {
        matches!(self, Reward::Exact | Reward::Numeric | Reward::Choice)
    }

    pub fn score(
        &self,
        prompt: &str,
        completion: &str,
        answer: &str,
        row: &Value,
    ) -> Result<f64, AlignError> {
        let b = |x: bool| if x { 1.0 } else { 0.0 };
        Ok(match self {
            Reward::Exact => b(completion.trim().to_lowercase() == answer.trim().to_lowercase()),
            Reward::Numeric => b(match (last_number(completion), last_number(answer)) {
                (Some(x), Some(y)) => (x - y).abs() <= 1e-6 * (1.0 + y.abs()),
                _ => false,
            }),
            Reward::Choice => {
                b(first_letter(completion).is_some_and(|c| Some(c) == first_letter(answer)))
            }
            Reward::Regex(r) => b(r.is_match(completion)),
            Reward::Format(r) => b(r.is_match(completion.trim())),
            Reward::Cmd { command, timeout } => {
                let input = json!({"prompt": prompt, "completion": completion, "answer": answer, "row": row});
                run_command(command, &input.to_string(), *timeout).map_err(|e| {
                    AlignError::Reward(format!(
                        "reward command {command:?} on prompt {:?}: {e}",
                        short(prompt)
                    ))
                })?
            }
        })
    }
}

fn short(s: &str) -> String {
    let t: String = s.chars().rev().take(60).collect::<Vec<_>>().into_iter().rev().collect();
    if t.len() < s.len() {
        format!("…{t}")
    } else {
        t
    }
}

/// The last number written in `s` ("12", "-3,5", "4.25").
pub fn last_number(s: &str) -> Option<f64> {
    let re = Regex::new(r"-?\d+(?:[.,]\d+)?").ok()?;
    re.find_iter(s).last().and_then(|m| m.as_str().replace(',', ".").parse().ok())
}

/// The first letter A–E standing alone (not inside a word) in `s`.
pub fn first_letter(s: &str) -> Option<char> {
    let re = Regex::new(r"\b([A-E])\b").ok()?;
    re.captures(s).and_then(|c| c.get(1)).and_then(|m| m.as_str().chars().next())
}

fn run_command(command: &str, input: &str, timeout: Duration) -> Result<f64, String> {
    use std::os::unix::process::CommandExt;
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(command)
        // Its own process group, so that a timeout ends everything it started, not only `sh`.
        .process_group(0)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        // A command that exits without reading its input is judged by its exit status below.
        let _ = stdin.write_all(input.as_bytes());
    }
    let start = Instant::now();
    loop {
        match child.try_wait().map_err(|e| e.to_string())? {
            Some(_) => break,
            None if start.elapsed() > timeout => {
                // SAFETY: kill(2) on the child's own process group (its pid, negated).
                unsafe {
                    libc::kill(-(child.id() as i32), libc::SIGKILL);
                }
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("timed out after {:.1} s", timeout.as_secs_f64()));
            }
            None => std::thread::sleep(Duration::from_millis(5)),
        }
    }
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!(
            "{} (stderr: {})",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let v: f64 =
        text.trim().parse().map_err(|_| format!("printed {:?}, not a number", text.trim()))?;
    if !v.is_finite() {
        return Err(format!("printed {v}"));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_timed_out_command_is_killed_with_everything_it_started() {
        let d = std::env::temp_dir().join(format!("orlik-reward-{}", std::process::id()));
        let pidfile = d.with_extension("pid");
        let cmd = format!("sleep 30 & echo $! > {}; wait", pidfile.display());
        let e = run_command(&cmd, "{}", Duration::from_millis(300)).unwrap_err();
        assert!(e.contains("timed out"), "{e}");
        let pid: i32 = std::fs::read_to_string(&pidfile).unwrap().trim().parse().unwrap();
        let _ = std::fs::remove_file(&pidfile);
        // The grandchild `sleep` must be gone (kill -0 fails) once the group was killed.
        let mut alive = true;
        for _ in 0..100 {
            // SAFETY: signal 0 only checks that the process exists.
            alive = unsafe { libc::kill(pid, 0) } == 0
                && std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .is_ok_and(|s| !s.contains(") Z "));
            if !alive {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(!alive, "the reward command's child {pid} survived the timeout");
    }

    fn s(r: &str, completion: &str, answer: &str) -> f64 {
        Reward::parse(r, Duration::from_secs(5))
            .unwrap()
            .score("p", completion, answer, &Value::Null)
            .unwrap()
    }

    #[test]
    fn verifiers() {
        assert_eq!(s("numeric", "Razem: 12 jabłek, czyli 7 + 5 = 12.", "12"), 1.0);
        assert_eq!(s("numeric", "Wynik to 3,5", "3.5"), 1.0);
        assert_eq!(s("numeric", "13", "12"), 0.0);
        assert_eq!(s("numeric", "brak", "12"), 0.0);
        assert_eq!(s("exact", "  Warszawa ", "warszawa"), 1.0);
        assert_eq!(s("choice", "Odpowiedź: B. potylicznej", "B"), 1.0);
        assert_eq!(s("choice", "Apteka", "A"), 0.0, "a letter inside a word is not an answer");
        assert_eq!(s("regex:\\d+", "abc 4", ""), 1.0);
        assert_eq!(s("format:[A-D]", " C ", ""), 1.0);
        assert_eq!(s("format:[A-D]", "C bo tak", ""), 0.0);
        assert!(Reward::parse("bogus", Duration::from_secs(1)).is_err());
    }

    #[test]
    fn external_command_scores_and_its_failures_are_errors() {
        let ok = "python3 -c 'import json,sys; d=json.load(sys.stdin); print(1.0 if d[\"completion\"]==d[\"answer\"] else 0.25)'";
        assert_eq!(s(&format!("cmd:{ok}"), "x", "x"), 1.0);
        assert_eq!(s(&format!("cmd:{ok}"), "x", "y"), 0.25);
        let err = |c: &str, t: u64| {
            Reward::parse(&format!("cmd:{c}"), Duration::from_millis(t))
                .unwrap()
                .score("Ile to 2+2?", "4", "4", &Value::Null)
                .unwrap_err()
                .to_string()
        };
        let e = err("exit 3", 5000);
        assert!(e.contains("exit") && e.contains("Ile to 2+2?"), "{e}");
        assert!(err("echo hello", 5000).contains("not a number"));
        assert!(err("sleep 5", 200).contains("timed out"));
    }
}
