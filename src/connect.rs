//! The Connect protocol's unary form on the gRPC port: `POST
//! /leadscore.v1.<Service>/<Method>` with `Content-Type: application/json`
//! (proto3 JSON) or `application/proto`. Each call is handed to the same
//! stack as gRPC — authentication, load shedding, deadlines, metrics,
//! tracing, the services — as a gRPC request, and its answer (or status)
//! is turned back into Connect's: the message, or the JSON error
//! `{"code", "message", "details"}` with the HTTP status of its code.
//! Routing and JSON are generic over the generated types (`METHODS`, built
//! from the proto with pbjson's serde): nothing here knows a method.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Method as HttpMethod, StatusCode, header};
use http_body_util::BodyExt;
use prost::Message;
use tonic::body::Body;
use tonic_types::StatusExt;

/// One RPC of the API, as the Connect protocol routes it.
pub struct Method {
    pub path: &'static str,
    /// Server-streaming RPCs are served over gRPC and gRPC-Web only.
    pub server_streaming: bool,
    /// A JSON request body as the method's protobuf message.
    pub request: fn(&[u8]) -> Result<Vec<u8>, String>,
    /// The method's protobuf response as JSON.
    pub response: fn(&[u8]) -> Result<Vec<u8>, String>,
}

/// Decodes proto3 JSON into `M` and encodes it as protobuf.
pub fn json_to_proto<M: Message + serde::de::DeserializeOwned>(body: &[u8]) -> Result<Vec<u8>, String> {
    let message: M = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    Ok(message.encode_to_vec())
}

/// Decodes protobuf into `M` and writes it as proto3 JSON.
pub fn proto_to_json<M: Message + Default + serde::Serialize>(body: &[u8]) -> Result<Vec<u8>, String> {
    let message = M::decode(body).map_err(|e| e.to_string())?;
    serde_json::to_vec(&message).map_err(|e| e.to_string())
}

/// The message formats of the Connect protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    /// Proto3 JSON.
    Json,
    /// Protobuf.
    Proto,
}

/// What a request's content type asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Call {
    /// A unary call: one message each way, errors as HTTP statuses.
    Unary(Format),
    /// A stream of envelopes (the same framing as gRPC's; what `buf curl`
    /// and Connect clients send for streams and for reflection). Only
    /// protobuf envelopes are served.
    Stream(Format),
}

impl Call {
    /// The call a request's content type names; `None` for anything else
    /// (gRPC, gRPC-Web), which passes through.
    fn of(headers: &HeaderMap) -> Option<Call> {
        let content_type = headers.get(header::CONTENT_TYPE)?.to_str().ok()?;
        let essence = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
        match essence.as_str() {
            "application/json" => Some(Call::Unary(Format::Json)),
            "application/proto" => Some(Call::Unary(Format::Proto)),
            "application/connect+json" => Some(Call::Stream(Format::Json)),
            "application/connect+proto" => Some(Call::Stream(Format::Proto)),
            _ => None,
        }
    }
}

impl Format {
    fn content_type(self) -> &'static str {
        match self {
            Format::Json => "application/json",
            Format::Proto => "application/proto",
        }
    }
}

/// The content type of Connect's protobuf streams.
const STREAM_PROTO: &str = "application/connect+proto";

/// The tower layer: unary Connect calls in, gRPC calls to the stack.
#[derive(Clone)]
pub struct ConnectLayer {
    pub methods: &'static [Method],
    /// Largest request body read (`max_message_size`).
    pub max_message_size: usize,
}

impl<S> tower::Layer<S> for ConnectLayer {
    type Service = ConnectService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ConnectService { inner, methods: self.methods, max_message_size: self.max_message_size }
    }
}

#[derive(Clone)]
pub struct ConnectService<S> {
    inner: S,
    methods: &'static [Method],
    max_message_size: usize,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl<S, B, R> tower::Service<http::Request<B>> for ConnectService<S>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<R>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
    R: http_body::Body<Data = Bytes> + Send + 'static,
    R::Error: Into<BoxError>,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let Some(call) = Call::of(request.headers()) else {
            let future = self.inner.call(request.map(Body::new));
            return Box::pin(async move { Ok(future.await?.map(Body::new)) });
        };
        // The service made ready by `poll_ready` takes this call; a clone
        // stays for the next.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let method = self.methods.iter().find(|m| m.path == request.uri().path());
        let max = self.max_message_size;
        let format = match call {
            Call::Unary(format) => format,
            Call::Stream(format) => return Box::pin(stream(inner, format, request)),
        };
        Box::pin(async move {
            match unary(inner, method, format, max, request).await {
                Ok(response) => Ok(response),
                Err(Failure::Service(e)) => Err(e),
                Err(Failure::Connect(status)) => Ok(error_response(&status)),
            }
        })
    }
}

enum Failure<E> {
    Service(E),
    Connect(tonic::Status),
}

impl<E> From<tonic::Status> for Failure<E> {
    fn from(status: tonic::Status) -> Self {
        Failure::Connect(status)
    }
}

/// One unary Connect call through the gRPC stack.
async fn unary<S, B, R>(
    mut inner: S,
    method: Option<&'static Method>,
    format: Format,
    max: usize,
    request: http::Request<B>,
) -> Result<http::Response<Body>, Failure<S::Error>>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<R>>,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
    R: http_body::Body<Data = Bytes>,
    R::Error: Into<BoxError>,
{
    let path = request.uri().path().to_owned();
    let Some(method) = method else {
        return Err(tonic::Status::unimplemented(format!("no method {}", crate::text::bounded(&path, 160))).into());
    };
    if method.server_streaming {
        return Err(tonic::Status::unimplemented(format!(
            "{} is server-streaming: call it as a stream (gRPC, gRPC-Web, or Connect with application/connect+proto)",
            method.path
        ))
        .into());
    }
    if request.method() != HttpMethod::POST {
        return Err(tonic::Status::unimplemented("unary Connect calls are POST requests").into());
    }
    if let Some(encoding) = request.headers().get(header::CONTENT_ENCODING)
        && encoding.as_bytes() != b"identity"
    {
        return Err(tonic::Status::unimplemented("compressed requests are not accepted: send identity").into());
    }
    let (parts, body) = request.into_parts();
    let headers = grpc_headers(&parts.headers)?;
    // The body is read only when the service reads its message: after
    // authentication and load shedding, under the call's deadline.
    let body = UnaryBody {
        body: Some(Box::pin(http_body_util::Limited::new(body, max))),
        read: BytesMut::new(),
        method,
        format,
        max,
    };
    let grpc = grpc_request(parts, headers, Body::new(body));

    std::future::poll_fn(|cx| inner.poll_ready(cx)).await.map_err(Failure::Service)?;
    let response = inner.call(grpc).await.map_err(Failure::Service)?;
    let (head, body) = response.into_parts();
    if let Some(status) = tonic::Status::from_header_map(&head.headers)
        && status.code() != tonic::Code::Ok
    {
        return Err(status.into());
    }
    let collected = body.collect().await.map_err(|_| tonic::Status::unavailable("the answer was cut off; retry"))?;
    let trailers = collected.trailers().cloned().unwrap_or_default();
    let mut data = collected.to_bytes();
    match tonic::Status::from_header_map(&trailers).or_else(|| tonic::Status::from_header_map(&head.headers)) {
        Some(status) if status.code() == tonic::Code::Ok => {}
        Some(status) => return Err(status.into()),
        None => return Err(tonic::Status::internal("the answer carried no status").into()),
    }
    if data.remaining() < 5 || data.get_u8() != 0 {
        return Err(tonic::Status::internal("the answer is not one uncompressed message").into());
    }
    let length = data.get_u32() as usize;
    if data.remaining() != length {
        return Err(tonic::Status::internal("the answer is not one message").into());
    }
    let body = match format {
        Format::Proto => data.to_vec(),
        Format::Json => (method.response)(&data).map_err(|e| {
            tonic::Status::internal(format!(
                "the answer could not be written as JSON: {}",
                crate::text::bounded(&e, 160)
            ))
        })?,
    };
    Ok(answer(Body::new(http_body_util::Full::new(Bytes::from(body))), format.content_type()))
}

/// A unary Connect request's body as the gRPC stack reads it: the caller's
/// body read whole (at most `max` bytes), then one gRPC frame of the
/// method's message (JSON turned into protobuf). Failures reach the service
/// as the status it answers with.
struct UnaryBody<B> {
    body: Option<Pin<Box<http_body_util::Limited<B>>>>,
    read: BytesMut,
    method: &'static Method,
    format: Format,
    max: usize,
}

impl<B> UnaryBody<B> {
    /// The message read, as one uncompressed gRPC frame.
    fn grpc_frame(&self) -> Result<Bytes, tonic::Status> {
        let message = match self.format {
            Format::Proto => self.read.to_vec(),
            Format::Json => (self.method.request)(&self.read).map_err(|e| {
                tonic::Status::invalid_argument(format!(
                    "the body is not a valid JSON request of {}: {}",
                    self.method.path,
                    crate::text::bounded(&e, 320)
                ))
            })?,
        };
        let length =
            u32::try_from(message.len()).map_err(|_| tonic::Status::out_of_range("the message is too large"))?;
        let mut frame = BytesMut::with_capacity(message.len() + 5);
        frame.put_u8(0);
        frame.put_u32(length);
        frame.put_slice(&message);
        Ok(frame.freeze())
    }
}

impl<B> http_body::Body for UnaryBody<B>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, tonic::Status>>> {
        let this = self.get_mut();
        loop {
            let Some(body) = this.body.as_mut() else { return Poll::Ready(None) };
            match std::task::ready!(body.as_mut().poll_frame(cx)) {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        this.read.put(data);
                    }
                }
                Some(Err(e)) => {
                    this.body = None;
                    let status = if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() {
                        // Not worth retrying: the same body is as large.
                        tonic::Status::out_of_range(format!("the request body is larger than {} bytes", this.max))
                    } else {
                        tonic::Status::unavailable("the request body was cut off")
                    };
                    return Poll::Ready(Some(Err(status)));
                }
                None => {
                    this.body = None;
                    let frame = this.grpc_frame();
                    this.read = BytesMut::new();
                    return Poll::Ready(Some(frame.map(http_body::Frame::data)));
                }
            }
        }
    }
}

/// The headers of the gRPC call a Connect call becomes: the caller's
/// (authorization, traceparent, metadata) without Connect's own, and its
/// deadline as `grpc-timeout`.
fn grpc_headers(connect: &HeaderMap) -> Result<HeaderMap, tonic::Status> {
    let mut headers = HeaderMap::new();
    for (name, value) in connect {
        let name_str = name.as_str();
        // Connect's own headers become their gRPC equivalents below; the
        // caller's gRPC headers (a second deadline, an encoding) and
        // hop-by-hop ones have no place in the call.
        let dropped = name_str.starts_with("grpc-")
            || name_str.starts_with("connect-")
            || matches!(
                name_str,
                "content-type"
                    | "content-length"
                    | "content-encoding"
                    | "accept-encoding"
                    | "te"
                    | "trailer"
                    | "host"
                    | "connection"
                    | "keep-alive"
                    | "proxy-connection"
                    | "transfer-encoding"
                    | "upgrade"
            );
        if !dropped {
            headers.append(name.clone(), value.clone());
        }
    }
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    headers.insert(header::TE, HeaderValue::from_static("trailers"));
    if let Some(timeout) = connect_timeout(connect)? {
        headers.insert("grpc-timeout", timeout);
    }
    Ok(headers)
}

/// The gRPC request (HTTP/2 semantics) for a Connect call's parts.
fn grpc_request(parts: http::request::Parts, headers: HeaderMap, body: Body) -> http::Request<Body> {
    let mut grpc = http::Request::new(body);
    *grpc.method_mut() = HttpMethod::POST;
    *grpc.uri_mut() = parts.uri;
    *grpc.version_mut() = http::Version::HTTP_2;
    *grpc.headers_mut() = headers;
    *grpc.extensions_mut() = parts.extensions;
    grpc
}

/// A Connect stream (protobuf envelopes, the same framing as gRPC's): the
/// request's messages go to the stack as they come, its messages come back
/// as they are sent, and its closing status becomes Connect's end-of-stream
/// envelope. Reflection (which `buf curl` asks first) and the server
/// streams work this way.
async fn stream<S, B, R>(
    mut inner: S,
    format: Format,
    request: http::Request<B>,
) -> Result<http::Response<Body>, S::Error>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<R>>,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
    R: http_body::Body<Data = Bytes> + Send + 'static,
    R::Error: Into<BoxError>,
{
    if format == Format::Json {
        let status = tonic::Status::unimplemented(
            "Connect streams are served as application/connect+proto; JSON is served for unary calls",
        );
        let mut response = error_response(&status);
        *response.status_mut() = StatusCode::UNSUPPORTED_MEDIA_TYPE;
        return Ok(response);
    }
    if let Some(encoding) = request.headers().get("connect-content-encoding")
        && encoding.as_bytes() != b"identity"
    {
        let status = tonic::Status::unimplemented("compressed streams are not accepted: send identity");
        return Ok(end_of_stream_only(&status, &HeaderMap::new()));
    }
    let (parts, body) = request.into_parts();
    let headers = match grpc_headers(&parts.headers) {
        Ok(headers) => headers,
        Err(status) => return Ok(end_of_stream_only(&status, &HeaderMap::new())),
    };
    std::future::poll_fn(|cx| inner.poll_ready(cx)).await?;
    let response = inner.call(grpc_request(parts, headers, Body::new(body))).await?;
    let (head, body) = response.into_parts();
    // Trailers-only: refused before any message.
    if let Some(status) = tonic::Status::from_header_map(&head.headers) {
        return Ok(end_of_stream_only(&status, &head.headers));
    }
    let body = body.map_frame(|frame| match frame.into_trailers() {
        Ok(trailers) => {
            let status = tonic::Status::from_header_map(&trailers)
                .unwrap_or_else(|| tonic::Status::internal("the stream ended without a status"));
            http_body::Frame::data(end_of_stream(&status, &trailers))
        }
        Err(frame) => frame,
    });
    Ok(answer(Body::new(body), STREAM_PROTO))
}

/// Connect's end-of-stream envelope (flag 2): the error, if any, and the
/// trailing metadata that is not the gRPC status itself.
fn end_of_stream(status: &tonic::Status, trailers: &HeaderMap) -> Bytes {
    let mut metadata = serde_json::Map::new();
    for (name, value) in trailers {
        let name = name.as_str();
        if name.starts_with("grpc-") || name == "content-type" || name.ends_with("-bin") {
            continue;
        }
        if let Ok(value) = value.to_str()
            && let serde_json::Value::Array(values) =
                metadata.entry(name.to_owned()).or_insert_with(|| serde_json::Value::Array(Vec::new()))
        {
            values.push(value.into());
        }
    }
    let mut end = serde_json::Map::new();
    if status.code() != tonic::Code::Ok {
        end.insert("error".into(), error_body(status));
    }
    if !metadata.is_empty() {
        end.insert("metadata".into(), serde_json::Value::Object(metadata));
    }
    let json = serde_json::to_vec(&serde_json::Value::Object(end)).unwrap_or_default();
    let mut envelope = BytesMut::with_capacity(json.len() + 5);
    envelope.put_u8(2);
    envelope.put_u32(u32::try_from(json.len()).unwrap_or(u32::MAX));
    envelope.put_slice(&json);
    envelope.freeze()
}

/// A stream refused before its first message: HTTP 200 and the
/// end-of-stream envelope alone, as Connect streams answer errors.
fn end_of_stream_only(status: &tonic::Status, headers: &HeaderMap) -> http::Response<Body> {
    let body = end_of_stream(status, headers);
    answer(Body::new(http_body_util::Full::new(body)), STREAM_PROTO)
}

/// `Connect-Timeout-Ms` (at most 10 digits) as a `grpc-timeout`.
fn connect_timeout(headers: &HeaderMap) -> Result<Option<HeaderValue>, tonic::Status> {
    let Some(value) = headers.get("connect-timeout-ms") else { return Ok(None) };
    let bad = || tonic::Status::invalid_argument("Connect-Timeout-Ms must be 1 to 10 digits (milliseconds)");
    let text = value.to_str().map_err(|_| bad())?;
    if text.is_empty() || text.len() > 10 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let millis: u64 = text.parse().map_err(|_| bad())?;
    // grpc-timeout holds at most 8 digits: longer waits in seconds.
    let value = if millis < 100_000_000 { format!("{millis}m") } else { format!("{}S", millis / 1000) };
    HeaderValue::from_str(&value).map(Some).map_err(|_| bad())
}

/// The Connect name and HTTP status of a gRPC code.
fn code(code: tonic::Code) -> (&'static str, StatusCode) {
    use tonic::Code as C;
    match code {
        C::Ok => ("ok", StatusCode::OK),
        C::Cancelled => ("canceled", StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST)),
        C::Unknown => ("unknown", StatusCode::INTERNAL_SERVER_ERROR),
        C::InvalidArgument => ("invalid_argument", StatusCode::BAD_REQUEST),
        C::DeadlineExceeded => ("deadline_exceeded", StatusCode::GATEWAY_TIMEOUT),
        C::NotFound => ("not_found", StatusCode::NOT_FOUND),
        C::AlreadyExists => ("already_exists", StatusCode::CONFLICT),
        C::PermissionDenied => ("permission_denied", StatusCode::FORBIDDEN),
        C::ResourceExhausted => ("resource_exhausted", StatusCode::TOO_MANY_REQUESTS),
        C::FailedPrecondition => ("failed_precondition", StatusCode::BAD_REQUEST),
        C::Aborted => ("aborted", StatusCode::CONFLICT),
        C::OutOfRange => ("out_of_range", StatusCode::BAD_REQUEST),
        C::Unimplemented => ("unimplemented", StatusCode::NOT_IMPLEMENTED),
        C::Internal => ("internal", StatusCode::INTERNAL_SERVER_ERROR),
        C::Unavailable => ("unavailable", StatusCode::SERVICE_UNAVAILABLE),
        C::DataLoss => ("data_loss", StatusCode::INTERNAL_SERVER_ERROR),
        C::Unauthenticated => ("unauthenticated", StatusCode::UNAUTHORIZED),
    }
}

/// `google.rpc.Status`, to list a status's details as they were sent.
#[derive(Clone, PartialEq, Message)]
struct RpcStatus {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
    #[prost(message, repeated, tag = "3")]
    details: Vec<prost_types::Any>,
}

/// Connect's error: `{"code", "message", "details": [{"type", "value",
/// "debug"}]}`, `value` the detail's protobuf in base64, `debug` the field
/// violations and error info as JSON.
fn error_body(status: &tonic::Status) -> serde_json::Value {
    use base64::Engine as _;
    let details: Vec<serde_json::Value> = RpcStatus::decode(status.details())
        .map(|s| s.details)
        .unwrap_or_default()
        .into_iter()
        .map(|any| {
            let kind = any.type_url.rsplit('/').next().unwrap_or_default().to_owned();
            let mut detail = serde_json::json!({
                "type": kind,
                "value": base64::engine::general_purpose::STANDARD_NO_PAD.encode(&any.value),
            });
            let debug = match kind.as_str() {
                "google.rpc.BadRequest" => status.get_details_bad_request().map(|b| {
                    let violations: Vec<serde_json::Value> = b
                        .field_violations
                        .iter()
                        .map(|v| serde_json::json!({"field": v.field, "description": v.description}))
                        .collect();
                    serde_json::json!({ "fieldViolations": violations })
                }),
                "google.rpc.ErrorInfo" => status
                    .get_details_error_info()
                    .map(|i| serde_json::json!({"reason": i.reason, "domain": i.domain, "metadata": i.metadata})),
                _ => None,
            };
            if let (Some(debug), Some(object)) = (debug, detail.as_object_mut()) {
                object.insert("debug".into(), debug);
            }
            detail
        })
        .collect();
    let mut body = serde_json::json!({ "code": code(status.code()).0, "message": status.message() });
    if !details.is_empty()
        && let Some(object) = body.as_object_mut()
    {
        object.insert("details".into(), serde_json::Value::Array(details));
    }
    body
}

fn error_response(status: &tonic::Status) -> http::Response<Body> {
    let body = serde_json::to_vec(&error_body(status)).unwrap_or_default();
    let mut response = answer(Body::new(http_body_util::Full::new(Bytes::from(body))), "application/json");
    *response.status_mut() = code(status.code()).1;
    response
}

/// An HTTP 200 answer of `content_type`.
fn answer(body: Body, content_type: &'static str) -> http::Response<Body> {
    let mut response = http::Response::new(body);
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_types_pick_the_protocol() {
        let with = |ct: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::CONTENT_TYPE, HeaderValue::from_str(ct).unwrap());
            Call::of(&h)
        };
        assert_eq!(with("application/json"), Some(Call::Unary(Format::Json)));
        assert_eq!(with("Application/JSON; charset=utf-8"), Some(Call::Unary(Format::Json)));
        assert_eq!(with("application/proto"), Some(Call::Unary(Format::Proto)));
        assert_eq!(with("application/connect+proto"), Some(Call::Stream(Format::Proto)));
        assert_eq!(with("application/connect+json"), Some(Call::Stream(Format::Json)));
        assert_eq!(with("application/grpc"), None);
        assert_eq!(with("application/grpc-web+proto"), None);
        assert_eq!(Call::of(&HeaderMap::new()), None);
    }

    #[test]
    fn timeouts_become_grpc_timeouts() {
        let with = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert("connect-timeout-ms", HeaderValue::from_str(v).unwrap());
            connect_timeout(&h)
        };
        assert_eq!(with("250").unwrap().unwrap(), "250m");
        assert_eq!(with("9999999999").unwrap().unwrap(), "9999999S");
        for bad in ["", "-1", "1.5", "12345678901", "soon"] {
            assert!(with(bad).is_err(), "{bad}");
        }
        assert_eq!(connect_timeout(&HeaderMap::new()).unwrap(), None);
    }

    #[test]
    fn errors_name_their_code_and_keep_their_details_readable() {
        let mut details = tonic_types::ErrorDetails::new();
        details.add_bad_request_violation("signals[0].type", "undeclared");
        let status = tonic::Status::with_error_details(tonic::Code::InvalidArgument, "bad request", details);
        let body = error_body(&status);
        assert_eq!(body["code"], "invalid_argument");
        assert_eq!(body["message"], "bad request");
        assert_eq!(body["details"][0]["type"], "google.rpc.BadRequest");
        assert_eq!(body["details"][0]["debug"]["fieldViolations"][0]["field"], "signals[0].type");
        assert_eq!(code(tonic::Code::ResourceExhausted).1, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(error_response(&tonic::Status::not_found("x")).status(), StatusCode::NOT_FOUND);
        assert!(error_body(&tonic::Status::internal("x")).get("details").is_none());
    }
}
