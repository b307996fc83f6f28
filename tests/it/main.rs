//! Integration tests: a real `redis-server` per test (spawned on a free
//! port) and the real gRPC server on port 0, called through the generated
//! client.

mod audit;
mod cluster;
mod connect;
mod contract;
mod erasure;
mod expansion;
mod faults;
mod grpc;
mod helpers;
mod lifecycle;
mod limits;
mod migrate;
mod nurture;
mod profiles;
mod qualification;
mod security;
mod sla;
mod spend;
mod webhooks;
