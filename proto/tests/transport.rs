//! The cluster port's TLS end to end: a real tonic server on 127.0.0.1 behind
//! `transport::incoming`, dialled with `transport::channel` under each client configuration.
//! The CA here is a minimal rcgen one issuing certificates of the same shape as
//! `shoal-manager`'s `ca` (which has its own end-to-end test against this transport).

// A test binary: a panic in a helper is the test's failure report.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use shoal_proto::cluster::v1::ca_client::CaClient;
use shoal_proto::cluster::v1::ca_server::{Ca, CaServer};
use shoal_proto::cluster::v1::{
    GetRootCaRequest, GetRootCaResponse, IssueNodeCertificateRequest, IssueNodeCertificateResponse,
    NodeRole, RenewNodeCertificateRequest, RenewNodeCertificateResponse,
};
use shoal_proto::transport::token::{ca_digest, JoinToken};
use shoal_proto::transport::{self, Identity, PeerIdentity, Role, ServerConfigCell};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tonic::{Request, Response, Status};

/// Upper bound for any one RPC in these tests, so that a regression fails instead of hanging.
const RPC_TIMEOUT: Duration = Duration::from_secs(10);

struct TestCa {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl TestCa {
    fn new() -> TestCa {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, "shoal-root-ca");
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let pem = params.self_signed(&key).unwrap().pem();
        TestCa {
            pem,
            issuer: Issuer::new(params, key),
        }
    }

    fn identity(&self, node_id: &str, role: Role, cluster_id: &str) -> Identity {
        let (key_pem, csr_pem) = transport::generate_csr(node_id).unwrap();
        let csr = CertificateSigningRequestParams::from_pem(&csr_pem).unwrap();
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, node_id);
        params
            .distinguished_name
            .push(DnType::OrganizationalUnitName, role.as_str());
        params
            .distinguished_name
            .push(DnType::OrganizationName, cluster_id);
        params.subject_alt_names = vec![
            SanType::DnsName(role.as_str().try_into().unwrap()),
            SanType::DnsName(node_id.try_into().unwrap()),
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert_pem = params
            .signed_by(&csr.public_key, &self.issuer)
            .unwrap()
            .pem();
        Identity {
            cert_pem,
            key_pem,
            ca_pem: self.pem.clone(),
        }
    }
}

/// Answers `GetRootCa` with its CA and `IssueNodeCertificate` with the caller's identity as
/// the server saw it (unauthenticated when it presented no certificate).
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
        assert!(
            req.remote_addr().is_some(),
            "remote_addr works on TLS connections"
        );
        Ok(Response::new(IssueNodeCertificateResponse {
            node_id: peer.node_id,
            role: NodeRole::from(peer.role).into(),
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

/// A running test server; aborted on drop so a failing test leaves no task behind.
struct TestServer {
    addr: String,
    config: ServerConfigCell,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(id: &Identity) -> TestServer {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let config = ServerConfigCell::new(transport::server_config(id).unwrap());
    let incoming = transport::incoming(listener, config.clone());
    let service = CaServer::new(EchoCa {
        ca_pem: id.ca_pem.clone(),
    });
    let task = tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(incoming)
            .await
            .unwrap();
    });
    TestServer { addr, config, task }
}

fn client(addr: &str, config: Arc<rustls::ClientConfig>) -> CaClient<tonic::transport::Channel> {
    CaClient::new(transport::channel(addr, config).unwrap())
}

/// Calls `IssueNodeCertificate` and returns the identity the server saw.
async fn whoami(client: &mut CaClient<tonic::transport::Channel>) -> Result<PeerIdentity, Status> {
    let resp = tokio::time::timeout(
        RPC_TIMEOUT,
        client.issue_node_certificate(IssueNodeCertificateRequest::default()),
    )
    .await
    .expect("RPC timed out")?
    .into_inner();
    Ok(PeerIdentity {
        role: Role::from(resp.role()),
        node_id: resp.node_id,
        cluster_id: resp.cluster_id,
    })
}

async fn root_ca(client: &mut CaClient<tonic::transport::Channel>) -> Result<String, Status> {
    let resp = tokio::time::timeout(RPC_TIMEOUT, client.get_root_ca(GetRootCaRequest {}))
        .await
        .expect("RPC timed out")?;
    Ok(resp.into_inner().cert_pem)
}

#[tokio::test]
async fn member_with_a_cluster_certificate_is_identified() {
    let ca = TestCa::new();
    let server = serve(&ca.identity("manager1", Role::Manager, "cluster1")).await;
    for (node, role) in [("worker1", Role::Worker), ("manager2", Role::Manager)] {
        let id = ca.identity(node, role, "cluster1");
        assert_eq!(id.peer().unwrap().node_id, node);
        let mut client = client(&server.addr, transport::client_config(&id).unwrap());
        let seen = whoami(&mut client).await.unwrap();
        assert_eq!(seen, id.peer().unwrap());
        assert_eq!(seen.cluster_id, "cluster1");
        assert_eq!(seen.role, role);
    }
}

#[tokio::test]
async fn joiner_without_a_certificate_has_no_identity() {
    let ca = TestCa::new();
    let server = serve(&ca.identity("manager1", Role::Manager, "cluster1")).await;
    let mut client = client(
        &server.addr,
        transport::anonymous_client_config(&ca.pem).unwrap(),
    );
    assert_eq!(root_ca(&mut client).await.unwrap(), ca.pem);
    let err = whoami(&mut client).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err}");
}

#[tokio::test]
async fn client_certificate_from_another_ca_is_refused() {
    let ca = TestCa::new();
    let server = serve(&ca.identity("manager1", Role::Manager, "cluster1")).await;
    let other = TestCa::new();
    // Trusts the right CA, but presents a certificate of another cluster.
    let mut forged = other.identity("intruder", Role::Manager, "cluster1");
    forged.ca_pem = ca.pem.clone();
    let mut intruder = client(&server.addr, transport::client_config(&forged).unwrap());
    // TLS 1.3 verifies the client's certificate after the client has finished its side of the
    // handshake, so the refusal (an alert) surfaces on the first RPC, as `Unknown`, and h2
    // keeps only its text.
    let err = root_ca(&mut intruder).await.unwrap_err();
    assert!(format!("{err:?}").contains("alert"), "{err:?}");

    // The server keeps serving others after the refused handshake.
    let good = ca.identity("worker1", Role::Worker, "cluster1");
    let mut client = client(&server.addr, transport::client_config(&good).unwrap());
    assert_eq!(whoami(&mut client).await.unwrap().node_id, "worker1");
}

#[tokio::test]
async fn server_from_another_ca_is_refused() {
    let ca = TestCa::new();
    let server = serve(&ca.identity("manager1", Role::Manager, "cluster1")).await;
    let other = TestCa::new();
    let id = other.identity("worker1", Role::Worker, "cluster2");
    for config in [
        transport::client_config(&id).unwrap(),
        transport::anonymous_client_config(&other.pem).unwrap(),
    ] {
        let err = root_ca(&mut client(&server.addr, config))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unavailable, "{err}");
        assert!(
            matches!(
                transport::tls_failure(&err),
                Some(rustls::Error::InvalidCertificate(
                    rustls::CertificateError::UnknownIssuer
                        | rustls::CertificateError::BadSignature
                ))
            ),
            "{err:?}"
        );
    }
}

#[tokio::test]
async fn worker_certificate_cannot_serve_as_a_manager() {
    let ca = TestCa::new();
    let server = serve(&ca.identity("worker1", Role::Worker, "cluster1")).await;
    let config = transport::anonymous_client_config(&ca.pem).unwrap();
    let err = root_ca(&mut client(&server.addr, config))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err}");
    assert!(
        matches!(
            transport::tls_failure(&err),
            Some(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForName
                    | rustls::CertificateError::NotValidForNameContext { .. }
            ))
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn bootstrap_fetches_the_ca_which_the_token_then_pins() {
    let ca = TestCa::new();
    let server = serve(&ca.identity("manager1", Role::Manager, "cluster1")).await;
    let mut client = client(&server.addr, transport::bootstrap_client_config());
    let fetched = root_ca(&mut client).await.unwrap();
    // The bootstrap connection carries no identity.
    assert_eq!(
        whoami(&mut client).await.unwrap_err().code(),
        tonic::Code::Unauthenticated
    );

    let token = JoinToken::generate(&ca_digest(&ca.pem).unwrap());
    assert!(token.matches_ca(&fetched));
    let impostor = JoinToken::generate(&ca_digest(&TestCa::new().pem).unwrap());
    assert!(
        !impostor.matches_ca(&fetched),
        "a token of another cluster refuses this CA"
    );
}

#[tokio::test]
async fn stalled_and_garbage_handshakes_do_not_block_others() {
    let ca = TestCa::new();
    let server = serve(&ca.identity("manager1", Role::Manager, "cluster1")).await;
    // Connected but silent: its handshake waits in its own task.
    let _stalled = TcpStream::connect(&server.addr).await.unwrap();
    let mut garbage = TcpStream::connect(&server.addr).await.unwrap();
    garbage.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    drop(garbage);

    let id = ca.identity("worker1", Role::Worker, "cluster1");
    let mut client = client(&server.addr, transport::client_config(&id).unwrap());
    assert_eq!(whoami(&mut client).await.unwrap().node_id, "worker1");
}

#[tokio::test]
async fn replaced_server_config_applies_to_new_connections() {
    let ca = TestCa::new();
    let server = serve(&ca.identity("manager1", Role::Manager, "cluster1")).await;
    let id = ca.identity("worker1", Role::Worker, "cluster1");
    let mut before = client(&server.addr, transport::client_config(&id).unwrap());
    assert!(root_ca(&mut before).await.is_ok());

    // Swap in a server certificate of another CA: clients of the first CA now refuse it.
    let other = TestCa::new();
    let swapped = transport::server_config(&other.identity("m", Role::Manager, "c2")).unwrap();
    server.config.replace(swapped);
    let mut after = client(&server.addr, transport::client_config(&id).unwrap());
    assert_eq!(
        root_ca(&mut after).await.unwrap_err().code(),
        tonic::Code::Unavailable
    );
    let config = transport::anonymous_client_config(&other.pem).unwrap();
    assert!(root_ca(&mut client(&server.addr, config)).await.is_ok());
    // The connection made before the swap keeps working.
    assert!(root_ca(&mut before).await.is_ok());
}

#[tokio::test]
async fn mismatched_key_and_certificate_are_refused() {
    let ca = TestCa::new();
    let mut id = ca.identity("manager1", Role::Manager, "cluster1");
    id.key_pem = transport::generate_csr("x").unwrap().0;
    assert!(transport::server_config(&id).is_err());
    assert!(transport::client_config(&id).is_err());
}

#[tokio::test]
async fn channel_wants_host_and_port() {
    let config = transport::bootstrap_client_config();
    for bad in [
        "",
        "127.0.0.1",
        "http://127.0.0.1:4247",
        "127.0.0.1:4247/x",
        ":4247",
    ] {
        assert!(transport::channel(bad, config.clone()).is_err(), "{bad:?}");
    }
    for good in ["127.0.0.1:4247", "[::1]:4247", "manager-1:4247"] {
        assert!(transport::channel(good, config.clone()).is_ok(), "{good:?}");
    }
}

#[tokio::test]
async fn ipv6_literal_addresses_connect() {
    let Ok(listener) = TcpListener::bind("[::1]:0").await else {
        eprintln!("skipping: no IPv6 loopback");
        return;
    };
    let ca = TestCa::new();
    let id = ca.identity("manager1", Role::Manager, "cluster1");
    let port = listener.local_addr().unwrap().port();
    let incoming = transport::incoming(listener, transport::server_config(&id).unwrap());
    let service = CaServer::new(EchoCa {
        ca_pem: ca.pem.clone(),
    });
    let task = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(incoming),
    );
    let config = transport::anonymous_client_config(&ca.pem).unwrap();
    let result = root_ca(&mut client(&format!("[::1]:{port}"), config)).await;
    task.abort();
    assert_eq!(result.unwrap(), ca.pem);
}
