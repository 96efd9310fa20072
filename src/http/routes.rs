//! Request routing, top to bottom: preflight -> method check -> health -> viewer page -> IIIF routes
//! under the prefix, or Flask-IIIF's when enabled (base redirect, info.json, image). Every handler returns `Result<Response, Error>`; [`handle`]
//! maps errors in one place and writes the access log line.

use super::auth::Gate;
use super::headers::{info_content_type, negotiate_format, not_modified, public_base, Forwarded};
use super::response;
use super::Peer;
use crate::admission::ClientKey;
use crate::app::App;
use crate::error::{Error, Result};
use crate::iiif::info::{info_json, InfoInput};
use crate::iiif::parse::{encode_identifier, parse_route, printable, ImageRequest, Route};
use crate::iiif::ApiVersion;
use crate::pipeline::{Body, CacheStatus};
use bytes::Bytes;
use http::header::HeaderName;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use std::sync::Arc;
use std::time::Instant;

/// The methods the public listener answers.
const METHODS: &str = "GET, HEAD, OPTIONS";

/// The header that hands a stored file to the proxy.
const ACCEL: HeaderName = HeaderName::from_static("x-accel-redirect");

/// Answer one request. Never fails: errors become responses here.
pub(crate) async fn handle(app: &Arc<App>, req: Request<Bytes>) -> Response<Bytes> {
    let started = Instant::now();
    let result = match repeat(app, &req) {
        Some(resp) => Ok(resp),
        // Boxed: the routes' state machine is kilobytes (every handler's locals across its
        // awaits), which would otherwise be copied into place for every request, repeats too.
        None => Box::pin(route(app, &req)).await,
    };
    let mut resp = result.unwrap_or_else(|e| response::error(&e));
    if req.method() == Method::HEAD {
        // The headers (Content-Length included) are those of the GET; the body is not sent. hyper
        // would drop it on the wire too, but in-process callers see what the edge returns.
        *resp.body_mut() = Bytes::new();
    }
    let path = req.uri().path();
    let version = path
        .strip_prefix(app.config().prefix.as_str())
        .and_then(|r| r.strip_prefix('/'))
        .and_then(|r| r.split('/').next())
        .and_then(ApiVersion::from_path_segment)
        .map_or("other", ApiVersion::path_segment);
    app.metrics().count_request(version, resp.status().as_u16());
    tracing::info!(
        target: "iiifd::access",
        method = %req.method(),
        path = %printable(path),
        status = resp.status().as_u16(),
        cache = resp.headers().get("cache-status").and_then(|v| v.to_str().ok()).unwrap_or("-"),
        bytes = resp.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).unwrap_or("0"),
        ms = started.elapsed().as_secs_f64() * 1000.0,
    );
    resp
}

async fn route(app: &Arc<App>, req: &Request<Bytes>) -> Result<Response<Bytes>> {
    if req.method() == Method::OPTIONS {
        return Ok(preflight(req.headers()));
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return Err(Error::MethodNotAllowed(METHODS));
    }
    let path = req.uri().path();
    if path == "/health" {
        return Ok(response::text(StatusCode::OK, "ok\n"));
    }
    if let Some(id) = path
        .strip_prefix("/viewer/")
        .filter(|_| app.config().viewer.enabled)
    {
        return viewer(app, id, req.uri().query().unwrap_or("")).await;
    }
    let prefix = app.config().prefix.as_str();
    let native = path.strip_prefix(prefix).and_then(|r| r.strip_prefix('/'));
    let (rest, compat) = match native {
        Some(rest) => (std::borrow::Cow::Borrowed(rest), false),
        None => match flask_iiif_path(app, path) {
            Some(rest) => (std::borrow::Cow::Owned(rest), true),
            None => {
                return Err(Error::NoRoute(
                    "{prefix}/{version}/{identifier}/... (version 1, 2 or 3)",
                ))
            }
        },
    };
    let rest = rest.as_ref();
    let headers = req.headers();
    if let (false, Some(auth)) = (compat, rest.strip_prefix("auth/")) {
        let root = public_root(app, headers, false);
        return super::auth::route(app, req, auth, &root).await;
    }
    let negotiated = negotiate_format(header_str(headers, header::ACCEPT));
    match parse_route(rest, negotiated)? {
        Route::Base {
            version,
            identifier,
        } => Ok(base_redirect(app, headers, version, &identifier, compat)),
        Route::Info {
            version,
            identifier,
        } => info(app, headers, version, &identifier, compat).await,
        Route::Image {
            identifier,
            request,
        } => {
            // 1.1 §4.5: without an extension the format came from `Accept`, so caches must key on it.
            let negotiated = request.version == ApiVersion::V1
                && !rest.rsplit('/').next().unwrap_or("").contains('.');
            let memo_path = (!negotiated).then_some(path);
            let client = client_of(app, req);
            let mut resp = image(
                app,
                headers,
                &identifier,
                &request,
                compat,
                memo_path,
                client,
            )
            .await;
            if let (true, Ok(r)) = (negotiated, &mut resp) {
                let vary = match r.headers().get(header::VARY).and_then(|v| v.to_str().ok()) {
                    Some(v) => format!("{v}, Accept"),
                    None => "Accept".to_owned(),
                };
                response::set(r, header::VARY, &vary);
            }
            resp
        }
    }
}

/// The client a request comes from, for admission (see [`crate::admission`]): the connection's
/// address or the one the configured header names, and its class.
fn client_of(app: &App, req: &Request<Bytes>) -> ClientKey {
    let admission = app.pipeline().admission();
    let headers = req.headers();
    let named = admission
        .client_header()
        .into_iter()
        .flat_map(|h| headers.get_all(h).iter())
        .filter_map(|v| v.to_str().ok());
    admission.identify(
        req.extensions().get::<Peer>().map(|p| p.0),
        named,
        header_str(headers, header::USER_AGENT),
    )
}

/// A repeat of a public image request answered from the store before, answered from the hit memo
/// (see [`crate::memo`]); `None` when it must go the usual way.
fn repeat(app: &App, req: &Request<Bytes>) -> Option<Response<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return None;
    }
    // The memo keeps full answers: a client whose class sees images degraded goes the usual way.
    let admission = app.pipeline().admission();
    if admission.degrades() && admission.degrade(client_of(app, req).class).is_some() {
        return None;
    }
    let (answer, hit) = app
        .memo()
        .recall(app.pipeline(), req.uri().path(), req.headers())?;
    let mut resp = Response::new(Bytes::new());
    *resp.headers_mut() = answer.headers.clone();
    // The kept headers name the body as it was sent then; this hit decides. (Replacing a header
    // the copy has keeps its table from growing.)
    let h = resp.headers_mut();
    match hit.bytes {
        Some(bytes) => {
            h.remove(ACCEL);
            h.insert(header::CONTENT_LENGTH, HeaderValue::from(bytes.len()));
            *resp.body_mut() = bytes;
        }
        None => {
            h.remove(header::CONTENT_LENGTH);
            // The same key is the same stored file, so a target kept with the answer holds.
            if !h.contains_key(ACCEL) {
                let target = format!("{}{}", app.config().store.accel_redirect, hit.relative_path);
                response::set(&mut resp, ACCEL, &target);
            }
        }
    }
    Some(resp)
}

fn header_str(headers: &HeaderMap, name: header::HeaderName) -> Option<&str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// The public base URI of one image service: `{public base}/{version}/{encoded identifier}`.
fn service_base(
    app: &App,
    headers: &HeaderMap,
    version: ApiVersion,
    identifier: &str,
    compat: bool,
) -> String {
    let segment = if compat {
        format!("v{}", version.path_segment())
    } else {
        version.path_segment().to_owned()
    };
    format!(
        "{}/{segment}/{}",
        public_root(app, headers, compat),
        encode_identifier(identifier)
    )
}

/// The public URL of the prefix (`https://images.example.org/iiif`), or of Flask-IIIF's mount when
/// `compat`: configured, or derived from the forwarding headers.
fn public_root(app: &App, headers: &HeaderMap, compat: bool) -> String {
    let cfg = app.config();
    // Flask-IIIF routes live beside the IIIF prefix: same origin, their own mount.
    let (mount, configured) = if compat {
        let origin = cfg
            .public_base_url
            .strip_suffix(cfg.prefix.as_str())
            .unwrap_or(&cfg.public_base_url);
        let configured = if origin.is_empty() {
            String::new()
        } else {
            format!("{origin}{}", cfg.compat.flask_iiif_prefix)
        };
        (cfg.compat.flask_iiif_prefix.as_str(), configured)
    } else {
        (cfg.prefix.as_str(), cfg.public_base_url.clone())
    };
    let fwd = Forwarded::of(headers);
    public_base(&configured, mount, fwd, &cfg.listen.to_string())
}

/// A Flask-IIIF path (`{flask_iiif_prefix}/v1/...` or `/v2/...`), when those routes are enabled, as the
/// equivalent path below iiifd's own prefix (`1/...`, `2/...`). Flask-IIIF's non-spec format names
/// `jpeg` and `tiff` are accepted there, as Flask-IIIF did.
fn flask_iiif_path(app: &App, path: &str) -> Option<String> {
    let compat = &app.config().compat;
    if !compat.flask_iiif {
        return None;
    }
    let rest = path
        .strip_prefix(compat.flask_iiif_prefix.as_str())?
        .strip_prefix("/v")?;
    let (version, tail) = rest.split_once('/')?;
    if version != "1" && version != "2" {
        return None;
    }
    let mut out = format!("{version}/{tail}");
    for (alias, spec) in [(".jpeg", ".jpg"), (".tiff", ".tif")] {
        if out.ends_with(alias) {
            out.truncate(out.len() - alias.len());
            out.push_str(spec);
        }
    }
    Some(out)
}

fn preflight(headers: &HeaderMap) -> Response<Bytes> {
    let mut resp = response::base(StatusCode::NO_CONTENT, "");
    resp.headers_mut().remove(header::CONTENT_LENGTH);
    response::set(
        &mut resp,
        header::ACCESS_CONTROL_ALLOW_METHODS,
        "GET, HEAD, OPTIONS",
    );
    let requested = header_str(headers, header::ACCESS_CONTROL_REQUEST_HEADERS).unwrap_or("");
    // Echo requested header names only if they are plain tokens.
    if !requested.is_empty()
        && requested
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b", -_".contains(&b))
    {
        response::set(&mut resp, header::ACCESS_CONTROL_ALLOW_HEADERS, requested);
    }
    response::set(&mut resp, header::ACCESS_CONTROL_MAX_AGE, "86400");
    resp
}

fn base_redirect(
    app: &App,
    headers: &HeaderMap,
    version: ApiVersion,
    identifier: &str,
    compat: bool,
) -> Response<Bytes> {
    let location = format!(
        "{}/info.json",
        service_base(app, headers, version, identifier, compat)
    );
    let mut resp = response::base(StatusCode::SEE_OTHER, "");
    response::set(&mut resp, header::LOCATION, &location);
    super::cdn::tag(&mut resp, &app.config().cdn, identifier);
    resp
}

fn profile_link(version: ApiVersion) -> String {
    format!("<{}>;rel=\"profile\"", version.profile_uri())
}

/// `max-age` of an info.json answered from the last version seen while the source fails.
const STALE_INFO_MAX_AGE: u64 = 60;

async fn info(
    app: &Arc<App>,
    headers: &HeaderMap,
    version: ApiVersion,
    identifier: &str,
    compat: bool,
) -> Result<Response<Bytes>> {
    let base = service_base(app, headers, version, identifier, compat);
    let source = app.pipeline().locate(identifier).await?;
    let extras = app.pipeline().info_extras(identifier).await;
    // A restricted image lists its Auth 2.0 services; info.json itself stays open to everyone
    // (the probe carries the decision), and is the same for every visitor.
    let root = public_root(app, headers, false);
    let auth = super::auth::probe_service(app, &root, identifier, &source.object.name);
    let input = InfoInput {
        id: &base,
        size: source.size(),
        limits: *app.pipeline().limits(),
        tile: source.probe.tile.unwrap_or(app.config().tile_size),
        extras: &extras,
        auth: auth.as_ref(),
    };
    let json = info_json(version, &input);
    let content_type = info_content_type(version, header_str(headers, header::ACCEPT));
    // The document depends on the source, the configuration (tile size, limits, public URL) and the
    // request's forwarding headers, so its validator is a hash of the text itself; `Last-Modified` is
    // never older than this process (a restart after a configuration change), so a cache revalidating
    // by date alone does not keep a stale document either.
    let etag = crate::key::document_etag(format!("{content_type}\n{json}").as_bytes());
    let modified = source
        .object
        .modified
        .unwrap_or(std::time::UNIX_EPOCH)
        .max(app.started());
    // While the source service fails, the document rests on the last version seen: it is sent,
    // but kept briefly, and says so.
    let outage = app.pipeline().source().outage();
    let max_age = match outage {
        true => app.config().http.max_age.min(STALE_INFO_MAX_AGE),
        false => app.config().http.max_age,
    };
    let cache_control = format!(
        "public, max-age={max_age}{}",
        super::cdn::stale_directives(&app.config().cdn)
    );
    let last_modified = httpdate::fmt_http_date(modified);
    let conditional = not_modified(
        header_str(headers, header::IF_NONE_MATCH),
        header_str(headers, header::IF_MODIFIED_SINCE),
        Some(&etag),
        modified,
    );
    let mut resp = if conditional {
        let mut r = response::base(StatusCode::NOT_MODIFIED, "");
        r.headers_mut().remove(header::CONTENT_LENGTH);
        r
    } else {
        response::base(StatusCode::OK, json)
    };
    response::set(&mut resp, header::CONTENT_TYPE, &content_type);
    response::set(&mut resp, header::ETAG, &etag);
    response::set(&mut resp, header::LINK, &profile_link(version));
    response::set(&mut resp, header::CACHE_CONTROL, &cache_control);
    response::set(&mut resp, header::LAST_MODIFIED, &last_modified);
    response::set(&mut resp, header::VARY, "Accept");
    if outage {
        response::set(
            &mut resp,
            HeaderName::from_static("cache-status"),
            "iiifd; detail=source-unavailable",
        );
    }
    super::cdn::tag(&mut resp, &app.config().cdn, identifier);
    Ok(resp)
}

async fn image(
    app: &Arc<App>,
    headers: &HeaderMap,
    identifier: &str,
    request: &ImageRequest,
    compat: bool,
    memo_path: Option<&str>,
    client: ClientKey,
) -> Result<Response<Bytes>> {
    // Look the object up in the same blocking hop unless the request is conditional (then the key alone
    // may answer it with a 304 and reading the file would be wasted).
    let has_validators = headers.contains_key(header::IF_NONE_MATCH)
        || headers.contains_key(header::IF_MODIFIED_SINCE);
    // Access is decided before the store is asked: a stored derivative of a restricted image is
    // never sent (nor handed to nginx) without a decision.
    let gate = super::auth::gate(app, headers, identifier).await?;
    // A hit held in memory (or a conditional request whose source is known) is answered here on
    // the async thread; anything else takes a blocking thread.
    let pipeline = app.pipeline();
    // The stricter of what the access rules and the client's class allow.
    let class_degraded = pipeline.admission().degrade(client.class).is_some();
    let degrade = pipeline.degrade_for(client, gate.degrade());
    let prepared = match pipeline.prepare_now(identifier, request, degrade, !has_validators) {
        Some(prepared) => prepared,
        None => {
            pipeline
                .prepare(identifier, request, degrade, !has_validators)
                .await?
        }
    };
    let version = request.version;
    // The Link header, built in one buffer (it is formatted on every hit).
    let mut link = String::with_capacity(192);
    link.push('<');
    link.push_str(&service_base(app, headers, version, identifier, compat));
    link.push('/');
    link.push_str(&prepared.canonical.to_path());
    link.push_str(">;rel=\"canonical\", ");
    link.push_str(&profile_link(version));
    let etag = prepared.key.etag();
    let modified = prepared
        .source
        .object
        .modified
        .unwrap_or(std::time::UNIX_EPOCH);
    let conditional = not_modified(
        header_str(headers, header::IF_NONE_MATCH),
        header_str(headers, header::IF_MODIFIED_SINCE),
        Some(&etag),
        modified,
    );
    // A public answer from the store is kept for the next request of this path (the hit memo).
    let mut remember = None;
    let mut resp = if conditional {
        let mut r = response::base(StatusCode::NOT_MODIFIED, "");
        r.headers_mut().remove(header::CONTENT_LENGTH);
        r
    } else {
        let media_type = prepared.canonical.format().media_type();
        let memo = (gate == Gate::Public && !class_degraded)
            .then_some(memo_path)
            .flatten()
            .map(|path| (path, prepared.source.object.clone(), prepared.key));
        let delivered = app.pipeline().deliver(prepared, client).await?;
        if delivered.cache == CacheStatus::Hit {
            remember = memo;
        }
        let mut r = match delivered.body {
            Body::Bytes(bytes) => response::base(StatusCode::OK, bytes),
            Body::Accel(relative) => {
                // nginx replaces this empty body with the stored file and keeps our headers.
                let mut r = response::base(StatusCode::OK, "");
                r.headers_mut().remove(header::CONTENT_LENGTH);
                let target = format!("{}{relative}", app.config().store.accel_redirect);
                response::set(&mut r, ACCEL, &target);
                r
            }
        };
        response::set(&mut r, header::CONTENT_TYPE, media_type);
        response::set(
            &mut r,
            HeaderName::from_static("cache-status"),
            cache_status(delivered.cache),
        );
        r
    };
    response::set(&mut resp, header::ETAG, &etag);
    response::set(
        &mut resp,
        header::LAST_MODIFIED,
        &httpdate::fmt_http_date(modified),
    );
    let max_age = app.config().http.max_age;
    match gate {
        // Who asks decides what a degraded class sees: no shared cache may keep that answer for
        // others (nor, the other way round, should it keep others' answers for the class; see the
        // README on caches in front).
        Gate::Public if class_degraded => response::set(
            &mut resp,
            header::CACHE_CONTROL,
            &format!("private, max-age={max_age}"),
        ),
        Gate::Public => response::set(
            &mut resp,
            header::CACHE_CONTROL,
            &format!(
                "public, max-age={max_age}{}",
                super::cdn::stale_directives(&app.config().cdn)
            ),
        ),
        // The answer depends on the visitor's cookie: no shared cache may keep it.
        Gate::Private(_) => {
            response::set(
                &mut resp,
                header::CACHE_CONTROL,
                &format!("private, max-age={max_age}"),
            );
            response::set(&mut resp, header::VARY, "Cookie");
        }
    }
    response::set(&mut resp, header::LINK, &link);
    super::cdn::tag(&mut resp, &app.config().cdn, identifier);
    if let Some((path, object, key)) = remember {
        app.memo()
            .remember(path, headers, &object, key, resp.headers());
    }
    Ok(resp)
}

async fn viewer(app: &Arc<App>, raw_id: &str, query: &str) -> Result<Response<Bytes>> {
    let identifier =
        crate::iiif::parse::decode_segment(raw_id, crate::iiif::parse::Part::Identifier)?;
    app.pipeline().locate(&identifier).await?;
    let version = if query.split('&').any(|kv| kv == "version=2") {
        ApiVersion::V2
    } else {
        ApiVersion::V3
    };
    let cfg = app.config();
    let html = super::viewer::page(&cfg.prefix, &cfg.viewer.script_url, version, &identifier);
    let mut resp = response::base(StatusCode::OK, html);
    response::set(&mut resp, header::CONTENT_TYPE, "text/html; charset=utf-8");
    Ok(resp)
}

/// RFC 9211 `Cache-Status` value.
fn cache_status(c: CacheStatus) -> &'static str {
    match c {
        CacheStatus::Hit => "iiifd; hit",
        CacheStatus::Stored => "iiifd; fwd=miss; stored",
        CacheStatus::NotStored => "iiifd; fwd=miss",
        CacheStatus::Collapsed => "iiifd; fwd=miss; collapsed",
    }
}
