//! The gRPC edge: proto ⇄ domain conversion, errors → `Status`, and the
//! tonic services. Nothing below this layer sees a proto type.

pub mod convert;
pub mod error;
mod nurture;
mod polling;
mod profiles;
mod qualification;
mod scoring;
mod state;
pub mod streams;

pub use nurture::NurtureService;
pub use profiles::ProfilesService;
pub use qualification::QualificationService;
pub use scoring::ScoringService;
pub use state::{AppState, Limits, token_name};

/// Generated protobuf and gRPC code for `leadscore.v1`.
pub mod pb {
    #![allow(clippy::all, clippy::pedantic)]
    tonic::include_proto!("leadscore.v1");
    // Proto3 JSON (serde) of every message, for the Connect protocol.
    include!(concat!(env!("OUT_DIR"), "/leadscore.v1.serde.rs"));
    include!(concat!(env!("OUT_DIR"), "/leadscore.v1.methods.rs"));

    /// Encoded descriptors of `leadscore.v1`, served by reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("leadscore_descriptor");
}
