//! Bearer tokens with scopes, TLS and mTLS, and the refusal to serve the
//! network unauthenticated.

use std::io::Write;
use std::time::Duration;

use leadscore::api::pb;
use leadscore::api::pb::lead_scoring_client::LeadScoringClient;
use leadscore::startup::{Application, StartupError};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use tonic::Code;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

use crate::helpers::{TestApp, now_millis, record, settings, signal};

const TOKENS: &str = "\
# name        scopes          token
automation    ingest          automation-token-0001
analyst       score           analyst-token-000001
";

fn file(content: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(content.as_bytes()).unwrap();
    f
}

fn with_token<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    request
}

fn score_request() -> pb::ScoreLeadRequest {
    pb::ScoreLeadRequest { lead_id: "sec-1".into(), ..Default::default() }
}

#[tokio::test]
async fn tokens_and_scopes_guard_every_rpc_but_health() {
    let tokens = file(TOKENS);
    let mut s = settings(None);
    s.auth_tokens_file = Some(tokens.path().to_path_buf());
    let app = TestApp::spawn(s).await;
    let mut client = app.client().await;

    // No token, a malformed header, an unknown token: UNAUTHENTICATED.
    let status = client.score_lead(score_request()).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    let mut malformed = tonic::Request::new(score_request());
    malformed.metadata_mut().insert("authorization", "analyst-token-000001".parse().unwrap());
    assert_eq!(client.score_lead(malformed).await.unwrap_err().code(), Code::Unauthenticated);
    let status = client.score_lead(with_token(score_request(), "not-a-known-token-xx")).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    assert!(!status.message().contains("not-a-known"), "the token is not echoed: {}", status.message());

    // The right token with the wrong scope: PERMISSION_DENIED, nothing written.
    let signals = record(vec![signal("e1", "sec-1", "page_view", now_millis())]);
    let status = client.record_signals(with_token(signals.clone(), "analyst-token-000001")).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(status.message().contains("ingest"), "{}", status.message());
    let status = client.score_lead(with_token(score_request(), "analyst-token-000001")).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "the refused RecordSignals wrote nothing");

    // The right scopes.
    client.record_signals(with_token(signals, "automation-token-0001")).await.unwrap();
    let score = client.score_lead(with_token(score_request(), "analyst-token-000001")).await.unwrap().into_inner();
    assert!(score.score.unwrap().behavior > 0.0);

    // Health needs no token (probes).
    let health = HealthClient::new(app.channel().await)
        .check(HealthCheckRequest { service: String::new() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(health.status(), tonic_health::pb::health_check_response::ServingStatus::Serving);
}

#[tokio::test]
async fn the_network_is_refused_without_tokens_unless_insecure() {
    let mut s = settings(None);
    s.grpc_addr = "0.0.0.0:0".parse().unwrap();
    match Application::build(s.clone()).await {
        Err(StartupError::Security(message)) => {
            assert!(message.contains("--insecure") && message.contains("auth_tokens_file"), "{message}")
        }
        Err(e) => panic!("unexpected error: {e}"),
        Ok(_) => panic!("an unauthenticated service on 0.0.0.0 must not start"),
    }
    s.insecure = true;
    assert!(Application::build(s.clone()).await.is_ok());
    s.insecure = false;
    let tokens = file(TOKENS);
    s.auth_tokens_file = Some(tokens.path().to_path_buf());
    assert!(Application::build(s.clone()).await.is_ok());
    // A bad token file stops start-up with its line, never the secret.
    let bad = file("automation ingest,sudo automation-token-0001\n");
    s.auth_tokens_file = Some(bad.path().to_path_buf());
    let err = Application::build(s).await.err().expect("refused");
    assert!(err.to_string().contains("line 1") && err.to_string().contains("sudo"), "{err}");
    assert!(!err.to_string().contains("automation-token"), "{err}");
}

/// A CA, a server certificate for `localhost` and a client certificate,
/// all PEM.
struct Pki {
    ca: String,
    server: (String, String),
    client: (String, String),
    /// A client certificate from a CA the server does not trust.
    stranger: (String, String),
}

fn pki() -> Pki {
    let ca_params = || {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
    };
    let ca = CertifiedIssuer::self_signed(ca_params(), KeyPair::generate().unwrap()).unwrap();
    let other_ca = CertifiedIssuer::self_signed(ca_params(), KeyPair::generate().unwrap()).unwrap();
    let leaf = |name: &str, issuer: &CertifiedIssuer<'_, KeyPair>| {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec![name.to_string()]).unwrap().signed_by(&key, issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    };
    Pki {
        server: leaf("localhost", &ca),
        client: leaf("crm.example", &ca),
        stranger: leaf("crm.example", &other_ca),
        ca: ca.pem(),
    }
}

async fn tls_channel(port: u16, ca: &str, identity: Option<&(String, String)>) -> Result<Channel, String> {
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca)).domain_name("localhost");
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    let endpoint = Channel::from_shared(format!("https://127.0.0.1:{port}"))
        .unwrap()
        .tls_config(tls)
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_secs(2));
    endpoint.connect().await.map_err(|e| format!("{e:?}"))
}

/// One call over `channel`, or why it failed.
async fn health_over(channel: Result<Channel, String>) -> Result<(), String> {
    let channel = channel?;
    HealthClient::new(channel)
        .check(HealthCheckRequest { service: String::new() })
        .await
        .map(|_| ())
        .map_err(|e| format!("{e:?}"))
}

#[tokio::test]
async fn tls_and_mutual_tls_handshakes() {
    let pki = pki();
    let (cert, key, ca) = (file(&pki.server.0), file(&pki.server.1), file(&pki.ca));

    // TLS: a client trusting the CA talks; a plaintext client does not.
    let mut s = settings(None);
    s.tls_cert = Some(cert.path().to_path_buf());
    s.tls_key = Some(key.path().to_path_buf());
    let app = TestApp::spawn(s.clone()).await;
    health_over(tls_channel(app.port, &pki.ca, None).await).await.expect("TLS call");
    let mut plain = LeadScoringClient::new(app.channel().await);
    assert!(plain.score_lead(score_request()).await.is_err(), "plaintext must not be served");
    app.stop().await;

    // mTLS: only clients with a certificate from the trusted CA.
    s.tls_client_ca = Some(ca.path().to_path_buf());
    let app = TestApp::spawn(s).await;
    health_over(tls_channel(app.port, &pki.ca, Some(&pki.client)).await).await.expect("mTLS call");
    let anonymous = health_over(tls_channel(app.port, &pki.ca, None).await).await;
    assert!(anonymous.is_err(), "a client without a certificate is refused");
    let stranger = health_over(tls_channel(app.port, &pki.ca, Some(&pki.stranger)).await).await;
    assert!(stranger.is_err(), "a certificate from another CA is refused");
    app.stop().await;
}

/// A redis-server that speaks only TLS and requires client certificates.
struct TlsRedis {
    child: std::process::Child,
    port: u16,
    _files: Vec<tempfile::NamedTempFile>,
}

impl TlsRedis {
    fn start(cert: &str, key: &str, ca: &str) -> Self {
        let files = vec![file(cert), file(key), file(ca)];
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = std::process::Command::new("redis-server")
            .args(["--port", "0", "--tls-port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--tls-auth-clients", "yes"])
            .arg("--tls-cert-file")
            .arg(files[0].path())
            .arg("--tls-key-file")
            .arg(files[1].path())
            .arg("--tls-ca-cert-file")
            .arg(files[2].path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("redis-server runs");
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(std::time::Instant::now() < deadline, "TLS redis-server did not start (built without TLS?)");
            std::thread::sleep(Duration::from_millis(20));
        }
        Self { child, port, _files: files }
    }
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn the_store_speaks_tls_and_mutual_tls_to_redis() {
    let ca = CertifiedIssuer::self_signed(
        {
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.distinguished_name.push(rcgen::DnType::CommonName, "leadscore test CA");
            params
        },
        KeyPair::generate().unwrap(),
    )
    .unwrap();
    // Distinct names: OpenSSL (Redis) takes a leaf named like its issuer for
    // a self-signed certificate.
    let leaf = |name: &str| {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec![name.to_string()]).unwrap();
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        let cert = params.signed_by(&key, &ca).unwrap();
        (cert.pem(), key.serialize_pem())
    };
    let (server, client) = (leaf("127.0.0.1"), leaf("leadscore"));
    let redis = TlsRedis::start(&server.0, &server.1, &ca.pem());
    let (ca_file, cert_file, key_file) = (file(&ca.pem()), file(&client.0), file(&client.1));

    let mut s = settings(Some(format!("rediss://127.0.0.1:{}", redis.port)));
    s.redis_tls_ca = Some(ca_file.path().to_path_buf());
    s.redis_tls_cert = Some(cert_file.path().to_path_buf());
    s.redis_tls_key = Some(key_file.path().to_path_buf());
    let app = TestApp::spawn(s.clone()).await;
    app.wait_health(tonic_health::pb::health_check_response::ServingStatus::Serving).await;
    let mut client = app.client().await;
    client.record_signals(record(vec![signal("tls1", "sec-1", "page_view", now_millis())])).await.unwrap();
    assert!(client.score_lead(score_request()).await.unwrap().into_inner().score.unwrap().behavior > 0.0);
    app.stop().await;

    // Without the client certificate Redis refuses the connection: calls
    // fail as UNAVAILABLE, never as success.
    s.redis_tls_cert = None;
    s.redis_tls_key = None;
    let app = TestApp::spawn(s.clone()).await;
    let status = app.client().await.score_lead(score_request()).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    app.stop().await;

    // TLS material with a plain redis:// URL is a configuration error.
    s.redis_url = Some(format!("redis://127.0.0.1:{}", redis.port));
    s.redis_tls_cert = Some(cert_file.path().to_path_buf());
    s.redis_tls_key = Some(key_file.path().to_path_buf());
    let err = Application::build(s).await.err().expect("refused");
    assert!(err.to_string().contains("rediss://"), "{err}");
}

/// Reflection lists the services to any valid token by default; it can be
/// opened to all or turned off. Health stays open either way.
#[tokio::test]
async fn reflection_is_authenticated_open_or_off() {
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::{ServerReflectionRequest, server_reflection_response::MessageResponse};

    async fn list(app: &TestApp, token: Option<&str>) -> Result<usize, Code> {
        let mut client = ServerReflectionClient::new(app.channel().await);
        let request = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut call = tonic::Request::new(futures::stream::iter(vec![request]));
        if let Some(token) = token {
            call.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
        }
        let mut stream = client.server_reflection_info(call).await.map_err(|s| s.code())?.into_inner();
        let reply = stream.message().await.map_err(|s| s.code())?.ok_or(Code::Unknown)?;
        match reply.message_response {
            Some(MessageResponse::ListServicesResponse(list)) => Ok(list.service.len()),
            _ => Err(Code::Unknown),
        }
    }
    let tokens = file(TOKENS);
    for (setting, anonymous, analyst) in [
        (leadscore::config::Reflection::Authenticated, Err(Code::Unauthenticated), Ok(())),
        (leadscore::config::Reflection::Open, Ok(()), Ok(())),
        // Off: no such service (a caller without a token learns nothing).
        (leadscore::config::Reflection::Off, Err(Code::Unauthenticated), Err(Code::Unimplemented)),
    ] {
        let mut s = settings(None);
        s.auth_tokens_file = Some(tokens.path().to_path_buf());
        s.reflection = setting;
        let app = TestApp::spawn(s).await;
        assert_eq!(list(&app, None).await.map(|_| ()), anonymous, "{setting:?}, no token");
        let with_token = list(&app, Some("analyst-token-000001")).await;
        assert_eq!(with_token.map(|n| assert!(n >= 4, "{n} services")), analyst, "{setting:?}");
        let health = HealthClient::new(app.channel().await).check(HealthCheckRequest { service: String::new() }).await;
        assert!(health.is_ok(), "{setting:?}: health stays open");
    }
}

/// A bad TLS file stops start-up with its setting, its path and the reason.
#[tokio::test]
async fn bad_tls_files_are_named_with_the_reason() {
    let pki = pki();
    let (cert, key) = (file(&pki.server.0), file(&pki.server.1));
    let garbage = file("not a certificate\n");
    let other_key = file(&pki.client.1);
    let build = |cert: &tempfile::NamedTempFile, key: &tempfile::NamedTempFile| {
        let mut s = settings(None);
        s.tls_cert = Some(cert.path().to_path_buf());
        s.tls_key = Some(key.path().to_path_buf());
        Application::build(s)
    };
    let err = build(&garbage, &key).await.err().expect("refused").to_string();
    assert!(err.contains("tls_cert") && err.contains(&garbage.path().display().to_string()), "{err}");
    assert!(err.contains("no PEM certificate"), "{err}");
    let err = build(&cert, &garbage).await.err().expect("refused").to_string();
    assert!(err.contains("tls_key") && err.contains("no PEM private key"), "{err}");
    // Valid PEM, but the key is not the certificate's.
    let err = build(&cert, &other_key).await.err().expect("refused").to_string();
    assert!(err.contains(&cert.path().display().to_string()) && !err.ends_with("transport error"), "{err}");
    assert!(build(&cert, &key).await.is_ok());
}
