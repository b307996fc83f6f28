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

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
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
    fn rejects_empty_long_and_control() {
        assert_eq!(LeadId::parse(""), Err(IdError::Empty));
        assert_eq!(EventId::parse("x".repeat(MAX_ID_BYTES + 1)), Err(IdError::TooLong(MAX_ID_BYTES + 1)));
        assert_eq!(LeadId::parse("a\r\nb"), Err(IdError::ControlCharacter));
    }
}
