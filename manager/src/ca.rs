//! The cluster's certificate authority: the root CA's key pair, issuing node certificates from
//! the nodes' own CSRs, and the join tokens that pin the CA (swarmkit `ca/certificates.go`,
//! `ca/config.go`).
//!
//! The root is an ECDSA P-256 self-signed certificate, CN `shoal-root-ca`, valid 20 years. A
//! node certificate carries who the node is in its subject — CN = node id, OU = role, O =
//! cluster id — and the role and node id as DNS SANs, the role being the name TLS clients
//! verify a server under. The CA takes only the public key from a CSR: the subject is always
//! its own decision, so a node cannot ask to be someone else or a manager.
//!
//! This module does not decide *whether* to issue (token secrets, removed nodes: that is the
//! CA service's job), nor store the CA (it lives in the `Cluster` object of the store).

use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, PublicKeyData,
    SanType, SerialNumber,
};
use shoal_proto::transport::token::{self, JoinToken};
use shoal_proto::transport::{self, Identity, Role};
use x509_parser::prelude::{FromDer, X509Certificate};

/// Common name of every cluster's root CA.
pub const ROOT_CA_NAME: &str = "shoal-root-ca";

/// Validity of the root CA: swarmkit's `RootCAExpiration` (20 years). Rotating the root is a
/// cluster-wide event, so it should never be forced by expiry.
const ROOT_CA_VALIDITY: Duration = Duration::from_secs(20 * 365 * 24 * 3600);

/// Validity of node certificates: swarmkit's `DefaultNodeCertExpiration` (90 days). Short
/// enough that a stolen key stops working on its own, long enough that a node offline for a
/// while still rejoins.
pub const NODE_CERT_VALIDITY: Duration = Duration::from_secs(90 * 24 * 3600);

/// How far back certificates' validity starts, so that a node whose clock is a little behind
/// the CA's accepts a certificate issued a moment ago (swarmkit's `CertBackdate`).
const BACKDATE: Duration = Duration::from_secs(3600);

/// Errors of the certificate authority.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// The root CA's key pair or certificate could not be generated.
    #[error("generate root CA")]
    Generate(#[source] rcgen::Error),
    /// The stored CA key is not a readable private key.
    #[error("parse root CA key")]
    ParseKey(#[source] rcgen::Error),
    /// The stored CA certificate is not a readable certificate.
    #[error("parse root CA certificate: {reason}")]
    ParseCert {
        /// The parser's complaint.
        reason: String,
    },
    /// The stored CA key is not the certificate's.
    #[error("root CA key does not match its certificate")]
    KeyMismatch,
    /// A CSR is unreadable or not signed by the key it carries.
    #[error("parse certificate signing request for node {node_id}")]
    ParseCsr {
        /// The node the certificate was for.
        node_id: String,
        /// rcgen's reason.
        #[source]
        source: rcgen::Error,
    },
    /// A node id or cluster id cannot go in a certificate (not a DNS name, not a string).
    #[error("invalid {what} {value:?} for a certificate")]
    InvalidName {
        /// "node id" or "cluster id".
        what: &'static str,
        /// The value.
        value: String,
    },
    /// Signing failed.
    #[error("sign certificate for node {node_id}")]
    Sign {
        /// The node the certificate was for.
        node_id: String,
        /// rcgen's reason.
        #[source]
        source: rcgen::Error,
    },
    /// The node's own key or CSR could not be made (issuing a whole identity).
    #[error("generate key for node {node_id}")]
    NodeKey {
        /// The node.
        node_id: String,
        /// Why.
        #[source]
        source: transport::TransportError,
    },
}

/// Result of the CA's operations.
pub type Result<T, E = CaError> = std::result::Result<T, E>;

/// The cluster's root CA: its certificate and private key, as PEM. `Debug` hides the key.
#[derive(Clone)]
pub struct RootCa {
    /// The root certificate: every node's only trust anchor. Read-only: the digest and the
    /// tokens are derived from it when the `RootCa` is made.
    pub cert_pem: String,
    key_pem: String,
    /// [`token::ca_digest`] of `cert_pem`.
    digest: String,
}

impl std::fmt::Debug for RootCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RootCa")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"<redacted>")
            .field("digest", &self.digest)
            .finish()
    }
}

impl RootCa {
    /// A new root CA with a fresh key (at `swarm init`).
    pub fn generate() -> Result<RootCa> {
        let key = KeyPair::generate().map_err(CaError::Generate)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, ROOT_CA_NAME);
        // Path length 0: the root signs node certificates only, never another CA.
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        set_validity(&mut params, ROOT_CA_VALIDITY);
        let cert = params.self_signed(&key).map_err(CaError::Generate)?;
        RootCa::from_pem(&cert.pem(), &key.serialize_pem())
    }

    /// The root CA kept in the store. Checks that the key is the certificate's.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<RootCa> {
        let key = KeyPair::from_pem(key_pem).map_err(CaError::ParseKey)?;
        let der = first_cert_der(cert_pem)?;
        let (_, cert) = X509Certificate::from_der(&der).map_err(|err| CaError::ParseCert {
            reason: err.to_string(),
        })?;
        if cert.public_key().raw != key.subject_public_key_info().as_slice() {
            return Err(CaError::KeyMismatch);
        }
        let digest = token::ca_digest(cert_pem).map_err(|err| CaError::ParseCert {
            reason: err.to_string(),
        })?;
        Ok(RootCa {
            cert_pem: cert_pem.to_owned(),
            key_pem: key_pem.to_owned(),
            digest,
        })
    }

    /// The CA's private key, to be kept in the replicated store (managers only).
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// The digest join tokens carry for this CA.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// The join token with `secret` for this CA.
    pub fn token(&self, secret: &str) -> String {
        JoinToken {
            digest: self.digest.clone(),
            secret: secret.to_owned(),
        }
        .to_string()
    }

    /// A node certificate (PEM) for the key of `csr_pem`, for `node_id` in `role` of cluster
    /// `cluster_id`, valid [`NODE_CERT_VALIDITY`]. Whatever subject, SANs or extensions the
    /// CSR asks for are ignored; its signature must be valid (the node holds the key).
    pub fn sign(
        &self,
        csr_pem: &str,
        node_id: &str,
        role: Role,
        cluster_id: &str,
    ) -> Result<String> {
        let csr = CertificateSigningRequestParams::from_pem(csr_pem).map_err(|source| {
            CaError::ParseCsr {
                node_id: node_id.to_owned(),
                source,
            }
        })?;
        let params = node_params(node_id, role, cluster_id)?;
        let key = KeyPair::from_pem(&self.key_pem).map_err(CaError::ParseKey)?;
        let sign_err = |source| CaError::Sign {
            node_id: node_id.to_owned(),
            source,
        };
        let issuer = Issuer::from_ca_cert_pem(&self.cert_pem, key).map_err(sign_err)?;
        let cert = params
            .signed_by(&csr.public_key, &issuer)
            .map_err(sign_err)?;
        Ok(cert.pem())
    }

    /// A whole identity for `node_id`: a fresh key, a CSR and this CA's certificate for it.
    /// For a node whose key is made on the CA's own node (the first manager at `swarm init`);
    /// every other node makes its own key and sends only a CSR.
    pub fn issue_identity(&self, node_id: &str, role: Role, cluster_id: &str) -> Result<Identity> {
        let (key_pem, csr_pem) =
            transport::generate_csr(node_id).map_err(|source| CaError::NodeKey {
                node_id: node_id.to_owned(),
                source,
            })?;
        let cert_pem = self.sign(&csr_pem, node_id, role, cluster_id)?;
        Ok(Identity {
            cert_pem,
            key_pem,
            ca_pem: self.cert_pem.clone(),
        })
    }
}

/// The identity of the first manager of a new cluster, issued by its `ca`.
pub fn issue_server_identity(ca: &RootCa, node_id: &str, cluster_id: &str) -> Result<Identity> {
    ca.issue_identity(node_id, Role::Manager, cluster_id)
}

/// The certificate parameters of a node certificate.
fn node_params(node_id: &str, role: Role, cluster_id: &str) -> Result<CertificateParams> {
    let invalid = |what, value: &str| CaError::InvalidName {
        what,
        value: value.to_owned(),
    };
    // Both ids are random base36 in practice; refuse anything else rather than put an odd
    // string in a subject or SAN that other code then parses.
    let is_id = |s: &str| {
        !s.is_empty() && s.len() <= 63 && s.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-')
    };
    if !is_id(node_id) {
        return Err(invalid("node id", node_id));
    }
    if !is_id(cluster_id) {
        return Err(invalid("cluster id", cluster_id));
    }
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, node_id);
    params
        .distinguished_name
        .push(DnType::OrganizationalUnitName, role.as_str());
    params
        .distinguished_name
        .push(DnType::OrganizationName, cluster_id);
    let dns = |name: &str| {
        name.to_owned()
            .try_into()
            .map(SanType::DnsName)
            .map_err(|_| invalid("node id", name))
    };
    params.subject_alt_names = vec![dns(role.as_str())?, dns(node_id)?];
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    // Every node is a TLS client; managers are also servers. Workers get ServerAuth too (as in
    // swarmkit): their SANs do not name `shoal-manager`, so it does not let them serve.
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    set_validity(&mut params, NODE_CERT_VALIDITY);
    Ok(params)
}

/// Sets a random serial and a validity of `validity` from now, backdated by [`BACKDATE`].
fn set_validity(params: &mut CertificateParams, validity: Duration) {
    let mut serial = rand::random::<[u8; 16]>();
    // A positive DER integer: RFC 5280 wants serials positive, and webpki checks.
    serial[0] &= 0x7f;
    params.serial_number = Some(SerialNumber::from_slice(&serial));
    let now = x509_parser::time::ASN1Time::now().to_datetime();
    params.not_before = now - BACKDATE;
    params.not_after = now + validity;
}

/// The DER of the first certificate of `pem`.
fn first_cert_der(pem: &str) -> Result<Vec<u8>> {
    x509_parser::pem::parse_x509_pem(pem.as_bytes())
        .map(|(_, pem)| pem.contents)
        .map_err(|err| CaError::ParseCert {
            reason: err.to_string(),
        })
}

#[cfg(test)]
mod tests {
    use shoal_proto::cluster::v1::ca_client::CaClient;
    use shoal_proto::cluster::v1::ca_server::{Ca, CaServer};
    use shoal_proto::cluster::v1::{
        GetRootCaRequest, GetRootCaResponse, IssueNodeCertificateRequest,
        IssueNodeCertificateResponse, RenewNodeCertificateRequest, RenewNodeCertificateResponse,
    };
    use shoal_proto::transport::PeerIdentity;
    use tonic::{Request, Response, Status};
    use x509_parser::extensions::GeneralName;

    use super::*;

    fn parse(pem: &str) -> Vec<u8> {
        first_cert_der(pem).unwrap()
    }

    #[test]
    fn root_ca_round_trips_and_refuses_a_foreign_key() {
        let ca = RootCa::generate().unwrap();
        let again = RootCa::from_pem(&ca.cert_pem, ca.key_pem()).unwrap();
        assert_eq!(again.digest(), ca.digest());
        assert!(!format!("{ca:?}").contains(ca.key_pem()));

        let der = parse(&ca.cert_pem);
        let (_, cert) = X509Certificate::from_der(&der).unwrap();
        assert_eq!(cert.subject().to_string(), "CN=shoal-root-ca");
        assert_eq!(cert.issuer(), cert.subject());
        assert!(cert.is_ca());

        let other = RootCa::generate().unwrap();
        assert_ne!(other.digest(), ca.digest());
        assert!(matches!(
            RootCa::from_pem(&ca.cert_pem, other.key_pem()),
            Err(CaError::KeyMismatch)
        ));
        assert!(matches!(
            RootCa::from_pem(&ca.cert_pem, "junk"),
            Err(CaError::ParseKey(_))
        ));
        assert!(matches!(
            RootCa::from_pem("junk", ca.key_pem()),
            Err(CaError::ParseCert { .. })
        ));
    }

    #[test]
    fn tokens_pin_this_ca() {
        let ca = RootCa::generate().unwrap();
        let secret = token::random_secret();
        let text = ca.token(&secret);
        let parsed: JoinToken = text.parse().unwrap();
        assert_eq!(parsed.secret, secret);
        assert_eq!(parsed.digest, ca.digest());
        assert!(parsed.matches_ca(&ca.cert_pem));
        assert!(!parsed.matches_ca(&RootCa::generate().unwrap().cert_pem));
    }

    #[test]
    fn signing_imposes_the_subject_whatever_the_csr_asks() {
        let ca = RootCa::generate().unwrap();
        // A worker asking to be a manager of another cluster.
        let key = KeyPair::generate().unwrap();
        let mut asked = CertificateParams::new(vec!["shoal-manager".to_owned()]).unwrap();
        asked.distinguished_name.push(DnType::CommonName, "leader");
        asked
            .distinguished_name
            .push(DnType::OrganizationalUnitName, "shoal-manager");
        asked
            .distinguished_name
            .push(DnType::OrganizationName, "elsewhere");
        asked.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let csr = asked.serialize_request(&key).unwrap().pem().unwrap();

        let pem = ca.sign(&csr, "node1", Role::Worker, "cluster1").unwrap();
        let der = parse(&pem);
        let (_, cert) = X509Certificate::from_der(&der).unwrap();
        assert_eq!(
            PeerIdentity::from_der(&der).unwrap(),
            PeerIdentity {
                node_id: "node1".into(),
                role: Role::Worker,
                cluster_id: "cluster1".into()
            }
        );
        assert_eq!(cert.issuer().to_string(), "CN=shoal-root-ca");
        assert!(!cert.is_ca());
        assert_eq!(
            cert.public_key().raw,
            key.subject_public_key_info().as_slice()
        );
        let sans: Vec<String> = cert
            .subject_alternative_name()
            .unwrap()
            .unwrap()
            .value
            .general_names
            .iter()
            .map(|name| match name {
                GeneralName::DNSName(dns) => dns.to_string(),
                other => panic!("unexpected SAN {other:?}"),
            })
            .collect();
        assert_eq!(sans, ["shoal-worker", "node1"]);
        let validity = cert.validity();
        let lifetime = validity.not_after.timestamp() - validity.not_before.timestamp();
        let expected = (NODE_CERT_VALIDITY + BACKDATE).as_secs() as i64;
        assert!((lifetime - expected).abs() < 5, "lifetime {lifetime}s");
        assert!(validity.is_valid());

        // Two certificates never share a serial.
        let again = parse(&ca.sign(&csr, "node1", Role::Worker, "cluster1").unwrap());
        let (_, again) = X509Certificate::from_der(&again).unwrap();
        assert_ne!(again.raw_serial(), cert.raw_serial());
    }

    #[test]
    fn bad_requests_are_refused() {
        let ca = RootCa::generate().unwrap();
        let (_, csr) = transport::generate_csr("n").unwrap();
        assert!(matches!(
            ca.sign("junk", "node1", Role::Worker, "c"),
            Err(CaError::ParseCsr { .. })
        ));
        // A CSR whose signature does not verify: someone else's public key.
        let mut der = x509_parser::pem::parse_x509_pem(csr.as_bytes())
            .unwrap()
            .1
            .contents;
        let last = der.len() - 1;
        der[last] ^= 1;
        let tampered = pem_encode("CERTIFICATE REQUEST", &der);
        assert!(matches!(
            ca.sign(&tampered, "node1", Role::Worker, "c"),
            Err(CaError::ParseCsr { .. })
        ));
        for (node, cluster) in [
            ("", "c"),
            ("a b", "c"),
            ("n", ""),
            ("n", "c=1,O=x"),
            ("n\0", "c"),
        ] {
            assert!(
                matches!(
                    ca.sign(&csr, node, Role::Worker, cluster),
                    Err(CaError::InvalidName { .. })
                ),
                "{node:?} {cluster:?}"
            );
        }
    }

    fn pem_encode(label: &str, der: &[u8]) -> String {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD.encode(der);
        let lines: Vec<&str> = b64
            .as_bytes()
            .chunks(64)
            .map(|chunk| std::str::from_utf8(chunk).unwrap())
            .collect();
        format!(
            "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
            lines.join("\n")
        )
    }

    /// Answers `GetRootCa`, and `IssueNodeCertificate` with the caller's identity.
    struct EchoCa {
        ca_pem: String,
    }

    #[tonic::async_trait]
    impl Ca for EchoCa {
        async fn get_root_ca(
            &self,
            _req: Request<GetRootCaRequest>,
        ) -> Result<Response<GetRootCaResponse>, Status> {
            Ok(Response::new(GetRootCaResponse {
                cert_pem: self.ca_pem.clone(),
            }))
        }

        async fn issue_node_certificate(
            &self,
            req: Request<IssueNodeCertificateRequest>,
        ) -> Result<Response<IssueNodeCertificateResponse>, Status> {
            let peer = transport::peer_identity(&req)
                .ok_or_else(|| Status::unauthenticated("no client certificate"))?;
            Ok(Response::new(IssueNodeCertificateResponse {
                node_id: peer.node_id,
                role: shoal_proto::cluster::v1::NodeRole::from(peer.role).into(),
                cluster_id: peer.cluster_id,
                ..Default::default()
            }))
        }

        async fn renew_node_certificate(
            &self,
            _req: Request<RenewNodeCertificateRequest>,
        ) -> Result<Response<RenewNodeCertificateResponse>, Status> {
            Err(Status::unimplemented("not in this test"))
        }
    }

    /// Aborts the server task when the test ends, also on failure.
    struct AbortOnDrop(tokio::task::JoinHandle<()>);

    impl Drop for AbortOnDrop {
        fn drop(&mut self) {
            self.0.abort();
        }
    }

    /// The CA's certificates work with the cluster port's TLS end to end: the join flow
    /// (bootstrap fetch, digest check, anonymous call) and a member identified by its cert.
    #[tokio::test]
    async fn issued_certificates_work_over_the_cluster_port() {
        let ca = RootCa::generate().unwrap();
        let server_id = issue_server_identity(&ca, "manager1", "cluster1").unwrap();
        assert_eq!(server_id.peer().unwrap().role, Role::Manager);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let incoming = transport::incoming(listener, transport::server_config(&server_id).unwrap());
        let service = CaServer::new(EchoCa {
            ca_pem: ca.cert_pem.clone(),
        });
        let _server = AbortOnDrop(tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(incoming)
                .await
                .unwrap();
        }));
        let timeout = std::time::Duration::from_secs(10);

        // A joiner: fetch the CA without trusting it, pin it with the token, then call
        // anonymously against it.
        let token: JoinToken = ca.token(&token::random_secret()).parse().unwrap();
        let channel = transport::channel(&addr, transport::bootstrap_client_config()).unwrap();
        let fetched = tokio::time::timeout(
            timeout,
            CaClient::new(channel).get_root_ca(GetRootCaRequest {}),
        )
        .await
        .unwrap()
        .unwrap()
        .into_inner()
        .cert_pem;
        assert!(token.matches_ca(&fetched));
        let config = transport::anonymous_client_config(&fetched).unwrap();
        let mut anonymous = CaClient::new(transport::channel(&addr, config).unwrap());
        let err = tokio::time::timeout(
            timeout,
            anonymous.issue_node_certificate(IssueNodeCertificateRequest::default()),
        )
        .await
        .unwrap()
        .unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unauthenticated);

        // A member with a certificate from this CA is identified.
        let worker = ca
            .issue_identity("worker1", Role::Worker, "cluster1")
            .unwrap();
        let config = transport::client_config(&worker).unwrap();
        let mut member = CaClient::new(transport::channel(&addr, config).unwrap());
        let resp = tokio::time::timeout(
            timeout,
            member.issue_node_certificate(IssueNodeCertificateRequest::default()),
        )
        .await
        .unwrap()
        .unwrap()
        .into_inner();
        assert_eq!(
            (
                resp.node_id.as_str(),
                Role::from(resp.role()),
                resp.cluster_id.as_str()
            ),
            ("worker1", Role::Worker, "cluster1")
        );

        // A certificate from another cluster's CA is refused.
        let other = RootCa::generate().unwrap();
        let mut stranger = other
            .issue_identity("worker9", Role::Worker, "cluster2")
            .unwrap();
        stranger.ca_pem = ca.cert_pem.clone();
        let config = transport::client_config(&stranger).unwrap();
        let mut stranger = CaClient::new(transport::channel(&addr, config).unwrap());
        let result = tokio::time::timeout(timeout, stranger.get_root_ca(GetRootCaRequest {}))
            .await
            .unwrap();
        assert!(result.is_err(), "{result:?}");
    }
}
