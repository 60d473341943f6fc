//! Image references as users type them: `busybox`, `busybox:1.36`, `library/busybox`,
//! `docker.io/library/busybox:latest`, `localhost:5000/a/b:tag`, image ids (`sha256:<hex>`,
//! bare hex) and short-id prefixes. This module parses and normalises; looking references up is
//! the store's job.
//!
//! Names are kept in Docker's "familiar" form (`busybox:latest`, not
//! `docker.io/library/busybox:latest`) because that is what `image ls` shows and what users type.
//! The grammar follows distribution/reference (`reference/regexp.go`): lowercase path
//! components separated by `.`, `_`, `__` or dashes; an optional registry domain first (it has a
//! `.` or `:`, is `localhost`, or has uppercase letters); a tag of up to 128 word characters,
//! dots and dashes. Digest references (`name@sha256:…`) are refused: the store keeps no repo
//! digests.

use super::content::{is_full_hex, is_hex};
use super::{ImageError, Result};

/// Distribution's limit on the whole name (without tag).
const MAX_NAME_LEN: usize = 255;
/// Distribution's limit on a tag.
const MAX_TAG_LEN: usize = 128;

/// What a lookup string may mean, in the order the store tries them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Lookup {
    /// A normalised `name:tag`.
    Tag(String),
    /// A full image id, 64 hex characters.
    Id(String),
    /// A prefix of an image id, hex.
    Prefix(String),
}

/// Normalises a reference to tag with: `busybox` → `busybox:latest`,
/// `docker.io/library/busybox` → `busybox:latest`, `localhost:5000/a/b:t` stays.
pub(super) fn normalize_tag(input: &str) -> Result<String> {
    let invalid = || ImageError::InvalidReference(input.to_owned());
    if input.is_empty() || input.contains('@') || input.trim() != input {
        return Err(invalid());
    }
    // The tag separator is a ':' after the last '/', so `localhost:5000/a` has no tag.
    let last_slash = input.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match input[last_slash..].rfind(':') {
        Some(i) => (&input[..last_slash + i], &input[last_slash + i + 1..]),
        None => (input, "latest"),
    };
    if !valid_tag(tag) || name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(invalid());
    }
    let mut parts: Vec<&str> = name.split('/').collect();
    let has_domain = parts.len() > 1 && {
        let first = parts[0];
        first.contains(['.', ':']) || first == "localhost" || first.to_lowercase() != first
    };
    let domain = if has_domain {
        let d = parts.remove(0);
        if !valid_domain(d) {
            return Err(invalid());
        }
        Some(d)
    } else {
        None
    };
    if !parts.iter().all(|p| valid_component(p)) {
        return Err(invalid());
    }
    // A 64-hex name would be indistinguishable from an image id (Docker refuses it too).
    if domain.is_none() && parts.len() == 1 && is_full_hex(parts[0]) {
        return Err(invalid());
    }
    let path = parts.join("/");
    let familiar = match domain {
        Some("docker.io" | "index.docker.io") | None => match path.strip_prefix("library/") {
            Some(rest) if !rest.contains('/') => rest.to_owned(),
            _ => path,
        },
        Some(d) => format!("{d}/{path}"),
    };
    Ok(format!("{familiar}:{tag}"))
}

/// Interprets a lookup string: candidates in the order Docker tries them (a tag first, since
/// `abc` may be both a name and an id prefix; a full id first when it is 64 hex characters).
pub(super) fn parse_lookup(input: &str) -> Result<Vec<Lookup>> {
    if let Some(hex) = input.strip_prefix("sha256:") {
        return match hex {
            h if is_full_hex(h) => Ok(vec![Lookup::Id(h.to_owned())]),
            h if is_hex(h) => Ok(vec![Lookup::Prefix(h.to_owned())]),
            _ => Err(ImageError::InvalidReference(input.to_owned())),
        };
    }
    if is_full_hex(input) {
        return Ok(vec![Lookup::Id(input.to_owned())]);
    }
    let mut out = Vec::new();
    if let Ok(tag) = normalize_tag(input) {
        out.push(Lookup::Tag(tag));
    }
    if is_hex(input) {
        out.push(Lookup::Prefix(input.to_owned()));
    }
    if out.is_empty() {
        return Err(ImageError::InvalidReference(input.to_owned()));
    }
    Ok(out)
}

/// `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
fn valid_tag(tag: &str) -> bool {
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let bytes = tag.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= MAX_TAG_LEN
        && word(bytes[0])
        && bytes.iter().all(|&b| word(b) || b == b'.' || b == b'-')
}

/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`.
fn valid_component(c: &str) -> bool {
    let bytes = c.as_bytes();
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if bytes.is_empty() || !alnum(bytes[0]) || !alnum(bytes[bytes.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < bytes.len() {
        if alnum(bytes[i]) {
            i += 1;
            continue;
        }
        // A separator run: one '.', one or two '_', or any number of '-'.
        let start = i;
        while i < bytes.len() && !alnum(bytes[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|b| b == b'-');
        if !ok {
            return false;
        }
    }
    true
}

/// Host labels (`[A-Za-z0-9]` with inner dashes) joined by dots, with an optional `:port`.
fn valid_domain(d: &str) -> bool {
    let (host, port) = match d.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (d, None),
    };
    if let Some(p) = port {
        if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
            return false;
        }
    }
    !host.is_empty()
        && host.split('.').all(|label| {
            let b = label.as_bytes();
            !b.is_empty()
                && b[0].is_ascii_alphanumeric()
                && b[b.len() - 1].is_ascii_alphanumeric()
                && b.iter().all(|&c| c.is_ascii_alphanumeric() || c == b'-')
        })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is the test's assertion
mod tests {
    use super::*;

    #[test]
    fn normalize_good() {
        let good = [
            ("busybox", "busybox:latest"),
            ("busybox:1.36", "busybox:1.36"),
            ("library/busybox", "busybox:latest"),
            ("docker.io/library/busybox:latest", "busybox:latest"),
            ("index.docker.io/library/busybox", "busybox:latest"),
            ("docker.io/foo/bar:v1", "foo/bar:v1"),
            ("localhost:5000/a/b:tag", "localhost:5000/a/b:tag"),
            ("localhost:5000/a", "localhost:5000/a:latest"),
            ("localhost/a", "localhost/a:latest"),
            ("quay.io/x_y/z-w:1.0_rc-1", "quay.io/x_y/z-w:1.0_rc-1"),
            ("a__b--c.d", "a__b--c.d:latest"),
            ("abc", "abc:latest"),
        ];
        for (input, want) in good {
            assert_eq!(normalize_tag(input).unwrap(), want, "{input}");
        }
    }

    #[test]
    fn normalize_bad() {
        let long_tag = format!("a:{}", "t".repeat(129));
        let hex_name = "a".repeat(64);
        let bad = [
            "",
            "Busybox",
            "busybox:",
            "busybox:-x",
            "busybox@sha256:abcd",
            ":tag",
            "a//b",
            "a/",
            "/a",
            "a..b",
            "a___b",
            "-a",
            "a-",
            "local host/a",
            " busybox",
            "bad_domain:x/y",
            "loc_alhost:5000/a",
            &long_tag,
            &hex_name,
        ];
        for input in bad {
            assert!(
                matches!(normalize_tag(input), Err(ImageError::InvalidReference(_))),
                "{input:?} accepted"
            );
        }
    }

    #[test]
    fn lookups() {
        let full = "b".repeat(64);
        assert_eq!(
            parse_lookup(&format!("sha256:{full}")).unwrap(),
            vec![Lookup::Id(full.clone())]
        );
        assert_eq!(parse_lookup(&full).unwrap(), vec![Lookup::Id(full.clone())]);
        assert_eq!(
            parse_lookup("sha256:bb").unwrap(),
            vec![Lookup::Prefix("bb".into())]
        );
        assert_eq!(
            parse_lookup("abc").unwrap(),
            vec![
                Lookup::Tag("abc:latest".into()),
                Lookup::Prefix("abc".into())
            ]
        );
        assert_eq!(
            parse_lookup("busybox").unwrap(),
            vec![Lookup::Tag("busybox:latest".into())]
        );
        assert!(parse_lookup("sha256:xyz").is_err());
        assert!(parse_lookup("UPPER").is_err());
    }
}
