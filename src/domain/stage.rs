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
    fn names_round_trip() {
        for stage in Stage::ALL {
            assert_eq!(stage.as_str().parse::<Stage>(), Ok(stage));
        }
        assert!("lead".parse::<Stage>().is_err());
    }
}
