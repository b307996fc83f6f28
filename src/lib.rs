//! leadscore: real-time lead scoring over gRPC, on Redis.
//!
//! # Layout
//! - `domain`    — pure: ids, time, stages, decay, scoring models, the
//!   ledger, a lead's stored state and the change a step makes to it
//! - `rules`     — the rule-set file: parse, validate, compile (pure)
//! - `transition` — the scoring core: every rule of a lead's life, written
//!   once (pure)
//! - `store`     — role traits (leads, change feed, trigger queue,
//!   aggregates, accounts, rule-set versions): load lead states, apply
//!   changes atomically; Redis (one storage-only script) and in-memory stores
//! - `engine`    — the use cases: read, let the core compute, write (record
//!   signals, upsert, set stage, identify, rescore, simulate, sweep)
//! - `reload`    — hot reload of the rule file (SIGHUP, file change)
//! - `api`       — tonic services, proto ⇄ domain conversion, errors → Status
//! - `config`    — settings: defaults < config file < `LEADSCORE_*` env < flags
//! - `auth`      — bearer tokens with scopes (a gate)
//! - `gate`      — a tower layer that admits or refuses calls up front
//! - `limits`    — load shedding (a gate)
//! - `metrics`   — Prometheus registry, endpoint and gRPC layer
//! - `startup`   — `Application`: bind, serve, health, graceful shutdown
//! - `telemetry` — tracing subscriber
//! - `text`      — caller text made safe to quote in errors and logs
//! - `bench`     — `leadscore bench`: the load generator
//! - `cli`       — the `leadscore` command line
//! - `client`    — the command line's gRPC connection (LEADSCORE_TOKEN)
//! - `demo`      — `leadscore demo seed`: demo data through the public RPCs

pub mod api;
pub mod auth;
pub mod bench;
pub mod cli;
pub mod client;
pub mod config;
pub mod connect;
pub mod dashboard;
pub mod demo;
pub mod domain;
pub mod engine;
pub mod gate;
pub mod limits;
pub mod listener;
pub mod metrics;
pub mod reload;
pub mod report;
pub mod rules;
pub mod startup;
pub mod store;
pub mod telemetry;
pub mod text;
pub mod transition;
pub mod webhook;

/// The rule set shipped with leadscore (`rules/default.toml`), used when no
/// rule file is configured.
pub const DEFAULT_RULES: &str = include_str!("../rules/default.toml");
