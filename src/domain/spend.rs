//! Marketing spend and what it bought: cost per lead, MQL, SQL, opportunity
//! and customer, and return on spend, per campaign, source or channel. The
//! pure parts: spend entries, exact money, and the campaign report computed
//! from the day's spend and the attribution credits the scoring core keeps
//! at write time.

use std::collections::BTreeMap;

use super::Stage;
use super::attribution::{CreditCounter, Credits, WHOLE};
use super::profiles::FunnelGroupBy;

/// The currency of a deployment that names none (`currency` setting).
pub const DEFAULT_CURRENCY: &str = "USD";

/// Whether `code` looks like an ISO 4217 code: three capital letters.
pub fn is_currency_code(code: &str) -> bool {
    code.len() == 3 && code.bytes().all(|b| b.is_ascii_uppercase())
}

/// Money in millionths of the currency unit (as ad platforms report cost):
/// sums are exact.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Micros(pub i64);

/// The largest amount one entry may hold: 1e9 currency units (sums of
/// entries saturate rather than wrap, far beyond any real budget).
pub const MAX_AMOUNT: Micros = Micros(1_000_000_000_000_000);

impl Micros {
    /// A decimal amount (`1250`, `1250.4`, `0.000001`): digits, at most one
    /// point and six decimals, not negative, at most `MAX_AMOUNT`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if text.starts_with('-') {
            return Err("is negative".into());
        }
        let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
        if whole.is_empty() && fraction.is_empty() {
            return Err("is empty".into());
        }
        if !whole.bytes().all(|b| b.is_ascii_digit()) || !fraction.bytes().all(|b| b.is_ascii_digit()) {
            return Err("is not a decimal amount like 1250.40".into());
        }
        if fraction.len() > 6 {
            return Err("has more than 6 decimals".into());
        }
        let whole: i64 = if whole.is_empty() { 0 } else { whole.parse().map_err(|_| "is too large".to_owned())? };
        let fraction: i64 = format!("{fraction:0<6}").parse().unwrap_or(0);
        let micros = whole.checked_mul(1_000_000).and_then(|w| w.checked_add(fraction)).ok_or("is too large")?;
        if micros > MAX_AMOUNT.0 {
            return Err("is more than 1,000,000,000".into());
        }
        Ok(Self(micros))
    }

    pub fn units(self) -> f64 {
        self.0 as f64 / 1_000_000.0
    }

    pub fn plus(self, other: Micros) -> Micros {
        Micros(self.0.saturating_add(other.0))
    }
}

impl std::fmt::Display for Micros {
    /// The shortest exact decimal: `1250.4`, `0.000001`, `12`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (units, micros) = (self.0 / 1_000_000, (self.0 % 1_000_000).abs());
        if micros == 0 {
            write!(f, "{units}")
        } else {
            let fraction = format!("{micros:06}");
            write!(f, "{units}.{}", fraction.trim_end_matches('0'))
        }
    }
}

/// What was spent on one campaign, through one source and channel (the
/// properties its signals carry), on one UTC day. A campaign run on two
/// platforms is two entries a day.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpendEntry {
    pub campaign: String,
    pub source: String,
    pub channel: String,
    /// Days since the Unix epoch (UTC).
    pub day: i64,
    pub amount: Micros,
}

impl SpendEntry {
    /// The value this entry counts under when spend is split by `group_by`.
    pub fn value(&self, group_by: FunnelGroupBy) -> &str {
        match group_by {
            FunnelGroupBy::Campaign => &self.campaign,
            FunnelGroupBy::Source => &self.source,
            FunnelGroupBy::Channel => &self.channel,
        }
    }
}

/// One row of a campaign report: a campaign, source or channel (or all).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct CampaignRow {
    pub value: String,
    pub spend: Micros,
    /// Leads that reached each stage in the period, credited to the value
    /// (whole leads under first touch, shares of leads under the
    /// multi-touch models).
    pub leads: f64,
    pub mqls: f64,
    pub sqls: f64,
    pub opportunities: f64,
    pub customers: f64,
    /// New business: deals won when leads became customers.
    pub won_revenue: f64,
    /// Upsells and cross-sells won from customers, apart.
    pub expansion_revenue: f64,
}

impl CampaignRow {
    fn per(&self, n: f64) -> Option<f64> {
        (n > 0.0 && self.spend.0 > 0).then(|| self.spend.units() / n)
    }

    pub fn cost_per_lead(&self) -> Option<f64> {
        self.per(self.leads)
    }

    pub fn cost_per_mql(&self) -> Option<f64> {
        self.per(self.mqls)
    }

    pub fn cost_per_sql(&self) -> Option<f64> {
        self.per(self.sqls)
    }

    pub fn cost_per_opportunity(&self) -> Option<f64> {
        self.per(self.opportunities)
    }

    pub fn cost_per_customer(&self) -> Option<f64> {
        self.per(self.customers)
    }

    /// (won new-business revenue − spend) / spend; none without spend.
    /// Expansion revenue is left out: what acquisition spend bought.
    pub fn roi(&self) -> Option<f64> {
        (self.spend.0 > 0).then(|| (self.won_revenue - self.spend.units()) / self.spend.units())
    }

    fn add(&mut self, other: &CampaignRow) {
        self.spend = self.spend.plus(other.spend);
        self.leads += other.leads;
        self.mqls += other.mqls;
        self.sqls += other.sqls;
        self.opportunities += other.opportunities;
        self.customers += other.customers;
        self.won_revenue += other.won_revenue;
        self.expansion_revenue += other.expansion_revenue;
    }
}

/// Spend and its results over a period, by campaign, source or channel.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct CampaignReport {
    /// Most spend first, then most leads, then by value.
    pub rows: Vec<CampaignRow>,
    /// The sum of the rows.
    pub total: CampaignRow,
}

/// Spend and the credits kept at write time under one attribution model
/// (`attribution::credit_changes`), as rows sorted by spend, then leads,
/// then value, with their sum.
pub fn campaign_report(spend: &[SpendEntry], credits: &Credits, group_by: FunnelGroupBy) -> CampaignReport {
    let mut rows: BTreeMap<String, CampaignRow> = BTreeMap::new();
    for entry in spend {
        let row = rows.entry(entry.value(group_by).to_owned()).or_default();
        row.spend = row.spend.plus(entry.amount);
    }
    for (value, counters) in credits.by(group_by) {
        let get = |c: CreditCounter| counters.get(&c).copied().unwrap_or(0) as f64 / WHOLE as f64;
        let reached = |stage: Stage| get(CreditCounter::Reached(stage));
        let row = rows.entry(value.to_owned()).or_default();
        row.leads += reached(Stage::Lead);
        row.mqls += reached(Stage::Mql);
        row.sqls += reached(Stage::Sql);
        row.opportunities += reached(Stage::Opportunity);
        row.customers += reached(Stage::Customer);
        row.won_revenue += get(CreditCounter::Revenue);
        row.expansion_revenue += get(CreditCounter::ExpansionRevenue);
    }
    let mut rows: Vec<CampaignRow> = rows
        .into_iter()
        .map(|(value, mut row)| {
            row.value = value;
            row
        })
        // A row with nothing in it (spend corrected to 0, counters moved
        // elsewhere) is left out, whatever its name.
        .filter(|r| {
            r.spend.0 > 0
                || r.leads + r.mqls + r.sqls + r.opportunities + r.customers > 0.0
                || r.won_revenue != 0.0
                || r.expansion_revenue != 0.0
        })
        .collect();
    rows.sort_by(|a, b| b.spend.cmp(&a.spend).then(b.leads.total_cmp(&a.leads)).then_with(|| a.value.cmp(&b.value)));
    let mut total = CampaignRow::default();
    for row in &rows {
        total.add(row);
    }
    CampaignReport { rows, total }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::attribution::{CreditCounter, Credits, WHOLE};
    use proptest::prelude::*;

    #[test]
    fn amounts_are_exact_and_bad_ones_say_why() {
        assert_eq!(Micros::parse("1250.40"), Ok(Micros(1_250_400_000)));
        assert_eq!(Micros::parse("0.000001"), Ok(Micros(1)));
        assert_eq!(Micros::parse(".5"), Ok(Micros(500_000)));
        assert_eq!(Micros::parse("12"), Ok(Micros(12_000_000)));
        assert_eq!(Micros(1_250_400_000).to_string(), "1250.4");
        assert_eq!(Micros(12_000_000).to_string(), "12");
        assert_eq!(Micros::parse("-3"), Err("is negative".to_owned()));
        for bad in ["", ".", "-3", "1e3", "1,5", "0.0000001", "99999999999999999999", "1000000000.000001"] {
            assert!(Micros::parse(bad).is_err(), "{bad}");
        }
    }

    proptest! {
        #[test]
        fn amounts_round_trip(micros in 0i64..=MAX_AMOUNT.0) {
            prop_assert_eq!(Micros::parse(&Micros(micros).to_string()), Ok(Micros(micros)));
        }
    }

    fn entry(campaign: &str, source: &str, day: i64, amount: i64) -> SpendEntry {
        SpendEntry {
            campaign: campaign.into(),
            source: source.into(),
            channel: "paid".into(),
            day,
            amount: Micros(amount),
        }
    }

    #[test]
    fn costs_per_stage_and_totals_that_add_up() {
        let mut funnel = Credits::default();
        for (group, stage, n) in [
            ("campaign=q4", Stage::Lead, 40.0),
            ("campaign=q4", Stage::Mql, 8.0),
            ("campaign=q4", Stage::Customer, 1.0),
            ("campaign=(none)", Stage::Lead, 10.0),
            ("campaign=brand", Stage::Lead, 5.0),
        ] {
            funnel.add(group, CreditCounter::Reached(stage), (n * WHOLE as f64) as i64);
        }
        funnel.add("campaign=q4", CreditCounter::Revenue, 9_000 * WHOLE);
        funnel.add("campaign=q4", CreditCounter::ExpansionRevenue, 4_000 * WHOLE);
        funnel.add("campaign=upsell-mail", CreditCounter::ExpansionRevenue, 500 * WHOLE);
        let spend = [
            entry("q4", "google", 1, 1_000_000_000),
            entry("q4", "google", 2, 1_000_000_000),
            entry("webinar", "linkedin", 1, 500_000_000),
        ];
        let report = campaign_report(&spend, &funnel, FunnelGroupBy::Campaign);
        let values: Vec<&str> = report.rows.iter().map(|r| r.value.as_str()).collect();
        assert_eq!(values, ["q4", "webinar", "(none)", "brand", "upsell-mail"], "a row with only expansion shows");
        let q4 = &report.rows[0];
        assert_eq!(
            (q4.cost_per_lead(), q4.cost_per_mql(), q4.cost_per_customer()),
            (Some(50.0), Some(250.0), Some(2000.0))
        );
        assert_eq!(q4.cost_per_sql(), None, "no SQL: no ratio");
        assert_eq!(q4.roi(), Some(3.5), "new business only");
        assert_eq!((q4.expansion_revenue, report.total.expansion_revenue), (4_000.0, 4_500.0));
        assert_eq!(report.rows[1].cost_per_lead(), None, "spend without leads: no ratio");
        assert_eq!(report.rows[3].roi(), None, "leads without spend");
        // Spend corrected to nothing, no leads: no row.
        let zero = campaign_report(&[entry("paused", "bing", 1, 0)], &funnel, FunnelGroupBy::Campaign);
        assert!(zero.rows.iter().all(|r| r.value != "paused"));
        // Sums saturate instead of wrapping.
        let huge: Vec<SpendEntry> = (0..20_000).map(|d| entry("big", "google", d, MAX_AMOUNT.0)).collect();
        assert_eq!(campaign_report(&huge, &funnel, FunnelGroupBy::Campaign).total.spend, Micros(i64::MAX));
        assert_eq!(report.total.spend, Micros(2_500_000_000));
        assert_eq!(report.total.leads, 55.0);
        let by_source = campaign_report(&spend, &funnel, FunnelGroupBy::Source);
        assert_eq!(by_source.total.spend, report.total.spend);
    }
}
