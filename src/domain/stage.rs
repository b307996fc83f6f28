//! Lifecycle stages (SPEC §1). The names are part of the API.

use std::{fmt, str::FromStr};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Stage {
    Anonymous,
    Lead,
    Mql,
    Sal,
    Sql,
    Opportunity,
    Customer,
    Advocate,
    Recycled,
    Disqualified,
}

impl Stage {
    pub const ALL: [Stage; 10] = [
        Stage::Anonymous,
        Stage::Lead,
        Stage::Mql,
        Stage::Sal,
        Stage::Sql,
        Stage::Opportunity,
        Stage::Customer,
        Stage::Advocate,
        Stage::Recycled,
        Stage::Disqualified,
    ];

    /// Position in the funnel. Rules only move a lead to a higher rank:
    /// `RECYCLED` sits with `LEAD` (back in nurture) and `DISQUALIFIED` above
    /// everything (an exit; rules reach it only where their `from` allows).
    pub const fn rank(self) -> u8 {
        match self {
            Stage::Anonymous => 0,
            Stage::Lead | Stage::Recycled => 1,
            Stage::Mql => 2,
            Stage::Sal => 3,
            Stage::Sql => 4,
            Stage::Opportunity => 5,
            Stage::Customer => 6,
            Stage::Advocate => 7,
            Stage::Disqualified => 8,
        }
    }

    /// Whether a rule may move a lead from `self` to `to`.
    pub const fn is_forward(self, to: Stage) -> bool {
        to.rank() > self.rank()
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            Stage::Anonymous => "ANONYMOUS",
            Stage::Lead => "LEAD",
            Stage::Mql => "MQL",
            Stage::Sal => "SAL",
            Stage::Sql => "SQL",
            Stage::Opportunity => "OPPORTUNITY",
            Stage::Customer => "CUSTOMER",
            Stage::Advocate => "ADVOCATE",
            Stage::Recycled => "RECYCLED",
            Stage::Disqualified => "DISQUALIFIED",
        }
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown stage '{0}'")]
pub struct UnknownStage(pub String);

impl FromStr for Stage {
    type Err = UnknownStage;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Stage::ALL.into_iter().find(|stage| stage.as_str() == s).ok_or_else(|| UnknownStage(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forward_only() {
        assert!(Stage::Lead.is_forward(Stage::Mql));
        assert!(Stage::Recycled.is_forward(Stage::Mql));
        assert!(!Stage::Mql.is_forward(Stage::Recycled));
        assert!(!Stage::Lead.is_forward(Stage::Recycled));
        assert!(!Stage::Sql.is_forward(Stage::Mql));
        assert!(Stage::Customer.is_forward(Stage::Disqualified));
        assert!(!Stage::Disqualified.is_forward(Stage::Advocate));
    }

    #[test]
    fn names_round_trip() {
        for stage in Stage::ALL {
            assert_eq!(stage.as_str().parse::<Stage>(), Ok(stage));
        }
        assert!("lead".parse::<Stage>().is_err());
    }
}
