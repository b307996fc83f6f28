//! How aggregate counters and score history entries are written as Redis
//! hash fields and list values. Ids and first-touch values never contain
//! control characters, so the unit separator splits them safely.

use crate::domain::profiles::{CohortCounter, FunnelCounter, ModelScore, ScoreHistoryEntry};
use crate::domain::{Stage, Timestamp};

/// Separates the parts of fields and records.
pub const SEP: char = '\u{1f}';

/// A number as Redis reads it back exactly (the shortest text that parses
/// to the same `f64`).
pub fn num(v: f64) -> String {
    format!("{v:?}")
}

/// `group␟STAGE` or `group␟q`.
pub fn cohort_field(group: &str, counter: CohortCounter) -> String {
    match counter {
        CohortCounter::InStage(stage) => format!("{group}{SEP}{}", stage.as_str()),
        CohortCounter::ReachedMql => format!("{group}{SEP}q"),
    }
}

/// `group␟e␟STAGE`, `group␟p␟STAGE`, `group␟d␟STAGE␟bucket`, `group␟r`,
/// `group␟w`, `group␟v`.
pub fn funnel_field(group: &str, counter: FunnelCounter) -> String {
    match counter {
        FunnelCounter::Entered(s) => format!("{group}{SEP}e{SEP}{}", s.as_str()),
        FunnelCounter::Passed(s) => format!("{group}{SEP}p{SEP}{}", s.as_str()),
        FunnelCounter::Duration(s, bucket) => format!("{group}{SEP}d{SEP}{}{SEP}{bucket}", s.as_str()),
        FunnelCounter::Reopened => format!("{group}{SEP}r"),
        FunnelCounter::Won => format!("{group}{SEP}w"),
        FunnelCounter::Revenue => format!("{group}{SEP}v"),
    }
}

/// The group and counter of a funnel field; `None` for anything else.
pub fn parse_funnel_field(field: &str) -> Option<(&str, FunnelCounter)> {
    let parts: Vec<&str> = field.split(SEP).collect();
    let stage = |s: &str| s.parse::<Stage>().ok();
    let counter = match parts.as_slice() {
        [_, "e", s] => FunnelCounter::Entered(stage(s)?),
        [_, "p", s] => FunnelCounter::Passed(stage(s)?),
        [_, "d", s, bucket] => FunnelCounter::Duration(stage(s)?, bucket.parse().ok()?),
        [_, "r"] => FunnelCounter::Reopened,
        [_, "w"] => FunnelCounter::Won,
        [_, "v"] => FunnelCounter::Revenue,
        _ => return None,
    };
    Some((parts[0], counter))
}

/// `at␟cause␟model=behavior,fit␟…`
pub fn encode_history(entry: &ScoreHistoryEntry) -> String {
    let mut out = format!("{}{SEP}{}", entry.at.millis(), entry.cause);
    for s in &entry.scores {
        out.push_str(&format!("{SEP}{}={},{}", s.model, num(s.behavior), num(s.fit)));
    }
    out
}

pub fn decode_history(text: &str) -> Option<ScoreHistoryEntry> {
    let mut parts = text.split(SEP);
    let at = Timestamp::from_millis(parts.next()?.parse().ok()?);
    let cause = parts.next()?.to_owned();
    let scores = parts
        .map(|p| {
            let (model, values) = p.split_once('=')?;
            let (behavior, fit) = values.split_once(',')?;
            let behavior: f64 = behavior.parse().ok().filter(|v: &f64| v.is_finite())?;
            let fit: f64 = fit.parse().ok().filter(|v: &f64| v.is_finite())?;
            Some(ModelScore { model: model.to_owned(), behavior, fit })
        })
        .collect::<Option<Vec<_>>>()?;
    Some(ScoreHistoryEntry { at, cause, scores })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_entries_round_trip() {
        let entry = ScoreHistoryEntry {
            at: Timestamp::from_millis(1_700_000_000_123),
            cause: "signal:demo_requested".into(),
            scores: vec![
                ModelScore { model: "b2b".into(), behavior: 40.123456789, fit: 15.0 },
                ModelScore { model: "smb".into(), behavior: -3.5, fit: 0.0 },
            ],
        };
        let decoded = decode_history(&encode_history(&entry)).unwrap();
        assert_eq!(decoded, entry);
        assert!(decode_history("x").is_none());
        assert!(decode_history("1\u{1f}c\u{1f}m=NaN,1").is_none());
    }

    #[test]
    fn funnel_fields_round_trip() {
        for counter in [
            FunnelCounter::Entered(Stage::Mql),
            FunnelCounter::Passed(Stage::Sal),
            FunnelCounter::Duration(Stage::Customer, 17),
            FunnelCounter::Reopened,
            FunnelCounter::Won,
            FunnelCounter::Revenue,
        ] {
            assert_eq!(parse_funnel_field(&funnel_field("source=ads", counter)), Some(("source=ads", counter)));
        }
        assert_eq!(parse_funnel_field("junk"), None);
        assert_eq!(parse_funnel_field("g\u{1f}e\u{1f}NOPE"), None);
    }
}
