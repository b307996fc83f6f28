//! Webhooks, the pure part: which events an endpoint takes, how a delivery
//! is signed (Standard Webhooks), when a failed delivery is tried again, and
//! how fast an endpoint may be called.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{KeyInit, Mac};

use super::Stage;

/// A configured endpoint, its secrets aside.
#[derive(Debug, Clone, PartialEq)]
pub struct EndpointSpec {
    pub name: String,
    pub url: String,
    /// The `events` entries as configured.
    pub events: Vec<String>,
    pub filter: EventFilter,
    pub retry: RetryPolicy,
    /// Requests per second; 0: no limit.
    pub rate_limit: f64,
    pub max_concurrent: usize,
    pub timeout_ms: i64,
}

impl EndpointSpec {
    /// The endpoint's consumer group of the trigger stream (the `__` prefix
    /// is reserved: no configured group can take it).
    pub fn trigger_group(&self) -> String {
        format!("__webhook:{}", self.name)
    }

    /// Scheme and host of the URL: its path and query may hold a secret.
    pub fn shown_url(&self) -> String {
        match self.url.split_once("://") {
            Some((scheme, rest)) => {
                let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
                let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
                format!("{scheme}://{host}/…")
            }
            None => "…".to_owned(),
        }
    }
}

/// One event kind or subset an endpoint subscribes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    /// `stage_changed`: every qualification change.
    StageChanged,
    /// `stage_changed(MQL)`: changes into this stage.
    StageEntered(Stage),
    /// `triggers`: every fired nurture trigger.
    Triggers,
    /// `trigger(<definition id>)`.
    Trigger(String),
    /// `program(<nurture program>)`.
    Program(String),
    /// `lead_erased`: tombstones of erased leads (also sent wherever
    /// stage changes are).
    LeadErased,
}

/// The events an endpoint takes: any selector matching is enough.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventFilter(pub Vec<Selector>);

pub const FILTER_USAGE: &str =
    "use stage_changed, stage_changed(<STAGE>), triggers, trigger(<trigger id>), program(<program>) or lead_erased";

impl EventFilter {
    /// Parses the configured list; every entry must be understood and the
    /// list must not be empty.
    pub fn parse(entries: &[String]) -> Result<Self, String> {
        if entries.is_empty() {
            return Err(format!("events is empty: {FILTER_USAGE}"));
        }
        entries.iter().map(|e| parse_selector(e)).collect::<Result<_, _>>().map(Self)
    }

    pub fn wants_changes(&self) -> bool {
        self.0.iter().any(|s| matches!(s, Selector::StageChanged | Selector::StageEntered(_) | Selector::LeadErased))
    }

    /// Whether a change-feed entry is sent: a move by its stage, a
    /// tombstone to every endpoint that reads the feed.
    pub fn takes_feed(&self, event: &crate::domain::FeedEvent) -> bool {
        match event {
            crate::domain::FeedEvent::Moved { change, .. } => self.takes_change(change.to),
            crate::domain::FeedEvent::Erased(_) => self.wants_changes(),
        }
    }

    pub fn wants_triggers(&self) -> bool {
        self.0.iter().any(|s| matches!(s, Selector::Triggers | Selector::Trigger(_) | Selector::Program(_)))
    }

    /// Whether a change into `to` is sent.
    pub fn takes_change(&self, to: Stage) -> bool {
        self.0.iter().any(|s| match s {
            Selector::StageChanged => true,
            Selector::StageEntered(stage) => *stage == to,
            _ => false,
        })
    }

    /// Whether a trigger of definition `id` for nurture program `program` is sent.
    pub fn takes_trigger(&self, id: &str, program: &str) -> bool {
        self.0.iter().any(|s| match s {
            Selector::Triggers => true,
            Selector::Trigger(t) => t == id,
            Selector::Program(p) => !p.is_empty() && p == program,
            _ => false,
        })
    }
}

fn parse_selector(text: &str) -> Result<Selector, String> {
    let text = text.trim();
    match text {
        "stage_changed" => return Ok(Selector::StageChanged),
        "triggers" => return Ok(Selector::Triggers),
        "lead_erased" => return Ok(Selector::LeadErased),
        _ => {}
    }
    let bad = || format!("events entry '{}': {FILTER_USAGE}", text.escape_debug());
    let (kind, rest) = text.split_once('(').ok_or_else(bad)?;
    let arg = rest.strip_suffix(')').ok_or_else(bad)?.trim();
    if arg.is_empty() {
        return Err(bad());
    }
    match kind.trim() {
        "stage_changed" => arg.parse::<Stage>().map(Selector::StageEntered).map_err(|e| format!("{}: {e}", bad())),
        "trigger" => Ok(Selector::Trigger(arg.to_owned())),
        "program" => Ok(Selector::Program(arg.to_owned())),
        _ => Err(bad()),
    }
}

/// A signing secret: `whsec_` followed by the base64 of 24 to 64 random
/// bytes (the Standard Webhooks form). Never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct SigningKey(Vec<u8>);

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningKey(redacted)")
    }
}

impl SigningKey {
    pub fn parse(text: &str) -> Result<Self, String> {
        let usage = "a secret is whsec_ followed by base64 of 24 to 64 random bytes \
                     (e.g. `echo whsec_$(head -c 32 /dev/urandom | base64)`)";
        let body = text.trim().strip_prefix("whsec_").ok_or_else(|| format!("not a webhook secret: {usage}"))?;
        let key = B64.decode(body).map_err(|_| format!("the secret is not valid base64: {usage}"))?;
        if !(24..=64).contains(&key.len()) {
            return Err(format!("the secret holds {} bytes: {usage}", key.len()));
        }
        Ok(Self(key))
    }

    /// Reads one or two secrets separated by whitespace or lines (two while
    /// a secret is rotated: each delivery is signed with both).
    pub fn parse_list(text: &str) -> Result<Vec<Self>, String> {
        let keys: Vec<Self> = text.split_whitespace().map(Self::parse).collect::<Result<_, _>>()?;
        match keys.len() {
            0 => Err("no secret given".to_owned()),
            1 | 2 => Ok(keys),
            n => Err(format!("{n} secrets given: at most two are valid at once (the new and the old)")),
        }
    }

    /// `v1,<base64 of HMAC-SHA256 over "id.timestamp.body">`.
    fn sign(&self, content: &[u8]) -> String {
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&self.0).expect("HMAC takes keys of any length");
        mac.update(content);
        format!("v1,{}", B64.encode(mac.finalize().into_bytes()))
    }
}

/// The `webhook-signature` header: one `v1,` signature per key, space
/// separated, over `<id>.<timestamp>.<body>`.
pub fn signature_header(keys: &[SigningKey], id: &str, timestamp_s: i64, body: &[u8]) -> String {
    let mut content = Vec::with_capacity(id.len() + body.len() + 24);
    content.extend_from_slice(id.as_bytes());
    content.push(b'.');
    content.extend_from_slice(timestamp_s.to_string().as_bytes());
    content.push(b'.');
    content.extend_from_slice(body);
    keys.iter().map(|k| k.sign(&content)).collect::<Vec<_>>().join(" ")
}

/// When failed deliveries are tried again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all; after the last failed one the event is a dead letter.
    pub max_attempts: u32,
    /// The longest wait before the second attempt; doubles each time.
    pub backoff_ms: i64,
    /// Ceiling of any wait, `Retry-After` included.
    pub max_backoff_ms: i64,
}

impl RetryPolicy {
    /// How long to wait after failed attempt `failed` (1, 2, …): the
    /// receiver's `Retry-After` if it gave one, else a random point
    /// (`unit` in [0, 1)) in the upper half of an exponentially growing
    /// window. Never more than `max_backoff_ms`.
    pub fn wait_ms(&self, failed: u32, retry_after_ms: Option<i64>, unit: f64) -> i64 {
        let ceiling = self.max_backoff_ms.max(0);
        if let Some(asked) = retry_after_ms {
            return asked.clamp(0, ceiling);
        }
        let window = self.backoff_ms.max(0).saturating_mul(1i64 << failed.saturating_sub(1).min(40)).min(ceiling);
        let unit = unit.clamp(0.0, 1.0);
        window / 2 + ((window - window / 2) as f64 * unit) as i64
    }
}

/// `Retry-After` as milliseconds from `now_ms`: delay-seconds or an
/// HTTP date; `None` when absent or unreadable.
pub fn retry_after_ms(value: &str, now_ms: i64) -> Option<i64> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some((seconds.min(86_400 * 365) * 1000) as i64);
    }
    let at = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    Some((at.timestamp_millis() - now_ms).max(0))
}

/// Spaces calls to an endpoint evenly, `per_second` at most in any
/// second, and holds them all while the receiver asked for a pause
/// (`Retry-After`).
#[derive(Debug, Clone, PartialEq)]
pub struct Pace {
    interval_us: i64,
    /// When the next call may go, in µs.
    next_us: i64,
    paused_until_us: i64,
}

impl Pace {
    /// `per_second` ≤ 0: no limit.
    pub fn new(per_second: f64) -> Self {
        let interval_us = if per_second > 0.0 { (1e6 / per_second).ceil() as i64 } else { 0 };
        Self { interval_us, next_us: 0, paused_until_us: 0 }
    }

    /// Takes a slot for a call at `now_us`; returns how long (µs) the
    /// caller must wait before making it.
    pub fn reserve(&mut self, now_us: i64) -> i64 {
        let send_at = now_us.max(self.next_us).max(self.paused_until_us);
        self.next_us = send_at.saturating_add(self.interval_us);
        send_at - now_us
    }

    /// Holds every call until `until_us`.
    pub fn pause_until(&mut self, until_us: i64) {
        self.paused_until_us = self.paused_until_us.max(until_us);
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn signs_as_the_standard_webhooks_reference() {
        // The reference libraries' own test vector.
        let key = SigningKey::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let header = signature_header(
            std::slice::from_ref(&key),
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1_614_265_330,
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(header, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
        let two = signature_header(&[key.clone(), key], "msg_p5jXN8AQM9LWM0D4loKWxJek", 1, b"{}");
        assert_eq!(two.split(' ').count(), 2);
    }

    #[test]
    fn secrets_are_checked_and_never_printed() {
        assert!(SigningKey::parse("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").is_err());
        assert!(SigningKey::parse("whsec_!!!").is_err());
        assert!(SigningKey::parse("whsec_c2hvcnQ=").unwrap_err().contains("5 bytes"));
        let keys =
            SigningKey::parse_list("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\nwhsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\n")
                .unwrap();
        assert_eq!(keys.len(), 2);
        assert_eq!(format!("{keys:?}"), "[SigningKey(redacted), SigningKey(redacted)]");
        assert!(SigningKey::parse_list("  ").is_err());
        let three = ["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"; 3].join(" ");
        assert!(SigningKey::parse_list(&three).unwrap_err().contains("at most two"));
    }

    #[test]
    fn filters_parse_and_match() {
        let f = EventFilter::parse(&["stage_changed(MQL)".into(), "trigger(welcome)".into(), "program( p1 )".into()])
            .unwrap();
        assert!(f.wants_changes() && f.wants_triggers());
        assert!(f.takes_change(Stage::Mql) && !f.takes_change(Stage::Sql));
        assert!(f.takes_trigger("welcome", "") && f.takes_trigger("other", "p1") && !f.takes_trigger("other", ""));
        let all = EventFilter::parse(&["stage_changed".into()]).unwrap();
        assert!(all.takes_change(Stage::Customer) && !all.wants_triggers());
        for bad in ["", "stage_changed(XYZ)", "trigger()", "trigger(x", "triggers(x)", "signal(a)", "stage"] {
            assert!(EventFilter::parse(&[bad.into()]).is_err(), "{bad}");
        }
        assert!(EventFilter::parse(&[]).is_err());
    }

    #[test]
    fn urls_are_shown_without_path_or_credentials() {
        let spec = EndpointSpec {
            name: "crm".into(),
            url: "https://user:pw@hooks.example.com:8443/catch/123/abc?token=s".into(),
            events: vec![],
            filter: EventFilter(vec![]),
            retry: RetryPolicy { max_attempts: 1, backoff_ms: 1, max_backoff_ms: 1 },
            rate_limit: 0.0,
            max_concurrent: 1,
            timeout_ms: 1,
        };
        assert_eq!(spec.shown_url(), "https://hooks.example.com:8443/…");
        assert_eq!(spec.trigger_group(), "__webhook:crm");
    }

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        assert_eq!(retry_after_ms("3", 0), Some(3000));
        let now = chrono::DateTime::parse_from_rfc2822("Wed, 21 Oct 2015 07:28:00 GMT").unwrap().timestamp_millis();
        assert_eq!(retry_after_ms("Wed, 21 Oct 2015 07:28:05 GMT", now), Some(5000));
        assert_eq!(retry_after_ms("Wed, 21 Oct 2015 07:27:00 GMT", now), Some(0));
        assert_eq!(retry_after_ms("soon", now), None);
        assert_eq!(retry_after_ms("-1", now), None);
    }

    #[test]
    fn pace_spaces_calls_and_pauses() {
        let mut p = Pace::new(2.0);
        let waits: Vec<i64> = (0..3).map(|_| p.reserve(10_000_000)).collect();
        assert_eq!(waits, [0, 500_000, 1_000_000]);
        p.pause_until(20_000_000);
        assert_eq!(p.reserve(10_000_000), 10_000_000, "a pause holds every call");
        let mut slow = Pace::new(0.1);
        assert_eq!((slow.reserve(0), slow.reserve(0)), (0, 10_000_000), "one every 10 s, the first at once");
        let mut free = Pace::new(0.0);
        assert_eq!((free.reserve(5), free.reserve(5)), (0, 0));
        free.pause_until(9);
        assert_eq!(free.reserve(5), 4);
    }

    proptest! {
        #[test]
        fn waits_stay_within_the_window(failed in 1u32..64, unit in 0.0f64..1.0, base in 0i64..10_000, max in 0i64..600_000, asked in proptest::option::of(0i64..10_000_000)) {
            let p = RetryPolicy { max_attempts: 5, backoff_ms: base, max_backoff_ms: max };
            let wait = p.wait_ms(failed, asked, unit);
            prop_assert!(wait >= 0 && wait <= max);
            match asked {
                Some(a) => prop_assert_eq!(wait, a.min(max)),
                None => {
                    let window = base.saturating_mul(1i64 << (failed - 1).min(40)).min(max);
                    prop_assert!(wait >= window / 2 && wait <= window);
                }
            }
        }

        #[test]
        fn pace_never_exceeds_its_rate(rate in 0.05f64..1000.0, gaps in proptest::collection::vec(0i64..50_000_000, 1..200)) {
            let mut p = Pace::new(rate);
            let mut now = 1_000_000_000i64;
            let mut sends = Vec::new();
            for gap in gaps {
                now += gap;
                let wait = p.reserve(now);
                prop_assert!(wait >= 0);
                sends.push(now + wait);
            }
            // Evenly spaced: never two calls closer than 1/rate.
            let interval = (1e6 / rate).ceil() as i64;
            for pair in sends.windows(2) {
                prop_assert!(pair[1] - pair[0] >= interval);
            }
        }
    }
}
