//! Transport security of the cluster port: mutual TLS (rustls, ring provider) between all
//! nodes, the node identity carried in certificates, and Swarm-style join tokens.
//!
//! The model is Swarm's: one self-signed root CA per cluster; every node holds a certificate
//! for its own key with subject CN = node id, OU = role, O = cluster id. Managers serve, and
//! clients verify the server under the name `shoal-manager`, so a worker certificate can never
//! pose as a manager and addresses play no part in authentication. Client certificates are
//! optional at the handshake (a joiner has none yet) but verified when given; authorizing each
//! RPC by the caller's [`PeerIdentity`] is the services' job, via [`peer_identity`].
//!
//! This module does not own the CA's key or issue certificates (that is `shoal-manager`'s
//! `ca`), nor decide which RPC a role may call.

mod base36;
mod channel;
mod identity;
mod incoming;
mod tls;
pub mod token;

use std::path::PathBuf;

pub use channel::{channel, channel_from_endpoint, tls_failure};
pub use identity::{generate_csr, peer_identity, Identity, PeerIdentity, Role};
pub use incoming::{incoming, ServerConfigCell};
pub use tls::{anonymous_client_config, bootstrap_client_config, client_config, server_config};

/// The name every manager's certificate carries and every client verifies the server against.
pub const MANAGER_SERVER_NAME: &str = "shoal-manager";

/// Length of [`random_id`]'s ids: 128 random bits in base36, as swarmkit's `identity.NewID`.
pub const ID_LENGTH: usize = 25;

/// Errors of building TLS configurations, reading identities and dialling peers.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// PEM text could not be read.
    #[error("parse {what} PEM")]
    ParsePem {
        /// What the PEM should hold ("node certificate", "CA certificate", …).
        what: &'static str,
        /// Why it could not be read.
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    /// PEM text held no certificate.
    #[error("no certificate in {what} PEM")]
    NoCertificate {
        /// What the PEM should hold.
        what: &'static str,
    },
    /// A DER certificate could not be parsed.
    #[error("parse {what}: {reason}")]
    ParseCertificate {
        /// Which certificate.
        what: &'static str,
        /// The parser's complaint.
        reason: String,
    },
    /// A certificate lacks a subject field shoal puts in every node certificate.
    #[error("certificate subject has no {field}")]
    MissingSubjectField {
        /// `CN`, `OU` or `O`.
        field: &'static str,
    },
    /// A certificate's OU names no shoal role.
    #[error("certificate OU {ou:?} is not a shoal role")]
    UnknownRole {
        /// The OU found.
        ou: String,
    },
    /// The CA certificate was refused as a trust anchor.
    #[error("add CA certificate as a trust anchor")]
    AddTrustAnchor(#[source] rustls::Error),
    /// The client-certificate verifier could not be built.
    #[error("build client certificate verifier")]
    ClientVerifier(#[source] rustls::server::VerifierBuilderError),
    /// The server-certificate verifier could not be built.
    #[error("build server certificate verifier")]
    ServerVerifier(#[source] rustls::server::VerifierBuilderError),
    /// rustls refused a configuration (protocol versions, key or certificate).
    #[error("build {what} TLS configuration")]
    TlsConfig {
        /// Which configuration.
        what: &'static str,
        /// rustls' reason.
        #[source]
        source: rustls::Error,
    },
    /// A key pair or CSR could not be generated.
    #[error("generate {what}")]
    Generate {
        /// "key pair" or "certificate signing request".
        what: &'static str,
        /// rcgen's reason.
        #[source]
        source: rcgen::Error,
    },
    /// An identity file could not be read.
    #[error("read {}", path.display())]
    ReadFile {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// An identity file could not be written.
    #[error("write {}", path.display())]
    WriteFile {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// An identity directory holds some of the identity files but not all.
    #[error("incomplete node identity in {}: {missing} is missing", dir.display())]
    IncompleteIdentity {
        /// The directory.
        dir: PathBuf,
        /// The missing file's name.
        missing: &'static str,
    },
    /// A peer address is not `host:port`.
    #[error("invalid peer address {addr:?}: {reason}")]
    InvalidAddress {
        /// The address given.
        addr: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A join token or CA digest is malformed.
    #[error(transparent)]
    Token(#[from] token::TokenError),
}

/// Result of this module's operations.
pub type Result<T, E = TransportError> = std::result::Result<T, E>;

/// A fresh random id for a node, service, task or cluster: 128 random bits written as
/// [`ID_LENGTH`] lowercase base36 characters, zero-padded, as swarmkit's `identity.NewID`.
/// Valid as a DNS label, so a node id can be a certificate SAN.
pub fn random_id() -> String {
    base36::random_128(ID_LENGTH)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_ids_are_distinct_base36_of_fixed_length() {
        let a = random_id();
        let b = random_id();
        assert_ne!(a, b);
        for id in [&a, &b] {
            assert_eq!(id.len(), ID_LENGTH, "{id}");
            assert!(
                id.bytes()
                    .all(|c| c.is_ascii_digit() || c.is_ascii_lowercase()),
                "{id}"
            );
        }
    }
}
