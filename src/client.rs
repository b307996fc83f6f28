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
    let not_an_address = || format!("'{addr}' is not a service address: write it like http://127.0.0.1:50051");
    let endpoint = Channel::from_shared(addr.to_owned()).map_err(|_| not_an_address())?;
    if endpoint.uri().scheme().is_none() {
        return Err(not_an_address().into());
    }
    let channel = endpoint.connect().await.map_err(|e| {
        let mut why = String::new();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            why = s.to_string();
            source = s.source();
        }
        format!(
            "cannot connect to {addr}: {} — is `leadscore serve` running there?",
            if why.is_empty() { e.to_string() } else { why }
        )
    })?;
    Ok(InterceptedService::new(channel, Bearer(token)))
}

/// A refused call in words: the code as the API documents it
/// (`NOT_FOUND`, …) and the service's message.
pub fn refused(status: &tonic::Status) -> String {
    let code = format!("{:?}", status.code());
    let mut name = String::new();
    for (i, c) in code.chars().enumerate() {
        if c.is_uppercase() && i > 0 {
            name.push('_');
        }
        name.push(c.to_ascii_uppercase());
    }
    let message = status.message();
    let hint = match status.code() {
        tonic::Code::Unauthenticated if std::env::var_os("LEADSCORE_TOKEN").is_none() => {
            " — set LEADSCORE_TOKEN to one of the service's tokens"
        }
        tonic::Code::Unauthenticated => " — LEADSCORE_TOKEN is not one of the service's tokens",
        // An answer that is HTTP, not gRPC: another kind of server.
        _ if message.contains("grpc-status header missing") => {
            " — that address answers HTTP but is no gRPC service: is it the metrics port instead of the API's?"
        }
        tonic::Code::Unavailable => " — is `leadscore serve` still running there?",
        _ => "",
    };
    format!("{name}: {message}{hint}")
}

/// A progress bar on stderr over `len` `unit`s, drawn only when stderr is a
/// terminal: nothing lands in a pipe, a log file or CI output.
pub fn progress(len: u64, message: &'static str, unit: &str) -> indicatif::ProgressBar {
    let template = format!("{{msg}} [{{bar:40}}] {{pos}}/{{len}} {unit}, {{eta}} left");
    let style = indicatif::ProgressStyle::with_template(&template)
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> ");
    indicatif::ProgressBar::new(len).with_style(style).with_message(message)
}
