//! Account (ABM) scoring: an account's score aggregates its leads'
//! behaviour scores, plus account fit rules on the account's attributes; an
//! account rule marks a marketing-qualified account (MQA).

use std::collections::BTreeMap;

use super::{AccountId, FitRule, LeadId, Stage};

/// How leads' behaviour scores add up to an account's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Aggregate {
    /// Every lead's behaviour.
    Sum,
    /// The N highest behaviour scores (one loud lead does not make an
    /// account, and a thousand quiet ones do not either).
    Top(usize),
}

impl std::fmt::Display for Aggregate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Aggregate::Sum => f.write_str("sum"),
            Aggregate::Top(n) => write!(f, "top {n}"),
        }
    }
}

/// A marketing-qualified-account rule: every given minimum must hold.
#[derive(Debug, Clone, PartialEq)]
pub struct AccountRule {
    pub id: String,
    pub min_score: Option<f64>,
    pub min_engaged_leads: Option<u32>,
    pub min_fit: Option<f64>,
}

impl AccountRule {
    pub fn holds(&self, score: &AccountScore) -> bool {
        self.min_score.is_none_or(|m| score.total() >= m)
            && self.min_engaged_leads.is_none_or(|m| score.engaged_leads >= m)
            && self.min_fit.is_none_or(|m| score.fit >= m)
    }
}

/// The rule set's `[accounts]` section.
#[derive(Debug, Clone, PartialEq)]
pub struct AccountPolicy {
    /// The scoring model whose behaviour scores aggregate.
    pub model: String,
    pub aggregate: Aggregate,
    /// A lead with at least this behaviour score is an engaged contact.
    pub engaged_at: f64,
    pub fit_rules: Vec<FitRule>,
    /// In file order: the first that holds qualifies the account.
    pub rules: Vec<AccountRule>,
}

/// An account's profile (`UpsertAccount`).
#[derive(Debug, Clone, PartialEq)]
pub struct AccountProfile {
    pub account_id: AccountId,
    pub attributes: BTreeMap<String, String>,
}

/// One lead's part in its account's score.
#[derive(Debug, Clone, PartialEq)]
pub struct AccountLead {
    pub lead_id: LeadId,
    pub behavior: f64,
    pub stage: Stage,
    pub counted: bool,
    pub engaged: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AccountScore {
    pub behavior: f64,
    pub fit: f64,
    /// Matching account fit rules: (rule id, attribute, points).
    pub fit_rules: Vec<(String, String, f64)>,
    pub engaged_leads: u32,
    /// Highest behaviour first (ties by lead id).
    pub leads: Vec<AccountLead>,
}

impl AccountScore {
    pub fn total(&self) -> f64 {
        self.behavior + self.fit
    }
}

impl AccountPolicy {
    /// The account's score from its leads' behaviour scores now. O(n log n).
    pub fn score(&self, attributes: &BTreeMap<String, String>, leads: Vec<(LeadId, f64, Stage)>) -> AccountScore {
        let mut leads: Vec<AccountLead> = leads
            .into_iter()
            .map(|(lead_id, behavior, stage)| AccountLead {
                lead_id,
                behavior,
                stage,
                counted: false,
                engaged: behavior >= self.engaged_at,
            })
            .collect();
        leads.sort_by(|a, b| b.behavior.total_cmp(&a.behavior).then_with(|| a.lead_id.cmp(&b.lead_id)));
        let counted = match self.aggregate {
            Aggregate::Sum => leads.len(),
            Aggregate::Top(n) => n.min(leads.len()),
        };
        let mut behavior = 0.0;
        for lead in leads.iter_mut().take(counted) {
            lead.counted = true;
            behavior += lead.behavior;
        }
        let fit_rules: Vec<(String, String, f64)> = super::model::matching_fit_rules(&self.fit_rules, attributes)
            .map(|r| (r.id.clone(), r.attribute.clone(), r.points))
            .collect();
        AccountScore {
            behavior,
            fit: fit_rules.iter().map(|r| r.2).sum(),
            fit_rules,
            engaged_leads: leads.iter().filter(|l| l.engaged).count() as u32,
            leads,
        }
    }

    /// The first account rule that holds.
    pub fn qualifying_rule(&self, score: &AccountScore) -> Option<&AccountRule> {
        self.rules.iter().find(|r| r.holds(score))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Condition;

    fn policy(aggregate: Aggregate) -> AccountPolicy {
        AccountPolicy {
            model: "b2b".into(),
            aggregate,
            engaged_at: 10.0,
            fit_rules: vec![FitRule {
                id: "enterprise".into(),
                attribute: "employees".into(),
                condition: Condition::AtLeast(1000.0),
                points: 20.0,
            }],
            rules: vec![AccountRule {
                id: "mqa".into(),
                min_score: Some(60.0),
                min_engaged_leads: Some(2),
                min_fit: None,
            }],
        }
    }

    fn leads(scores: &[f64]) -> Vec<(LeadId, f64, Stage)> {
        scores.iter().enumerate().map(|(i, s)| (LeadId::parse(format!("l{i}")).unwrap(), *s, Stage::Lead)).collect()
    }

    #[test]
    fn top_n_counts_the_loudest_leads() {
        let attrs = BTreeMap::from([("employees".to_owned(), "5000".to_owned())]);
        let score = policy(Aggregate::Top(2)).score(&attrs, leads(&[5.0, 30.0, 12.0]));
        assert_eq!(score.behavior, 42.0);
        assert_eq!(score.fit, 20.0);
        assert_eq!(score.engaged_leads, 2);
        assert_eq!(score.leads[0].behavior, 30.0);
        assert!(score.leads[1].counted && !score.leads[2].counted);
        assert_eq!(policy(Aggregate::Top(2)).qualifying_rule(&score).map(|r| r.id.as_str()), Some("mqa"));
    }

    #[test]
    fn sum_and_rules() {
        let p = policy(Aggregate::Sum);
        let score = p.score(&BTreeMap::new(), leads(&[5.0, 30.0, 12.0]));
        assert_eq!((score.behavior, score.fit), (47.0, 0.0));
        assert!(p.qualifying_rule(&score).is_none(), "47 < 60");
        let empty = p.score(&BTreeMap::new(), Vec::new());
        assert_eq!((empty.behavior, empty.engaged_leads), (0.0, 0));
    }
}
