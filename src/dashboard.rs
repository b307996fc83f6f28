//! The dashboard: a page for sales and marketing, served on the API's port
//! under `/dashboard/`. Its three files are built into the binary (no
//! front-end build step); the page reads every figure through the API's
//! HTTP/JSON form with the token the user signs in with, so it sees what
//! that token may see and nothing is open without one where tokens are
//! configured. The files themselves hold no data.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderValue, Method, StatusCode, header};
use tonic::body::Body;

const INDEX: &str = include_str!("../dashboard/index.html");
const APP_JS: &str = include_str!("../dashboard/app.js");
const APP_CSS: &str = include_str!("../dashboard/app.css");

/// Where the dashboard is.
pub const PATH: &str = "/dashboard/";

/// The file served at `path`, with its content type.
fn asset(path: &str) -> Option<(&'static str, &'static str)> {
    match path {
        "/dashboard/" | "/dashboard/index.html" => Some((INDEX, "text/html; charset=utf-8")),
        "/dashboard/app.js" => Some((APP_JS, "text/javascript; charset=utf-8")),
        "/dashboard/app.css" => Some((APP_CSS, "text/css; charset=utf-8")),
        _ => None,
    }
}

/// The answer to a dashboard request; `None` for any other request.
pub fn respond(method: &Method, path: &str) -> Option<http::Response<Body>> {
    if method != Method::GET && method != Method::HEAD {
        return None;
    }
    if path == "/dashboard" || path == "/" {
        let mut response = http::Response::new(Body::empty());
        *response.status_mut() = StatusCode::FOUND;
        response.headers_mut().insert(header::LOCATION, HeaderValue::from_static(PATH));
        return Some(response);
    }
    let (content, content_type) = asset(path)?;
    let body = if method == Method::HEAD {
        Body::empty()
    } else {
        Body::new(http_body_util::Full::new(Bytes::from_static(content.as_bytes())))
    };
    let mut response = http::Response::new(body);
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    // Only its own files and its own API: no inline script, nothing fetched elsewhere.
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; \
             form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    Some(response)
}

/// The tower layer: dashboard files out, everything else to the stack.
#[derive(Clone, Copy, Default)]
pub struct DashboardLayer;

impl<S> tower::Layer<S> for DashboardLayer {
    type Service = DashboardService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        DashboardService { inner }
    }
}

#[derive(Clone)]
pub struct DashboardService<S> {
    inner: S,
}

impl<S, B> tower::Service<http::Request<B>> for DashboardService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<Body>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if let Some(response) = respond(request.method(), request.uri().path()) {
            return Box::pin(async move { Ok(response) });
        }
        Box::pin(self.inner.call(request))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serves_its_files_and_nothing_else() {
        let page = respond(&Method::GET, "/dashboard/").unwrap();
        assert_eq!(page.status(), StatusCode::OK);
        assert!(page.headers()[header::CONTENT_SECURITY_POLICY].to_str().unwrap().contains("script-src 'self'"));
        assert_eq!(respond(&Method::GET, "/dashboard").unwrap().status(), StatusCode::FOUND);
        assert!(respond(&Method::GET, "/dashboard/app.js").is_some());
        assert!(respond(&Method::GET, "/dashboard/../Cargo.toml").is_none());
        assert!(respond(&Method::POST, "/dashboard/").is_none());
        assert!(respond(&Method::GET, "/leadscore.v1.LeadScoring/ScoreLead").is_none());
    }
}
