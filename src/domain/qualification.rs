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

/// A stage change as the CRM feed delivers it.
#[derive(Debug, Clone, PartialEq)]
pub struct QualificationChange {
    pub lead_id: LeadId,
    pub change: StageChange,
    /// Unique, stable id of this change in the feed (for de-duplication).
    pub id: String,
    /// Feed position just after this change: resume from here.
    pub cursor: String,
}
