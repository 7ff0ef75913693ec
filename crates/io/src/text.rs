//! Plain text inputs (training, calibration and evaluation text) and the provenance record every
//! output directory gets.

use crate::IoError;
use std::path::Path;

/// Read a text file as UTF-8; empty or non-UTF-8 files are errors naming the file.
pub fn read_text(path: &Path) -> Result<String, IoError> {
    let bytes = std::fs::read(path).map_err(crate::io_err(path))?;
    let text = String::from_utf8(bytes).map_err(|e| IoError::Format {
        path: path.into(),
        msg: format!("not UTF-8 (invalid byte at offset {})", e.utf8_error().valid_up_to()),
    })?;
    if text.trim().is_empty() {
        return Err(IoError::Format { path: path.into(), msg: "empty text".into() });
    }
    Ok(text)
}

/// `orlik.json`: orlik's version and the command line that made an output.
pub fn provenance() -> Vec<u8> {
    let argv: Vec<String> = std::env::args().collect();
    let v = serde_json::json!({"orlik_version": env!("CARGO_PKG_VERSION"), "command": argv});
    serde_json::to_vec_pretty(&v).unwrap_or_default()
}
