//! Expansion: the new opportunities a customer opens (upsells and
//! cross-sells), kept per lead by the CRM's deal id so that a deal sent
//! again (at-least-once delivery, a retry) counts once. Pure: `apply`
//! answers what an update does to a lead's deals and what it counts.

use super::{Stage, Timestamp};

/// Expansion deals kept per lead, open and closed: the idempotency window
/// (an update of a closed deal no longer kept counts as a new deal).
pub const MAX_KEPT: usize = 16;

/// What a customer buys more of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// More of what it has (seats, a higher plan).
    Upsell,
    /// Another product.
    CrossSell,
}

impl Kind {
    pub const ALL: [Kind; 2] = [Kind::Upsell, Kind::CrossSell];

    /// The name in keys, the CLI and the docs.
    pub fn key(self) -> &'static str {
        match self {
            Kind::Upsell => "upsell",
            Kind::CrossSell => "cross_sell",
        }
    }

    pub fn parse_key(key: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.key() == key)
    }
}

/// Where a deal stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Status {
    Open,
    Won,
    Lost,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Open => "open",
            Status::Won => "won",
            Status::Lost => "lost",
        }
    }
}

/// One expansion opportunity of a customer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deal {
    /// The CRM's opportunity id.
    pub id: String,
    pub kind: Kind,
    pub status: Status,
    /// Its amount (the won amount once won), in micros.
    pub micros: i64,
    pub opened_at: Timestamp,
    pub closed_at: Option<Timestamp>,
}

/// What the CRM reports about a deal.
#[derive(Debug, Clone, PartialEq)]
pub struct Update {
    pub id: String,
    pub kind: Kind,
    pub status: Status,
    /// `None`: the amount it was opened with (0 for a deal not seen yet).
    pub micros: Option<i64>,
}

/// What an update counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// A new opportunity and its amount (pipeline).
    Opened {
        kind: Kind,
        micros: i64,
    },
    /// An open opportunity's amount changed by `micros`.
    Repriced {
        kind: Kind,
        micros: i64,
    },
    Won {
        kind: Kind,
        micros: i64,
    },
    Lost {
        kind: Kind,
    },
}

/// Why an update is refused (nothing is written).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Only a customer (`CUSTOMER`, `ADVOCATE`) opens expansion deals.
    NotACustomer(Stage),
    /// The deal was closed (won or lost) otherwise: closed deals are final.
    Closed { status: Status, at: Timestamp },
    /// The deal was opened as another kind.
    OtherKind(Kind),
    /// `MAX_KEPT` deals are open: close some first.
    TooManyOpen,
    /// A deal first seen won needs the amount it was won with (a closed
    /// deal is final: a win of 0 could never be corrected).
    AmountRequired,
}

/// Whether a lead in `stage` is a customer.
pub fn is_customer(stage: Stage) -> bool {
    matches!(stage, Stage::Customer | Stage::Advocate)
}

/// Applies `update` to a lead's deals (newest first): answers what it
/// counts, nothing for an update that changes nothing (sent again). A
/// closed deal stays as it closed; a deal not kept is opened (only by a
/// customer), and won or lost at once if the update says so. Keeping at
/// most `MAX_KEPT`, the oldest closed deal makes room.
pub fn apply(deals: &mut Vec<Deal>, stage: Stage, update: Update, now: Timestamp) -> Result<Vec<Event>, Refusal> {
    let Update { id, kind, status, micros } = update;
    let close = |deal: &mut Deal, micros: i64| -> Event {
        deal.status = status;
        deal.closed_at = Some(now);
        deal.micros = micros;
        match status {
            Status::Won => Event::Won { kind, micros },
            _ => Event::Lost { kind },
        }
    };
    if let Some(deal) = deals.iter_mut().find(|d| d.id == id) {
        if deal.kind != kind {
            return Err(Refusal::OtherKind(deal.kind));
        }
        return match (deal.status, status) {
            (Status::Open, Status::Open) => match micros {
                Some(m) if m != deal.micros => {
                    let by = m - deal.micros;
                    deal.micros = m;
                    Ok(vec![Event::Repriced { kind, micros: by }])
                }
                _ => Ok(Vec::new()),
            },
            (Status::Open, _) => {
                // Won for another amount than the pipeline held: the
                // pipeline follows, so it holds what the deals came to.
                let m = micros.unwrap_or(deal.micros);
                let mut events = Vec::new();
                if status == Status::Won && m != deal.micros {
                    events.push(Event::Repriced { kind, micros: m - deal.micros });
                }
                events.push(close(deal, m));
                Ok(events)
            }
            // Sent again, or the opening retried after the close: done.
            (closed, asked) if closed == asked && micros.is_none_or(|m| m == deal.micros) => Ok(Vec::new()),
            (_, Status::Open) => Ok(Vec::new()),
            (closed, _) => Err(Refusal::Closed { status: closed, at: deal.closed_at.unwrap_or(deal.opened_at) }),
        };
    }
    if !is_customer(stage) {
        return Err(Refusal::NotACustomer(stage));
    }
    if status == Status::Won && micros.is_none() {
        return Err(Refusal::AmountRequired);
    }
    if deals.len() >= MAX_KEPT {
        let oldest_closed = deals.iter().enumerate().filter(|(_, d)| d.status != Status::Open).min_by_key(|(i, d)| {
            // Oldest closing first; among equals, the one opened earliest
            // (kept last).
            (d.closed_at, std::cmp::Reverse(*i))
        });
        let Some((i, _)) = oldest_closed else { return Err(Refusal::TooManyOpen) };
        deals.remove(i);
    }
    let m = micros.unwrap_or(0);
    let mut deal = Deal { id, kind, status: Status::Open, micros: m, opened_at: now, closed_at: None };
    let mut events = vec![Event::Opened { kind, micros: m }];
    if status != Status::Open {
        events.push(close(&mut deal, m));
    }
    deals.insert(0, deal);
    Ok(events)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn at(s: i64) -> Timestamp {
        Timestamp::from_millis(s * 1000)
    }

    fn update(id: &str, status: Status, micros: Option<i64>) -> Update {
        Update { id: id.into(), kind: Kind::Upsell, status, micros }
    }

    #[test]
    fn a_deal_opens_is_repriced_and_wins_once() {
        let mut deals = Vec::new();
        let c = Stage::Customer;
        let k = Kind::Upsell;
        assert_eq!(
            apply(&mut deals, c, update("o1", Status::Open, Some(5)), at(1)),
            Ok(vec![Event::Opened { kind: k, micros: 5 }])
        );
        assert_eq!(apply(&mut deals, c, update("o1", Status::Open, Some(5)), at(2)), Ok(vec![]));
        assert_eq!(apply(&mut deals, c, update("o1", Status::Open, None), at(2)), Ok(vec![]));
        assert_eq!(
            apply(&mut deals, c, update("o1", Status::Open, Some(8)), at(3)),
            Ok(vec![Event::Repriced { kind: k, micros: 3 }])
        );
        assert_eq!(
            apply(&mut deals, c, update("o1", Status::Won, Some(10)), at(4)),
            Ok(vec![Event::Repriced { kind: k, micros: 2 }, Event::Won { kind: k, micros: 10 }]),
            "won for more than the pipeline held: the pipeline follows"
        );
        assert_eq!(apply(&mut deals, c, update("o1", Status::Won, None), at(5)), Ok(vec![]), "sent again");
        assert_eq!(apply(&mut deals, c, update("o1", Status::Won, Some(10)), at(5)), Ok(vec![]));
        assert_eq!(
            apply(&mut deals, c, update("o1", Status::Open, Some(5)), at(5)),
            Ok(vec![]),
            "a late retry of the opening"
        );
        assert_eq!(
            apply(&mut deals, c, update("o1", Status::Lost, None), at(6)),
            Err(Refusal::Closed { status: Status::Won, at: at(4) })
        );
        assert_eq!(
            apply(&mut deals, c, update("o1", Status::Won, Some(8)), at(6)),
            Err(Refusal::Closed { status: Status::Won, at: at(4) })
        );
        let cross = Update { kind: Kind::CrossSell, ..update("o1", Status::Won, None) };
        assert_eq!(apply(&mut deals, c, cross, at(6)), Err(Refusal::OtherKind(Kind::Upsell)));
        assert_eq!(deals.len(), 1);
        assert_eq!((deals[0].status, deals[0].micros, deals[0].closed_at), (Status::Won, 10, Some(at(4))));
        assert_eq!(apply(&mut deals, c, update("o2", Status::Won, None), at(7)), Err(Refusal::AmountRequired));
    }

    #[test]
    fn a_deal_first_seen_closed_opens_and_closes_at_once() {
        let mut deals = Vec::new();
        let k = Kind::CrossSell;
        let won = Update { id: "w".into(), kind: k, status: Status::Won, micros: Some(7) };
        assert_eq!(
            apply(&mut deals, Stage::Advocate, won, at(1)),
            Ok(vec![Event::Opened { kind: k, micros: 7 }, Event::Won { kind: k, micros: 7 }])
        );
        let lost = Update { id: "l".into(), kind: k, status: Status::Lost, micros: None };
        assert_eq!(
            apply(&mut deals, Stage::Customer, lost, at(2)),
            Ok(vec![Event::Opened { kind: k, micros: 0 }, Event::Lost { kind: k }])
        );
    }

    #[test]
    fn only_customers_open_deals_but_open_deals_close_in_any_stage() {
        let mut deals = Vec::new();
        assert_eq!(
            apply(&mut deals, Stage::Sql, update("o", Status::Open, Some(1)), at(1)),
            Err(Refusal::NotACustomer(Stage::Sql))
        );
        assert!(deals.is_empty());
        apply(&mut deals, Stage::Customer, update("o", Status::Open, Some(1)), at(1)).unwrap();
        assert_eq!(
            apply(&mut deals, Stage::Disqualified, update("o", Status::Lost, None), at(2)),
            Ok(vec![Event::Lost { kind: Kind::Upsell }])
        );
    }

    #[test]
    fn the_oldest_closed_deal_makes_room_and_open_ones_never_go() {
        let mut deals = Vec::new();
        for i in 0..MAX_KEPT as i64 {
            apply(&mut deals, Stage::Customer, update(&format!("d{i}"), Status::Open, Some(1)), at(i)).unwrap();
        }
        assert_eq!(
            apply(&mut deals, Stage::Customer, update("new", Status::Open, Some(1)), at(99)),
            Err(Refusal::TooManyOpen)
        );
        assert_eq!(deals.len(), MAX_KEPT);
        apply(&mut deals, Stage::Customer, update("d3", Status::Lost, None), at(100)).unwrap();
        apply(&mut deals, Stage::Customer, update("d1", Status::Won, None), at(101)).unwrap();
        apply(&mut deals, Stage::Customer, update("new", Status::Open, Some(1)), at(102)).unwrap();
        assert_eq!(deals.len(), MAX_KEPT);
        assert!(!deals.iter().any(|d| d.id == "d3"), "the deal closed first made room");
        assert!(deals.iter().any(|d| d.id == "d1"));
    }

    proptest! {
        /// However often each update is sent, and in whatever order
        /// repeats arrive, a deal counts once: opened once, closed at most
        /// once, and the won revenue is the amount it was won with.
        #[test]
        fn repeats_count_once(
            steps in proptest::collection::vec((0usize..4, 0usize..3, proptest::option::of(0i64..1_000), 1usize..4), 1..30),
        ) {
            let mut deals = Vec::new();
            let (mut opened, mut closed) = (std::collections::BTreeMap::new(), std::collections::BTreeMap::new());
            let mut pipeline = std::collections::BTreeMap::<String, i64>::new();
            for (i, (deal, status, micros, repeats)) in steps.into_iter().enumerate() {
                let status = [Status::Open, Status::Won, Status::Lost][status];
                let id = format!("d{deal}");
                for _ in 0..repeats {
                    let Ok(events) = apply(&mut deals, Stage::Customer, update(&id, status, micros), at(i as i64)) else { continue };
                    for e in events {
                        match e {
                            Event::Opened { micros, .. } => {
                                *opened.entry(id.clone()).or_insert(0) += 1;
                                *pipeline.entry(id.clone()).or_default() += micros;
                            }
                            Event::Repriced { micros, .. } => *pipeline.entry(id.clone()).or_default() += micros,
                            Event::Won { micros, .. } => { closed.insert(id.clone(), (Status::Won, micros)); }
                            Event::Lost { .. } => { closed.insert(id.clone(), (Status::Lost, 0)); }
                        }
                    }
                }
            }
            prop_assert!(opened.values().all(|n| *n == 1));
            for d in &deals {
                prop_assert_eq!(opened.get(&d.id), Some(&1));
                match d.status {
                    Status::Open => prop_assert_eq!(pipeline.get(&d.id).copied(), Some(d.micros)),
                    Status::Won => {
                        prop_assert_eq!(closed.get(&d.id), Some(&(Status::Won, d.micros)));
                        prop_assert_eq!(pipeline.get(&d.id).copied(), Some(d.micros), "the pipeline follows the win");
                    }
                    Status::Lost => prop_assert_eq!(closed.get(&d.id).map(|c| c.0), Some(Status::Lost)),
                }
            }
        }
    }
}
