//! Human units in cluster files: sizes ("48GiB"), bandwidths ("1Gbit", "100MB/s"), durations
//! ("0.3ms"). SI prefixes are powers of 1000, IEC ("Ki", "Mi", ...) powers of 1024.

/// A quantity that cannot be read; the message gives an example of what is expected.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UnitError {
    #[error("cannot read {text:?} as a size (expected e.g. 48GiB, 64GB or a byte count)")]
    Size { text: String },
    #[error("cannot read {text:?} as a bandwidth (expected e.g. 1Gbit, 10Gbps or 100MB/s)")]
    Bandwidth { text: String },
    #[error("bandwidth {text:?} must be positive")]
    NoBandwidth { text: String },
    #[error("cannot read {text:?} as a duration (expected e.g. 0.3ms, 50us or 1s)")]
    Duration { text: String },
}

fn split_number(s: &str) -> Option<(f64, &str)> {
    let s = s.trim();
    let end =
        s.find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '_' || c == 'e' || c == 'E')).unwrap_or(s.len());
    // "1e9" is a number, but the "e" of a unit is not: only accept exponent forms that parse
    let (num, unit) = s.split_at(end);
    let num = num.replace('_', "");
    let v: f64 = num.parse().ok()?;
    (v.is_finite() && v >= 0.0).then_some((v, unit.trim()))
}

fn prefix(p: &str) -> Option<f64> {
    Some(match p {
        "" => 1.0,
        "k" | "K" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "Ki" => 1024.0,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        _ => return None,
    })
}

/// Bytes: `48GiB`, `64 GB`, `1.5TiB`, `1024` (bytes).
pub fn parse_size(s: &str) -> Result<u64, UnitError> {
    let err = || UnitError::Size { text: s.to_string() };
    let (v, unit) = split_number(s).ok_or_else(err)?;
    let p = unit.strip_suffix('B').or_else(|| (unit.is_empty()).then_some("")).ok_or_else(err)?;
    Ok((v * prefix(p).ok_or_else(err)?).round() as u64)
}

/// Bytes per second: `1Gbit`, `10Gbps`, `100Mbit/s`, `1GB/s`, `1.25GiB/s`.
pub fn parse_bandwidth(s: &str) -> Result<f64, UnitError> {
    let err = || UnitError::Bandwidth { text: s.to_string() };
    let (v, unit) = split_number(s).ok_or_else(err)?;
    let unit = unit.strip_suffix("/s").unwrap_or(unit);
    let (p, bits) = if let Some(p) = unit.strip_suffix("bit").or_else(|| unit.strip_suffix("bps")) {
        (p, true)
    } else if let Some(p) = unit.strip_suffix('B') {
        (p, false)
    } else {
        return Err(err());
    };
    let bps = v * prefix(p).ok_or_else(err)?;
    let bytes = if bits { bps / 8.0 } else { bps };
    if bytes > 0.0 {
        Ok(bytes)
    } else {
        Err(UnitError::NoBandwidth { text: s.to_string() })
    }
}

/// Seconds: `0.3ms`, `5us`, `1s`, `250ns`.
pub fn parse_duration(s: &str) -> Result<f64, UnitError> {
    let err = || UnitError::Duration { text: s.to_string() };
    let (v, unit) = split_number(s).ok_or_else(err)?;
    let scale = match unit {
        "s" => 1.0,
        "ms" => 1e-3,
        "us" | "µs" => 1e-6,
        "ns" => 1e-9,
        _ => return Err(err()),
    };
    Ok(v * scale)
}

/// `1.5 GiB`-style rendering for tables and messages.
pub fn fmt_bytes(b: u64) -> String {
    let gib = b as f64 / 1024f64.powi(3);
    if gib >= 1.0 {
        format!("{gib:.1} GiB")
    } else {
        format!("{:.1} MiB", b as f64 / 1024f64.powi(2))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("48GiB").unwrap(), 48 << 30);
        assert_eq!(parse_size("64 GB").unwrap(), 64_000_000_000);
        assert_eq!(parse_size("1024").unwrap(), 1024);
        assert_eq!(parse_size("1.5KiB").unwrap(), 1536);
        assert!(parse_size("12XB").is_err());
        assert!(parse_size("-1GB").is_err());
        assert!(parse_size("GB").is_err());
        assert_eq!(parse_size("12XB").unwrap_err(), UnitError::Size { text: "12XB".into() });
        assert_eq!(
            parse_size("12XB").unwrap_err().to_string(),
            r#"cannot read "12XB" as a size (expected e.g. 48GiB, 64GB or a byte count)"#
        );
    }

    #[test]
    fn bandwidths() {
        assert_eq!(parse_bandwidth("1Gbit").unwrap(), 125e6);
        assert_eq!(parse_bandwidth("10Gbps").unwrap(), 1.25e9);
        assert_eq!(parse_bandwidth("100Mbit/s").unwrap(), 12.5e6);
        assert_eq!(parse_bandwidth("1GB/s").unwrap(), 1e9);
        assert_eq!(parse_bandwidth("1GiB/s").unwrap(), 1073741824.0);
        assert!(parse_bandwidth("0Gbit").is_err());
        assert_eq!(parse_bandwidth("0Gbit").unwrap_err(), UnitError::NoBandwidth { text: "0Gbit".into() });
        assert_eq!(parse_bandwidth("fast").unwrap_err(), UnitError::Bandwidth { text: "fast".into() });
    }

    #[test]
    fn durations() {
        assert!((parse_duration("0.3ms").unwrap() - 3e-4).abs() < 1e-12);
        assert!((parse_duration("5us").unwrap() - 5e-6).abs() < 1e-15);
        assert_eq!(parse_duration("1s").unwrap(), 1.0);
        assert_eq!(parse_duration("3 parsecs").unwrap_err(), UnitError::Duration { text: "3 parsecs".into() });
    }
}
