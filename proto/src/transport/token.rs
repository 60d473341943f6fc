//! Join tokens in Swarm's shape, `SWMTKN-1-<digest>-<secret>` (swarmkit `ca/config.go`,
//! `GenerateJoinToken` and `ParseJoinToken`).
//!
//! The digest pins the cluster's root CA: a joiner fetches the CA over a connection it cannot
//! yet authenticate, and trusts it only if [`JoinToken::matches_ca`]. The secret is what the
//! manager checks before issuing a certificate; which secret grants which role is the
//! manager's business, not this module's.
//!
//! Unlike swarmkit, which hashes the CA's PEM text, the digest is over the certificate's DER,
//! so re-encoding the PEM (line length, trailing newline) does not change it.

use std::fmt;
use std::str::FromStr;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use sha2::{Digest, Sha256};

use super::base36;

/// The first field of every token.
pub const PREFIX: &str = "SWMTKN";
/// The only token version shoal writes and reads (Swarm's `2` marks FIPS mode, which shoal has
/// no use for).
pub const VERSION: &str = "1";
/// Length of the digest field: a sha256 in base36 needs at most 50 characters.
pub const DIGEST_LENGTH: usize = 50;
/// Length of the secret field: 128 random bits in base36.
pub const SECRET_LENGTH: usize = 25;

/// Why a join token or CA was refused. Messages never include the token: it is a credential
/// and errors end up in logs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// The token does not have four `-`-separated fields.
    #[error("invalid join token")]
    Malformed,
    /// The first field is not `SWMTKN`.
    #[error("invalid join token: it does not start with {PREFIX}-")]
    Prefix,
    /// The version field is not `1`.
    #[error("invalid join token: unsupported version {found:?} (expected {VERSION})")]
    Version {
        /// The version field found.
        found: String,
    },
    /// The digest field has the wrong length or alphabet.
    #[error(
        "invalid join token: the CA digest must be {DIGEST_LENGTH} base36 characters, found {len}"
    )]
    Digest {
        /// Its length.
        len: usize,
    },
    /// The secret field has the wrong length or alphabet.
    #[error(
        "invalid join token: the secret must be {SECRET_LENGTH} base36 characters, found {len}"
    )]
    Secret {
        /// Its length.
        len: usize,
    },
    /// The CA PEM holds no certificate to take the digest of.
    #[error("CA PEM holds no certificate")]
    NoCaCertificate,
}

/// A parsed join token. `Debug` hides the secret; `Display` writes the whole token.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    /// The root CA's digest ([`ca_digest`]).
    pub digest: String,
    /// The secret, [`SECRET_LENGTH`] base36 characters.
    pub secret: String,
}

impl JoinToken {
    /// A token for the CA of digest `digest` with a fresh [`random_secret`].
    pub fn generate(digest: &str) -> JoinToken {
        JoinToken {
            digest: digest.to_owned(),
            secret: random_secret(),
        }
    }

    /// Whether `ca_pem`'s first certificate has this token's digest. False for unreadable PEM:
    /// a CA we cannot hash is a CA we do not trust.
    pub fn matches_ca(&self, ca_pem: &str) -> bool {
        ca_digest(ca_pem).is_ok_and(|digest| digest == self.digest)
    }

    /// Whether `other` carries the same secret, compared in constant time so that a caller
    /// guessing secrets learns nothing from response times.
    pub fn same_secret(&self, other: &JoinToken) -> bool {
        let (a, b) = (self.secret.as_bytes(), other.secret.as_bytes());
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
}

impl fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinToken")
            .field("digest", &self.digest)
            .field("secret", &"<redacted>")
            .finish()
    }
}

impl fmt::Display for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{PREFIX}-{VERSION}-{}-{}", self.digest, self.secret)
    }
}

impl FromStr for JoinToken {
    type Err = TokenError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let fields: Vec<&str> = s.trim().split('-').collect();
        let [prefix, version, digest, secret] = fields[..] else {
            return Err(TokenError::Malformed);
        };
        if prefix != PREFIX {
            return Err(TokenError::Prefix);
        }
        if version != VERSION {
            return Err(TokenError::Version {
                found: version.to_owned(),
            });
        }
        if digest.len() != DIGEST_LENGTH || !base36::is_base36(digest) {
            return Err(TokenError::Digest { len: digest.len() });
        }
        if secret.len() != SECRET_LENGTH || !base36::is_base36(secret) {
            return Err(TokenError::Secret { len: secret.len() });
        }
        Ok(JoinToken {
            digest: digest.to_owned(),
            secret: secret.to_owned(),
        })
    }
}

/// The digest a token carries for the root CA in `ca_pem` (its first certificate): the sha256
/// of the certificate's DER in base36, zero-padded to [`DIGEST_LENGTH`].
pub fn ca_digest(ca_pem: &str) -> Result<String, TokenError> {
    let der = CertificateDer::pem_slice_iter(ca_pem.as_bytes())
        .next()
        .and_then(Result::ok)
        .ok_or(TokenError::NoCaCertificate)?;
    Ok(base36::encode(&Sha256::digest(der.as_ref()), DIGEST_LENGTH))
}

/// A fresh secret: 128 random bits in base36, zero-padded to [`SECRET_LENGTH`] (swarmkit's
/// `generatedSecretEntropyBytes` and `maxGeneratedSecretLength`).
pub fn random_secret() -> String {
    base36::random_128(SECRET_LENGTH)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn self_signed_pem() -> String {
        let key = rcgen::KeyPair::generate().unwrap();
        rcgen::CertificateParams::new(vec!["x".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap()
            .pem()
    }

    #[test]
    fn round_trips_through_display_and_parse() {
        let token = JoinToken::generate(&"a".repeat(DIGEST_LENGTH));
        let text = token.to_string();
        assert!(text.starts_with("SWMTKN-1-aaaa"), "{text}");
        assert_eq!(
            text.len(),
            "SWMTKN-1--".len() + DIGEST_LENGTH + SECRET_LENGTH
        );
        assert_eq!(text.parse::<JoinToken>().unwrap(), token);
        // Pasted tokens often carry a newline.
        assert_eq!(format!(" {text}\n").parse::<JoinToken>().unwrap(), token);
    }

    #[test]
    fn bad_tokens_are_refused_with_the_reason() {
        let digest = "0".repeat(DIGEST_LENGTH);
        let secret = "1".repeat(SECRET_LENGTH);
        let bad: &[(String, TokenError)] = &[
            (String::new(), TokenError::Malformed),
            ("SWMTKN".to_owned(), TokenError::Malformed),
            (format!("SWMTKN-1-{digest}"), TokenError::Malformed),
            (
                format!("SWMTKN-1-{digest}-{secret}-x"),
                TokenError::Malformed,
            ),
            (format!("SWMTKX-1-{digest}-{secret}"), TokenError::Prefix),
            (format!("swmtkn-1-{digest}-{secret}"), TokenError::Prefix),
            (
                format!("SWMTKN-2-{digest}-{secret}"),
                TokenError::Version { found: "2".into() },
            ),
            (
                format!("SWMTKN-1-{}-{secret}", &digest[1..]),
                TokenError::Digest { len: 49 },
            ),
            (
                format!("SWMTKN-1-{digest}0-{secret}"),
                TokenError::Digest { len: 51 },
            ),
            (
                format!("SWMTKN-1-{}A-{secret}", &digest[1..]),
                TokenError::Digest { len: DIGEST_LENGTH },
            ),
            (
                format!("SWMTKN-1-{digest}-{}", &secret[1..]),
                TokenError::Secret { len: 24 },
            ),
            (
                format!("SWMTKN-1-{digest}-{}_", &secret[1..]),
                TokenError::Secret { len: SECRET_LENGTH },
            ),
        ];
        for (text, want) in bad {
            assert_eq!(text.parse::<JoinToken>().unwrap_err(), *want, "{text:?}");
        }
        let good = format!("SWMTKN-1-{digest}-{secret}");
        assert!(good.parse::<JoinToken>().is_ok());
    }

    #[test]
    fn errors_and_debug_never_show_the_secret() {
        let secret = "s".repeat(SECRET_LENGTH);
        let token = JoinToken {
            digest: "0".repeat(DIGEST_LENGTH),
            secret: secret.clone(),
        };
        assert!(!format!("{token:?}").contains(&secret));
        let err = format!("SWMTKN-1-{}-{secret}x", "0".repeat(DIGEST_LENGTH))
            .parse::<JoinToken>()
            .unwrap_err();
        assert!(!err.to_string().contains(&secret), "{err}");
    }

    #[test]
    fn digest_pins_the_ca() {
        let ca = self_signed_pem();
        let other = self_signed_pem();
        let digest = ca_digest(&ca).unwrap();
        assert_eq!(digest.len(), DIGEST_LENGTH);
        assert!(base36::is_base36(&digest));
        let token = JoinToken::generate(&digest);
        assert!(token.matches_ca(&ca));
        assert!(!token.matches_ca(&other), "a different CA must be refused");
        assert!(!token.matches_ca("not pem"));
        assert_eq!(ca_digest("").unwrap_err(), TokenError::NoCaCertificate);
    }

    #[test]
    fn secrets_compare_exactly() {
        let a = JoinToken::generate(&"0".repeat(DIGEST_LENGTH));
        let b = JoinToken::generate(&a.digest);
        assert!(a.same_secret(&a.clone()));
        assert!(!a.same_secret(&b));
        let short = JoinToken {
            secret: a.secret[1..].to_owned(),
            ..a.clone()
        };
        assert!(!a.same_secret(&short));
    }
}
