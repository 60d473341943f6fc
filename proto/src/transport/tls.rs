//! The rustls configurations of the cluster port: the managers' server, a member's mutual-TLS
//! client, a joiner's anonymous client, and the bootstrap client that fetches an unknown CA.
//!
//! Every configuration names the ring provider explicitly rather than relying on a
//! process-global default, which another crate in the process could install differently.
//! Only TLS 1.3 is offered: shoal talks only to shoal, and 1.3 encrypts the client's
//! certificate, so node ids do not cross the network in clear.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{
    client::WebPkiServerVerifier, ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig,
    SignatureScheme,
};

use super::identity::certs;
use super::{Identity, Result, TransportError};

/// The only protocol versions offered.
static VERSIONS: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];

/// ALPN protocol of gRPC.
const ALPN_H2: &[u8] = b"h2";

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The server configuration of a manager's cluster port: presents `id`'s certificate and asks
/// for a client certificate without requiring one (a joiner has none yet); a certificate given
/// must chain to the cluster's CA or the handshake fails. Which RPCs a caller without a
/// certificate may make is up to the services ([`peer_identity`](super::peer_identity)).
pub fn server_config(id: &Identity) -> Result<Arc<ServerConfig>> {
    let provider = provider();
    let roots = Arc::new(root_store(&id.ca_pem)?);
    let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider.clone())
        .allow_unauthenticated()
        .build()
        .map_err(TransportError::ClientVerifier)?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(VERSIONS)
        .map_err(|source| TransportError::TlsConfig {
            what: "server",
            source,
        })?
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            certs(&id.cert_pem, "node certificate")?,
            private_key(&id.key_pem)?,
        )
        .map_err(|source| TransportError::TlsConfig {
            what: "server",
            source,
        })?;
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(Arc::new(config))
}

/// The client configuration of a cluster member: presents `id`'s certificate and accepts only
/// a server whose certificate chains to the cluster's CA and names `shoal-manager`.
pub fn client_config(id: &Identity) -> Result<Arc<ClientConfig>> {
    let config = verifying_builder(&id.ca_pem)?
        .with_client_auth_cert(
            certs(&id.cert_pem, "node certificate")?,
            private_key(&id.key_pem)?,
        )
        .map_err(|source| TransportError::TlsConfig {
            what: "client",
            source,
        })?;
    Ok(with_alpn(config))
}

/// The client configuration of a joiner that trusts the CA in `ca_pem` (checked against its
/// token's digest) but has no certificate yet: for `Ca.IssueNodeCertificate`.
pub fn anonymous_client_config(ca_pem: &str) -> Result<Arc<ClientConfig>> {
    Ok(with_alpn(verifying_builder(ca_pem)?.with_no_client_auth()))
}

/// A client configuration that accepts ANY server certificate and presents none. Only for
/// fetching the root CA (`Ca.GetRootCa`) before joining: what it returns must be checked with
/// [`JoinToken::matches_ca`](super::token::JoinToken::matches_ca) before it is trusted, and
/// nothing secret may be sent over it. The handshake signature is still verified, so the peer
/// does hold the key of the certificate it showed.
pub fn bootstrap_client_config() -> Arc<ClientConfig> {
    let provider = provider();
    let verifier = Arc::new(AcceptAnyServerCert {
        algorithms: provider.signature_verification_algorithms,
    });
    let config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(VERSIONS)
        .expect("the ring provider supports TLS 1.3")
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    with_alpn(config)
}

/// A client builder that verifies the server against `ca_pem` alone.
fn verifying_builder(
    ca_pem: &str,
) -> Result<rustls::ConfigBuilder<ClientConfig, rustls::client::WantsClientCert>> {
    let provider = provider();
    let roots = Arc::new(root_store(ca_pem)?);
    let verifier = WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
        .build()
        .map_err(TransportError::ServerVerifier)?;
    Ok(ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(VERSIONS)
        .map_err(|source| TransportError::TlsConfig {
            what: "client",
            source,
        })?
        .with_webpki_verifier(verifier))
}

fn with_alpn(mut config: ClientConfig) -> Arc<ClientConfig> {
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Arc::new(config)
}

fn root_store(ca_pem: &str) -> Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    for cert in certs(ca_pem, "CA certificate")? {
        roots.add(cert).map_err(TransportError::AddTrustAnchor)?;
    }
    Ok(roots)
}

fn private_key(key_pem: &str) -> Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|source| TransportError::ParsePem {
        what: "node key",
        source,
    })
}

/// Accepts any server certificate but checks that the server signed the handshake with the
/// certificate's key.
#[derive(Debug)]
struct AcceptAnyServerCert {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for AcceptAnyServerCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // Deliberately no chain check: the caller does not know the CA yet, and pins what it
        // fetches with the join token's digest instead.
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}
