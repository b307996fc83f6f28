//! How aggregate counters are written as Redis hash fields. Ids and first-touch values never contain
//! control characters, so the unit separator splits them safely.

use crate::domain::Stage;
use crate::domain::attribution::CreditCounter;
use crate::domain::expansion::Kind;
use crate::domain::profiles::{CohortCounter, ExpansionCounter, FunnelCounter};

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
/// `group␟w`, `group␟v`; hand-overs `group␟h␟on_time`, `group␟h␟late`,
/// `group␟h␟s␟bucket`, `group␟h␟breached`; expansion
/// `group␟x␟<kind>␟<counter>` (`x␟upsell␟revenue`).
pub fn funnel_field(group: &str, counter: FunnelCounter) -> String {
    match counter {
        FunnelCounter::Entered(s) => format!("{group}{SEP}e{SEP}{}", s.as_str()),
        FunnelCounter::Passed(s) => format!("{group}{SEP}p{SEP}{}", s.as_str()),
        FunnelCounter::Duration(s, bucket) => format!("{group}{SEP}d{SEP}{}{SEP}{bucket}", s.as_str()),
        FunnelCounter::Reopened => format!("{group}{SEP}r"),
        FunnelCounter::Won => format!("{group}{SEP}w"),
        FunnelCounter::Revenue => format!("{group}{SEP}v"),
        FunnelCounter::Decided { on_time: true } => format!("{group}{SEP}h{SEP}on_time"),
        FunnelCounter::Decided { on_time: false } => format!("{group}{SEP}h{SEP}late"),
        FunnelCounter::SpeedToLead(bucket) => format!("{group}{SEP}h{SEP}s{SEP}{bucket}"),
        FunnelCounter::Breached => format!("{group}{SEP}h{SEP}breached"),
        FunnelCounter::Expansion(kind, counter) => format!("{group}{SEP}x{SEP}{}{SEP}{}", kind.key(), counter.key()),
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
        [_, "h", "on_time"] => FunnelCounter::Decided { on_time: true },
        [_, "h", "late"] => FunnelCounter::Decided { on_time: false },
        [_, "h", "s", bucket] => FunnelCounter::SpeedToLead(bucket.parse().ok()?),
        [_, "h", "breached"] => FunnelCounter::Breached,
        [_, "x", kind, counter] => {
            FunnelCounter::Expansion(Kind::parse_key(kind)?, ExpansionCounter::parse_key(counter)?)
        }
        _ => return None,
    };
    Some((parts[0], counter))
}

/// `group␟p␟STAGE` (leads reached, millionths), `group␟v` (revenue,
/// micros) or `group␟x` (expansion revenue, micros).
pub fn credit_field(group: &str, counter: CreditCounter) -> String {
    match counter {
        CreditCounter::Reached(s) => format!("{group}{SEP}p{SEP}{}", s.as_str()),
        CreditCounter::Revenue => format!("{group}{SEP}v"),
        CreditCounter::ExpansionRevenue => format!("{group}{SEP}x"),
    }
}

/// The group and counter of a credit field; `None` for anything else.
pub fn parse_credit_field(field: &str) -> Option<(&str, CreditCounter)> {
    let parts: Vec<&str> = field.split(SEP).collect();
    let counter = match parts.as_slice() {
        [_, "p", s] => CreditCounter::Reached(s.parse().ok()?),
        [_, "v"] => CreditCounter::Revenue,
        [_, "x"] => CreditCounter::ExpansionRevenue,
        _ => return None,
    };
    Some((parts[0], counter))
}

/// A spend entry's field (`<day>␟<campaign>␟<source>␟<channel>`) and value
/// (millionths): names hold no control characters.
pub fn spend_field(entry: &crate::domain::spend::SpendEntry) -> (String, String) {
    (
        format!("{}{SEP}{}{SEP}{}{SEP}{}", entry.day, entry.campaign, entry.source, entry.channel),
        entry.amount.0.to_string(),
    )
}

/// The entry of a spend field and value; `None` for anything else.
pub fn parse_spend(field: &str, value: &str) -> Option<crate::domain::spend::SpendEntry> {
    let mut parts = field.split(SEP);
    let (day, campaign, source, channel) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    Some(crate::domain::spend::SpendEntry {
        campaign: campaign.to_owned(),
        source: source.to_owned(),
        channel: channel.to_owned(),
        day: day.parse().ok()?,
        amount: crate::domain::spend::Micros(value.parse().ok()?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn funnel_fields_round_trip() {
        for counter in [
            FunnelCounter::Entered(Stage::Mql),
            FunnelCounter::Passed(Stage::Sal),
            FunnelCounter::Duration(Stage::Customer, 17),
            FunnelCounter::Reopened,
            FunnelCounter::Won,
            FunnelCounter::Revenue,
            FunnelCounter::Decided { on_time: true },
            FunnelCounter::Decided { on_time: false },
            FunnelCounter::SpeedToLead(42),
            FunnelCounter::Breached,
            FunnelCounter::Expansion(Kind::CrossSell, ExpansionCounter::Pipeline),
            FunnelCounter::Expansion(Kind::Upsell, ExpansionCounter::Lost),
        ] {
            assert_eq!(parse_funnel_field(&funnel_field("source=ads", counter)), Some(("source=ads", counter)));
        }
        assert_eq!(parse_funnel_field("junk"), None);
        assert_eq!(parse_funnel_field("g\u{1f}x\u{1f}resale\u{1f}won"), None);
        for counter in
            [CreditCounter::Reached(Stage::Opportunity), CreditCounter::Revenue, CreditCounter::ExpansionRevenue]
        {
            assert_eq!(parse_credit_field(&credit_field("campaign=a b", counter)), Some(("campaign=a b", counter)));
        }
        assert_eq!(parse_credit_field("g\u{1f}p\u{1f}NOPE"), None);
        assert_eq!(parse_funnel_field("g\u{1f}e\u{1f}NOPE"), None);
    }
}
