//! The bodies of the fuzz targets, shared with the regression test that replays every kept
//! crashing input (`crates/cli/tests/fuzz_regressions.rs`), so both run the same code.
#![allow(dead_code)]

/// safetensors: header JSON, dtypes, shapes, data_offsets tiling, as `Checkpoint::open` parses them.
pub fn safetensors(data: &[u8]) {
    if let Ok(tensors) =
        orlik_io::safetensors::parse(std::path::Path::new("fuzz.safetensors"), data)
    {
        for t in tensors {
            // Every accepted range lies inside the buffer: reading it and scanning it must not panic.
            let bytes = &data[t.start..t.end];
            let _ = orlik_io::guard::non_finite(bytes, t.dtype);
        }
    }
}

/// `model.safetensors.index.json`: the weight map and its shard names.
pub fn shard_index(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(shards) =
            orlik_io::safetensors::index_shards(std::path::Path::new("index.json"), text)
        {
            for s in shards {
                // accepted names never leave the model directory
                assert!(!s.contains('/') && s != ".." && s != ".", "{s:?}");
            }
        }
    }
}

/// GGUF: header, metadata, tensor table, the config built from the metadata, and dequantisation
/// of small tensors. The reader maps a file, so each input is written to a scratch file first.
pub fn gguf(data: &[u8]) {
    use orlik_io::gguf::Gguf;
    let p =
        std::path::PathBuf::from(format!("/dev/shm/orlik-fuzz-gguf-{}.gguf", std::process::id()));
    if std::fs::write(&p, data).is_err() {
        return;
    }
    if let Ok(g) = Gguf::open(&p) {
        let vocab =
            g.tensor_info("token_embd.weight").and_then(|t| t.ne.get(1).copied()).unwrap_or(32)
                as usize;
        if let Ok((cfg, _)) = orlik_io::convert::config_from_gguf(&g, vocab) {
            let _ = cfg.expected_tensors();
        }
        for t in &g.tensors {
            let numel = t.ne.iter().try_fold(1u64, |a, &d| a.checked_mul(d));
            if numel.is_some_and(|n| n <= 1 << 16) {
                let _ = g.dequantize(t);
            }
        }
    }
}

/// The tokenizer built from a GGUF's embedded vocabulary (BPE merges or SentencePiece scores),
/// then used on a short Polish text. Slow: each input builds a tokenizer.
pub fn gguf_tokenizer(data: &[u8]) {
    use orlik_io::gguf::Gguf;
    let p =
        std::path::PathBuf::from(format!("/dev/shm/orlik-fuzz-tok-{}.gguf", std::process::id()));
    if std::fs::write(&p, data).is_err() {
        return;
    }
    if let Ok(g) = Gguf::open(&p) {
        if let Ok(t) = orlik_io::tokenizer::from_gguf(&g) {
            let json = t.tokenizer_json.to_string();
            if let Ok(tok) = json.parse::<tokenizers::Tokenizer>() {
                let _ = tok.encode("Zażółć gęślą jaźń, the theater.", true);
            }
        }
    }
}

/// config.json: parsing, range checks, and the derived quantities every command relies on.
pub fn config_json(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(cfg) = orlik_model::Config::from_json_str(text, "config.json") {
            let _ = cfg.head_dim();
            let _ = cfg.rope_theta();
            let _ = cfg.attn_scale();
            let _ = cfg.eos_ids();
            for i in 0..cfg.num_hidden_layers {
                let _ = cfg.layer_window(i);
            }
            let _ = cfg.expected_tensors();
            let _ = cfg.to_json_pretty();
        }
    }
}

/// JSONL rows of `orlik sft` / `dpo` / `grpo`: messages, prompts and answers as the readers take them.
pub fn jsonl_rows(data: &[u8]) {
    use orlik_align::data;
    let Ok(text) = std::str::from_utf8(data) else { return };
    for line in text.lines() {
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(line) {
            let _ =
                data::messages(v.get("messages").unwrap_or(&serde_json::Value::Null), "messages");
            let _ = data::prompt(v.get("prompt").unwrap_or(&serde_json::Value::Null), "prompt");
            let _ = data::answer(v.get("chosen").unwrap_or(&serde_json::Value::Null), "chosen");
        }
    }
}

/// Teacher cache: `cache.json` (text up to the first NUL byte) and shard records (the bytes after).
pub fn teacher_cache(data: &[u8]) {
    use orlik_distill::cache::{parse_record, Manifest};
    let cut = data.iter().position(|&b| b == 0).unwrap_or(data.len());
    let Ok(text) = std::str::from_utf8(&data[..cut]) else { return };
    if let Ok(m) = Manifest::parse(text) {
        let rest = data.get(cut + 1..).unwrap_or(&[]);
        for rec in rest.chunks(m.record_bytes()) {
            let _ = parse_record(rec, m.topk, m.vocab_size);
        }
    }
}
