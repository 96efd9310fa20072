//! `[access]`: who may see what, decided by the institution's own service or a rule list; the
//! secrets it holds are never printed.

use super::ConfigError;
use serde::{Deserialize, Serialize};

/// A configured secret: never shown in debug output (or in a log that prints the configuration).
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_empty() {
            "<empty>"
        } else {
            "<redacted>"
        })
    }
}

/// What a rule gives the identifiers it matches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AccessPolicy {
    /// Everyone sees everything.
    Open,
    /// Only visitors signed in through the access service.
    Restricted,
    /// Visitors not signed in see the image at most `max_width` wide and `max_area` pixels.
    Degraded,
}

/// `[[access.rules]]`: one rule; the first whose `identifiers` glob matches decides.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessRule {
    /// A glob over the whole identifier: `*` any run (also `/`), `?` one character, `\` escapes.
    pub identifiers: String,
    /// `open`, `restricted` or `degraded`.
    pub policy: AccessPolicy,
    /// `degraded`: the widest view of the whole image (0: no bound by width).
    #[serde(default)]
    pub max_width: u32,
    /// `degraded`: the largest area of the whole image in pixels (0: no bound by area).
    #[serde(default)]
    pub max_area: u64,
}

/// `[access]`: IIIF Authorization Flow 2.0. Decisions are made before the store is asked; the
/// sign-in itself happens at the fronting proxy (nginx `auth_request`, an SSO location), which
/// names the visitor in `user_header` on the access service's location; iiifd keeps no passwords.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AccessConfig {
    /// Rules, first match wins; an identifier no rule matches is open.
    pub rules: Vec<AccessRule>,
    /// The key that signs cookies and tokens, at least 32 characters; required when a rule is not
    /// `open`. Env: `IIIFD_ACCESS__SECRET`.
    pub secret: Secret,
    /// The access service's profile: `active` (a sign-in page), `kiosk` (no interaction) or
    /// `external` (the visitor already holds the cookie). Env: `IIIFD_ACCESS__PROFILE`.
    pub profile: String,
    /// The header in which the fronting proxy names the signed-in visitor on the access service's
    /// location (`active`). The proxy must set or clear it on every request there.
    /// Env: `IIIFD_ACCESS__USER_HEADER`.
    pub user_header: String,
    /// The access service URL advertised to viewers when it is not iiifd's own
    /// `{public base}/auth/access` (an SSO location that ends there). Env: `IIIFD_ACCESS__ACCESS_URL`.
    pub access_url: String,
    /// The texts a viewer shows (English). Env: `IIIFD_ACCESS__LABEL`, `__HEADING`, `__NOTE`,
    /// `__CONFIRM_LABEL`, `__DENIED_HEADING`, `__DENIED_NOTE`.
    pub label: String,
    /// See `label`.
    pub heading: String,
    /// See `label`.
    pub note: String,
    /// See `label`.
    pub confirm_label: String,
    /// See `label`: what the probe says to a visitor who may not see the image.
    pub denied_heading: String,
    /// See `label`.
    pub denied_note: String,
    /// Lifetime of the access cookie in seconds. Env: `IIIFD_ACCESS__SESSION_SECS`.
    pub session_secs: u64,
    /// Lifetime of an access token in seconds. Env: `IIIFD_ACCESS__TOKEN_SECS`.
    pub token_secs: u64,
    /// Viewer origins that may get tokens (`https://viewer.example.org`); empty: any. A token is
    /// always bound to the origin its cookie was issued for. Env: `IIIFD_ACCESS__ALLOWED_ORIGINS`.
    pub allowed_origins: Vec<String>,
    /// Mark the cookie `Secure` (Auth 2.0 requires HTTPS; off only for local trials over plain HTTP).
    /// Env: `IIIFD_ACCESS__COOKIE_SECURE`.
    pub cookie_secure: bool,
    /// The institution's decision service (`GET {url}?identifier=..&user=..`, see the README),
    /// asked about identifiers whose rule is not `open`; empty: the rules decide.
    /// Env: `IIIFD_ACCESS__DECISION_URL`.
    pub decision_url: String,
    /// Longest wait for a decision; past it the request is answered 503.
    /// Env: `IIIFD_ACCESS__DECISION_TIMEOUT_MS`.
    pub decision_timeout_ms: u64,
    /// How long a decision is kept per identifier and visitor. Env: `IIIFD_ACCESS__DECISION_CACHE_SECS`.
    pub decision_cache_secs: u64,
}

impl Default for AccessConfig {
    fn default() -> Self {
        AccessConfig {
            rules: Vec::new(),
            secret: Secret::default(),
            profile: "active".into(),
            user_header: "x-remote-user".into(),
            access_url: String::new(),
            label: "Sign in to see this image".into(),
            heading: "This image is restricted".into(),
            note: "Sign in with your institution's account to see it.".into(),
            confirm_label: "Sign in".into(),
            denied_heading: "Restricted image".into(),
            denied_note: "You are not allowed to see this image at full resolution.".into(),
            session_secs: 8 * 3600,
            token_secs: 300,
            allowed_origins: Vec::new(),
            cookie_secure: true,
            decision_url: String::new(),
            decision_timeout_ms: 2_000,
            decision_cache_secs: 60,
        }
    }
}

impl AccessConfig {
    /// Whether any identifier can be other than open.
    pub(crate) fn enabled(&self) -> bool {
        self.rules.iter().any(|r| r.policy != AccessPolicy::Open)
    }

    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let bad = |key: &str, why: String| Err(ConfigError(format!("key `{key}`: {why}")));
        for (i, r) in self.rules.iter().enumerate() {
            if r.identifiers.is_empty() {
                return bad(
                    &format!("access.rules[{i}].identifiers"),
                    "must not be empty".into(),
                );
            }
            if r.policy == AccessPolicy::Degraded && r.max_width == 0 && r.max_area == 0 {
                return bad(
                    &format!("access.rules[{i}]"),
                    "a degraded rule needs max_width or max_area".into(),
                );
            }
        }
        if self.enabled() && self.secret.0.len() < 32 {
            return bad(
                "access.secret",
                "at least 32 characters are needed to sign cookies and tokens when a rule is not open \
                 (e.g. the output of `openssl rand -hex 32`)"
                    .into(),
            );
        }
        if !["active", "kiosk", "external"].contains(&self.profile.as_str()) {
            return bad("access.profile", "must be active, kiosk or external".into());
        }
        if http::HeaderName::from_bytes(self.user_header.as_bytes()).is_err() {
            return bad("access.user_header", "must be a header name".into());
        }
        let url_ok = |u: &str| {
            (u.starts_with("http://") || u.starts_with("https://"))
                && !u
                    .bytes()
                    .any(|b| b.is_ascii_control() || b" \"<>'".contains(&b))
        };
        if !self.access_url.is_empty() && !url_ok(&self.access_url) {
            return bad("access.access_url", "must be an http(s) URL".into());
        }
        if !self.decision_url.is_empty() && !url_ok(&self.decision_url) {
            return bad("access.decision_url", "must be an http(s) URL".into());
        }
        for o in &self.allowed_origins {
            if !url_ok(o) || o.ends_with('/') {
                return bad(
                    "access.allowed_origins",
                    format!("'{o}' is not an origin (scheme://host[:port], no path)"),
                );
            }
        }
        if self.session_secs == 0 || self.token_secs == 0 || self.decision_timeout_ms == 0 {
            return bad(
                "access",
                "session_secs, token_secs and decision_timeout_ms must be positive".into(),
            );
        }
        Ok(())
    }
}
