//! Signal names as `docker kill -s` accepts them: a number, or a name with or without `SIG`,
//! in any case (`KILL`, `sigterm`, `9`).

use std::str::FromStr;

use nix::sys::signal::Signal;

use super::error::ApiError;

/// Highest signal number Linux has (`SIGRTMAX`).
const MAX_SIGNAL: i32 = 64;

/// The signal number of `raw`; empty means SIGKILL (`docker kill`'s default).
pub fn parse_signal(raw: &str) -> Result<i32, ApiError> {
    let invalid = || ApiError::InvalidArgument(format!("Invalid signal: {raw}"));
    if raw.is_empty() {
        return Ok(Signal::SIGKILL as i32);
    }
    if let Ok(n) = raw.parse::<i32>() {
        return if (1..=MAX_SIGNAL).contains(&n) {
            Ok(n)
        } else {
            Err(invalid())
        };
    }
    let upper = raw.to_ascii_uppercase();
    let name = upper.strip_prefix("SIG").unwrap_or(&upper);
    Signal::from_str(&format!("SIG{name}"))
        .map(|s| s as i32)
        .map_err(|_| invalid())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_numbers() {
        let good = [
            ("", 9),
            ("9", 9),
            ("KILL", 9),
            ("SIGKILL", 9),
            ("term", 15),
            ("SigHup", 1),
            ("usr1", 10),
            ("34", 34),
        ];
        for (raw, want) in good {
            assert_eq!(parse_signal(raw).expect(raw), want, "{raw}");
        }
        for raw in ["0", "65", "-1", "FOO", "SIG", "9x"] {
            let err = parse_signal(raw).expect_err(raw);
            assert_eq!(err.to_string(), format!("Invalid signal: {raw}"));
        }
    }
}
