//! Bearer-token authentication with scopes.
//!
//! Tokens come from a file (`auth_tokens_file`) or the `LEADSCORE_AUTH_TOKENS`
//! environment variable, one per line: `<name> <scope,scope…> <token>`,
//! where the token is either the secret itself (16 characters or more) or
//! `sha256:<hex>` of it, so the file need not hold secrets. Presented
//! tokens are hashed and compared with every known digest in constant time;
//! tokens are never logged, only their names.
//!
//! Every RPC needs one scope; `admin` grants them all. Health is open, so
//! probes work without a token; reflection needs any valid token unless
//! `reflection = "open"`.

use std::sync::Arc;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Ingest,
    Score,
    Qualify,
    Admin,
}

impl Scope {
    pub const ALL: [Scope; 4] = [Scope::Ingest, Scope::Score, Scope::Qualify, Scope::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Ingest => "ingest",
            Scope::Score => "score",
            Scope::Qualify => "qualify",
            Scope::Admin => "admin",
        }
    }

    fn bit(self) -> u8 {
        1 << self as u8
    }
}

/// Every RPC the server answers and the scope it needs (`None`: open).
pub const RPCS: [(&str, Option<Scope>); 39] = [
    ("/leadscore.v1.LeadScoring/UpsertLead", Some(Scope::Ingest)),
    ("/leadscore.v1.LeadScoring/RecordSignals", Some(Scope::Ingest)),
    ("/leadscore.v1.LeadScoring/ScoreLead", Some(Scope::Score)),
    ("/leadscore.v1.LeadScoring/ScoreLeads", Some(Scope::Score)),
    ("/leadscore.v1.Qualification/GetQualification", Some(Scope::Qualify)),
    ("/leadscore.v1.Qualification/SetStage", Some(Scope::Qualify)),
    ("/leadscore.v1.Qualification/ListQualificationChanges", Some(Scope::Qualify)),
    ("/leadscore.v1.Qualification/WatchQualificationChanges", Some(Scope::Qualify)),
    ("/leadscore.v1.Qualification/GetRuleSet", Some(Scope::Admin)),
    ("/leadscore.v1.Qualification/ValidateRuleSet", Some(Scope::Admin)),
    ("/leadscore.v1.Qualification/SimulateRuleSet", Some(Scope::Admin)),
    ("/leadscore.v1.Qualification/Rescore", Some(Scope::Admin)),
    ("/leadscore.v1.Qualification/GetRescoreJob", Some(Scope::Admin)),
    ("/leadscore.v1.Qualification/IdentifyVisitor", Some(Scope::Ingest)),
    ("/leadscore.v1.Qualification/ListAuditEvents", Some(Scope::Admin)),
    ("/leadscore.v1.Qualification/RecordExpansion", Some(Scope::Qualify)),
    ("/leadscore.v1.Nurture/StreamTriggers", Some(Scope::Qualify)),
    ("/leadscore.v1.Nurture/AckTriggers", Some(Scope::Qualify)),
    ("/leadscore.v1.Nurture/ListDeadLetters", Some(Scope::Admin)),
    ("/leadscore.v1.Nurture/ReplayDeadLetters", Some(Scope::Admin)),
    ("/leadscore.v1.Nurture/ListTriggerDefinitions", Some(Scope::Qualify)),
    ("/leadscore.v1.Nurture/GetWebhookStatus", Some(Scope::Admin)),
    ("/leadscore.v1.Nurture/ListWebhookDeadLetters", Some(Scope::Admin)),
    ("/leadscore.v1.Nurture/ReplayWebhookDeadLetters", Some(Scope::Admin)),
    ("/leadscore.v1.Profiles/GetScoreProfile", Some(Scope::Score)),
    ("/leadscore.v1.Profiles/GetCohortScoreProfile", Some(Scope::Score)),
    ("/leadscore.v1.Profiles/GetFunnel", Some(Scope::Score)),
    ("/leadscore.v1.Profiles/ListHandovers", Some(Scope::Score)),
    ("/leadscore.v1.Profiles/UpsertAccount", Some(Scope::Ingest)),
    ("/leadscore.v1.Profiles/GetAccountScore", Some(Scope::Score)),
    ("/leadscore.v1.Profiles/RecordSpend", Some(Scope::Ingest)),
    ("/leadscore.v1.Profiles/GetCampaignReport", Some(Scope::Score)),
    // Personal data, whole: the operator's business, not a scorer's.
    ("/leadscore.v1.Profiles/ExportLead", Some(Scope::Admin)),
    ("/leadscore.v1.Profiles/ForgetLead", Some(Scope::Admin)),
    ("/leadscore.v1.Profiles/ForgetLeads", Some(Scope::Admin)),
    ("/grpc.health.v1.Health/Check", None),
    ("/grpc.health.v1.Health/Watch", None),
    ("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo", None),
    ("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", None),
];

/// The scope a request path needs; paths the server does not know need
/// `admin` (tonic answers them UNIMPLEMENTED once let through).
pub fn required_scope(path: &str) -> Option<Scope> {
    RPCS.iter().find(|(p, _)| *p == path).map_or(Some(Scope::Admin), |(_, scope)| *scope)
}

#[derive(Debug, thiserror::Error, PartialEq)]
#[error("auth tokens, line {line}: {message}")]
pub struct TokenFileError {
    pub line: usize,
    pub message: String,
}

struct Token {
    name: String,
    digest: [u8; 32],
    scopes: u8,
}

/// The known tokens. Its `Debug` shows names and scopes only.
pub struct Tokens {
    tokens: Vec<Token>,
    /// Reflection answers without a token (`reflection = "open"`).
    reflection_open: bool,
}

/// The reflection services' paths.
fn is_reflection(path: &str) -> bool {
    path.starts_with("/grpc.reflection.")
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.tokens.iter().map(|t| &t.name)).finish()
    }
}

const MIN_TOKEN_LEN: usize = 16;

impl Tokens {
    /// Parses `<name> <scopes> <token>` lines; blank lines and `#` comments
    /// are skipped. Errors never quote a token.
    pub fn parse(text: &str) -> Result<Self, TokenFileError> {
        let mut tokens: Vec<Token> = Vec::new();
        for (index, raw) in text.lines().enumerate() {
            let line = index + 1;
            let err = |message: String| TokenFileError { line, message };
            let content = raw.trim();
            if content.is_empty() || content.starts_with('#') {
                continue;
            }
            let fields: Vec<&str> = content.split_whitespace().collect();
            let [name, scopes, secret] = fields[..] else {
                return Err(err(format!("expected `<name> <scope,scope…> <token>`, found {} field(s)", fields.len())));
            };
            if tokens.iter().any(|t| t.name == name) {
                return Err(err(format!("token name '{name}' is used twice")));
            }
            let mut bits = 0;
            for scope in scopes.split(',') {
                let Some(s) = Scope::ALL.iter().find(|s| s.as_str() == scope) else {
                    return Err(err(format!("unknown scope '{scope}' (scopes: ingest, score, qualify, admin)")));
                };
                bits |= s.bit();
            }
            let digest = match secret.strip_prefix("sha256:") {
                Some(hex) => {
                    parse_digest(hex).ok_or_else(|| err("a sha256: token is 64 hexadecimal digits".to_string()))?
                }
                None if secret.len() < MIN_TOKEN_LEN => {
                    return Err(err(format!("token '{name}' is shorter than {MIN_TOKEN_LEN} characters")));
                }
                None => Sha256::digest(secret.as_bytes()).into(),
            };
            if tokens.iter().any(|t| t.digest == digest) {
                return Err(err(format!("token '{name}' is the same secret as another token")));
            }
            tokens.push(Token { name: name.to_string(), digest, scopes: bits });
        }
        if tokens.is_empty() {
            return Err(TokenFileError { line: 0, message: "no tokens: at least one line is needed".into() });
        }
        Ok(Self { tokens, reflection_open: false })
    }

    /// Lets reflection answer without a token.
    pub fn with_open_reflection(mut self, open: bool) -> Self {
        self.reflection_open = open;
        self
    }

    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// Checks the `authorization` header value for a call to `path`;
    /// returns the token's name.
    pub fn authorize(&self, authorization: Option<&[u8]>, path: &str) -> Result<Option<&str>, tonic::Status> {
        let scope = required_scope(path);
        // Open paths (health; reflection when so configured) need no token;
        // reflection otherwise needs any valid one.
        if scope.is_none() && (self.reflection_open || !is_reflection(path)) {
            return Ok(None);
        }
        let secret = authorization.and_then(bearer).ok_or_else(|| {
            tonic::Status::unauthenticated("missing bearer token: send the metadata `authorization: Bearer <token>`")
        })?;
        let digest: [u8; 32] = Sha256::digest(secret).into();
        // Every digest is compared, each in constant time.
        let mut found = None;
        for token in &self.tokens {
            if bool::from(token.digest.ct_eq(&digest)) {
                found = Some(token);
            }
        }
        let token = found.ok_or_else(|| tonic::Status::unauthenticated("unknown bearer token"))?;
        if let Some(scope) = scope
            && token.scopes & (scope.bit() | Scope::Admin.bit()) == 0
        {
            return Err(tonic::Status::permission_denied(format!(
                "token '{}' lacks the scope '{}' that {path} needs",
                token.name,
                scope.as_str()
            )));
        }
        Ok(Some(&token.name))
    }
}

/// The token of `Bearer <token>` (scheme case-insensitive).
fn bearer(value: &[u8]) -> Option<&[u8]> {
    let value = value.trim_ascii();
    let (scheme, rest) = value.split_at_checked(7)?;
    (scheme.eq_ignore_ascii_case(b"bearer ") && !rest.trim_ascii().is_empty()).then(|| rest.trim_ascii())
}

fn parse_digest(hex: &str) -> Option<[u8; 32]> {
    if hex.len() != 64 || !hex.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// Rejects calls whose token is missing, unknown or lacks the scope, before
/// they reach a service; without tokens every call passes.
#[derive(Clone)]
pub struct Authenticate(pub Option<Arc<Tokens>>);

/// The name of the token a call came with, in the request's extensions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller(pub String);

impl crate::gate::Gate for Authenticate {
    type Ticket = Option<Caller>;

    fn admit(&self, path: &str, headers: &http::HeaderMap) -> Result<Self::Ticket, tonic::Status> {
        if let Some(tokens) = &self.0 {
            let header = headers.get(http::header::AUTHORIZATION).map(|v| v.as_bytes());
            if let Some(name) = tokens.authorize(header, path)? {
                tracing::Span::current().record("caller", name);
                return Ok(Some(Caller(name.to_owned())));
            }
        }
        Ok(None)
    }

    fn extend(&self, ticket: &Self::Ticket, extensions: &mut http::Extensions) {
        if let Some(caller) = ticket {
            extensions.insert(caller.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "# name scopes token\n\
        automation ingest,score automation-secret-0001\n\
        \n\
        crm qualify sha256:5e4ba9c8c2a1bd3ad8ad3c41acb2f8bcc5a1c4e1da4ea3f1dc18f2f5bb38a3b4\n\
        ops admin ops-secret-000000001\n";

    fn bearer_of(secret: &str) -> Vec<u8> {
        format!("Bearer {secret}").into_bytes()
    }

    #[test]
    fn scopes_decide_who_may_call_what() {
        let tokens = Tokens::parse(FILE).unwrap();
        assert_eq!(tokens.len(), 3);
        let automation = bearer_of("automation-secret-0001");
        let record = "/leadscore.v1.LeadScoring/RecordSignals";
        assert_eq!(tokens.authorize(Some(&automation), record).unwrap(), Some("automation"));
        let denied = tokens.authorize(Some(&automation), "/leadscore.v1.Qualification/SetStage").unwrap_err();
        assert_eq!(denied.code(), tonic::Code::PermissionDenied);
        assert!(denied.message().contains("qualify"), "{}", denied.message());
        // admin may do everything, including what no table lists.
        let ops = bearer_of("ops-secret-000000001");
        assert!(tokens.authorize(Some(&ops), "/leadscore.v1.Qualification/SetStage").is_ok());
        assert!(tokens.authorize(Some(&ops), "/leadscore.v1.Unknown/Thing").is_ok());
        assert_eq!(
            tokens.authorize(Some(&automation), "/leadscore.v1.Unknown/Thing").unwrap_err().code(),
            tonic::Code::PermissionDenied
        );
        // Health is open; reflection takes any valid token unless opened.
        assert_eq!(tokens.authorize(None, "/grpc.health.v1.Health/Check").unwrap(), None);
        let reflection = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo";
        assert_eq!(tokens.authorize(None, reflection).unwrap_err().code(), tonic::Code::Unauthenticated);
        let ops = bearer_of("ops-secret-000000001");
        assert_eq!(tokens.authorize(Some(&ops), reflection).unwrap(), Some("ops"));
        let open = Tokens::parse(FILE).unwrap().with_open_reflection(true);
        assert_eq!(open.authorize(None, reflection).unwrap(), None);
    }

    #[test]
    fn missing_malformed_and_unknown_tokens_are_unauthenticated() {
        let tokens = Tokens::parse(FILE).unwrap();
        let path = "/leadscore.v1.LeadScoring/ScoreLead";
        for header in [None, Some(b"".as_slice()), Some(b"Basic abc"), Some(b"Bearer "), Some(b"Bearer nope")] {
            let status = tokens.authorize(header, path).unwrap_err();
            assert_eq!(status.code(), tonic::Code::Unauthenticated, "{header:?}");
            assert!(!status.message().contains("secret"), "{}", status.message());
        }
        // The scheme is case-insensitive.
        assert!(tokens.authorize(Some(b"bearer automation-secret-0001"), path).is_ok());
    }

    #[test]
    fn stored_digests_match_their_secret() {
        let digest = Sha256::digest(b"crm-secret-00000001");
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        let tokens = Tokens::parse(&format!("crm qualify sha256:{hex}")).unwrap();
        let path = "/leadscore.v1.Qualification/GetQualification";
        assert_eq!(tokens.authorize(Some(&bearer_of("crm-secret-00000001")), path).unwrap(), Some("crm"));
    }

    #[test]
    fn bad_files_are_refused_without_echoing_secrets() {
        let cases = [
            ("a ingest", 1, "field"),
            ("a ingest,sudo secret-secret-secret", 1, "unknown scope 'sudo'"),
            ("a ingest short", 1, "shorter than 16"),
            ("a ingest sha256:abc", 1, "64 hexadecimal"),
            ("a ingest secret-secret-secret-1\na score secret-secret-secret-2", 2, "used twice"),
            ("a ingest secret-secret-secret-1\nb score secret-secret-secret-1", 2, "same secret"),
            ("# only comments", 0, "no tokens"),
        ];
        for (text, line, message) in cases {
            let err = Tokens::parse(text).unwrap_err();
            assert_eq!(err.line, line, "{text}");
            assert!(err.message.contains(message), "{text}: {err}");
            assert!(!err.to_string().contains("secret-secret"), "{err}");
        }
        assert_eq!(format!("{:?}", Tokens::parse(FILE).unwrap()), r#"["automation", "crm", "ops"]"#);
    }

    #[test]
    fn every_rpc_of_the_api_has_a_scope() {
        use prost::Message;
        let set = prost_types::FileDescriptorSet::decode(crate::api::pb::FILE_DESCRIPTOR_SET).unwrap();
        for file in set.file {
            for service in &file.service {
                for method in &service.method {
                    let path = format!("/{}.{}/{}", file.package(), service.name(), method.name());
                    assert!(RPCS.iter().any(|(p, s)| *p == path && s.is_some()), "{path} has no scope");
                }
            }
        }
    }
}
