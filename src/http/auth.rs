//! IIIF Authorization Flow 2.0 at the HTTP edge: the probe, access, token and logout services
//! under `{prefix}/auth/`, the access cookie, and the gate every image request passes before the
//! store is asked ([`gate`]).
//!
//! The access service (`/auth/access`, profile `active`) is where the fronting proxy signs the
//! visitor in: nginx `auth_request` or an SSO module protects that one location and names the
//! visitor in `access.user_header`; iiifd then sets its signed cookie and closes the window. iiifd
//! keeps no passwords and never trusts that header anywhere else.

use super::response;
use crate::access::services::{self, TokenError, Urls};
use crate::access::token::{Credential, Invalid};
use crate::access::{self, Decision, Degrade};
use crate::app::App;
use crate::error::{Error, Result};
use bytes::Bytes;
use http::header::{self, HeaderMap};
use http::{Request, Response, StatusCode};
use std::sync::Arc;

/// The access cookie's name.
pub(crate) const COOKIE: &str = "iiifd_access";

/// What the gate decided for one image request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Gate {
    /// An open identifier: the response is the same for everyone (cacheable by anyone).
    Public,
    /// A restricted identifier the visitor may see, at most as `degrade` allows: the response
    /// depends on the cookie (`Cache-Control: private`, `Vary: Cookie`).
    Private(Option<Degrade>),
}

impl Gate {
    pub(crate) fn degrade(self) -> Option<Degrade> {
        match self {
            Gate::Public => None,
            Gate::Private(d) => d,
        }
    }
}

/// The check before an image request reaches the store: open identifiers pass; others need the
/// decision for the visitor's cookie. Refused: [`Error::AccessDenied`] (401); no decision to be
/// had: [`Error::AccessUnavailable`] (503).
pub(crate) async fn gate(app: &Arc<App>, headers: &HeaderMap, identifier: &str) -> Result<Gate> {
    let access = app.access();
    if !access.enabled() {
        return Ok(Gate::Public);
    }
    // The rules also apply to the file's own name, so an alias is never less restricted.
    let name = app.pipeline().locate(identifier).await?.object.name;
    if access.is_open(identifier, &name) {
        return Ok(Gate::Public);
    }
    let visitor = cookie(headers).and_then(|v| access.cookie_credential(v).ok());
    match access
        .decide(identifier, &name, visitor.as_ref())
        .await
        .map_err(|e| Error::AccessUnavailable(e.0))?
    {
        Decision::Allow => Ok(Gate::Private(None)),
        Decision::Degrade(d) => Ok(Gate::Private(Some(d))),
        Decision::Deny => Err(Error::AccessDenied),
    }
}

/// The probe service of `identifier` (file `name`) as info.json lists it, when it is not open.
pub(crate) fn probe_service(
    app: &App,
    root: &str,
    identifier: &str,
    name: &str,
) -> Option<serde_json::Value> {
    (!app.access().is_open(identifier, name))
        .then(|| services::probe_service(&urls(root, identifier), app.access().config()))
}

fn urls(root: &str, identifier: &str) -> Urls {
    Urls {
        base: format!("{root}/auth"),
        encoded_id: crate::iiif::parse::encode_identifier(identifier),
    }
}

/// `{prefix}/auth/{rest}`. `root` is the public URL of the prefix (the probe's substitute is an
/// image URL below it).
pub(crate) async fn route(
    app: &Arc<App>,
    req: &Request<Bytes>,
    rest: &str,
    root: &str,
) -> Result<Response<Bytes>> {
    let query = req.uri().query().unwrap_or("");
    let headers = req.headers();
    match rest {
        "access" => Ok(access_service(app, headers, query)),
        "token" => Ok(token_service(app, headers, query)),
        "logout" => Ok(logout(app)),
        _ => match rest.strip_prefix("probe/") {
            Some(raw) => {
                let identifier =
                    crate::iiif::parse::decode_segment(raw, crate::iiif::parse::Part::Identifier)?;
                probe(app, headers, &identifier, root).await
            }
            None => Err(Error::NoRoute(
                "{prefix}/auth/probe/{identifier}, /auth/access, /auth/token or /auth/logout",
            )),
        },
    }
}

/// The value of our cookie among the request's `Cookie` headers.
fn cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.trim_matches('"'))
}

/// The query's parameter `name`, decoded.
fn param(query: &str, name: &str) -> Option<String> {
    form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// AuthProbeService2: always HTTP 200 (2.0 §3.2), the decision in `status`, for the visitor the
/// bearer token stands for. A token is honoured only from the origin it was issued to.
async fn probe(
    app: &App,
    headers: &HeaderMap,
    identifier: &str,
    root: &str,
) -> Result<Response<Bytes>> {
    let source = app.pipeline().locate(identifier).await?;
    let access = app.access();
    let origin = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok());
    let visitor = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .and_then(|t| access.token_credential(t.trim()).ok())
        .filter(|c| origin.is_none_or(|o| o == c.origin));
    let name = &source.object.name;
    let body = match access.decide(identifier, name, visitor.as_ref()).await {
        Ok(decision) => {
            let substitute = match decision {
                Decision::Degrade(d) => {
                    let (w, h) = d.size(source.size());
                    let id = format!(
                        "{root}/3/{}/full/{w},{h}/0/default.jpg",
                        crate::iiif::parse::encode_identifier(identifier)
                    );
                    Some((id, w, h))
                }
                _ => None,
            };
            services::probe_result(decision, substitute, access.config())
        }
        Err(e) => services::probe_unavailable(&e.0),
    };
    let mut resp = response::json(&body);
    response::set(&mut resp, header::CACHE_CONTROL, "no-store");
    response::set(&mut resp, header::VARY, "Authorization, Origin");
    Ok(resp)
}

/// An HTML page answer.
fn html(status: StatusCode, body: String) -> Response<Bytes> {
    let mut resp = response::base(status, body);
    response::set(&mut resp, header::CONTENT_TYPE, "text/html; charset=utf-8");
    response::set(&mut resp, header::CACHE_CONTROL, "no-store");
    resp
}

/// The `Set-Cookie` value for `value` (empty with max-age 0 to delete).
fn set_cookie(app: &App, value: &str, max_age: u64) -> String {
    let prefix = app.config().prefix.as_str();
    let path = if prefix.is_empty() { "/" } else { prefix };
    // SameSite=None: the cookie must reach iiifd from viewers on other sites (images, the token
    // service's iframe); browsers accept that only with Secure, i.e. over HTTPS.
    let site = if app.access().config().cookie_secure {
        "; SameSite=None; Secure"
    } else {
        "; SameSite=Lax"
    };
    format!("{COOKIE}={value}; Path={path}; Max-Age={max_age}; HttpOnly{site}")
}

/// AuthAccessService2 (`active` and `kiosk`): set the cookie and close the window. `active` needs
/// the visitor named by the fronting proxy in the configured header.
fn access_service(app: &App, headers: &HeaderMap, query: &str) -> Response<Bytes> {
    let cfg = app.access().config();
    let Some(origin) = param(query, "origin").filter(|o| services::is_origin(o)) else {
        return html(
            StatusCode::BAD_REQUEST,
            services::page(
                "Bad request",
                "The access service needs the viewer's origin (?origin=https://viewer.example.org).",
                false,
            ),
        );
    };
    if !cfg.allowed_origins.is_empty() && !cfg.allowed_origins.contains(&origin) {
        return html(
            StatusCode::FORBIDDEN,
            services::page("Not allowed", "This viewer may not sign in here.", false),
        );
    }
    let user =
        match cfg.profile.as_str() {
            "kiosk" => String::new(),
            _ => match headers
                .get(cfg.user_header.as_str())
                .and_then(|v| v.to_str().ok())
                .map(str::trim)
                .filter(|u| !u.is_empty())
            {
                Some(u) => u.to_owned(),
                None => return html(
                    StatusCode::UNAUTHORIZED,
                    services::page(
                        "Not signed in",
                        "Signing in happens at the proxy in front of this server, which did not \
                         name a user for this request.",
                        false,
                    ),
                ),
            },
        };
    let credential = Credential {
        user,
        origin,
        expires: access::now() + cfg.session_secs,
    };
    let value = app.access().signer().cookie(&credential);
    let mut resp = html(
        StatusCode::OK,
        services::page("Signed in", "You can close this window.", true),
    );
    response::set(
        &mut resp,
        header::SET_COOKIE,
        &set_cookie(app, &value, cfg.session_secs),
    );
    resp
}

/// AuthAccessTokenService2: a page posting a token (or the reason for none) to the viewer's
/// origin. Always 200 (2.0 §5.2), framable by any origin.
fn token_service(app: &App, headers: &HeaderMap, query: &str) -> Response<Bytes> {
    let access = app.access();
    let cfg = access.config();
    let Some(origin) = param(query, "origin").filter(|o| services::is_origin(o)) else {
        // Without an origin there is no one to answer to (postMessage needs it).
        return html(
            StatusCode::BAD_REQUEST,
            services::page(
                "Bad request",
                "The token service needs messageId and origin.",
                false,
            ),
        );
    };
    let message_id = param(query, "messageId");
    let refuse = |e: TokenError| {
        let id = message_id.as_deref().unwrap_or("");
        html(
            StatusCode::OK,
            services::token_page(&services::token_error(id, e), &origin),
        )
    };
    let Some(message_id) = message_id.as_deref() else {
        return refuse(TokenError::InvalidRequest);
    };
    if !cfg.allowed_origins.is_empty() && !cfg.allowed_origins.contains(&origin) {
        return refuse(TokenError::InvalidOrigin);
    }
    let Some(value) = cookie(headers) else {
        return refuse(TokenError::MissingAspect);
    };
    let credential = match access.cookie_credential(value) {
        Ok(c) => c,
        Err(Invalid::Expired) => return refuse(TokenError::ExpiredAspect),
        Err(Invalid::Forged | Invalid::Malformed) => return refuse(TokenError::InvalidAspect),
    };
    // The cookie was issued for one viewer's origin; another page may not turn it into a token.
    if credential.origin != origin {
        return refuse(TokenError::InvalidOrigin);
    }
    let now = access::now();
    let expires = (now + cfg.token_secs).min(credential.expires);
    let token = access.signer().token(&Credential {
        expires,
        ..credential
    });
    html(
        StatusCode::OK,
        services::token_page(
            &services::token_message(message_id, &token, expires.saturating_sub(now)),
            &origin,
        ),
    )
}

/// AuthLogoutService2: delete the cookie. Tokens already issued lapse with their short lifetime.
fn logout(app: &App) -> Response<Bytes> {
    let mut resp = html(
        StatusCode::OK,
        services::page(
            "Signed out",
            "You have signed out of the image server.",
            false,
        ),
    );
    response::set(&mut resp, header::SET_COOKIE, &set_cookie(app, "", 0));
    resp
}
