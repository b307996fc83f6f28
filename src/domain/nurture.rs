//! Nurture triggers: when marketing automation should touch a lead (SPEC §5).

use super::{LeadId, ScoreSnapshot, Stage, Timestamp};

/// What makes a trigger fire.
#[derive(Debug, Clone, PartialEq)]
pub enum TriggerOn {
    /// The lead entered this stage (by a rule or by the CRM).
    StageEntered(Stage),
    /// The total score crossed this value upward.
    ScoreAbove(f64),
    /// The total score crossed this value downward.
    ScoreBelow(f64),
    /// A signal of this type was counted.
    Signal(String),
    /// No counted signal for this long (ms).
    Inactive(i64),
    /// New engagement after this long without (ms), or of a recycled lead.
    Reengaged(i64),
    /// A hand-over's follow-up deadline (`[sla]`) passed without a decision.
    SlaBreached,
}

impl std::fmt::Display for TriggerOn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use super::duration::format_duration;
        match self {
            TriggerOn::StageEntered(s) => write!(f, "stage_entered({s})"),
            TriggerOn::ScoreAbove(n) => write!(f, "score_above({n})"),
            TriggerOn::ScoreBelow(n) => write!(f, "score_below({n})"),
            TriggerOn::Signal(t) => write!(f, "signal({t})"),
            TriggerOn::Inactive(ms) => write!(f, "inactive({})", format_duration(*ms)),
            TriggerOn::Reengaged(ms) => write!(f, "reengaged({})", format_duration(*ms)),
            TriggerOn::SlaBreached => write!(f, "sla_breached"),
        }
    }
}

/// A trigger as it is appended to the trigger stream.
#[derive(Debug, Clone, PartialEq)]
pub struct FiredTrigger {
    pub definition_id: String,
    /// Passed through to marketing automation (e.g. the nurture program).
    pub program: String,
    pub lead_id: String,
    pub fired_at: Timestamp,
    /// Why, in words (e.g. "entered MQL by rule mql_engaged_and_fit").
    pub reason: String,
    pub score: ScoreSnapshot,
    pub stage: Stage,
    /// With an `sla_breached` trigger: the hand-over it is about.
    pub breach: Option<Breach>,
}

/// A follow-up deadline passed without a sales decision.
#[derive(Debug, Clone, PartialEq)]
pub struct Breach {
    /// The lead's owner (the agreement's `owner_attribute`), `""` if unknown.
    pub owner: String,
    pub handed_at: Timestamp,
    pub due: Timestamp,
    /// How late the lead is when the trigger fires.
    pub late_by_ms: i64,
}

/// A trigger to fire with a stage change, unless its cooldown for the lead
/// is still running.
#[derive(Debug, Clone, PartialEq)]
pub struct TriggerFire {
    pub cooldown_ms: i64,
    pub trigger: FiredTrigger,
}

/// A trigger handed to a consumer.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    /// Stable across redeliveries.
    pub trigger_id: String,
    pub trigger: FiredTrigger,
    /// 1 on first delivery.
    pub delivery_count: u64,
    pub lead_id: LeadId,
}

/// Consumer group and consumer names: letters, digits, `_-.:`, 1 to 64
/// bytes, not starting with `__` (reserved for the service's own).
pub fn is_consumer_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && !name.starts_with("__")
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':'))
}

/// How `is_consumer_name` reads to a user.
pub const CONSUMER_NAME_RULE: &str = "letters, digits, '_', '-', '.', ':' (1 to 64 bytes, not starting with '__')";
