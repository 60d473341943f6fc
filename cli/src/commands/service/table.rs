//! What the cluster tables (`node ls`, `node ps`, `service ls`, `service ps`) share: Docker's
//! column layout, its `--format` choices, ID truncation, `Ellipsis`, and the natural order
//! Docker sorts names in (`web.2` before `web.10`).

use std::cmp::Ordering;
use std::io::Write;

use tabwriter::TabWriter;

/// Characters of an ID that tables show unless `--no-trunc` (Docker's `TruncateID`).
pub const SHORT_ID_LEN: usize = 12;

/// A table writer laid out as Docker's (tabwriter with minimum width 10 and padding 3).
pub fn table<W: Write>(out: W) -> TabWriter<W> {
    // Go's tabwriter counts the padding in the minimum width (10), Rust's does not.
    TabWriter::new(out).minwidth(7).padding(3)
}

/// Docker's `TruncateID`: the first 12 characters, unless `no_trunc`.
pub fn short_id(id: &str, no_trunc: bool) -> &str {
    if no_trunc {
        id
    } else {
        id.get(..SHORT_ID_LEN).unwrap_or(id)
    }
}

/// Docker's `formatter.Ellipsis`: at most `width` characters, the last one `…` when cut.
pub fn ellipsis(s: &str, width: usize) -> String {
    if s.chars().count() <= width {
        return s.to_string();
    }
    let mut cut: String = s.chars().take(width.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

/// Docker's IMAGE cell: `name:tag@digest` shows as `name:tag` unless `no_trunc` (an
/// untagged `name@digest` stays whole).
pub fn image_cell(image: &str, no_trunc: bool) -> String {
    if no_trunc {
        return image.to_string();
    }
    match image.split_once('@') {
        Some((name, _))
            if name
                .rsplit('/')
                .next()
                .is_some_and(|last| last.contains(':')) =>
        {
            name.to_string()
        }
        _ => image.to_string(),
    }
}

/// The `--format` values shoal supports: Docker's default table and `json` (one JSON object
/// per line). Go templates are not supported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputFormat {
    /// Columns.
    Table,
    /// One JSON object per line, with Docker's keys.
    Json,
}

/// Errors of reading `--format`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    /// Neither `table` nor `json`.
    #[error("unsupported format {0:?}: shoal supports \"table\" and \"json\"")]
    Unsupported(String),
}

impl std::str::FromStr for OutputFormat {
    type Err = FormatError;

    fn from_str(s: &str) -> Result<OutputFormat, FormatError> {
        match s.trim() {
            "" | "table" => Ok(OutputFormat::Table),
            // `{{json .}}` is what `json` stands for in Docker.
            "json" | "{{json .}}" | "{{ json . }}" => Ok(OutputFormat::Json),
            _ => Err(FormatError::Unsupported(s.to_string())),
        }
    }
}

/// Parses `--format` for clap.
pub fn format_arg(s: &str) -> Result<OutputFormat, String> {
    s.parse().map_err(|e: FormatError| e.to_string())
}

/// sortorder's `NaturalLess` as an ordering: runs of digits compare as numbers, the rest
/// character by character.
pub fn natural_cmp(a: &str, b: &str) -> Ordering {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        if a[i].is_ascii_digit() && b[j].is_ascii_digit() {
            let run = |s: &[u8], mut k: usize| {
                let start = k;
                while k < s.len() && s[k].is_ascii_digit() {
                    k += 1;
                }
                (start, k)
            };
            let (a0, a1) = run(a, i);
            let (b0, b1) = run(b, j);
            let trim = |s: &[u8], start: usize, end: usize| {
                let mut k = start;
                while k + 1 < end && s[k] == b'0' {
                    k += 1;
                }
                k
            };
            let (an, bn) = (&a[trim(a, a0, a1)..a1], &b[trim(b, b0, b1)..b1]);
            let by_value = an.len().cmp(&bn.len()).then_with(|| an.cmp(bn));
            if by_value != Ordering::Equal {
                return by_value;
            }
            // Equal values: fewer leading zeros first, as sortorder does.
            let by_width = (a1 - a0).cmp(&(b1 - b0));
            if by_width != Ordering::Equal {
                return by_width;
            }
            i = a1;
            j = b1;
        } else {
            if a[i] != b[j] {
                return a[i].cmp(&b[j]);
            }
            i += 1;
            j += 1;
        }
    }
    (a.len() - i).cmp(&(b.len() - j))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn natural_order() {
        let mut names = vec![
            "web.10", "web.2", "web.1", "api.3", "web.02", "node-10", "node-9",
        ];
        names.sort_by(|a, b| natural_cmp(a, b));
        assert_eq!(
            names,
            ["api.3", "node-9", "node-10", "web.1", "web.2", "web.02", "web.10"]
        );
        assert_eq!(natural_cmp("a", "a"), Ordering::Equal);
        assert_eq!(natural_cmp("a", "ab"), Ordering::Less);
    }

    #[test]
    fn ids_and_errors_are_cut_like_docker() {
        assert_eq!(short_id("0123456789abcdef", false), "0123456789ab");
        assert_eq!(short_id("0123456789abcdef", true), "0123456789abcdef");
        assert_eq!(short_id("abc", false), "abc");
        assert_eq!(ellipsis("short", 30), "short");
        assert_eq!(ellipsis("abcdef", 4), "abc…");
        assert_eq!(image_cell("busybox:1.36@sha256:ab", false), "busybox:1.36");
        assert_eq!(image_cell("busybox@sha256:ab", false), "busybox@sha256:ab");
        assert_eq!(
            image_cell("reg:5000/busybox@sha256:ab", false),
            "reg:5000/busybox@sha256:ab"
        );
        assert_eq!(
            image_cell("busybox:1.36@sha256:ab", true),
            "busybox:1.36@sha256:ab"
        );
    }

    #[test]
    fn formats() {
        assert_eq!("json".parse(), Ok(OutputFormat::Json));
        assert_eq!("{{json .}}".parse(), Ok(OutputFormat::Json));
        assert_eq!("table".parse(), Ok(OutputFormat::Table));
        assert!("{{.ID}}".parse::<OutputFormat>().is_err());
    }
}
