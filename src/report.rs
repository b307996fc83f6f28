//! `leadscore report …`: the `Profiles` answers as readable tables, the
//! score histogram drawn as a text bar chart. Rendering is pure (tested
//! below); the CLI fetches over gRPC.

use std::fmt::Write as _;

use crate::api::pb;

/// Widest bar, in characters.
const BAR_WIDTH: u64 = 40;

fn stage_name(stage: i32) -> &'static str {
    pb::Stage::try_from(stage).map_or("?", |s| s.as_str_name().trim_start_matches("STAGE_"))
}

fn bar(count: u64, max: u64) -> String {
    if count == 0 || max == 0 {
        return String::new();
    }
    // At least one block for any non-empty bucket.
    let width = (count * BAR_WIDTH).div_ceil(max).max(1);
    "█".repeat(width as usize)
}

fn percent(rate: f64) -> String {
    format!("{:.1}%", rate * 100.0)
}

/// `12d 4h`, `3h 20m`, `45s`.
pub fn human_duration(seconds: i64) -> String {
    let (d, h, m, s) = (seconds / 86_400, seconds % 86_400 / 3600, seconds % 3600 / 60, seconds % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m {s}s"),
        (0, _, _) => format!("{h}h {m}m"),
        _ => format!("{d}d {h}h"),
    }
}

/// A cohort profile: header, histogram bar chart, percentiles, stages.
pub fn render_cohort(period: &str, filter: &str, r: &pb::GetCohortScoreProfileResponse) -> String {
    let mut out = String::new();
    let filtered = if filter.is_empty() { String::new() } else { format!(", {filter}") };
    let _ = writeln!(out, "Leads created {period}{filtered} — model {}: {} leads", r.model, r.lead_count);
    if r.lead_count == 0 {
        let _ = writeln!(out, "(no leads in this cohort)");
        return out;
    }
    let _ = writeln!(out);
    let _ = writeln!(out, "{:>17}  {:>7}", "score", "leads");
    let max = r.histogram.iter().map(|b| b.count).max().unwrap_or(0);
    for b in &r.histogram {
        let range = format!("{} .. {}", trim(b.lower), trim(b.upper));
        let _ = writeln!(out, "{range:>17}  {:>7}  {}", b.count, bar(b.count, max));
    }
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "p50 {}   p75 {}   p90 {}   p99 {}   (min {}, max {})",
        trim(r.p50),
        trim(r.p75),
        trim(r.p90),
        trim(r.p99),
        trim(r.min),
        trim(r.max)
    );
    let _ = writeln!(out);
    let _ = writeln!(out, "{:<13} {:>7}", "stage now", "leads");
    for s in &r.count_by_stage {
        let _ = writeln!(out, "{:<13} {:>7}", stage_name(s.stage), s.count);
    }
    let _ = writeln!(out, "MQL rate (reached MQL or later): {}", percent(r.mql_rate));
    let _ = writeln!(out, "Scores as of each lead's last change (signal, profile, stage or rescore).");
    out
}

/// Shortest text of a figure rounded to two decimals.
fn trim(v: f64) -> String {
    let text = format!("{v:.2}");
    text.trim_end_matches('0').trim_end_matches('.').to_owned()
}

fn entered(f: &pb::Funnel, stage: pb::Stage) -> u64 {
    f.stages.iter().find(|s| s.stage == stage as i32).map_or(0, |s| s.entered)
}

/// A funnel: stages with median time to stage, conversions, reopened
/// leads, won revenue, then one line per group.
pub fn render_funnel(period: &str, group_by: &str, r: &pb::GetFunnelResponse) -> String {
    let mut out = String::new();
    let total = r.total.clone().unwrap_or_default();
    let _ = writeln!(out, "Funnel {period}");
    let _ = writeln!(out);
    let _ = writeln!(out, "{:<13} {:>8} {:>8}  median time from creation", "stage", "entered", "reached");
    for s in total.stages.iter().filter(|s| s.entered > 0 || s.reached > 0) {
        let median = s.median_time_to_stage.as_ref().map_or("-".to_owned(), |d| human_duration(d.seconds));
        let _ = writeln!(out, "{:<13} {:>8} {:>8}  {median}", stage_name(s.stage), s.entered, s.reached);
    }
    let _ = writeln!(out, "(reached: first time at the stage or past it; conversions are reached(to) / reached(from))");
    let _ = writeln!(out);
    let conversions: Vec<String> = total
        .conversions
        .iter()
        .map(|c| format!("{}→{} {}", stage_name(c.from), stage_name(c.to), percent(c.rate)))
        .collect();
    let _ = writeln!(out, "conversions: {}", conversions.join("   "));
    let _ = writeln!(
        out,
        "reopened leads: {}   won: {} deals, revenue {:.2}",
        total.reopened_leads, total.won_deals, total.won_revenue
    );
    if r.groups.is_empty() {
        return out;
    }
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "{:<24} {:>7} {:>7} {:>7} {:>9} {:>12}  {:>9}",
        format!("first-touch {group_by}"),
        "leads",
        "MQL",
        "SQL",
        "customers",
        "revenue",
        "LEAD→MQL"
    );
    for g in &r.groups {
        let f = g.funnel.clone().unwrap_or_default();
        let rate = f.conversions.first().map_or(0.0, |c| c.rate);
        let name: String = g.value.chars().take(24).collect();
        let _ = writeln!(
            out,
            "{name:<24} {:>7} {:>7} {:>7} {:>9} {:>12.2}  {:>9}",
            entered(&f, pb::Stage::Lead),
            entered(&f, pb::Stage::Mql),
            entered(&f, pb::Stage::Sql),
            entered(&f, pb::Stage::Customer),
            f.won_revenue,
            percent(rate)
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_histogram_is_drawn_to_scale() {
        let r = pb::GetCohortScoreProfileResponse {
            lead_count: 31,
            histogram: vec![
                pb::HistogramBucket { lower: 0.0, upper: 10.0, count: 20 },
                pb::HistogramBucket { lower: 10.0, upper: 20.0, count: 10 },
                pb::HistogramBucket { lower: 20.0, upper: 30.0, count: 1 },
                pb::HistogramBucket { lower: 30.0, upper: 40.0, count: 0 },
            ],
            p50: 7.5,
            mql_rate: 0.125,
            model: "b2b".into(),
            count_by_stage: vec![pb::StageCount { stage: pb::Stage::Mql.into(), count: 4 }],
            ..Default::default()
        };
        let text = render_cohort("2026-11", "", &r);
        let bars: Vec<usize> =
            text.lines().filter(|l| l.contains(" .. ")).map(|l| l.chars().filter(|c| *c == '█').count()).collect();
        assert_eq!(bars, [40, 20, 2, 0]);
        assert!(text.contains("p50 7.5 "), "{text}");
        assert!(text.contains("MQL rate (reached MQL or later): 12.5%"), "{text}");
        assert!(text.contains("MQL                 4"), "{text}");
        let empty = render_cohort("2026-12", "industry=saas", &pb::GetCohortScoreProfileResponse::default());
        assert!(empty.contains("(no leads in this cohort)"));
    }

    #[test]
    fn durations_read_well() {
        assert_eq!(human_duration(45), "45s");
        assert_eq!(human_duration(200), "3m 20s");
        assert_eq!(human_duration(3 * 3600 + 1200), "3h 20m");
        assert_eq!(human_duration(12 * 86_400 + 4 * 3600 + 5), "12d 4h");
    }

    #[test]
    fn funnel_groups_are_tabulated() {
        let funnel = |lead: u64, mql: u64, revenue: f64| pb::Funnel {
            stages: vec![
                pb::StageEntries { stage: pb::Stage::Lead.into(), entered: lead, ..Default::default() },
                pb::StageEntries {
                    stage: pb::Stage::Mql.into(),
                    entered: mql,
                    median_time_to_stage: Some(prost_types::Duration { seconds: 86_400 * 2, nanos: 0 }),
                    reached: mql,
                },
            ],
            conversions: vec![pb::Conversion {
                from: pb::Stage::Lead.into(),
                to: pb::Stage::Mql.into(),
                rate: mql as f64 / lead as f64,
            }],
            won_revenue: revenue,
            ..Default::default()
        };
        let r = pb::GetFunnelResponse {
            total: Some(funnel(10, 4, 500.0)),
            groups: vec![pb::FunnelGroup { value: "google".into(), funnel: Some(funnel(8, 4, 500.0)) }],
        };
        let text = render_funnel("2026-11-01 .. 2026-11-23", "source", &r);
        assert!(text.contains("MQL                  4        4  2d 0h"), "{text}");
        assert!(text.contains("LEAD→MQL 40.0%"), "{text}");
        assert!(
            text.lines().any(|l| l.starts_with("google") && l.contains("500.00") && l.ends_with("50.0%")),
            "{text}"
        );
    }
}
