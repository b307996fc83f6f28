//! Stage changes: who or what moved a lead, why, and with which score.

use super::{Grade, LeadId, Score, Stage, Timestamp};

/// The score when a change happened.
#[derive(Debug, Clone, PartialEq)]
pub struct ScoreSnapshot {
    pub total: f64,
    pub behavior: f64,
    pub fit: f64,
    pub grade: char,
}

impl ScoreSnapshot {
    pub fn of(score: &Score) -> Self {
        let grade = match score.grade {
            Grade::A => 'A',
            Grade::B => 'B',
            Grade::C => 'C',
            Grade::D => 'D',
        };
        Self { total: score.total, behavior: score.behavior, fit: score.fit, grade }
    }
}

/// What moved a lead.
#[derive(Debug, Clone, PartialEq)]
pub enum Cause {
    /// A qualification rule of the rule set.
    Rule { rule_id: String },
    /// A person or system through `SetStage` (e.g. the CRM on behalf of a rep).
    Manual { actor: String },
}

/// One move of one lead from a stage to another.
#[derive(Debug, Clone, PartialEq)]
pub struct StageChange {
    pub from: Stage,
    pub to: Stage,
    pub cause: Cause,
    pub reason: String,
    pub rule_set_version: String,
    pub score: ScoreSnapshot,
    pub at: Timestamp,
    /// The won deal's amount the CRM reported with `CUSTOMER`.
    pub deal_amount: Option<f64>,
}

/// An entry of the change feed as the CRM reads it.
#[derive(Debug, Clone, PartialEq)]
pub struct QualificationChange {
    pub event: FeedEvent,
    /// Unique, stable id of this entry in the feed (for de-duplication).
    pub id: String,
    /// Feed position just after this entry: resume from here.
    pub cursor: String,
}

/// What a change-feed entry says.
#[derive(Debug, Clone, PartialEq)]
pub enum FeedEvent {
    /// A lead moved.
    Moved { lead_id: LeadId, change: StageChange },
    /// A lead was erased.
    Erased(Tombstone),
}

impl QualificationChange {
    /// The key a consumer keeps this entry's order under: the lead id, or
    /// an erased lead's reference.
    pub fn lead_key(&self) -> &str {
        match &self.event {
            FeedEvent::Moved { lead_id, .. } => lead_id.as_str(),
            FeedEvent::Erased(t) => &t.lead_ref,
        }
    }

    pub fn at(&self) -> Timestamp {
        match &self.event {
            FeedEvent::Moved { change, .. } => change.at,
            FeedEvent::Erased(t) => t.at,
        }
    }
}

/// What the feed (and webhooks) say of an erased lead: no personal data,
/// only a reference the CRM can compute from the id it knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tombstone {
    /// `sha256:` and the lowercase hex SHA-256 of the lead id's UTF-8 bytes.
    pub lead_ref: String,
    pub at: Timestamp,
}

impl Tombstone {
    /// A visitor is named by its visitor id, as clients know it.
    pub fn new(lead_id: &LeadId, at: Timestamp) -> Self {
        Self { lead_ref: lead_ref(lead_id.visitor().unwrap_or(lead_id.as_str())), at }
    }
}

/// `sha256:<hex>` of an id: how erased leads are named.
pub fn lead_ref(id: &str) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(id.as_bytes());
    let mut out = String::with_capacity(7 + 64);
    out.push_str("sha256:");
    for b in digest {
        out.push_str(&format!("{b:02x}"));
    }
    out
}
