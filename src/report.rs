//! `leadscore report …`: the `Profiles` answers as readable tables, the
//! score histogram and campaign spend drawn as text bar charts; and the
//! spend CSV files `leadscore spend import` reads. Pure (tested below); the
//! CLI fetches and sends over gRPC.

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
    let _ = writeln!(out, "{}", follow_up_line(&total));
    if let Some(line) = expansion_line(&total) {
        let _ = writeln!(out, "{line}");
    }
    if r.groups.is_empty() {
        return out;
    }
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "{:<24} {:>7} {:>7} {:>7} {:>9} {:>12} {:>12}  {:>9}  {:>8} {:>8}",
        format!("first-touch {group_by}"),
        "leads",
        "MQL",
        "SQL",
        "customers",
        "revenue",
        "expansion",
        "LEAD→MQL",
        "in time",
        "breaches"
    );
    for g in &r.groups {
        let f = g.funnel.clone().unwrap_or_default();
        let rate = f.conversions.first().map_or(0.0, |c| c.rate);
        let name: String = g.value.chars().take(24).collect();
        let _ = writeln!(
            out,
            "{name:<24} {:>7} {:>7} {:>7} {:>9} {:>12.2} {:>12.2}  {:>9}  {:>8} {:>8}",
            entered(&f, pb::Stage::Lead),
            entered(&f, pb::Stage::Mql),
            entered(&f, pb::Stage::Sql),
            entered(&f, pb::Stage::Customer),
            f.won_revenue,
            f.expansion_revenue,
            percent(rate),
            f.sla_attainment.map_or_else(|| "—".to_owned(), percent),
            f.sla_breaches
        );
    }
    out
}

/// The follow-up agreement's figures of a funnel: hand-overs decided in
/// time and late, attainment, speed to lead, breaches.
fn follow_up_line(f: &pb::Funnel) -> String {
    let duration =
        |d: &Option<pbjson_types::Duration>| d.as_ref().map_or("—".to_owned(), |d| human_duration(d.seconds));
    format!(
        "follow-up: {} decided in time, {} late ({} in time)   speed to lead: median {}, p90 {}   breaches: {}",
        f.handovers_on_time,
        f.handovers_late,
        f.sla_attainment.map_or_else(|| "—".to_owned(), percent),
        duration(&f.speed_to_lead_median),
        duration(&f.speed_to_lead_p90),
        f.sla_breaches
    )
}

/// Customers' expansion deals, per kind, when there were any.
fn expansion_line(f: &pb::Funnel) -> Option<String> {
    if f.expansion.is_empty() {
        return None;
    }
    let kinds: Vec<String> = f
        .expansion
        .iter()
        .map(|e| {
            let kind = match pb::ExpansionKind::try_from(e.kind) {
                Ok(pb::ExpansionKind::CrossSell) => "cross-sell",
                Ok(pb::ExpansionKind::Upsell) => "upsell",
                _ => "other",
            };
            format!("{kind} {} opened ({:.2}), {} won ({:.2}), {} lost", e.opened, e.pipeline, e.won, e.revenue, e.lost)
        })
        .collect();
    Some(format!("expansion (apart from new business): {}   revenue {:.2}", kinds.join("; "), f.expansion_revenue))
}

/// Sales' desk: the hand-overs waiting, longest first.
pub fn render_handovers(r: &pb::ListHandoversResponse, now_seconds: i64) -> String {
    let mut out = String::new();
    let agreement = if r.agreement.is_empty() { "no follow-up agreement ([sla]) in force" } else { &r.agreement };
    let _ = writeln!(out, "{} MQLs waiting for sales — agreement: {agreement}", r.waiting);
    if r.handovers.is_empty() {
        return out;
    }
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "{:<24} {:>10} {:>10} {:>10}  {:<8} {:>6}  {:<16} owner",
        "lead", "waiting", "counted", "due in", "", "score", "source"
    );
    for h in &r.handovers {
        let seconds = |d: &Option<pbjson_types::Duration>| d.as_ref().map_or(0, |d| d.seconds);
        let due = h.due.as_ref().map_or(0, |t| t.seconds) - now_seconds;
        let due_in = if h.overdue { format!("-{}", human_duration(-due.min(0))) } else { human_duration(due.max(0)) };
        let name: String = h.lead_id.chars().take(24).collect();
        let source: String = h.source.chars().take(16).collect();
        let _ = writeln!(
            out,
            "{name:<24} {:>10} {:>10} {:>10}  {:<8} {:>6.1}  {source:<16} {}",
            human_duration(seconds(&h.waiting)),
            human_duration(seconds(&h.age)),
            due_in,
            if h.overdue { "OVERDUE" } else { "" },
            h.score.as_ref().map_or(0.0, |s| s.total),
            if h.owner.is_empty() { "—" } else { &h.owner }
        );
    }
    if r.waiting > r.handovers.len() as u64 {
        let _ = writeln!(out, "… and {} more (--limit)", r.waiting - r.handovers.len() as u64);
    }
    out
}

/// `1,250.40`-style money; "—" where there is no ratio.
fn money(v: Option<f64>) -> String {
    v.map_or_else(|| "—".to_owned(), |x| format!("{x:.2}"))
}

/// The campaign report as a table, then spend per row as a bar chart.
pub fn render_campaigns(period: &str, group_by: &str, model: &str, r: &pb::GetCampaignReportResponse) -> String {
    let mut out = String::new();
    let model = model.replace('_', "-");
    let _ = writeln!(out, "Campaigns {period}, by {group_by}, {model} attribution, in {}", r.currency);
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "{:<24} {:>12} {:>7} {:>6} {:>6} {:>6} {:>9} {:>12} {:>12} {:>10} {:>10} {:>10} {:>12} {:>8}",
        group_by,
        "spend",
        "leads",
        "MQLs",
        "SQLs",
        "opps",
        "customers",
        "revenue",
        "expansion",
        "per lead",
        "per MQL",
        "per SQL",
        "per customer",
        "ROI"
    );
    let total = r.total.clone().unwrap_or_default();
    for row in r.rows.iter().chain(std::iter::once(&total)) {
        let name: String =
            if std::ptr::eq(row, &total) { "total".to_owned() } else { row.value.chars().take(24).collect() };
        let roi = row.roi.map_or_else(|| "—".to_owned(), percent);
        let _ = writeln!(
            out,
            "{name:<24} {:>12.2} {:>7} {:>6} {:>6} {:>6} {:>9} {:>12.2} {:>12.2} {:>10} {:>10} {:>10} {:>12} {:>8}",
            row.spend,
            credited(row.leads),
            credited(row.mqls),
            credited(row.sqls),
            credited(row.opportunities),
            credited(row.customers),
            row.won_revenue,
            row.expansion_revenue,
            money(row.cost_per_lead),
            money(row.cost_per_mql),
            money(row.cost_per_sql),
            money(row.cost_per_customer),
            roi
        );
    }
    let _ = writeln!(
        out,
        "(per stage: spend / leads that reached it in the period; revenue: new business; expansion: upsells and \
         cross-sells won from customers; ROI: (revenue - spend) / spend)"
    );
    let max = r.rows.iter().map(|row| (row.spend * 100.0).round() as u64).max().unwrap_or(0);
    if max > 0 {
        let _ = writeln!(out);
        let _ = writeln!(out, "spend");
        for row in r.rows.iter().filter(|row| row.spend > 0.0) {
            let name: String = row.value.chars().take(24).collect();
            let _ = writeln!(out, "{name:<24} {:>12.2} {}", row.spend, bar((row.spend * 100.0).round() as u64, max));
        }
    }
    let max = r.rows.iter().map(|row| (row.mqls * 100.0).round() as u64).max().unwrap_or(0);
    if max > 0 {
        let _ = writeln!(out);
        let _ = writeln!(out, "MQLs credited");
        for row in r.rows.iter().filter(|row| row.mqls > 0.0) {
            let name: String = row.value.chars().take(24).collect();
            let mqls = credited(row.mqls);
            let _ = writeln!(out, "{name:<24} {mqls:>12} {}", bar((row.mqls * 100.0).round() as u64, max));
        }
    }
    out
}

/// Leads credited: whole as they are, shares to the hundredth.
fn credited(n: f64) -> String {
    if n.fract() == 0.0 { format!("{n}") } else { format!("{n:.2}") }
}

/// The records of a CSV text (RFC 4180: quoted fields may hold commas,
/// doubled quotes and line breaks), each with the line it starts on; blank
/// lines are skipped.
fn csv_records(text: &str) -> Result<Vec<(usize, Vec<String>)>, String> {
    let mut records = Vec::new();
    let (mut record, mut field) = (Vec::new(), String::new());
    let (mut quoted, mut was_quoted) = (false, false);
    let (mut line, mut start) = (1, 1);
    let mut chars = text.trim_start_matches('\u{feff}').chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\n' {
            line += 1;
        }
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            (true, '"') => quoted = false,
            (true, c) => field.push(c),
            (false, '"') if field.is_empty() && !was_quoted => {
                quoted = true;
                was_quoted = true;
            }
            (false, ',') => {
                record.push(std::mem::take(&mut field));
                was_quoted = false;
            }
            (false, '\r') => {}
            (false, '\n') => {
                record.push(std::mem::take(&mut field));
                was_quoted = false;
                if record.iter().any(|f| !f.is_empty()) {
                    records.push((start, std::mem::take(&mut record)));
                }
                record.clear();
                start = line;
            }
            (false, c) => field.push(c),
        }
    }
    if quoted {
        return Err(format!("line {start}: a quoted field is not closed"));
    }
    record.push(field);
    if record.iter().any(|f| !f.is_empty()) {
        records.push((start, record));
    }
    Ok(records)
}

/// The spend entries of a CSV file with a header row naming its columns:
/// `day` (or `date`), `campaign`, `amount` (or `cost`, `spend`), and
/// optionally `source`, `channel`, `currency`. Rows of the same day,
/// campaign, source, channel and currency (an export per ad group or
/// device) are summed into one entry. Days and amounts are checked here, so
/// an error names its line; the service checks the rest.
pub fn spend_csv(text: &str) -> Result<Vec<pb::SpendEntry>, String> {
    use crate::domain::spend::Micros;
    let mut records = csv_records(text)?.into_iter();
    let (_, header) = records.next().ok_or("the file is empty")?;
    let header: Vec<String> = header.iter().map(|h| h.trim().to_lowercase()).collect();
    let column = |names: &[&str]| header.iter().position(|h| names.contains(&h.as_str()));
    let (Some(day), Some(campaign), Some(amount)) =
        (column(&["day", "date"]), column(&["campaign"]), column(&["amount", "cost", "spend"]))
    else {
        return Err(format!(
            "the header must name the columns day (or date), campaign and amount (or cost, spend); it has: {}",
            crate::text::bounded(&header.join(", "), 200)
        ));
    };
    let (source, channel, currency) = (column(&["source"]), column(&["channel"]), column(&["currency"]));
    // (day, campaign, source, channel, currency) → summed amount, in file order.
    type Key = (String, String, String, String, String);
    let mut sums: Vec<(Key, Micros)> = Vec::new();
    let mut at: std::collections::HashMap<Key, usize> = Default::default();
    for (line, record) in records {
        let get = |i: Option<usize>| i.and_then(|i| record.get(i)).map_or(String::new(), |v| v.trim().to_owned());
        let key = (get(Some(day)), get(Some(campaign)), get(source), get(channel), get(currency));
        if chrono::NaiveDate::parse_from_str(&key.0, "%Y-%m-%d").is_err() || key.0.len() != 10 {
            return Err(format!("line {line}: day '{}' is not YYYY-MM-DD", crate::text::bounded(&key.0, 32)));
        }
        let text = get(Some(amount));
        let value = Micros::parse(&text)
            .map_err(|why| format!("line {line}: amount '{}' {why}", crate::text::bounded(&text, 32)))?;
        match at.get(&key) {
            Some(i) => sums[*i].1 = sums[*i].1.plus(value),
            None => {
                at.insert(key.clone(), sums.len());
                sums.push((key, value));
            }
        }
    }
    Ok(sums
        .into_iter()
        .map(|((day, campaign, source, channel, currency), amount)| pb::SpendEntry {
            campaign,
            source,
            channel,
            day,
            amount: amount.to_string(),
            currency,
        })
        .collect())
}

#[cfg(test)]
mod tests {

    #[test]
    fn spend_csv_reads_quoted_fields_sums_rows_and_names_bad_lines() {
        let text = "\u{feff}Date,Campaign,Source,Cost\r\n2026-11-02,\"Q4, \"\"launch\"\"\",google,1250.40\r\n\r\n2026-11-03,brand,,7\n2026-11-02,\"Q4, \"\"launch\"\"\",google,0.60\n2026-11-02,\"Q4, \"\"launch\"\"\",linkedin,3\n";
        let entries = spend_csv(text).unwrap();
        assert_eq!(entries.len(), 3, "two rows of one day, campaign and source summed");
        assert_eq!(entries[0].campaign, "Q4, \"launch\"");
        assert_eq!(
            (entries[0].day.as_str(), entries[0].amount.as_str(), entries[0].source.as_str()),
            ("2026-11-02", "1251", "google")
        );
        assert_eq!((entries[1].source.as_str(), entries[1].channel.as_str()), ("", ""));
        assert_eq!((entries[2].source.as_str(), entries[2].amount.as_str()), ("linkedin", "3"));
        let bad = spend_csv("day,campaign,amount\n\n2026-11-02,\"a\nb\",1\n2026-13-01,b,2\n").unwrap_err();
        assert!(bad.contains("line 5") && bad.contains("2026-13-01"), "{bad}");
        let bad = spend_csv("day,campaign,amount\n2026-11-02,a,-5\n").unwrap_err();
        assert!(bad.contains("line 2") && bad.contains("-5"), "{bad}");
        assert!(spend_csv("when,what\n").unwrap_err().contains("header must name"));
        assert!(spend_csv("day,campaign,amount\n2026-11-02,\"open,1\n").unwrap_err().contains("not closed"));
    }

    #[test]
    fn campaigns_table_shows_dashes_and_totals() {
        let row = |value: &str, spend: f64, leads: f64, mqls: f64| pb::CampaignRow {
            value: value.into(),
            spend,
            leads,
            mqls,
            expansion_revenue: leads * 10.0,
            cost_per_lead: (leads > 0.0 && spend > 0.0).then(|| spend / leads),
            cost_per_mql: (mqls > 0.0 && spend > 0.0).then(|| spend / mqls),
            roi: (spend > 0.0).then_some(-1.0),
            ..Default::default()
        };
        let r = pb::GetCampaignReportResponse {
            rows: vec![row("q4-launch", 2000.0, 40.0, 7.5), row("(none)", 0.0, 10.0, 0.5)],
            total: Some(row("", 2000.0, 50.0, 8.0)),
            currency: "EUR".into(),
            model: pb::AttributionModel::FirstTouch.into(),
        };
        let text = render_campaigns("2026-11-01 to 2026-11-30 (UTC days)", "campaign", "linear", &r);
        assert!(text.contains("linear attribution, in EUR"), "{text}");
        let q4 = text.lines().find(|l| l.starts_with("q4-launch")).unwrap();
        assert!(q4.contains("50.00") && q4.contains("266.67") && q4.contains("7.50"), "{q4}");
        assert!(q4.contains("0.00       400.00"), "new-business revenue, then expansion: {q4}");
        let none = text.lines().find(|l| l.starts_with("(none)")).unwrap();
        assert!(none.contains('—'), "{none}");
        assert!(text.lines().any(|l| l.starts_with("total")), "{text}");
        let bars: Vec<&str> = text.lines().filter(|l| l.contains('█')).collect();
        assert_eq!(bars.len(), 3, "one spend bar (the row with spend), two MQL bars: {text}");
    }

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
                    median_time_to_stage: Some(pbjson_types::Duration { seconds: 86_400 * 2, nanos: 0 }),
                    reached: mql,
                },
            ],
            conversions: vec![pb::Conversion {
                from: pb::Stage::Lead.into(),
                to: pb::Stage::Mql.into(),
                rate: mql as f64 / lead as f64,
            }],
            won_revenue: revenue,
            handovers_on_time: 3,
            handovers_late: 1,
            sla_attainment: Some(0.75),
            speed_to_lead_median: Some(pbjson_types::Duration { seconds: 7_200, nanos: 0 }),
            speed_to_lead_p90: Some(pbjson_types::Duration { seconds: 30 * 3_600, nanos: 0 }),
            sla_breaches: 2,
            expansion: vec![pb::ExpansionFunnel {
                kind: pb::ExpansionKind::Upsell.into(),
                opened: 3,
                pipeline: 900.0,
                won: 2,
                revenue: 700.0,
                lost: 1,
            }],
            expansion_revenue: 700.0,
            ..Default::default()
        };
        let r = pb::GetFunnelResponse {
            total: Some(funnel(10, 4, 500.0)),
            groups: vec![pb::FunnelGroup { value: "google".into(), funnel: Some(funnel(8, 4, 500.0)) }],
        };
        let text = render_funnel("2026-11-01 .. 2026-11-23", "source", &r);
        assert!(text.contains("MQL                  4        4  2d 0h"), "{text}");
        assert!(text.contains("LEAD→MQL 40.0%"), "{text}");
        assert!(text.lines().any(|l| l.starts_with("google") && l.contains("500.00") && l.contains("50.0%")), "{text}");
        assert!(
            text.contains(
                "follow-up: 3 decided in time, 1 late (75.0% in time)   speed to lead: median 2h 0m, p90 1d 6h   \
                 breaches: 2"
            ),
            "{text}"
        );
        assert!(text.lines().any(|l| l.starts_with("google") && l.ends_with("75.0%        2")), "{text}");
        assert!(
            text.contains(
                "expansion (apart from new business): upsell 3 opened (900.00), 2 won (700.00), 1 lost   revenue 700.00"
            ),
            "{text}"
        );
        assert!(text.lines().any(|l| l.starts_with("google") && l.contains("500.00       700.00")), "{text}");
    }

    #[test]
    fn the_desk_shows_who_waits_and_what_is_overdue() {
        let now = 1_796_396_400;
        let handover = |lead: &str, waited: i64, due_in: i64, owner: &str| pb::Handover {
            lead_id: lead.into(),
            due: Some(pbjson_types::Timestamp { seconds: now + due_in, nanos: 0 }),
            age: Some(pbjson_types::Duration { seconds: waited.min(8 * 3_600), nanos: 0 }),
            waiting: Some(pbjson_types::Duration { seconds: waited, nanos: 0 }),
            overdue: due_in < 0,
            owner: owner.into(),
            score: Some(pb::ScoreSnapshot { total: 51.0, ..Default::default() }),
            source: "webinar".into(),
            ..Default::default()
        };
        let r = pb::ListHandoversResponse {
            waiting: 3,
            handovers: vec![handover("lead-1", 30 * 3_600, -6 * 3_600, "ann@crm"), handover("lead-2", 600, 86_000, "")],
            agreement: "within 24h".into(),
        };
        let text = render_handovers(&r, now);
        assert!(text.starts_with("3 MQLs waiting for sales — agreement: within 24h"), "{text}");
        let first = text.lines().find(|l| l.starts_with("lead-1")).unwrap();
        assert!(first.contains("1d 6h") && first.contains("-6h 0m") && first.contains("OVERDUE"), "{first}");
        assert!(first.ends_with("ann@crm"), "{first}");
        let second = text.lines().find(|l| l.starts_with("lead-2")).unwrap();
        assert!(!second.contains("OVERDUE") && second.ends_with('—'), "{second}");
        assert!(text.contains("… and 1 more (--limit)"), "{text}");
        let none = render_handovers(&pb::ListHandoversResponse::default(), now);
        assert_eq!(none, "0 MQLs waiting for sales — agreement: no follow-up agreement ([sla]) in force\n");
    }
}
