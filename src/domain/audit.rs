//! The audit trail: changes made by a person or a system rather than by the
//! rules, who made them, and what they touched — never personal values.

use std::collections::BTreeMap;

use super::Timestamp;

/// One change worth answering for.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AuditEvent {
    pub at: Timestamp,
    /// What happened: `stage.set`, `lead.upserted`, `expansion.recorded`,
    /// `lead.exported`, `visitor.identified`, `rescore.started`,
    /// `dead_letters.replayed`, `webhook_dead_letters.replayed`,
    /// `rule_set.activated`, `lead.erased`, `account.upserted`,
    /// `spend.recorded`.
    pub action: String,
    /// The person or system the request named (SetStage's `actor`); `""`
    /// when it names none.
    pub actor: String,
    /// The name of the token the call was authenticated with; `""` without
    /// tokens (or for the service itself, e.g. a reloaded rule file).
    pub token: String,
    /// What it was done to: a lead id, a consumer group, a webhook
    /// endpoint, a rule-set version.
    pub subject: String,
    /// What it did, without personal values (attribute names, not values).
    pub details: BTreeMap<String, String>,
}

impl AuditEvent {
    /// Whether the event names `id` (as its subject or a detail's value):
    /// what erasing that lead or visitor removes.
    pub fn mentions(&self, id: &str) -> bool {
        self.subject == id || self.details.values().any(|v| v == id)
    }
}

/// The names of the attributes an upsert added, removed or changed, sorted.
pub fn changed_attributes(before: &BTreeMap<String, String>, after: &BTreeMap<String, String>) -> Vec<String> {
    let mut names: Vec<String> = before
        .iter()
        .filter(|(k, v)| after.get(*k) != Some(*v))
        .map(|(k, _)| k.clone())
        .chain(after.keys().filter(|k| !before.contains_key(*k)).cloned())
        .collect();
    names.sort();
    names.dedup();
    names
}

/// Longest line a diff shows, in bytes.
const MAX_LINE: usize = 200;

/// Lines of a rule file added and removed against the previous one, as
/// `+line` / `-line`, at most `max` of them (then a count of the rest).
/// A line-set difference: enough to see what was edited, cheap on any size.
pub fn line_diff(before: &str, after: &str, max: usize) -> Vec<String> {
    let old: std::collections::BTreeSet<&str> = before.lines().map(str::trim_end).collect();
    let new: std::collections::BTreeSet<&str> = after.lines().map(str::trim_end).collect();
    let removed = before.lines().map(str::trim_end).filter(|l| !new.contains(l) && !l.trim().is_empty());
    let added = after.lines().map(str::trim_end).filter(|l| !old.contains(l) && !l.trim().is_empty());
    let cut = |l: &str| {
        if l.len() > MAX_LINE { format!("{}…", &l[..l.floor_char_boundary(MAX_LINE)]) } else { l.to_owned() }
    };
    let all: Vec<String> =
        removed.map(|l| format!("-{}", cut(l))).chain(added.map(|l| format!("+{}", cut(l)))).collect();
    if all.len() <= max {
        return all;
    }
    let rest = all.len() - max;
    all.into_iter().take(max).chain(std::iter::once(format!("… {rest} more lines"))).collect()
}

/// One CSV field, quoted when it must be (RFC 4180), with a leading
/// formula character defused (a spreadsheet must not run an actor name).
pub fn csv_field(value: &str) -> String {
    let value =
        if value.starts_with(['=', '+', '-', '@', '\t', '\r']) { format!("'{value}") } else { value.to_owned() };
    if value.contains([',', '"', '\n', '\r']) { format!("\"{}\"", value.replace('"', "\"\"")) } else { value }
}

/// The CSV header of `csv_row`.
pub const CSV_HEADER: &str = "id,at,action,actor,token,subject,details";

/// One event as a CSV line (details as a JSON object).
pub fn csv_row(id: &str, event: &AuditEvent) -> String {
    let details = serde_json::to_string(&event.details).unwrap_or_default();
    [id, &event.at.to_string(), &event.action, &event.actor, &event.token, &event.subject, &details]
        .iter()
        .map(|f| csv_field(f))
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn changed_attributes_name_added_removed_and_changed_ones() {
        let before = map(&[("email", "a@x"), ("title", "CTO"), ("country", "DE")]);
        let after = map(&[("email", "b@x"), ("title", "CTO"), ("seniority", "vp")]);
        assert_eq!(changed_attributes(&before, &after), ["country", "email", "seniority"]);
        assert!(changed_attributes(&after, &after).is_empty());
    }

    #[test]
    fn csv_quotes_and_defuses() {
        assert_eq!(csv_field("plain"), "plain");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_field("=SUM(A1)"), "'=SUM(A1)");
        let e = AuditEvent {
            at: Timestamp::from_millis(0),
            action: "stage.set".into(),
            actor: "rep@example.com".into(),
            token: "crm".into(),
            subject: "lead-1".into(),
            details: map(&[("from", "MQL"), ("to", "SAL")]),
        };
        assert_eq!(
            csv_row("1-0", &e),
            r#"1-0,1970-01-01T00:00:00Z,stage.set,rep@example.com,crm,lead-1,"{""from"":""MQL"",""to"":""SAL""}""#
        );
    }

    #[test]
    fn line_diff_shows_edits_and_bounds_itself() {
        let before = "version = \"1\"\nthreshold = 30\n";
        let after = "version = \"2\"\nthreshold = 30\n";
        assert_eq!(line_diff(before, after, 10), ["-version = \"1\"", "+version = \"2\""]);
        let big: String = (0..100).map(|i| format!("line {i}\n")).collect();
        let diff = line_diff("", &big, 5);
        assert_eq!((diff.len(), diff[5].as_str()), (6, "… 95 more lines"));
        let long = line_diff("", &"é".repeat(500), 5);
        assert!(long[0].len() <= MAX_LINE + 4 && long[0].ends_with('…'), "{}", long[0]);
    }

    proptest! {
        #[test]
        fn a_csv_row_has_seven_fields(actor in ".{0,40}", subject in ".{0,40}") {
            let e = AuditEvent { at: Timestamp::from_millis(1), action: "a".into(), actor, token: String::new(), subject, details: BTreeMap::new() };
            let row = csv_row("1", &e);
            // Parsed back, RFC 4180 style.
            let mut fields = 1;
            let mut quoted = false;
            let mut chars = row.chars().peekable();
            while let Some(c) = chars.next() {
                match c {
                    '"' if quoted && chars.peek() == Some(&'"') => { chars.next(); }
                    '"' => quoted = !quoted,
                    ',' if !quoted => fields += 1,
                    _ => {}
                }
            }
            prop_assert_eq!(fields, 7);
        }
    }
}
