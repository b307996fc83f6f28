//! A gate in front of every gRPC service: it looks at a call's path and
//! metadata before any message is read and either admits it (holding a
//! ticket until the call's response is ready) or answers it with a status
//! at once. Authentication and load shedding are gates.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

pub trait Gate: Clone {
    /// Held while the admitted call runs; dropped when it ends.
    type Ticket: Send + 'static;

    fn admit(&self, path: &str, headers: &http::HeaderMap) -> Result<Self::Ticket, tonic::Status>;

    /// Tells the service what the gate learned (e.g. who calls), through
    /// the request's extensions.
    fn extend(&self, _ticket: &Self::Ticket, _extensions: &mut http::Extensions) {}
}

/// The tower layer of a gate.
#[derive(Clone)]
pub struct GateLayer<G>(pub G);

impl<S, G: Gate> tower::Layer<S> for GateLayer<G> {
    type Service = GateService<S, G>;

    fn layer(&self, inner: S) -> Self::Service {
        GateService { inner, gate: self.0.clone() }
    }
}

#[derive(Clone)]
pub struct GateService<S, G> {
    inner: S,
    gate: G,
}

impl<S, G, B, R> tower::Service<http::Request<B>> for GateService<S, G>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    R: Default + Send + 'static,
    G: Gate,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        match self.gate.admit(request.uri().path(), request.headers()) {
            Ok(ticket) => {
                self.gate.extend(&ticket, request.extensions_mut());
                let future = self.inner.call(request);
                Box::pin(async move {
                    let response = future.await;
                    drop(ticket);
                    response
                })
            }
            Err(status) => {
                let response = status.into_http::<R>();
                Box::pin(async move { Ok(response) })
            }
        }
    }
}
