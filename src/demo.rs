//! `leadscore demo seed`: a realistic population loaded through the public
//! RPCs (UpsertAccount, UpsertLead, RecordSignals, SetStage), for trying
//! rules, simulation, the feed, profiles and the funnel. Deterministic for a
//! given seed (apart from the dates, which follow today's).

use std::collections::{BTreeMap, HashMap};

use crate::api::pb::{
    self, lead_scoring_client::LeadScoringClient, profiles_client::ProfilesClient,
    qualification_client::QualificationClient,
};

/// xorshift64*: small, deterministic, good enough for demo data.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len() as u64) as usize]
    }

    /// Picks by weight.
    fn weighted<'a>(&mut self, items: &[(&'a str, u64)]) -> &'a str {
        let total: u64 = items.iter().map(|(_, w)| w).sum();
        let mut at = self.below(total);
        for (item, w) in items {
            if at < *w {
                return item;
            }
            at -= w;
        }
        items[0].0
    }
}

const SIGNALS: [(&str, u64); 15] = [
    ("page_view", 40),
    ("email_open", 25),
    ("email_click", 12),
    ("content_download", 8),
    ("pricing_page_view", 5),
    ("form_fill", 4),
    ("webinar_registered", 3),
    ("webinar_attended", 2),
    ("social_share", 2),
    ("event_attended", 1),
    ("demo_requested", 1),
    ("meeting_scheduled", 1),
    ("careers_page_view", 1),
    ("email_bounce", 1),
    ("unsubscribe", 1),
];
const SOURCES: [(&str, &str); 6] = [
    ("google", "paid_search"),
    ("linkedin", "paid_social"),
    ("newsletter", "email"),
    ("organic", "organic_search"),
    ("partner", "referral"),
    ("g2", "review_site"),
];
const CAMPAIGNS: [&str; 4] = ["q3-webinar-series", "q4-launch", "pricing-ebook", "always-on"];

/// The paid campaigns: campaign, the source and channel it buys, its
/// daily budget in whole currency units.
const CAMPAIGN_SPEND: [(&str, &str, &str, i64); 3] = [
    ("q3-webinar-series", "linkedin", "paid_social", 120),
    ("q4-launch", "google", "paid_search", 300),
    ("pricing-ebook", "g2", "review_site", 60),
];

/// What was seeded.
#[derive(Debug, Default)]
pub struct Seeded {
    pub leads: usize,
    pub accounts: usize,
    pub signals: usize,
    /// Sales decisions made through SetStage (accept, recycle, won, …).
    pub decisions: usize,
    pub stages: BTreeMap<String, usize>,
    /// Campaign days of spend recorded, and their sum in cents.
    pub spend_entries: usize,
    pub spend: i64,
    /// Customers' expansion deals recorded (upsells, cross-sells).
    pub expansion_deals: usize,
}

/// Account management at work on a new customer: an upsell, and for
/// half of them a cross-sell, each won, lost or still open.
async fn expand(
    crm: &mut QualificationClient<crate::client::Connection>,
    lead_id: &str,
    rng: &mut Rng,
) -> Result<usize, tonic::Status> {
    let mut recorded = 0;
    for (kind, name, chance) in
        [(pb::ExpansionKind::Upsell, "upsell", 100), (pb::ExpansionKind::CrossSell, "cross", 50)]
    {
        if rng.below(100) >= chance {
            continue;
        }
        let amount = (1 + rng.below(30)) as f64 * 1000.0;
        let status = match rng.below(100) {
            0..60 => pb::DealStatus::Won,
            60..80 => pb::DealStatus::Lost,
            _ => pb::DealStatus::Open,
        };
        crm.record_expansion(pb::RecordExpansionRequest {
            lead_id: lead_id.to_owned(),
            deal_id: format!("{lead_id}-{name}"),
            kind: kind.into(),
            status: status.into(),
            amount: Some(amount),
            actor: "demo-crm".into(),
        })
        .await?;
        recorded += 1;
    }
    Ok(recorded)
}

/// A lead's own draw: the same for the same lead and seed, whatever else
/// was drawn before.
fn lead_rng(lead_id: &str, seed: u64) -> Rng {
    Rng(lead_id.bytes().fold(seed.max(1), |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)).max(1))
}

const SALES_REPS: [&str; 3] = ["ann@sales.example", "bob@sales.example", "cleo@sales.example"];

/// What `decide` did.
#[derive(Debug, Default)]
pub struct Decided {
    pub accepted: usize,
    pub recycled: usize,
    /// Of those, decided after their deadline.
    pub late: usize,
}

/// Plays sales catching up on its desk: every lead waiting for a decision
/// (`ListHandovers`) is accepted (SAL, about 70%) or recycled, the same for
/// the same lead and seed. Those past their deadline count as late.
pub async fn decide(addr: String, seed: u64) -> Result<Decided, Box<dyn std::error::Error>> {
    let connection = crate::client::connect(&addr).await?;
    let mut profiles = ProfilesClient::new(connection.clone());
    let mut crm = QualificationClient::new(connection);
    let mut decided = Decided::default();
    let mut seen = std::collections::HashSet::new();
    loop {
        let desk = profiles.list_handovers(pb::ListHandoversRequest { limit: 500 }).await?.into_inner();
        // Leads a decision could not take off the desk are not retried.
        let fresh: Vec<_> = desk.handovers.into_iter().filter(|h| seen.insert(h.lead_id.clone())).collect();
        if fresh.is_empty() {
            return Ok(decided);
        }
        for h in fresh {
            let mut rng = lead_rng(&h.lead_id, seed);
            let to = if rng.below(100) < 70 { pb::Stage::Sal } else { pb::Stage::Recycled };
            let request = pb::SetStageRequest {
                lead_id: h.lead_id.clone(),
                to: to.into(),
                actor: "demo-sales".into(),
                reason: "demo follow-up".into(),
                expected_stage: pb::Stage::Mql.into(),
                ..Default::default()
            };
            // A lead that moved meanwhile (e.g. by a rule) is left as it is.
            if crm.set_stage(request).await.is_err() {
                continue;
            }
            match to {
                pb::Stage::Sal => decided.accepted += 1,
                _ => decided.recycled += 1,
            }
            if h.overdue {
                decided.late += 1;
            }
        }
    }
}

const INDUSTRIES: [&str; 7] =
    ["software", "saas", "financial_services", "healthcare", "manufacturing", "retail", "education"];

/// Seeds `leads` leads, created over the last 90 days, in about `leads / 4`
/// accounts; most are quiet, a few very engaged (up to 30 signals over the
/// last 60 days); then plays the sales side: accepts, recycles and wins
/// some of the qualified ones, with deal amounts.
pub async fn seed(addr: String, leads: usize, seed: u64) -> Result<Seeded, Box<dyn std::error::Error>> {
    let connection = crate::client::connect(&addr).await?;
    let mut client = LeadScoringClient::new(connection.clone());
    let mut profiles = ProfilesClient::new(connection.clone());
    let mut crm = QualificationClient::new(connection);
    let mut accounts_seen = std::collections::HashSet::new();
    let mut rng = Rng(seed.max(1));
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs() as i64;
    let day = 86_400;
    let mut seeded = Seeded::default();
    let mut stage_of: HashMap<String, String> = HashMap::new();
    let bar = crate::client::progress(leads as u64, "seeding", "leads");
    for n in 0..leads {
        bar.set_position(n as u64);
        let lead_id = format!("demo-{seed}-{n:05}");
        let company = rng.below(leads as u64 / 4 + 1);
        let account_id = format!("acct-{seed}-{company}");
        if accounts_seen.insert(company) {
            let attributes = HashMap::from([
                ("industry".to_owned(), INDUSTRIES[(company % INDUSTRIES.len() as u64) as usize].to_owned()),
                ("employees".to_owned(), rng.pick(&["40", "180", "650", "2400", "15000"]).to_owned()),
            ]);
            profiles
                .upsert_account(pb::UpsertAccountRequest {
                    account: Some(pb::Account { account_id: account_id.clone(), attributes }),
                })
                .await?;
            seeded.accounts += 1;
        }
        let free_mail = rng.below(100) < 12;
        let competitor = rng.below(100) < 2;
        let email_domain = if competitor {
            "rivalsoft.com".to_owned()
        } else if free_mail {
            rng.pick(&["gmail.com", "outlook.com", "yahoo.com"]).to_owned()
        } else {
            format!("company{company}.example")
        };
        let attributes: HashMap<String, String> = [
            (
                "seniority",
                rng.pick(&["c_level", "vp", "director", "director", "manager", "manager", "individual"]).to_owned(),
            ),
            ("company_size", rng.pick(&["15", "80", "250", "800", "2500", "12000"]).to_owned()),
            ("industry", INDUSTRIES[(company % INDUSTRIES.len() as u64) as usize].to_owned()),
            ("country", rng.pick(&["us", "us", "gb", "de", "fr", "nl", "br", "in"]).to_owned()),
            ("email_domain", email_domain),
            // The sales rep the CRM assigned (the follow-up agreement's owner).
            ("owner", SALES_REPS[(company % SALES_REPS.len() as u64) as usize].to_owned()),
            (
                "title",
                rng.pick(&["Head of Marketing", "VP Sales", "Marketing Intern", "CFO", "Ops Manager", "Engineer"])
                    .to_owned(),
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        let created = now - rng.below(90) as i64 * day - rng.below(day as u64) as i64;
        client
            .upsert_lead(pb::UpsertLeadRequest {
                lead: Some(pb::Lead {
                    lead_id: lead_id.clone(),
                    account_id: account_id.clone(),
                    attributes,
                    created_at: Some(pbjson_types::Timestamp { seconds: created, nanos: 0 }),
                    stage: 0,
                }),
            })
            .await?;
        let (mut source, mut channel) = SOURCES[rng.below(SOURCES.len() as u64) as usize];
        let campaign = rng.pick(&CAMPAIGNS);
        // A paid campaign's leads come through what it buys.
        if let Some((_, s, c, _)) = CAMPAIGN_SPEND.iter().find(|(name, ..)| *name == campaign) {
            (source, channel) = (s, c);
        }
        // Most leads are quiet; a quarter of the active ones are very engaged.
        let count = match rng.below(100) {
            0..30 => 0,
            30..80 => 1 + rng.below(5),
            _ => 6 + rng.below(25),
        } as usize;
        let oldest = (now - created).min(60 * day).max(day);
        let signals: Vec<pb::Signal> = (0..count)
            .map(|i| {
                let signal_type = rng.weighted(&SIGNALS);
                let at = now - rng.below(oldest as u64) as i64;
                // A quarter of the touches come through another campaign
                // (a retargeting ad, a newsletter): what multi-touch
                // attribution shares credit among.
                let (mut source, mut channel, mut campaign) = (source, channel, campaign);
                if rng.below(100) < 25 {
                    campaign = rng.pick(&CAMPAIGNS);
                    if let Some((_, s, c, _)) = CAMPAIGN_SPEND.iter().find(|(name, ..)| *name == campaign) {
                        (source, channel) = (s, c);
                    }
                }
                let mut properties = HashMap::from([
                    ("source".to_owned(), source.to_owned()),
                    ("channel".to_owned(), channel.to_owned()),
                    ("campaign".to_owned(), campaign.to_owned()),
                ]);
                if signal_type == "page_view" {
                    let url =
                        rng.pick(&["/blog/lead-scoring-101", "/product", "/pricing", "/case-studies/acme", "/docs"]);
                    properties.insert("url".to_owned(), url.to_owned());
                }
                pb::Signal {
                    event_id: format!("{lead_id}-e{i}"),
                    lead_id: lead_id.clone(),
                    r#type: signal_type.to_owned(),
                    occurred_at: Some(pbjson_types::Timestamp { seconds: at, nanos: 0 }),
                    properties,
                    ..Default::default()
                }
            })
            .collect();
        seeded.leads += 1;
        if signals.is_empty() {
            stage_of.insert(lead_id, "LEAD".into());
            continue;
        }
        seeded.signals += signals.len();
        let response = client.record_signals(pb::RecordSignalsRequest { signals }).await?.into_inner();
        for score in response.scores {
            let stage = score.stage().as_str_name().trim_start_matches("STAGE_").to_owned();
            stage_of.insert(score.lead_id, stage);
        }
    }
    bar.finish_and_clear();
    // The sales side: accept or recycle some MQLs, move SQLs on, win some.
    let mut ids: Vec<String> = stage_of.keys().cloned().collect();
    ids.sort();
    for lead_id in ids {
        // Each lead's decisions from its own draw: seeding again makes the
        // same ones, whatever the others' stages are by then.
        let mut rng = lead_rng(&lead_id, seed);
        let mut path: Vec<(pb::Stage, Option<f64>)> = Vec::new();
        match stage_of[&lead_id].as_str() {
            "MQL" => match rng.below(100) {
                0..35 => path.push((pb::Stage::Sal, None)),
                35..50 => path.push((pb::Stage::Recycled, None)),
                _ => {}
            },
            "SQL" if rng.below(100) < 60 => {
                path.push((pb::Stage::Opportunity, None));
                if rng.below(100) < 45 {
                    let amount = (5 + rng.below(116)) as f64 * 1000.0;
                    path.push((pb::Stage::Customer, Some(amount)));
                }
            }
            _ => {}
        }
        for (to, deal_amount) in path {
            let response = crm
                .set_stage(pb::SetStageRequest {
                    lead_id: lead_id.clone(),
                    to: to.into(),
                    actor: "demo-crm".into(),
                    reason: "demo sales decision".into(),
                    deal_amount,
                    ..Default::default()
                })
                .await?
                .into_inner();
            seeded.decisions += 1;
            if let Some(q) = response.qualification {
                stage_of.insert(lead_id.clone(), q.stage().as_str_name().trim_start_matches("STAGE_").to_owned());
            }
        }
        if stage_of[&lead_id] == "CUSTOMER" {
            // A draw of its own: seeding again sends the same deals
            // (recorded once), whatever the lead's path drew.
            let mut rng = lead_rng(&format!("{lead_id}/expansion"), seed);
            seeded.expansion_deals += expand(&mut crm, &lead_id, &mut rng).await?;
        }
    }
    for stage in stage_of.into_values() {
        *seeded.stages.entry(stage).or_default() += 1;
    }
    // What marketing spent: every paid campaign, every day of the last 90
    // (today included), under the source and channel it buys.
    let today = now.div_euclid(day);
    let mut spend = Vec::new();
    for (campaign, source, channel, daily) in CAMPAIGN_SPEND {
        for d in (today - 89)..=today {
            // ±30% around the campaign's daily budget, in cents.
            let cents = daily * (70 + rng.below(61)) as i64;
            let date =
                chrono::DateTime::from_timestamp(d * day, 0).map(|t| t.date_naive().to_string()).unwrap_or_default();
            spend.push(pb::SpendEntry {
                campaign: campaign.to_owned(),
                source: source.to_owned(),
                channel: channel.to_owned(),
                day: date,
                amount: format!("{}.{:02}", cents / 100, cents % 100),
                currency: String::new(),
            });
            seeded.spend += cents;
        }
    }
    for chunk in spend.chunks(100) {
        profiles.record_spend(pb::RecordSpendRequest { spend: chunk.to_vec() }).await?;
        seeded.spend_entries += chunk.len();
    }
    Ok(seeded)
}
