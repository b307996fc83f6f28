//! Pure domain: ids, time, lifecycle stages, decay, scoring models and the
//! per-lead ledger. No I/O, no tokio, no Redis, no protobuf.

pub mod account;
pub mod attribution;
pub mod audit;
pub mod decay;
pub mod duration;
pub mod expansion;
pub mod ids;
pub mod lead;
pub mod ledger;
pub mod model;
pub mod nurture;
pub mod profiles;
#[cfg(test)]
mod properties;
pub mod qualification;
pub mod sla;
pub mod spend;
pub mod stage;
pub mod state;
pub mod time;
pub mod webhook;

pub use decay::{Decay, ModelWeight, TypeTally};
pub use ids::{AccountId, EventId, IdError, LeadId, VisitorId};
pub use lead::{LeadProfile, LeadSnapshot};
pub use ledger::{IngestPolicy, LeadLedger, ScoredSignal, SignalStatus};
pub use model::{Condition, Contribution, FitRule, Grade, GradeThresholds, Score, ScoringModel};
pub use nurture::{Breach, Delivery, FiredTrigger, TriggerFire, TriggerOn};
pub use qualification::{Cause, FeedEvent, QualificationChange, ScoreSnapshot, StageChange, Tombstone, lead_ref};
pub use stage::Stage;
pub use time::{Clock, SystemClock, Timestamp};
