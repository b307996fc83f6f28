//! The Connect protocol's unary form (JSON and binary) and gRPC-Web on the
//! gRPC port, spoken over plain HTTP/1.1 as `curl` and browsers do.

use std::io::Write as _;

use leadscore::api::pb;
use prost::Message as _;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::{RedisServer, TestApp, now_millis, settings};

/// An HTTP/1.1 answer: status, headers (names lowercase), body.
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
}

/// One `POST path` over a new HTTP/1.1 connection.
async fn post(port: u16, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Answer {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let mut request = format!("POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    let mut bytes = request.into_bytes();
    bytes.extend_from_slice(body);
    stream.write_all(&bytes).await.unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.unwrap();
    parse(&raw)
}

fn parse(raw: &[u8]) -> Answer {
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("a complete head");
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let mut rest = &raw[split + 4..];
    let chunked = headers.iter().any(|(n, v)| n == "transfer-encoding" && v.contains("chunked"));
    let body = if chunked {
        let mut body = Vec::new();
        loop {
            let end = rest.windows(2).position(|w| w == b"\r\n").expect("a chunk size");
            let size = usize::from_str_radix(std::str::from_utf8(&rest[..end]).unwrap().trim(), 16).unwrap();
            rest = &rest[end + 2..];
            if size == 0 {
                break;
            }
            body.extend_from_slice(&rest[..size]);
            rest = &rest[size + 2..];
        }
        body
    } else {
        rest.to_vec()
    };
    Answer { status, headers, body }
}

async fn json_call(port: u16, method: &str, body: &Value, extra: &[(&str, &str)]) -> Answer {
    let mut headers = vec![("Content-Type", "application/json")];
    headers.extend_from_slice(extra);
    post(port, &format!("/leadscore.v1.{method}"), &headers, body.to_string().as_bytes()).await
}

fn rfc3339(millis: i64) -> String {
    chrono::DateTime::from_timestamp_millis(millis).unwrap().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

async fn json_and_proto_answer_like_grpc(redis: Option<&RedisServer>) {
    let app = TestApp::spawn(settings(redis.map(RedisServer::url))).await;
    let port = app.port;
    let now = now_millis();

    // Signals in as proto3 JSON, the score out as JSON.
    let signals = json!({"signals": [
        {"eventId": "c-1", "leadId": "lead-c", "type": "demo_requested", "occurredAt": rfc3339(now - 60_000)},
        {"eventId": "c-2", "leadId": "lead-c", "type": "page_view", "occurredAt": rfc3339(now - 30_000),
         "properties": {"source": "google"}},
    ]});
    let recorded = json_call(port, "LeadScoring/RecordSignals", &signals, &[]).await;
    assert_eq!(recorded.status, 200, "{}", String::from_utf8_lossy(&recorded.body));
    assert_eq!(recorded.header("content-type"), Some("application/json"));
    let scored = json_call(port, "LeadScoring/ScoreLead", &json!({"leadId": "lead-c"}), &[]).await;
    assert_eq!(scored.status, 200);
    let score = scored.json();
    assert_eq!(score["score"]["leadId"], "lead-c");
    let total = score["score"]["total"].as_f64().unwrap();
    assert!(total > 0.0, "{score}");

    // The same over gRPC gives the same score.
    let mut grpc = app.client().await;
    let over_grpc = grpc
        .score_lead(pb::ScoreLeadRequest { lead_id: "lead-c".into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .score
        .unwrap();
    assert!((over_grpc.total - total).abs() < 0.01, "{} vs {total}", over_grpc.total);

    // Binary Connect: application/proto in and out.
    let request = pb::ScoreLeadRequest { lead_id: "lead-c".into(), ..Default::default() }.encode_to_vec();
    let binary =
        post(port, "/leadscore.v1.LeadScoring/ScoreLead", &[("Content-Type", "application/proto")], &request).await;
    assert_eq!((binary.status, binary.header("content-type")), (200, Some("application/proto")));
    let decoded = pb::ScoreLeadResponse::decode(binary.body.as_slice()).unwrap();
    assert_eq!(decoded.score.unwrap().lead_id, "lead-c");

    // Bad input: Connect's error with the same field violations, nothing
    // written.
    let bad = json!({"signals": [
        {"eventId": "c-3", "leadId": "lead-d", "type": "demo_requested", "occurredAt": rfc3339(now)},
        {"eventId": "c-4", "leadId": "lead-d", "type": "tiktok_like", "occurredAt": rfc3339(now)},
    ]});
    let refused = json_call(port, "LeadScoring/RecordSignals", &bad, &[]).await;
    assert_eq!(refused.status, 400);
    let error = refused.json();
    assert_eq!(error["code"], "invalid_argument");
    assert!(error["message"].as_str().unwrap().contains("declared signal types"), "{error}");
    assert_eq!(error["details"][0]["type"], "google.rpc.BadRequest");
    assert_eq!(error["details"][0]["debug"]["fieldViolations"][0]["field"], "signals[1].type");
    let unknown = json_call(port, "LeadScoring/ScoreLead", &json!({"leadId": "lead-d"}), &[]).await;
    assert_eq!((unknown.status, unknown.json()["code"].as_str()), (404, Some("not_found")));

    // JSON that is not the message: a clear 400, not a crash.
    for body in [&b"{not json"[..], br#"{"leadId": 5}"#, br#"{"nope": 1}"#] {
        let answer =
            post(port, "/leadscore.v1.LeadScoring/ScoreLead", &[("Content-Type", "application/json")], body).await;
        assert_eq!(answer.status, 400, "{}", String::from_utf8_lossy(body));
        let error = answer.json();
        assert_eq!(error["code"], "invalid_argument");
        assert!(error["message"].as_str().unwrap().contains("LeadScoring/ScoreLead"), "{error}");
    }
    // Deadlines: Connect-Timeout-Ms is checked like grpc-timeout.
    let bad_timeout =
        json_call(port, "LeadScoring/ScoreLead", &json!({"leadId": "lead-c"}), &[("Connect-Timeout-Ms", "soon")]).await;
    assert_eq!(bad_timeout.status, 400);
    let timed =
        json_call(port, "LeadScoring/ScoreLead", &json!({"leadId": "lead-c"}), &[("Connect-Timeout-Ms", "5000")]).await;
    assert_eq!(timed.status, 200);
    // A body over max_message_size (1 MiB here) is refused, not parsed.
    let huge = vec![b' '; (1 << 20) + 1];
    let too_big =
        post(port, "/leadscore.v1.LeadScoring/ScoreLead", &[("Content-Type", "application/json")], &huge).await;
    assert_eq!((too_big.status, too_big.json()["code"].as_str()), (400, Some("out_of_range")));

    // Every method of the API (the table authentication guards, written
    // apart from the generated routes) is routed: a unary one answers for
    // itself, whatever it thinks of an empty request; a server stream says
    // how to call it.
    const STREAMS: [&str; 2] =
        ["/leadscore.v1.Nurture/StreamTriggers", "/leadscore.v1.Qualification/WatchQualificationChanges"];
    let api: Vec<&str> =
        leadscore::auth::RPCS.iter().map(|(path, _)| *path).filter(|p| p.starts_with("/leadscore.v1.")).collect();
    for path in api.iter().copied() {
        let answer = post(port, path, &[("Content-Type", "application/json")], b"{}").await;
        let code =
            if answer.status == 200 { "ok".to_owned() } else { answer.json()["code"].as_str().unwrap().to_owned() };
        if STREAMS.contains(&path) {
            assert_eq!((answer.status, code.as_str()), (501, "unimplemented"), "{path}");
            assert!(answer.json()["message"].as_str().unwrap().contains("gRPC-Web"));
        } else {
            assert_ne!(code, "unimplemented", "{path} is not routed");
        }
    }
    assert_eq!(pb::METHODS.len(), api.len(), "every generated route is guarded");
    // A caller's own gRPC headers are not passed on: a stray encoding
    // does not make the call undecodable.
    let stray =
        json_call(port, "LeadScoring/ScoreLead", &json!({"leadId": "lead-c"}), &[("grpc-encoding", "gzip")]).await;
    assert_eq!(stray.status, 200, "{}", String::from_utf8_lossy(&stray.body));
    let missing = json_call(port, "LeadScoring/NoSuchMethod", &json!({}), &[]).await;
    assert_eq!((missing.status, missing.json()["code"].as_str()), (501, Some("unimplemented")));

    // gRPC-Web, as a browser sends it: a framed message in, the answer and
    // its trailers framed out.
    let message = pb::ScoreLeadRequest { lead_id: "lead-c".into(), ..Default::default() }.encode_to_vec();
    let mut frame = vec![0u8];
    frame.extend_from_slice(&u32::try_from(message.len()).unwrap().to_be_bytes());
    frame.extend_from_slice(&message);
    let web = post(
        port,
        "/leadscore.v1.LeadScoring/ScoreLead",
        &[("Content-Type", "application/grpc-web+proto"), ("X-Grpc-Web", "1")],
        &frame,
    )
    .await;
    assert_eq!(web.status, 200);
    assert_eq!(web.header("content-type"), Some("application/grpc-web+proto"));
    assert_eq!(web.body[0], 0, "a data frame first");
    let length = u32::from_be_bytes(web.body[1..5].try_into().unwrap()) as usize;
    let answer = pb::ScoreLeadResponse::decode(&web.body[5..5 + length]).unwrap();
    assert_eq!(answer.score.unwrap().lead_id, "lead-c");
    let trailers = &web.body[5 + length..];
    assert_eq!(trailers[0], 0x80, "then the trailers frame");
    assert!(String::from_utf8_lossy(&trailers[5..]).contains("grpc-status:0"), "{trailers:?}");

    app.stop().await;
}

#[tokio::test]
async fn connect_and_grpc_web_on_the_embedded_store() {
    json_and_proto_answer_like_grpc(None).await;
}

#[tokio::test]
async fn connect_and_grpc_web_on_redis() {
    let redis = RedisServer::start();
    json_and_proto_answer_like_grpc(Some(&redis)).await;
}

/// Splits a Connect stream's body into its envelopes (flags, message).
fn envelopes(mut body: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    while !body.is_empty() {
        let length = u32::from_be_bytes(body[1..5].try_into().unwrap()) as usize;
        out.push((body[0], body[5..5 + length].to_vec()));
        body = &body[5 + length..];
    }
    out
}

fn envelope(message: &[u8]) -> Vec<u8> {
    let mut frame = vec![0u8];
    frame.extend_from_slice(&u32::try_from(message.len()).unwrap().to_be_bytes());
    frame.extend_from_slice(message);
    frame
}

#[tokio::test]
async fn connect_streams_carry_reflection_and_end_with_their_status() {
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::{ServerReflectionRequest, ServerReflectionResponse};
    let app = TestApp::spawn(settings(None)).await;
    let stream = [("Content-Type", "application/connect+proto"), ("Connect-Protocol-Version", "1")];

    // Reflection, as `buf curl --protocol connect` asks it first.
    let list = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let answer = post(
        app.port,
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        &stream,
        &envelope(&list.encode_to_vec()),
    )
    .await;
    assert_eq!((answer.status, answer.header("content-type")), (200, Some("application/connect+proto")));
    let frames = envelopes(&answer.body);
    assert_eq!(frames.len(), 2, "one answer, then the end of the stream");
    let Some(MessageResponse::ListServicesResponse(services)) =
        ServerReflectionResponse::decode(frames[0].1.as_slice()).unwrap().message_response
    else {
        panic!("not a list of services");
    };
    let names: Vec<&str> = services.service.iter().map(|s| s.name.as_str()).collect();
    assert!(names.contains(&"leadscore.v1.LeadScoring"), "{names:?}");
    assert_eq!(frames[1].0, 2);
    let end: Value = serde_json::from_slice(&frames[1].1).unwrap();
    assert!(end.get("error").is_none(), "{end}");

    // A stream refused before its first message ends with Connect's error.
    let missing = post(app.port, "/leadscore.v1.LeadScoring/NoSuchStream", &stream, &envelope(&[])).await;
    assert_eq!(missing.status, 200);
    let frames = envelopes(&missing.body);
    assert_eq!(frames.len(), 1);
    let end: Value = serde_json::from_slice(&frames[0].1).unwrap();
    assert_eq!((frames[0].0, end["error"]["code"].as_str()), (2, Some("unimplemented")));
    let json = post(
        app.port,
        "/leadscore.v1.Qualification/WatchQualificationChanges",
        &[("Content-Type", "application/connect+json")],
        &envelope(b"{}"),
    )
    .await;
    assert_eq!(json.status, 415);
    assert!(json.json()["message"].as_str().unwrap().contains("application/connect+proto"));
    app.stop().await;
}

#[tokio::test]
async fn connect_calls_are_authenticated_like_grpc() {
    let mut tokens = tempfile::NamedTempFile::new().unwrap();
    tokens.write_all(b"automation ingest automation-token-0001\nanalyst score analyst-token-000001\n").unwrap();
    let mut s = settings(None);
    s.auth_tokens_file = Some(tokens.path().to_path_buf());
    let app = TestApp::spawn(s).await;
    let score = json!({"leadId": "nobody"});

    // The body is not read (nor parsed) for a caller without a token.
    let unread =
        post(app.port, "/leadscore.v1.LeadScoring/ScoreLead", &[("Content-Type", "application/json")], b"{no").await;
    assert_eq!((unread.status, unread.json()["code"].as_str()), (401, Some("unauthenticated")));
    let anonymous = json_call(app.port, "LeadScoring/ScoreLead", &score, &[]).await;
    assert_eq!((anonymous.status, anonymous.json()["code"].as_str()), (401, Some("unauthenticated")));
    let wrong =
        json_call(app.port, "LeadScoring/ScoreLead", &score, &[("Authorization", "Bearer wrong-token-0000001")]).await;
    assert_eq!(wrong.status, 401);
    let analyst = [("Authorization", "Bearer analyst-token-000001")];
    let allowed = json_call(app.port, "LeadScoring/ScoreLead", &score, &analyst).await;
    assert_eq!((allowed.status, allowed.json()["code"].as_str()), (404, Some("not_found")));
    let signals =
        json!({"signals": [{"eventId": "a", "leadId": "l", "type": "page_view", "occurredAt": rfc3339(now_millis())}]});
    let denied = json_call(app.port, "LeadScoring/RecordSignals", &signals, &analyst).await;
    assert_eq!((denied.status, denied.json()["code"].as_str()), (403, Some("permission_denied")));
    let automation = [("Authorization", "Bearer automation-token-0001")];
    assert_eq!(json_call(app.port, "LeadScoring/RecordSignals", &signals, &automation).await.status, 200);
    app.stop().await;
}
