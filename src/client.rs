//! The gRPC connection of the command-line clients (`demo seed`, `report`,
//! `health`): plaintext, sending the bearer token of `LEADSCORE_TOKEN` when
//! it is set (the environment, not a flag, so it stays out of shell history
//! and process lists).

use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

/// Adds `authorization: Bearer <token>` to every call.
#[derive(Clone)]
pub struct Bearer(Option<MetadataValue<Ascii>>);

impl Interceptor for Bearer {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request.metadata_mut().insert("authorization", value.clone());
        }
        Ok(request)
    }
}

pub type Connection = InterceptedService<Channel, Bearer>;

/// Connects to `addr` (e.g. `http://127.0.0.1:50051`).
pub async fn connect(addr: &str) -> Result<Connection, Box<dyn std::error::Error>> {
    let token = match std::env::var("LEADSCORE_TOKEN") {
        Ok(token) if !token.trim().is_empty() => Some(
            format!("Bearer {}", token.trim())
                .parse::<MetadataValue<Ascii>>()
                .map_err(|_| "LEADSCORE_TOKEN holds characters a header cannot carry")?,
        ),
        _ => None,
    };
    let channel = Channel::from_shared(addr.to_owned())?.connect().await?;
    Ok(InterceptedService::new(channel, Bearer(token)))
}
