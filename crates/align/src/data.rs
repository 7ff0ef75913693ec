//! Alignment data: JSONL rows (errors name the file and line, or `skip_bad` counts them), turned
//! into token sequences with a mask of the tokens the loss is on.
//!
//! Rules for long rows (each counted and reported):
//! - SFT conversations longer than `max_len` + 1 tokens are cut at the end; one with no
//!   assistant token left is dropped.
//! - DPO and GRPO prompts longer than `max_prompt` tokens keep their last `max_prompt` tokens
//!   (the end is nearest the answer, TRL's "keep_end"); DPO answers are then cut at the end so
//!   that prompt + answer fits `max_len` + 1 tokens.

use crate::chat::{ChatTemplate, Message};
use crate::AlignError;
use serde_json::Value;
use std::path::Path;
use tokenizers::Tokenizer;

/// Parse each non-empty line of `path` with `parse`. A bad line is an error naming the file and
/// line, or, with `skip_bad`, skipped and counted (the count is returned).
pub fn read_jsonl<T>(
    path: &Path,
    skip_bad: bool,
    mut parse: impl FnMut(&Value) -> Result<T, String>,
) -> Result<(Vec<T>, usize), AlignError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| AlignError::Data(format!("{}: {e}", path.display())))?;
    let (mut rows, mut bad) = (Vec::new(), 0);
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let r =
            serde_json::from_str::<Value>(line).map_err(|e| e.to_string()).and_then(|v| parse(&v));
        match r {
            Ok(x) => rows.push(x),
            Err(e) if skip_bad => {
                bad += 1;
                eprintln!("warning: {}:{}: {e} (skipped)", path.display(), i + 1);
            }
            Err(e) => {
                return Err(AlignError::Data(format!(
                    "{}:{}: {e} (use --skip-bad to skip such rows)",
                    path.display(),
                    i + 1
                )))
            }
        }
    }
    if rows.is_empty() {
        return Err(AlignError::Data(format!("{}: no usable rows", path.display())));
    }
    Ok((rows, bad))
}

pub fn messages(v: &Value, key: &str) -> Result<Vec<Message>, String> {
    let arr = v
        .as_array()
        .ok_or_else(|| format!("\"{key}\" must be a list of {{\"role\", \"content\"}} objects"))?;
    let mut out = Vec::with_capacity(arr.len());
    for (i, m) in arr.iter().enumerate() {
        let get = |k: &str| m.get(k).and_then(Value::as_str).map(str::to_string);
        match (get("role"), get("content")) {
            (Some(role), Some(content)) => out.push(Message { role, content }),
            _ => {
                return Err(format!("\"{key}\"[{i}] needs string fields \"role\" and \"content\""))
            }
        }
    }
    if out.is_empty() {
        return Err(format!("\"{key}\" is empty"));
    }
    Ok(out)
}

/// A prompt: plain text (used as is) or a conversation (rendered with the chat template and its
/// generation prompt).
#[derive(Debug, Clone, PartialEq)]
pub enum Prompt {
    Text(String),
    Chat(Vec<Message>),
}

pub fn prompt(v: &Value, key: &str) -> Result<Prompt, String> {
    match v.get(key) {
        Some(Value::String(s)) if !s.is_empty() => Ok(Prompt::Text(s.clone())),
        Some(m @ Value::Array(_)) => Ok(Prompt::Chat(messages(m, key)?)),
        _ => Err(format!("missing \"{key}\" (a non-empty string or a list of messages)")),
    }
}

/// The text of an answer field: a string, or a list of messages whose contents are joined (the
/// assistant's continuation).
pub fn answer(v: &Value, key: &str) -> Result<String, String> {
    match v.get(key) {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(m @ Value::Array(_)) => {
            Ok(messages(m, key)?.into_iter().map(|m| m.content).collect::<Vec<_>>().join("\n"))
        }
        _ => Err(format!("missing \"{key}\" (a string or a list of messages)")),
    }
}

/// Tokenizer + template + the limits: everything that turns rows into ids.
pub struct Encoder<'a> {
    pub tok: &'a Tokenizer,
    pub template: &'a ChatTemplate,
    /// Token ids that end a generation / answer (EOS and the template's end of turn).
    pub eos: Vec<u32>,
    pub max_len: usize,
    pub max_prompt: usize,
}

/// Token ids of a rendered conversation and, per token, whether it is trained on.
pub type Masked = (Vec<u32>, Vec<bool>);

/// Counts of rows changed by the length rules.
#[derive(Debug, Default, Clone, Copy, serde::Serialize)]
pub struct Cuts {
    pub truncated: usize,
    pub dropped: usize,
}

impl Encoder<'_> {
    pub fn ids(&self, text: &str) -> Result<Vec<u32>, AlignError> {
        let e = self
            .tok
            .encode(text, false)
            .map_err(|e| AlignError::Data(format!("tokenizer: {e}")))?;
        Ok(e.get_ids().to_vec())
    }

    /// SFT: ids of the rendered conversation and, per id, whether it is the assistant's.
    pub fn conversation(
        &self,
        msgs: &[Message],
        cuts: &mut Cuts,
    ) -> Result<Option<Masked>, AlignError> {
        let (text, spans) = self.template.render_with_spans(msgs)?;
        let e = self
            .tok
            .encode(text.as_str(), false)
            .map_err(|e| AlignError::Data(format!("tokenizer: {e}")))?;
        let mut ids = e.get_ids().to_vec();
        let mut mask: Vec<bool> = e
            .get_offsets()
            .iter()
            .map(|&(s, _)| spans.iter().any(|&(a, b)| s >= a && s < b))
            .collect();
        if ids.len() > self.max_len + 1 {
            ids.truncate(self.max_len + 1);
            mask.truncate(self.max_len + 1);
            cuts.truncated += 1;
        }
        // the first token is never a target
        if !mask.iter().skip(1).any(|&m| m) {
            cuts.dropped += 1;
            return Ok(None);
        }
        Ok(Some((ids, mask)))
    }

    /// Prompt ids (left-truncated to `max_prompt`) and the text it was rendered to.
    pub fn prompt(&self, p: &Prompt, cuts: &mut Cuts) -> Result<(Vec<u32>, String), AlignError> {
        let text = match p {
            Prompt::Text(s) => s.clone(),
            Prompt::Chat(m) => self.template.render(m, true)?,
        };
        let mut ids = self.ids(&text)?;
        if ids.len() > self.max_prompt {
            ids.drain(..ids.len() - self.max_prompt);
            cuts.truncated += 1;
        }
        Ok((ids, text))
    }

    /// Ids of an answer to `p`: for a chat prompt, the assistant turn as the template renders it
    /// (content and end-of-turn marker); for a text prompt, the text followed by EOS.
    pub fn answer(&self, p: &Prompt, answer: &str) -> Result<Vec<u32>, AlignError> {
        match p {
            Prompt::Text(_) => {
                let mut ids = self.ids(answer)?;
                ids.extend(self.eos.first());
                Ok(ids)
            }
            Prompt::Chat(m) => {
                let before = self.template.render(m, true)?;
                let mut all = m.clone();
                all.push(Message { role: "assistant".into(), content: answer.into() });
                let full = self.template.render(&all, false)?;
                let rest = full.strip_prefix(before.as_str()).ok_or_else(|| {
                    AlignError::Template(format!(
                        "{}: the answer's rendering does not extend the prompt's",
                        self.template.origin
                    ))
                })?;
                self.ids(rest)
            }
        }
    }
}
