//! A node's identity: its certificate, key and the cluster's root CA as PEM, how they are kept
//! on disk, and the [`PeerIdentity`] (node id, role, cluster id) read back from a certificate
//! — the node's own, or a caller's on the server side of an RPC.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::{Result, TransportError};
use crate::cluster::v1::NodeRole;

/// File of the node's certificate in an identity directory.
pub const CERT_FILE: &str = "node.crt";
/// File of the node's private key (mode 0600).
pub const KEY_FILE: &str = "node.key";
/// File of the cluster's root CA certificate.
pub const CA_FILE: &str = "ca.crt";

/// A node's TLS identity, as PEM. The key is generated on the node and never leaves it.
#[derive(Clone, PartialEq, Eq)]
pub struct Identity {
    /// The node's certificate, issued by the cluster's root CA.
    pub cert_pem: String,
    /// The node's private key (PKCS#8).
    pub key_pem: String,
    /// The cluster's root CA certificate: the only trust anchor.
    pub ca_pem: String,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"<redacted>")
            .field("ca_pem", &self.ca_pem)
            .finish()
    }
}

impl Identity {
    /// Reads the identity kept in `dir` by [`Identity::save`]. `None` when `dir` holds none of
    /// its files (the node is in no swarm); an error when it holds only some of them.
    pub fn load(dir: &Path) -> Result<Option<Identity>> {
        let read = |name: &'static str| -> Result<Option<String>> {
            let path = dir.join(name);
            match fs::read_to_string(&path) {
                Ok(text) => Ok(Some(text)),
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(source) => Err(TransportError::ReadFile { path, source }),
            }
        };
        let (cert, key, ca) = (read(CERT_FILE)?, read(KEY_FILE)?, read(CA_FILE)?);
        match (cert, key, ca) {
            (None, None, None) => Ok(None),
            (Some(cert_pem), Some(key_pem), Some(ca_pem)) => Ok(Some(Identity {
                cert_pem,
                key_pem,
                ca_pem,
            })),
            (cert, key, _) => {
                let missing = if cert.is_none() {
                    CERT_FILE
                } else if key.is_none() {
                    KEY_FILE
                } else {
                    CA_FILE
                };
                Err(TransportError::IncompleteIdentity {
                    dir: dir.to_owned(),
                    missing,
                })
            }
        }
    }

    /// Writes the identity into `dir` (created if missing), each file replaced atomically so
    /// that a crash during a renewal leaves the old file or the new one, never half of one.
    /// The key is written last-but-one and the certificate last: a crash in between leaves a
    /// new key with the old certificate, which [`server_config`](super::server_config) refuses
    /// loudly rather than serving a mismatched pair.
    pub fn save(&self, dir: &Path) -> Result<()> {
        fs::create_dir_all(dir).map_err(|source| TransportError::WriteFile {
            path: dir.to_owned(),
            source,
        })?;
        write_atomic(&dir.join(CA_FILE), &self.ca_pem, 0o644)?;
        write_atomic(&dir.join(KEY_FILE), &self.key_pem, 0o600)?;
        write_atomic(&dir.join(CERT_FILE), &self.cert_pem, 0o644)
    }

    /// Removes the identity files from `dir` (on `swarm leave`); missing files are fine.
    pub fn remove(dir: &Path) -> Result<()> {
        for name in [CERT_FILE, KEY_FILE, CA_FILE] {
            let path = dir.join(name);
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => return Err(TransportError::WriteFile { path, source }),
            }
        }
        Ok(())
    }

    /// Who this identity's certificate says the node is.
    pub fn peer(&self) -> Result<PeerIdentity> {
        PeerIdentity::from_der(&first_cert(&self.cert_pem, "node certificate")?)
    }

    /// When the node certificate expires: the time to renew it is well before this.
    pub fn not_after(&self) -> Result<SystemTime> {
        let der = first_cert(&self.cert_pem, "node certificate")?;
        let cert = parse_x509(&der, "node certificate")?;
        let secs = cert.validity().not_after.timestamp();
        Ok(SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).unwrap_or(0)))
    }
}

/// Who a certificate says a node is: its subject's CN, OU and O.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PeerIdentity {
    /// The node id (CN).
    pub node_id: String,
    /// The node's role (OU).
    pub role: Role,
    /// The id of the cluster whose CA issued the certificate (O).
    pub cluster_id: String,
}

impl PeerIdentity {
    /// Reads the identity from a DER certificate. Does not verify it: that is rustls' job at
    /// the handshake.
    pub fn from_der(der: &[u8]) -> Result<PeerIdentity> {
        let cert = parse_x509(der, "peer certificate")?;
        let subject = cert.subject();
        let field = |iter: &mut dyn Iterator<Item = &x509_parser::x509::AttributeTypeAndValue>,
                     name: &'static str| {
            iter.next()
                .and_then(|attr| attr.as_str().ok())
                .map(str::to_owned)
                .ok_or(TransportError::MissingSubjectField { field: name })
        };
        let node_id = field(&mut subject.iter_common_name(), "CN")?;
        let ou = field(&mut subject.iter_organizational_unit(), "OU")?;
        let cluster_id = field(&mut subject.iter_organization(), "O")?;
        let role = Role::from_ou(&ou).ok_or(TransportError::UnknownRole { ou })?;
        Ok(PeerIdentity {
            node_id,
            role,
            cluster_id,
        })
    }
}

/// A node's role, as written in its certificate's OU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// A manager: a Raft member that serves the cluster port.
    Manager,
    /// A worker: runs tasks, talks to managers, serves nothing.
    Worker,
}

impl Role {
    /// The OU (and DNS SAN) string: `shoal-manager` or `shoal-worker`. The manager's is also
    /// the TLS server name clients verify ([`MANAGER_SERVER_NAME`](super::MANAGER_SERVER_NAME)).
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Manager => super::MANAGER_SERVER_NAME,
            Role::Worker => "shoal-worker",
        }
    }

    /// The role named by an OU string, if any.
    pub fn from_ou(ou: &str) -> Option<Role> {
        [Role::Manager, Role::Worker]
            .into_iter()
            .find(|role| role.as_str() == ou)
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<Role> for NodeRole {
    fn from(role: Role) -> NodeRole {
        match role {
            Role::Manager => NodeRole::Manager,
            Role::Worker => NodeRole::Worker,
        }
    }
}

impl From<NodeRole> for Role {
    fn from(role: NodeRole) -> Role {
        match role {
            NodeRole::Manager => Role::Manager,
            NodeRole::Worker => Role::Worker,
        }
    }
}

/// The identity of an RPC's caller, from the client certificate it presented at the TLS
/// handshake (already verified against the cluster's CA by rustls). `None` when the caller
/// presented no certificate (a joiner), when the connection is not TLS (the local Unix
/// socket), or when the certificate carries no shoal identity.
pub fn peer_identity<T>(req: &tonic::Request<T>) -> Option<PeerIdentity> {
    let certs = req.peer_certs()?;
    let leaf = certs.first()?;
    match PeerIdentity::from_der(leaf) {
        Ok(peer) => Some(peer),
        Err(err) => {
            tracing::warn!(%err, "client certificate verified but carries no shoal identity");
            None
        }
    }
}

/// A fresh key pair (ECDSA P-256) and a PKCS#10 request for it, as `(key PEM, CSR PEM)`. The
/// CA ignores the requested subject and imposes its own, so `node_id_hint` is only a label
/// (empty for a joiner that has no id yet).
pub fn generate_csr(node_id_hint: &str) -> Result<(String, String)> {
    let key = KeyPair::generate().map_err(|source| TransportError::Generate {
        what: "key pair",
        source,
    })?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    if !node_id_hint.is_empty() {
        params
            .distinguished_name
            .push(DnType::CommonName, node_id_hint);
    }
    let csr = params
        .serialize_request(&key)
        .and_then(|csr| csr.pem())
        .map_err(|source| TransportError::Generate {
            what: "certificate signing request",
            source,
        })?;
    Ok((key.serialize_pem(), csr))
}

/// The first certificate of a PEM text.
pub(super) fn first_cert(pem: &str, what: &'static str) -> Result<CertificateDer<'static>> {
    certs(pem, what)?
        .into_iter()
        .next()
        .ok_or(TransportError::NoCertificate { what })
}

/// Every certificate of a PEM text; at least one.
pub(super) fn certs(pem: &str, what: &'static str) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TransportError::ParsePem { what, source })?;
    if certs.is_empty() {
        return Err(TransportError::NoCertificate { what });
    }
    Ok(certs)
}

fn parse_x509<'a>(der: &'a [u8], what: &'static str) -> Result<X509Certificate<'a>> {
    X509Certificate::from_der(der)
        .map(|(_, cert)| cert)
        .map_err(|err| TransportError::ParseCertificate {
            what,
            reason: err.to_string(),
        })
}

/// Writes `text` to `path` through a temporary file that is synced and renamed over it.
fn write_atomic(path: &Path, text: &str, mode: u32) -> Result<()> {
    let tmp = PathBuf::from(format!("{}.tmp", path.display()));
    let wrap = |source| TransportError::WriteFile {
        path: path.to_owned(),
        source,
    };
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(wrap)?;
    file.write_all(text.as_bytes()).map_err(wrap)?;
    file.sync_all().map_err(wrap)?;
    fs::rename(&tmp, path).map_err(wrap)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use rcgen::PublicKeyData;

    use super::*;

    fn cert_with_subject(cn: Option<&str>, ou: Option<&str>, o: Option<&str>) -> Vec<u8> {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        for (ty, value) in [
            (DnType::CommonName, cn),
            (DnType::OrganizationalUnitName, ou),
            (DnType::OrganizationName, o),
        ] {
            if let Some(value) = value {
                params.distinguished_name.push(ty, value);
            }
        }
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn reads_node_id_role_and_cluster_from_the_subject() {
        let der = cert_with_subject(Some("node1"), Some("shoal-worker"), Some("cluster1"));
        assert_eq!(
            PeerIdentity::from_der(&der).unwrap(),
            PeerIdentity {
                node_id: "node1".into(),
                role: Role::Worker,
                cluster_id: "cluster1".into()
            }
        );
        let bad = [
            (
                cert_with_subject(None, Some("shoal-worker"), Some("c")),
                "CN",
            ),
            (cert_with_subject(Some("n"), None, Some("c")), "OU"),
            (
                cert_with_subject(Some("n"), Some("shoal-worker"), None),
                "O",
            ),
        ];
        for (der, field) in bad {
            let err = PeerIdentity::from_der(&der).unwrap_err();
            assert!(
                matches!(err, TransportError::MissingSubjectField { field: f } if f == field),
                "{err}"
            );
        }
        let err = PeerIdentity::from_der(&cert_with_subject(Some("n"), Some("admin"), Some("c")))
            .unwrap_err();
        assert!(matches!(err, TransportError::UnknownRole { .. }), "{err}");
        assert!(PeerIdentity::from_der(b"garbage").is_err());
    }

    #[test]
    fn roles_map_to_ou_and_wire_enum() {
        for role in [Role::Manager, Role::Worker] {
            assert_eq!(Role::from_ou(role.as_str()), Some(role));
            assert_eq!(Role::from(NodeRole::from(role)), role);
        }
        assert_eq!(Role::Manager.as_str(), "shoal-manager");
        assert_eq!(Role::from_ou("manager"), None);
    }

    #[test]
    fn saves_and_loads_with_a_private_key_file() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("tls");
        assert_eq!(Identity::load(&sub).unwrap(), None);
        let id = Identity {
            cert_pem: "c".into(),
            key_pem: "k".into(),
            ca_pem: "a".into(),
        };
        id.save(&sub).unwrap();
        assert_eq!(Identity::load(&sub).unwrap(), Some(id.clone()));
        let mode = fs::metadata(sub.join(KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(!format!("{id:?}").contains("\"k\""));

        fs::remove_file(sub.join(CA_FILE)).unwrap();
        let err = Identity::load(&sub).unwrap_err();
        assert!(matches!(
            err,
            TransportError::IncompleteIdentity {
                missing: CA_FILE,
                ..
            }
        ));
        Identity::remove(&sub).unwrap();
        assert_eq!(Identity::load(&sub).unwrap(), None);
    }

    #[test]
    fn csr_is_for_the_returned_key() {
        let (key_pem, csr_pem) = generate_csr("hint").unwrap();
        let key = KeyPair::from_pem(&key_pem).unwrap();
        let csr = rcgen::CertificateSigningRequestParams::from_pem(&csr_pem).unwrap();
        assert_eq!(csr.public_key.der_bytes(), key.public_key_raw());
        assert!(generate_csr("").is_ok());
    }
}
