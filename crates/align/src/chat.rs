//! Chat templates: the model's own Jinja template (`tokenizer_config.json` → `chat_template`,
//! rendered with minijinja as transformers renders it), or ChatML when the model has none.
//!
//! Which tokens are the assistant's is found by rendering prefixes, as TRL does for templates
//! without `{% generation %}` markers: for assistant message i, the text rendered from messages
//! [..i] with `add_generation_prompt` must be a prefix of the text rendered from [..=i]; the bytes
//! between the two are the assistant's turn (its content and end-of-turn marker).

use crate::AlignError;
use serde::{Deserialize, Serialize};
use std::path::Path;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

/// ChatML, used when the model ships no template (the format of Qwen / SmolLM / many others).
pub const CHATML: &str = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

pub struct ChatTemplate {
    env: minijinja::Environment<'static>,
    pub bos: String,
    pub eos: String,
    /// Where the template came from (for messages and run records).
    pub origin: String,
}

fn token_text(v: Option<&serde_json::Value>) -> String {
    match v {
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(serde_json::Value::Object(o)) => {
            o.get("content").and_then(|c| c.as_str()).unwrap_or("").to_string()
        }
        _ => String::new(),
    }
}

impl ChatTemplate {
    pub fn new(
        source: &str,
        bos: &str,
        eos: &str,
        origin: &str,
    ) -> Result<ChatTemplate, AlignError> {
        let mut env = minijinja::Environment::new();
        // transformers' Jinja setup: Python string methods (.strip(), .startswith() ...) and
        // raise_exception(); whitespace is kept as written (trim_blocks and lstrip_blocks on).
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.add_function("raise_exception", |msg: String| -> Result<String, minijinja::Error> {
            Err(minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, msg))
        });
        env.add_template_owned("chat", source.to_string())
            .map_err(|e| AlignError::Template(format!("{origin}: {e}")))?;
        Ok(ChatTemplate { env, bos: bos.into(), eos: eos.into(), origin: origin.into() })
    }

    /// The template of the HF model directory `dir`, or ChatML when its tokenizer_config.json has
    /// none (a list of named templates uses the one named "default").
    pub fn for_model(dir: &Path) -> Result<ChatTemplate, AlignError> {
        let p = dir.join("tokenizer_config.json");
        let cfg: serde_json::Value = match std::fs::read_to_string(&p) {
            Ok(t) => serde_json::from_str(&t)
                .map_err(|e| AlignError::Template(format!("{}: {e}", p.display())))?,
            Err(_) => serde_json::Value::Null,
        };
        let (bos, eos) = (token_text(cfg.get("bos_token")), token_text(cfg.get("eos_token")));
        let origin = p.display().to_string();
        match cfg.get("chat_template") {
            Some(serde_json::Value::String(s)) => ChatTemplate::new(s, &bos, &eos, &origin),
            Some(serde_json::Value::Array(list)) => {
                let t = list
                    .iter()
                    .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
                    .and_then(|t| t.get("template")?.as_str())
                    .ok_or_else(|| {
                        AlignError::Template(format!("{origin}: no template named \"default\""))
                    })?;
                ChatTemplate::new(t, &bos, &eos, &origin)
            }
            _ => {
                let eos = if eos.is_empty() { "<|im_end|>".to_string() } else { eos };
                ChatTemplate::new(CHATML, &bos, &eos, "ChatML (the model has no chat_template)")
            }
        }
    }

    pub fn render(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
    ) -> Result<String, AlignError> {
        let t = self.env.get_template("chat").map_err(|e| AlignError::Template(e.to_string()))?;
        t.render(minijinja::context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            bos_token => &self.bos,
            eos_token => &self.eos,
        })
        .map_err(|e| AlignError::Template(format!("{}: {e}", self.origin)))
    }

    /// The rendered conversation and the byte ranges of its assistant turns.
    pub fn render_with_spans(
        &self,
        messages: &[Message],
    ) -> Result<(String, Vec<(usize, usize)>), AlignError> {
        let full = self.render(messages, false)?;
        let mut spans = Vec::new();
        for (i, m) in messages.iter().enumerate() {
            if m.role != "assistant" {
                continue;
            }
            let before = self.render(&messages[..i], true)?;
            let upto = self.render(&messages[..=i], false)?;
            if !upto.starts_with(&before) || !full.starts_with(&upto) {
                return Err(AlignError::Template(format!(
                    "{}: rendering is not prefix-stable at message {i} (the template changes earlier turns), so the assistant's tokens cannot be located",
                    self.origin
                )));
            }
            spans.push((before.len(), upto.len()));
        }
        Ok((full, spans))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msgs(v: &[(&str, &str)]) -> Vec<Message> {
        v.iter().map(|(r, c)| Message { role: r.to_string(), content: c.to_string() }).collect()
    }

    #[test]
    fn chatml_renders_as_transformers_and_finds_assistant_turns() {
        let t = ChatTemplate::new(CHATML, "", "<|im_end|>", "test").unwrap();
        let m = msgs(&[
            ("user", "Ile to 2+2?"),
            ("assistant", "4"),
            ("user", "A 3+3?"),
            ("assistant", "6"),
        ]);
        let (text, spans) = t.render_with_spans(&m).unwrap();
        assert_eq!(
            text,
            "<|im_start|>user\nIle to 2+2?<|im_end|>\n<|im_start|>assistant\n4<|im_end|>\n<|im_start|>user\nA 3+3?<|im_end|>\n<|im_start|>assistant\n6<|im_end|>\n"
        );
        let got: Vec<&str> = spans.iter().map(|&(a, b)| &text[a..b]).collect();
        assert_eq!(got, ["4<|im_end|>\n", "6<|im_end|>\n"]);
        assert_eq!(
            t.render(&m[..1], true).unwrap(),
            "<|im_start|>user\nIle to 2+2?<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    /// Renderings by transformers' Jinja setup (scripts/gen_chat_reference.py) of three template
    /// shapes, every prefix of two conversations, with and without the generation prompt.
    #[test]
    fn matches_transformers_renderings() {
        let v: serde_json::Value =
            serde_json::from_str(include_str!("../../../tests/fixtures/chat_templates.json"))
                .unwrap();
        let cases = v["cases"].as_array().unwrap();
        assert!(cases.len() >= 40);
        for c in cases {
            let name = c["template"].as_str().unwrap();
            let t = ChatTemplate::new(v["templates"][name].as_str().unwrap(), "<s>", "</s>", name)
                .unwrap();
            let m: Vec<Message> = serde_json::from_value(c["messages"].clone()).unwrap();
            let gen = c["add_generation_prompt"].as_bool().unwrap();
            assert_eq!(
                t.render(&m, gen).unwrap(),
                c["text"].as_str().unwrap(),
                "{name}, {} messages, gen {gen}",
                m.len()
            );
            if !gen && m.last().is_some_and(|x| x.role == "assistant") {
                let (text, spans) = t.render_with_spans(&m).unwrap();
                let last = &text[spans[spans.len() - 1].0..spans[spans.len() - 1].1];
                assert!(last.contains(m[m.len() - 1].content.trim()), "{name}: {last:?}");
            }
        }
    }

    #[test]
    fn python_methods_and_raise_exception_work() {
        let src = "{% if messages[0]['role'] != 'user' %}{{ raise_exception('user first') }}{% endif %}{{ bos_token }}{% for m in messages %}[{{ m['content'].strip() }}]{% endfor %}";
        let t = ChatTemplate::new(src, "<s>", "</s>", "test").unwrap();
        assert_eq!(t.render(&msgs(&[("user", "  a ")]), false).unwrap(), "<s>[a]");
        let e = t.render(&msgs(&[("assistant", "x")]), false).unwrap_err().to_string();
        assert!(e.contains("user first"), "{e}");
    }
}
