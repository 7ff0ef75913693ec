//! Documents read from a source file one at a time, so a corpus larger than memory streams:
//! plain text (paragraphs: pieces between "\n\n", trimmed, empty ones dropped — exactly
//! `text.split("\n\n")`, the definition `orlik train --data` has always used) or JSONL (one
//! JSON object per line, the document is its string field `text_field`).

use crate::TrainError;
use std::io::BufRead;
use std::path::{Path, PathBuf};

/// How a source file holds its documents.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "format", rename_all = "lowercase", deny_unknown_fields)]
pub enum Format {
    /// Paragraphs separated by a blank line.
    Text,
    /// One JSON object per line; the document is the string under `field`.
    Jsonl { field: String },
}

impl Format {
    /// JSONL for `.jsonl` / `.json` names, text otherwise.
    pub fn guess(path: &Path, field: &str) -> Format {
        match path.extension().and_then(|e| e.to_str()) {
            Some("jsonl") | Some("json") => Format::Jsonl { field: field.into() },
            _ => Format::Text,
        }
    }
}

/// A streaming reader of one source's documents.
pub struct Docs {
    path: PathBuf,
    format: Format,
    r: Box<dyn BufRead>,
    line_no: usize,
    /// Text: the paragraph being built.
    buf: String,
    line: Vec<u8>,
    done: bool,
    read: u64,
}

impl Docs {
    pub fn open(path: &Path, format: &Format) -> Result<Docs, TrainError> {
        let f = std::fs::File::open(path).map_err(crate::file_err(path))?;
        Ok(Docs {
            path: path.into(),
            format: format.clone(),
            r: Box::new(std::io::BufReader::with_capacity(1 << 20, f)),
            line_no: 0,
            buf: String::new(),
            line: Vec::new(),
            done: false,
            read: 0,
        })
    }

    fn bad(&self, msg: String) -> TrainError {
        TrainError::Data(format!("{}:{}: {msg}", self.path.display(), self.line_no))
    }

    /// The next line (with its "\n", if any) in `self.line`; false at the end of the file.
    fn read_line(&mut self) -> Result<bool, TrainError> {
        self.line.clear();
        let n = self.r.read_until(b'\n', &mut self.line).map_err(crate::file_err(&self.path))?;
        self.line_no += 1;
        self.read += n as u64;
        Ok(n > 0)
    }

    fn line_str(&self) -> Result<&str, TrainError> {
        std::str::from_utf8(&self.line).map_err(|e| {
            self.bad(format!("not UTF-8 (invalid byte at column {})", e.valid_up_to() + 1))
        })
    }

    /// Bytes of the file read so far.
    pub fn bytes_read(&self) -> u64 {
        self.read
    }

    /// The next document, or None at the end of the file.
    pub fn next_doc(&mut self) -> Result<Option<String>, TrainError> {
        match self.format.clone() {
            Format::Text => self.next_paragraph(),
            Format::Jsonl { field } => self.next_json(&field),
        }
    }

    /// A "\n\n" can only end a line that is exactly "\n" whose predecessor ended in "\n"; after
    /// a split the paragraph starts empty, so matches never overlap, as in `str::split`.
    fn next_paragraph(&mut self) -> Result<Option<String>, TrainError> {
        while !self.done {
            if !self.read_line()? {
                self.done = true;
                break;
            }
            let split = self.line == b"\n" && self.buf.ends_with('\n');
            let s = self.line_str()?.to_string();
            if split {
                self.buf.pop(); // the first "\n" of the pair
                let p = std::mem::take(&mut self.buf);
                let t = p.trim();
                if !t.is_empty() {
                    return Ok(Some(t.to_string()));
                }
            } else {
                self.buf.push_str(&s);
            }
        }
        let p = std::mem::take(&mut self.buf);
        let t = p.trim();
        Ok(if t.is_empty() { None } else { Some(t.to_string()) })
    }

    fn next_json(&mut self, field: &str) -> Result<Option<String>, TrainError> {
        loop {
            if !self.read_line()? {
                return Ok(None);
            }
            let s = self.line_str()?;
            if s.trim().is_empty() {
                continue;
            }
            let v: serde_json::Value =
                serde_json::from_str(s).map_err(|e| self.bad(format!("not JSON: {e}")))?;
            match v.get(field) {
                Some(serde_json::Value::String(t)) if !t.trim().is_empty() => {
                    return Ok(Some(t.clone()))
                }
                // An empty document adds nothing (as an empty paragraph does in text).
                Some(serde_json::Value::String(_)) => continue,
                Some(other) => {
                    let kind = match other {
                        serde_json::Value::Null => "null",
                        serde_json::Value::Bool(_) => "a boolean",
                        serde_json::Value::Number(_) => "a number",
                        serde_json::Value::Array(_) => "an array",
                        _ => "an object",
                    };
                    return Err(self.bad(format!("field {field:?} is {kind}, expected a string")));
                }
                None => return Err(self.bad(format!("no field {field:?} (--text-field)"))),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn docs_of(text: impl AsRef<[u8]>, format: &Format) -> Result<Vec<String>, TrainError> {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, text).unwrap();
        let mut d = Docs::open(&p, format)?;
        let mut out = Vec::new();
        while let Some(x) = d.next_doc()? {
            out.push(x);
        }
        Ok(out)
    }

    #[test]
    fn paragraphs_are_exactly_str_split_on_a_blank_line() {
        let cases = [
            "a\n\nb",
            "a\n\n\nb\n",
            "\n\n\n\na b\nc\n\n  \n\nd\r\n\r\ne",
            "x\n \ny\n\n\n\n\nz\n\n",
            "",
            "\n",
            "za\u{17c}\u{f3}\u{142}\u{107} g\u{119}\u{15b}l\u{105}\n\nja\u{17a}\u{144}",
        ];
        for c in cases {
            let want: Vec<String> = c
                .split("\n\n")
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .map(String::from)
                .collect();
            assert_eq!(docs_of(c, &Format::Text).unwrap(), want, "{c:?}");
        }
    }

    #[test]
    fn jsonl_takes_the_named_field_and_names_the_line_of_a_bad_row() {
        let f = Format::Jsonl { field: "text".into() };
        let got =
            docs_of("{\"text\": \"a b\"}\n\n{\"text\": \"\", \"x\": 1}\n{\"text\":\"c\"}", &f);
        assert_eq!(got.unwrap(), ["a b", "c"]);
        let e = docs_of("{\"text\": \"a\"}\n{\"body\": \"b\"}\n", &f).unwrap_err().to_string();
        assert!(e.contains(":2: no field \"text\""), "{e}");
        let e = docs_of("{\"text\": 3}\n", &f).unwrap_err().to_string();
        assert!(e.contains(":1: field \"text\" is a number"), "{e}");
        let e = docs_of("{\"text\": \"a\"}\n{oops\n", &f).unwrap_err().to_string();
        assert!(e.contains(":2: not JSON"), "{e}");
        let e = docs_of(b"a\n\xff\n", &Format::Text).unwrap_err().to_string();
        assert!(e.contains(":2: not UTF-8"), "{e}");
    }
}
