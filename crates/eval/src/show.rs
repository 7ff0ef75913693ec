//! The measurements as a person reads them (`orlik eval`'s tables) and as one JSON document.

use crate::agree::Agreement;
use crate::mc::McResult;
use crate::suite::{PplReport, SpeedRow};
use serde_json::{json, Value};
use std::fmt::Write as _;
use std::path::Path;

impl PplReport {
    /// One line per text, and the pooled total when there are several.
    pub fn text(&self) -> String {
        let mut s = String::new();
        for (f, x) in &self.files {
            let _ = writeln!(
                s,
                "{f}: {} tokens, nll {:.4}, ppl {:.3}, bits/byte {:.4}, {:.0} tokens/s",
                x.tokens, x.nll, x.ppl, x.bits_per_byte, x.tokens_per_s
            );
        }
        if self.files.len() > 1 {
            let t = &self.total;
            let _ = writeln!(
                s,
                "total: {} tokens, ppl {:.3}, bits/byte {:.4}",
                t.tokens, t.ppl, t.bits_per_byte
            );
        }
        s.trim_end().to_string()
    }

    /// The total's fields, `files` (each text's), `context` and `stride`.
    pub fn json(&self) -> Value {
        let mut v = serde_json::to_value(&self.total).unwrap_or_default();
        if let Some(o) = v.as_object_mut() {
            let files: serde_json::Map<String, Value> = self
                .files
                .iter()
                .map(|(f, x)| (f.clone(), serde_json::to_value(x).unwrap_or_default()))
                .collect();
            o.insert("files".into(), Value::Object(files));
            o.insert("context".into(), self.context.into());
            o.insert("stride".into(), self.stride.into());
        }
        v
    }
}

impl McResult {
    pub fn text(&self, tasks: &Path, context: usize) -> String {
        let cut = if self.truncated > 0 {
            format!(", {} choices truncated from the left to {context} tokens", self.truncated)
        } else {
            String::new()
        };
        format!(
            "{}: {} questions, accuracy {:.2}% (length-normalised {:.2}%), chance {:.2}%{cut}",
            tasks.display(),
            self.questions,
            100.0 * self.accuracy,
            100.0 * self.accuracy_norm,
            100.0 * self.chance,
        )
    }

    pub fn json(&self, tasks: &Path) -> Value {
        json!({"tasks": tasks.display().to_string(), "result": self})
    }
}

impl Agreement {
    pub fn text(&self) -> String {
        format!(
            "{} tokens: KL(teacher || student) {:.4} nats/token, top-1 agreement {:.2}%",
            self.tokens,
            self.kl,
            100.0 * self.top1
        )
    }
}

/// Tokens per second of every model and measurement, with the speed-up over the first model.
pub fn speed_table(rows: &[SpeedRow]) -> String {
    let Some(base) = rows.first() else { return String::new() };
    let mut s = format!("{:40}", "model");
    for t in &base.timings {
        let _ = write!(s, " {:>22}", t.what.split(" tokens").next().unwrap_or(&t.what));
    }
    s += "   (tokens/s; x = speed-up over the first model)\n";
    for r in rows {
        let _ = write!(s, "{:40}", r.model);
        for (t, b) in r.timings.iter().zip(&base.timings) {
            let _ =
                write!(s, " {:>13.1} ({:>5.2}x)", t.tokens_per_s, t.tokens_per_s / b.tokens_per_s);
        }
        s.push('\n');
    }
    s.trim_end().to_string()
}
