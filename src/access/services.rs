//! The documents of IIIF Authorization Flow 2.0 (iiif.io/api/auth/2.0), pure: the service
//! description that info.json lists, the probe's result, and the access token service's page.

use super::Decision;
use crate::config::AccessConfig;
use serde_json::{json, Value};

/// The Auth 2.0 JSON-LD context; in a 3.0 info.json it comes first in `@context`.
pub(crate) const CONTEXT: &str = "http://iiif.io/api/auth/2/context.json";

/// A language map of one English string.
fn en(text: &str) -> Value {
    json!({ "en": [text] })
}

/// The URLs of one image's services, below `{public base}/auth`.
#[derive(Clone, Debug)]
pub(crate) struct Urls {
    /// `{public base}/auth`.
    pub(crate) base: String,
    /// The identifier, percent-encoded as one path segment.
    pub(crate) encoded_id: String,
}

impl Urls {
    pub(crate) fn probe(&self) -> String {
        format!("{}/probe/{}", self.base, self.encoded_id)
    }
}

/// The probe service with its access, token and logout services, as info.json lists it.
pub(crate) fn probe_service(urls: &Urls, cfg: &AccessConfig) -> Value {
    let token = json!({
        "id": format!("{}/token", urls.base),
        "type": "AuthAccessTokenService2",
    });
    let logout = json!({
        "id": format!("{}/logout", urls.base),
        "type": "AuthLogoutService2",
        "label": en(&format!("Sign out: {}", cfg.label)),
    });
    let mut access = json!({
        "type": "AuthAccessService2",
        "profile": cfg.profile,
        "label": en(&cfg.label),
        "service": [token, logout],
    });
    if cfg.profile != "external" {
        // 2.0 §4.2: an external access service has no id (the visitor is already signed in).
        let id = match cfg.access_url.as_str() {
            "" => format!("{}/access", urls.base),
            url => url.to_owned(),
        };
        access["id"] = id.into();
    }
    if cfg.profile == "active" {
        access["heading"] = en(&cfg.heading);
        access["note"] = en(&cfg.note);
        access["confirmLabel"] = en(&cfg.confirm_label);
    }
    json!({
        "id": urls.probe(),
        "type": "AuthProbeService2",
        "service": [access],
    })
}

/// What the probe says for `decision`. `substitute` is the degraded image a visitor without full
/// access may see instead: its URL and size.
pub(crate) fn probe_result(
    decision: Decision,
    substitute: Option<(String, u32, u32)>,
    cfg: &AccessConfig,
) -> Value {
    let mut out = json!({
        "@context": CONTEXT,
        "type": "AuthProbeResult2",
        "status": match decision { Decision::Allow => 200, _ => 401 },
    });
    if decision != Decision::Allow {
        out["heading"] = en(&cfg.denied_heading);
        out["note"] = en(&cfg.denied_note);
    }
    if let (Decision::Degrade(_), Some((id, width, height))) = (decision, substitute) {
        out["substitute"] = json!([{
            "id": id,
            "type": "Image",
            "format": "image/jpeg",
            "width": width,
            "height": height,
        }]);
    }
    out
}

/// What the probe says when no decision could be had (the decision service did not answer).
pub(crate) fn probe_unavailable(why: &str) -> Value {
    json!({
        "@context": CONTEXT,
        "type": "AuthProbeResult2",
        "status": 503,
        "heading": en("Access cannot be checked right now"),
        "note": en(why),
    })
}

/// A token service answer: the access token.
pub(crate) fn token_message(message_id: &str, token: &str, expires_in: u64) -> Value {
    json!({
        "@context": CONTEXT,
        "type": "AuthAccessToken2",
        "messageId": message_id,
        "accessToken": token,
        "expiresIn": expires_in,
    })
}

/// Why no token was given (2.0 §5.3.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TokenError {
    InvalidRequest,
    InvalidOrigin,
    MissingAspect,
    InvalidAspect,
    ExpiredAspect,
}

impl TokenError {
    fn profile(self) -> &'static str {
        match self {
            TokenError::InvalidRequest => "invalidRequest",
            TokenError::InvalidOrigin => "invalidOrigin",
            TokenError::MissingAspect => "missingAspect",
            TokenError::InvalidAspect => "invalidAspect",
            TokenError::ExpiredAspect => "expiredAspect",
        }
    }

    fn note(self) -> &'static str {
        match self {
            TokenError::InvalidRequest => "The request for an access token was malformed.",
            TokenError::InvalidOrigin => "This viewer's origin may not receive access tokens.",
            TokenError::MissingAspect => "You are not signed in.",
            TokenError::InvalidAspect => "Your sign-in is not valid here; sign in again.",
            TokenError::ExpiredAspect => "Your sign-in has expired; sign in again.",
        }
    }
}

/// A token service answer: the error.
pub(crate) fn token_error(message_id: &str, e: TokenError) -> Value {
    json!({
        "@context": CONTEXT,
        "type": "AuthAccessTokenError2",
        "profile": e.profile(),
        "messageId": message_id,
        "heading": en("No access token"),
        "note": en(e.note()),
    })
}

/// The token service's page: posts `message` to the window that framed (or opened) it, to
/// `origin` only (2.0 §5.2: the browser delivers it nowhere else).
pub(crate) fn token_page(message: &Value, origin: &str) -> String {
    format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>Access token</title></head><body>\
         <script>(window.opener||window.parent).postMessage({}, {});</script></body></html>\n",
        script_json(message),
        script_json(&Value::from(origin))
    )
}

/// JSON that can stand inside a `<script>` element: no `<`, `>` or `&` that could end it or start
/// a comment, whatever the strings hold.
fn script_json(v: &Value) -> String {
    v.to_string()
        .replace('<', "\\u003c")
        .replace('>', "\\u003e")
        .replace('&', "\\u0026")
}

/// A small HTML page with a heading and a note, closing itself when `close` (the access service's
/// last page, 2.0 §5.1: the client waits for the window to close).
pub(crate) fn page(heading: &str, note: &str, close: bool) -> String {
    let script = if close {
        "<script>window.close();</script>"
    } else {
        ""
    };
    format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>{h}</title></head><body>\
         <h1>{h}</h1><p>{n}</p>{script}</body></html>\n",
        h = html(heading),
        n = html(note)
    )
}

/// Text escaped for HTML.
fn html(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Whether `s` is an origin: `http(s)://host[:port]`, nothing else (a token is bound to it, and
/// postMessage needs it exact).
pub(crate) fn is_origin(s: &str) -> bool {
    let Some(rest) = s
        .strip_prefix("https://")
        .or_else(|| s.strip_prefix("http://"))
    else {
        return false;
    };
    !rest.is_empty()
        && rest
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn urls() -> Urls {
        Urls {
            base: "https://img.example.org/iiif/auth".into(),
            encoded_id: "a%2Fb.jpg".into(),
        }
    }

    #[test]
    fn the_service_description_nests_as_the_spec_says() {
        let cfg = AccessConfig::default();
        let s = probe_service(&urls(), &cfg);
        assert_eq!(s["type"], "AuthProbeService2");
        assert_eq!(s["id"], "https://img.example.org/iiif/auth/probe/a%2Fb.jpg");
        let access = &s["service"][0];
        assert_eq!(access["type"], "AuthAccessService2");
        assert_eq!(access["profile"], "active");
        assert_eq!(access["id"], "https://img.example.org/iiif/auth/access");
        assert_eq!(access["label"]["en"][0], cfg.label.as_str());
        assert_eq!(access["confirmLabel"]["en"][0], cfg.confirm_label.as_str());
        let types: Vec<&str> = access["service"]
            .as_array()
            .expect("services")
            .iter()
            .filter_map(|s| s["type"].as_str())
            .collect();
        assert_eq!(types, ["AuthAccessTokenService2", "AuthLogoutService2"]);
        assert!(access["service"][1]["label"]["en"][0].is_string());
        // External: no id; a configured sign-in URL replaces iiifd's own.
        let external = AccessConfig {
            profile: "external".into(),
            ..AccessConfig::default()
        };
        assert!(probe_service(&urls(), &external)["service"][0]
            .get("id")
            .is_none());
        let sso = AccessConfig {
            access_url: "https://sso.example.org/iiif-login".into(),
            ..AccessConfig::default()
        };
        assert_eq!(
            probe_service(&urls(), &sso)["service"][0]["id"],
            "https://sso.example.org/iiif-login"
        );
    }

    #[test]
    fn probe_results() {
        let cfg = AccessConfig::default();
        let ok = probe_result(Decision::Allow, None, &cfg);
        assert_eq!(
            (ok["status"].as_u64(), ok.get("heading")),
            (Some(200), None)
        );
        assert_eq!(ok["@context"], CONTEXT);
        let no = probe_result(Decision::Deny, None, &cfg);
        assert_eq!(no["status"], 401);
        assert!(no["heading"]["en"][0].is_string() && no["note"]["en"][0].is_string());
        assert!(no.get("substitute").is_none());
        let d = super::super::Degrade {
            max_width: 100,
            max_area: 0,
        };
        let sub = Some(("https://x/full/100,75/0/default.jpg".to_owned(), 100, 75));
        let less = probe_result(Decision::Degrade(d), sub, &cfg);
        assert_eq!(less["status"], 401);
        assert_eq!(less["substitute"][0]["width"], 100);
        assert_eq!(less["substitute"][0]["type"], "Image");
    }

    #[test]
    fn the_token_page_cannot_be_broken_out_of() {
        let m = token_message("</script><script>alert(1)</script>", "t", 300);
        let page = token_page(&m, "https://viewer.example.org");
        assert_eq!(page.matches("<script>").count(), 1);
        assert_eq!(page.matches("</script>").count(), 1);
        assert!(page.contains("\"https://viewer.example.org\");"));
        let e = token_error("m1", TokenError::InvalidOrigin);
        assert_eq!(e["profile"], "invalidOrigin");
        assert_eq!(e["messageId"], "m1");
        assert!(page.contains("AuthAccessToken2"));
        assert!(!super::page("<b>", "&", true).contains("<b>"));
    }

    #[test]
    fn origins() {
        for ok in [
            "https://viewer.example.org",
            "http://127.0.0.1:8080",
            "http://[::1]:80",
        ] {
            assert!(is_origin(ok), "{ok}");
        }
        for bad in [
            "",
            "https://",
            "https://a/b",
            "ftp://a",
            "https://a b",
            "null",
            "https://a\"",
        ] {
            assert!(!is_origin(bad), "{bad}");
        }
    }
}
