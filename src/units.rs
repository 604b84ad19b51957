//! Parsing and printing of sizes (binary units) and validation of volume/snapshot names.

use crate::error::{Error, Result};

/// Parse a size such as `4096`, `512K`, `32M`, `10G`, `2T` (binary units, optional `iB`/`B`).
pub fn parse_size(s: &str) -> Result<u64> {
    let t = s.trim();
    let bad = || {
        Error::InvalidArgument(format!(
            "bad size {s:?}: use a number with an optional K, M, G or T suffix (binary units)"
        ))
    };
    if t.is_empty() {
        return Err(bad());
    }
    let upper = t.to_ascii_uppercase();
    let stripped = upper.strip_suffix("IB").or_else(|| upper.strip_suffix('B')).unwrap_or(&upper);
    let (num, mult) = match stripped.chars().last() {
        Some('K') => (&stripped[..stripped.len() - 1], 1u64 << 10),
        Some('M') => (&stripped[..stripped.len() - 1], 1u64 << 20),
        Some('G') => (&stripped[..stripped.len() - 1], 1u64 << 30),
        Some('T') => (&stripped[..stripped.len() - 1], 1u64 << 40),
        Some('P') => (&stripped[..stripped.len() - 1], 1u64 << 50),
        _ => (stripped, 1u64),
    };
    let n: u64 = num.trim().parse().map_err(|_| bad())?;
    n.checked_mul(mult).ok_or_else(bad)
}

/// Print a byte count in binary units with up to two decimals (e.g. `1.50 GiB`).
pub fn format_size(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1024.0 && i < UNITS.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{n} B")
    } else {
        format!("{v:.2} {}", UNITS[i])
    }
}

/// Check a volume or snapshot name: 1–64 of `A-Za-z0-9._-`, not starting with `.` or `-`.
pub fn validate_name(kind: &str, name: &str) -> Result<()> {
    let ok_chars = name.chars().all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '_' || c == '-');
    if name.is_empty() || name.len() > 64 || !ok_chars || name.starts_with('.') || name.starts_with('-') {
        return Err(Error::InvalidArgument(format!(
            "bad {kind} name {name:?}: use 1-64 characters of A-Z a-z 0-9 . _ -, not starting with . or -"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert_eq!(parse_size("512M").unwrap(), 512 << 20);
        assert_eq!(parse_size("10G").unwrap(), 10 << 30);
        assert_eq!(parse_size("2TiB").unwrap(), 2 << 40);
        assert_eq!(parse_size("4k").unwrap(), 4096);
        assert!(parse_size("").is_err());
        assert!(parse_size("12Q").is_err());
        assert!(parse_size("-1G").is_err());
        assert!(parse_size("99999999999P").is_err());
        assert_eq!(format_size(1536 << 20), "1.50 GiB");
    }

    #[test]
    fn names() {
        assert!(validate_name("volume", "vm-1.disk_0").is_ok());
        assert!(validate_name("volume", "").is_err());
        assert!(validate_name("volume", ".x").is_err());
        assert!(validate_name("volume", "-x").is_err());
        assert!(validate_name("volume", "a/b").is_err());
        assert!(validate_name("volume", "a@b").is_err());
        assert!(validate_name("volume", &"a".repeat(65)).is_err());
        assert!(validate_name("volume", &"a".repeat(64)).is_ok());
    }
}
