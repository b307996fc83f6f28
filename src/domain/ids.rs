//! Identifiers. Ids are opaque to leadscore: any UTF-8 of 1 to 256 bytes
//! without control characters (which would let an id forge log lines). Key
//! layout never relies on what an id contains (see `store::keys`).

use std::fmt;

/// Longest id accepted, in bytes.
pub const MAX_ID_BYTES: usize = 256;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("must not be empty")]
    Empty,
    #[error("must be at most {MAX_ID_BYTES} bytes (got {0})")]
    TooLong(usize),
    #[error("must not contain control characters")]
    ControlCharacter,
}

fn check(raw: &str) -> Result<(), IdError> {
    if raw.is_empty() {
        return Err(IdError::Empty);
    }
    if raw.len() > MAX_ID_BYTES {
        return Err(IdError::TooLong(raw.len()));
    }
    if raw.chars().any(char::is_control) {
        return Err(IdError::ControlCharacter);
    }
    Ok(())
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(String);

        impl $name {
            pub fn parse(raw: impl Into<String>) -> Result<Self, IdError> {
                let raw = raw.into();
                check(&raw)?;
                Ok(Self(raw))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }

            pub fn into_inner(self) -> String {
                self.0
            }
        }

    };
}

macro_rules! plain_display {
    ($($name:ident),*) => {
        $(impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        })*
    };
}

plain_display!(EventId, AccountId, VisitorId);

impl fmt::Display for LeadId {
    /// A visitor subject shows as `visitor/<id>`, never with its control
    /// character.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.visitor() {
            Some(v) => write!(f, "visitor/{v}"),
            None => f.write_str(&self.0),
        }
    }
}

id_type!(
    /// A known contact, as the CRM and marketing automation name it.
    LeadId
);
id_type!(
    /// Idempotency key of a signal, unique per lead.
    EventId
);
id_type!(
    /// The company a lead belongs to.
    AccountId
);
id_type!(
    /// An anonymous visitor (e.g. a web cookie id), before it is known.
    VisitorId
);

/// Where a visitor's signals are kept until it is identified: a lead id no
/// client can send, because client ids never contain control characters.
const VISITOR_PREFIX: &str = "\u{1f}visitor:";

impl LeadId {
    /// The subject that holds an anonymous visitor's signals and score.
    pub fn for_visitor(visitor: &VisitorId) -> LeadId {
        LeadId(format!("{VISITOR_PREFIX}{}", visitor.as_str()))
    }

    /// The visitor id, when this subject is an anonymous visitor.
    pub fn visitor(&self) -> Option<&str> {
        self.0.strip_prefix(VISITOR_PREFIX)
    }

    /// Rebuilds an id read back from storage (where visitor subjects are
    /// stored too).
    pub fn from_stored(raw: String) -> Result<LeadId, IdError> {
        match raw.strip_prefix(VISITOR_PREFIX) {
            Some(visitor) => Ok(LeadId::for_visitor(&VisitorId::parse(visitor)?)),
            None => LeadId::parse(raw),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_opaque_ids() {
        for raw in ["a", "lead:{42} é", "*", &"x".repeat(MAX_ID_BYTES)] {
            assert_eq!(LeadId::parse(raw).unwrap().as_str(), raw);
        }
    }

    #[test]
    fn visitor_subjects_never_collide_with_lead_ids() {
        let visitor = VisitorId::parse("cookie-1").unwrap();
        let subject = LeadId::for_visitor(&visitor);
        assert_eq!(subject.visitor(), Some("cookie-1"));
        assert!(LeadId::parse(subject.as_str()).is_err(), "a client cannot name it");
        assert_eq!(LeadId::from_stored(subject.as_str().to_owned()).unwrap(), subject);
        assert_eq!(LeadId::parse("visitor:cookie-1").unwrap().visitor(), None);
    }

    #[test]
    fn rejects_empty_long_and_control() {
        assert_eq!(LeadId::parse(""), Err(IdError::Empty));
        assert_eq!(EventId::parse("x".repeat(MAX_ID_BYTES + 1)), Err(IdError::TooLong(MAX_ID_BYTES + 1)));
        assert_eq!(LeadId::parse("a\r\nb"), Err(IdError::ControlCharacter));
    }
}
