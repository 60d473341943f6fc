//! Docker's units, so that shoal reads and prints sizes, CPU counts and durations exactly as
//! `docker` does (the rules of Go's `github.com/docker/go-units`): `--memory 64m`,
//! `--cpus 0.5`, "1.24MB" in `image ls`, "1.5MiB" in `stats`, "5 seconds ago".

use std::time::{Duration, SystemTime};

/// Errors of parsing a size or a CPU count.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnitError {
    /// Not a size (`64m`, `1g`, `512k`, `100`).
    #[error("invalid size: '{0}'")]
    Size(String),
    /// Not a decimal number of CPUs.
    #[error("failed to parse {0} as a rational number")]
    Cpus(String),
    /// More than nanosecond (1e-9 CPU) precision.
    #[error("value is too precise")]
    CpusPrecision,
}

/// go-units `RAMInBytes`: a number with an optional binary unit (`k`, `m`, `g`, `t`, `p`,
/// each optionally followed by `i` and/or `b`, any case): `64m` is 64 MiB.
pub fn parse_memory(s: &str) -> Result<i64, UnitError> {
    let invalid = || UnitError::Size(s.to_string());
    let number_end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, suffix) = s.split_at(number_end);
    let valid_number = !number.is_empty()
        && !number.starts_with('.')
        && !number.ends_with('.')
        && number.matches('.').count() <= 1;
    if !valid_number {
        return Err(invalid());
    }
    let value: f64 = number.parse().map_err(|_| invalid())?;
    let suffix = suffix
        .strip_prefix(' ')
        .unwrap_or(suffix)
        .to_ascii_lowercase();
    let mut rest = suffix.as_str();
    let mut multiplier: f64 = 1.0;
    if let Some(c) = rest.chars().next() {
        let power = match c {
            'k' => 1,
            'm' => 2,
            'g' => 3,
            't' => 4,
            'p' => 5,
            _ => 0,
        };
        if power > 0 {
            multiplier = 1024f64.powi(power);
            rest = &rest[1..];
        }
    }
    let rest = rest.strip_prefix('i').unwrap_or(rest);
    let rest = rest.strip_prefix('b').unwrap_or(rest);
    if !rest.is_empty() {
        return Err(invalid());
    }
    // Go converts with int64(float): truncation, saturating here rather than wrapping.
    Ok((value * multiplier) as i64)
}

/// `--cpus` as Docker's NanoCpus: a decimal number of CPUs, exact to 1e-9.
pub fn parse_cpus(s: &str) -> Result<i64, UnitError> {
    let invalid = || UnitError::Cpus(s.to_string());
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    let digits = |p: &str| p.chars().all(|c| c.is_ascii_digit());
    if (int.is_empty() && frac.is_empty()) || !digits(int) || !digits(frac) {
        return Err(invalid());
    }
    let frac = frac.trim_end_matches('0');
    if frac.len() > 9 {
        return Err(UnitError::CpusPrecision);
    }
    let whole: i64 = if int.is_empty() {
        0
    } else {
        int.parse().map_err(|_| invalid())?
    };
    let frac_nanos: i64 = if frac.is_empty() {
        0
    } else {
        format!("{frac:0<9}").parse().map_err(|_| invalid())?
    };
    whole
        .checked_mul(1_000_000_000)
        .and_then(|n| n.checked_add(frac_nanos))
        .ok_or_else(invalid)
}

const DECIMAL_UNITS: [&str; 9] = ["B", "kB", "MB", "GB", "TB", "PB", "EB", "ZB", "YB"];
const BINARY_UNITS: [&str; 9] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB", "ZiB", "YiB"];

fn custom_size(size: f64, precision: usize, base: f64, units: &[&str]) -> String {
    let mut size = size;
    let mut i = 0;
    while size >= base && i < units.len() - 1 {
        size /= base;
        i += 1;
    }
    format!("{}{}", format_g(size, precision), units[i])
}

/// go-units `HumanSizeWithPrecision(size, 3)`, as `docker image ls` shows sizes: "1.24MB".
pub fn human_size(bytes: u64) -> String {
    custom_size(bytes as f64, 3, 1000.0, &DECIMAL_UNITS)
}

/// go-units `BytesSize`, as `docker stats` shows memory: "1.5MiB".
pub fn bytes_size(bytes: u64) -> String {
    custom_size(bytes as f64, 4, 1024.0, &BINARY_UNITS)
}

/// Go's `%.{precision}g`: `precision` significant digits, trailing zeros dropped, exponent
/// form for very large or small magnitudes.
fn format_g(value: f64, precision: usize) -> String {
    if value == 0.0 {
        return "0".to_string();
    }
    let precision = precision.max(1);
    let scientific = format!("{:.*e}", precision - 1, value);
    let (mantissa, exponent) = scientific
        .split_once('e')
        .expect("{:e} formatting always has an exponent");
    let exponent: i32 = exponent.parse().expect("{:e} exponents are integers");
    if exponent < -4 || exponent >= precision as i32 {
        let sign = if exponent < 0 { '-' } else { '+' };
        format!(
            "{}e{sign}{:02}",
            trim_fraction(mantissa),
            exponent.unsigned_abs()
        )
    } else {
        let decimals = usize::try_from(precision as i32 - 1 - exponent).unwrap_or(0);
        trim_fraction(&format!("{value:.decimals$}")).to_string()
    }
}

fn trim_fraction(s: &str) -> &str {
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.')
    } else {
        s
    }
}

/// go-units `HumanDuration`: "Less than a second", "1 second", "About a minute", "3 hours",
/// "2 weeks", …
pub fn human_duration(d: Duration) -> String {
    let seconds = d.as_secs();
    let minutes = seconds / 60;
    // Go rounds hours to the nearest (int(d.Hours() + 0.5)) and uses whole hours below.
    let hours = (d.as_secs_f64() / 3600.0 + 0.5) as u64;
    if seconds < 1 {
        "Less than a second".to_string()
    } else if seconds == 1 {
        "1 second".to_string()
    } else if seconds < 60 {
        format!("{seconds} seconds")
    } else if minutes == 1 {
        "About a minute".to_string()
    } else if minutes < 60 {
        format!("{minutes} minutes")
    } else if hours == 1 {
        "About an hour".to_string()
    } else if hours < 48 {
        format!("{hours} hours")
    } else if hours < 24 * 7 * 2 {
        format!("{} days", hours / 24)
    } else if hours < 24 * 30 * 2 {
        format!("{} weeks", hours / 24 / 7)
    } else if hours < 24 * 365 * 2 {
        format!("{} months", hours / 24 / 30)
    } else {
        format!("{} years", seconds / 3600 / 24 / 365)
    }
}

/// Time elapsed from the RFC 3339 instant `at` to `now` (zero if `at` is in the future);
/// `None` when `at` is empty or not a time.
pub fn since(at: &str, now: SystemTime) -> Option<Duration> {
    let at = humantime::parse_rfc3339_weak(at).ok()?;
    Some(now.duration_since(at).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_sizes() {
        let good = [
            ("100", 100),
            ("512k", 512 * 1024),
            ("64m", 64 << 20),
            ("64M", 64 << 20),
            ("64mb", 64 << 20),
            ("64MiB", 64 << 20),
            ("1g", 1 << 30),
            ("1.5g", 3 << 29),
            ("32 kb", 32 * 1024),
            ("2t", 2 << 40),
        ];
        for (s, want) in good {
            assert_eq!(parse_memory(s), Ok(want), "{s}");
        }
        for s in ["", "m", "64x", "-1", "1..2", ".5m", "5.m", "64mm", "64bi"] {
            assert_eq!(parse_memory(s), Err(UnitError::Size(s.to_string())), "{s}");
        }
    }

    #[test]
    fn cpus() {
        let good = [
            ("0.5", 500_000_000),
            ("1", 1_000_000_000),
            ("2.25", 2_250_000_000),
            (".5", 500_000_000),
            ("0.000000001", 1),
            ("1.500000000000", 1_500_000_000),
        ];
        for (s, want) in good {
            assert_eq!(parse_cpus(s), Ok(want), "{s}");
        }
        assert_eq!(parse_cpus("0.0000000001"), Err(UnitError::CpusPrecision));
        for s in ["", ".", "abc", "-1", "1e3", "1.2.3"] {
            assert!(parse_cpus(s).is_err(), "{s}");
        }
    }

    #[test]
    fn sizes_print_like_go_units() {
        let decimal = [
            (0, "0B"),
            (123, "123B"),
            (1000, "1kB"),
            (4260, "4.26kB"),
            (1_239_000, "1.24MB"),
            (1_999_999, "2MB"),
            (999_500, "1e+03kB"),
            (7_300_000_000, "7.3GB"),
        ];
        for (n, want) in decimal {
            assert_eq!(human_size(n), want, "{n}");
        }
        let binary = [
            (0, "0B"),
            (1024, "1KiB"),
            (1_572_864, "1.5MiB"),
            (2_087_354_368, "1.944GiB"),
        ];
        for (n, want) in binary {
            assert_eq!(bytes_size(n), want, "{n}");
        }
    }

    #[test]
    fn durations_read_like_docker() {
        let cases = [
            (0, "Less than a second"),
            (1, "1 second"),
            (5, "5 seconds"),
            (59, "59 seconds"),
            (60, "About a minute"),
            (119, "About a minute"),
            (120, "2 minutes"),
            (3599, "59 minutes"),
            (3600, "About an hour"),
            (5399, "About an hour"),
            (5400, "2 hours"),
            (47 * 3600, "47 hours"),
            (48 * 3600, "2 days"),
            (14 * 24 * 3600, "2 weeks"),
            (60 * 24 * 3600, "2 months"),
            (2 * 365 * 24 * 3600, "2 years"),
        ];
        for (secs, want) in cases {
            assert_eq!(human_duration(Duration::from_secs(secs)), want, "{secs}");
        }
    }

    #[test]
    fn since_parses_rfc3339() {
        let now = humantime::parse_rfc3339("2024-01-01T00:01:00Z").expect("valid");
        assert_eq!(
            since("2024-01-01T00:00:00.5Z", now),
            Some(Duration::from_millis(59_500))
        );
        assert_eq!(since("", now), None);
        assert_eq!(since("2025-01-01T00:00:00Z", now), Some(Duration::ZERO));
    }
}
