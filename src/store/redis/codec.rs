//! The fields of a lead's hash, and how they decode into a `LeadSnapshot`.
//!
//! | field           | value                                             |
//! |-----------------|---------------------------------------------------|
//! | `c`             | created_at, ms since the epoch                    |
//! | `st`            | stage name (`LEAD`, `MQL`, …)                     |
//! | `ss`            | when the lead entered its stage, ms               |
//! | `le`            | when the last counted signal arrived, ms          |
//! | `nr`            | signals recorded (not duplicates), ever           |
//! | `mi`            | visitor subjects: the lead it was identified as   |
//! | `tf:<trigger>`  | when the trigger last fired for the lead, ms      |
//! | `acc`           | account id                                        |
//! | `a:<name>`      | profile attribute                                 |
//! | `n:<type>`      | counted signals of the type                       |
//! | `t:<type>`      | anchor: newest counted `occurred_at`, ms          |
//! | `s:<model>:<t>` | model's points decayed to the anchor (`%.17g`)    |

use std::collections::HashMap;

use crate::domain::{AccountId, LeadId, LeadSnapshot, Stage, Timestamp};
use crate::store::StoreError;

/// Decodes a lead's hash and its per-day counters (`<type>:<day>` → n).
/// Errors name the field, never the stored value (it reaches callers).
pub fn decode_lead(
    lead_id: &LeadId,
    fields: HashMap<String, String>,
    days: HashMap<String, String>,
) -> Result<LeadSnapshot, StoreError> {
    let corrupt = |detail: String| StoreError::Corrupt { lead_id: lead_id.to_string(), detail };
    let mut lead = LeadSnapshot::new(lead_id.clone(), Timestamp::from_millis(0));
    for (field, value) in fields {
        let int = || value.parse::<i64>().map_err(|_| corrupt(format!("field '{field}' is not an integer")));
        if let Some(name) = field.strip_prefix("a:") {
            lead.attributes.insert(name.to_owned(), value);
        } else if let Some(t) = field.strip_prefix("n:") {
            let n = u64::try_from(int()?).map_err(|_| corrupt(format!("field '{field}' is negative")))?;
            lead.tallies.entry(t.to_owned()).or_default().counted = n;
        } else if let Some(t) = field.strip_prefix("t:") {
            lead.tallies.entry(t.to_owned()).or_default().last_at = Some(Timestamp::from_millis(int()?));
        } else if let Some(definition) = field.strip_prefix("tf:") {
            lead.trigger_fired.insert(definition.to_owned(), Timestamp::from_millis(int()?));
        } else if let Some(rest) = field.strip_prefix("s:") {
            let (model, t) = rest.split_once(':').ok_or_else(|| corrupt(format!("field '{field}' is malformed")))?;
            let sum = value
                .parse::<f64>()
                .ok()
                .filter(|v| v.is_finite())
                .ok_or_else(|| corrupt(format!("field '{field}' is not a finite number")))?;
            lead.tallies.entry(t.to_owned()).or_default().sums.insert(model.to_owned(), sum);
        } else {
            match field.as_str() {
                "c" => lead.created_at = Timestamp::from_millis(int()?),
                "ss" => lead.stage_since = Timestamp::from_millis(int()?),
                "le" => lead.last_engaged_at = Some(Timestamp::from_millis(int()?)),
                "mi" => {
                    lead.merged_into = Some(LeadId::parse(value).map_err(|e| corrupt(format!("merged-into id {e}")))?)
                }
                "nr" => lead.recorded = u64::try_from(int()?).map_err(|_| corrupt("field 'nr' is negative".into()))?,
                "st" => {
                    lead.stage =
                        value.parse::<Stage>().map_err(|_| corrupt("field 'st' is not a known stage".into()))?
                }
                "acc" => {
                    lead.account_id = Some(AccountId::parse(value).map_err(|e| corrupt(format!("account id {e}")))?)
                }
                // Fields of later versions are ignored, not fatal.
                _ => {}
            }
        }
    }
    for (field, value) in days {
        let parsed =
            field.rsplit_once(':').and_then(|(t, day)| Some((t, day.parse::<i64>().ok()?, value.parse::<u32>().ok()?)));
        let (t, day, n) = parsed.ok_or_else(|| corrupt(format!("day counter '{field}' is malformed")))?;
        lead.daily.entry(t.to_owned()).or_default().insert(day, n);
    }
    if let Some((t, _)) = lead.tallies.iter().find(|(_, tally)| tally.counted > 0 && tally.last_at.is_none()) {
        return Err(corrupt(format!("type '{t}' has counted signals but no anchor time")));
    }
    Ok(lead)
}

/// Field/value pairs of a Redis hash.
pub type Fields = Vec<(String, String)>;

/// The tally fields (`n:`, `t:`, `s:`) of a lead's hash, and its day
/// counters, as written by the ingest script.
pub fn encode_tallies(lead: &LeadSnapshot) -> (Fields, Fields) {
    let mut fields = Vec::new();
    for (t, tally) in &lead.tallies {
        fields.push((format!("n:{t}"), tally.counted.to_string()));
        if let Some(at) = tally.last_at {
            fields.push((format!("t:{t}"), at.millis().to_string()));
        }
        for (model, sum) in &tally.sums {
            // Debug is the shortest text that parses back to the same f64.
            fields.push((format!("s:{model}:{t}"), format!("{sum:?}")));
        }
    }
    let days = lead
        .daily
        .iter()
        .flat_map(|(t, per_day)| per_day.iter().map(move |(day, n)| (format!("{t}:{day}"), n.to_string())))
        .collect();
    (fields, days)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn decodes_all_fields() {
        let id = LeadId::parse("l1").unwrap();
        let lead = decode_lead(
            &id,
            fields(&[
                ("c", "1000"),
                ("st", "MQL"),
                ("acc", "acme"),
                ("a:title", "VP"),
                ("n:demo_requested", "2"),
                ("t:demo_requested", "5000"),
                ("s:b2b:demo_requested", "12.5"),
                ("future", "x"),
            ]),
            fields(&[("demo_requested:20000", "2")]),
        )
        .unwrap();
        assert_eq!(lead.created_at, Timestamp::from_millis(1000));
        assert_eq!(lead.stage, Stage::Mql);
        assert_eq!(lead.attributes["title"], "VP");
        let tally = &lead.tallies["demo_requested"];
        assert_eq!((tally.counted, tally.last_at, tally.sums["b2b"]), (2, Some(Timestamp::from_millis(5000)), 12.5));
        assert_eq!(lead.daily["demo_requested"][&20000], 2);
    }

    #[test]
    fn tallies_round_trip() {
        let id = LeadId::parse("l1").unwrap();
        let source = fields(&[
            ("c", "1000"),
            ("n:demo_requested", "2"),
            ("t:demo_requested", "5000"),
            ("s:b2b:demo_requested", "12.345678901234567"),
        ]);
        let lead = decode_lead(&id, source, fields(&[("demo_requested:20000", "2")])).unwrap();
        let (tally_fields, days) = encode_tallies(&lead);
        let mut all: HashMap<String, String> = tally_fields.into_iter().collect();
        all.insert("c".into(), "1000".into());
        let again = decode_lead(&id, all, days.into_iter().collect()).unwrap();
        assert_eq!(again, lead);
    }

    #[test]
    fn junk_is_reported_not_panicked() {
        let id = LeadId::parse("l1").unwrap();
        for junk in [
            fields(&[("c", "soon")]),
            fields(&[("n:x", "-1"), ("t:x", "1")]),
            fields(&[("s:m:x", "NaN")]),
            fields(&[("s:mx", "1")]),
            fields(&[("st", "NOPE")]),
            fields(&[("n:x", "3")]),
        ] {
            assert!(matches!(decode_lead(&id, junk, HashMap::new()), Err(StoreError::Corrupt { .. })));
        }
        let bad_day = fields(&[("page_view:soon", "1")]);
        assert!(matches!(decode_lead(&id, HashMap::new(), bad_day), Err(StoreError::Corrupt { .. })));
    }
}
