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

/// A size as people read it, in the decimal units `parse_size` takes: `812 B`, `35.2 kB`,
/// `270.9 MB`, `7.35 GB` (a tiny test model is not "0.0 MB").
pub fn format_size(bytes: u64) -> String {
    let b = bytes as f64;
    match bytes {
        0..=999 => format!("{bytes} B"),
        1_000..=999_999 => format!("{:.1} kB", b / 1e3),
        1_000_000..=999_999_999 => format!("{:.1} MB", b / 1e6),
        _ => format!("{:.2} GB", b / 1e9),
    }
}

/// A size as people write it: `2GB`, `500MB`, `1GiB`, `4096` (bytes). The error says what was
/// expected (a flag's value parser shows it beside the flag's name).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim().to_ascii_uppercase();
    let units = [
        ("GIB", 1u64 << 30),
        ("MIB", 1 << 20),
        ("KIB", 1 << 10),
        ("GB", 1_000_000_000),
        ("MB", 1_000_000),
        ("KB", 1_000),
        ("B", 1),
    ];
    let (num, mult) = units
        .iter()
        .find_map(|(suf, m)| t.strip_suffix(suf).map(|n| (n.trim().to_string(), *m)))
        .unwrap_or((t.clone(), 1));
    match num.parse::<f64>() {
        Ok(n) if n > 0.0 && n.is_finite() => Ok((n * mult as f64) as u64),
        Ok(_) => Err(format!("size must be positive: {s:?}")),
        Err(_) => Err(format!("bad size {s:?} (e.g. 500MB, 2GB)")),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn sizes_read_well() {
        use super::format_size;
        assert_eq!(format_size(812), "812 B");
        assert_eq!(format_size(35_240), "35.2 kB");
        assert_eq!(format_size(270_912_000), "270.9 MB");
        assert_eq!(format_size(7_350_000_000), "7.35 GB");
        assert_eq!(super::parse_size("35.2kB").unwrap(), 35_200);
    }
}
