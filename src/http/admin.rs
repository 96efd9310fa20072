//! The admin listener (`admin.listen`, loopback by default, never proxied): health, readiness,
//! Prometheus metrics and store maintenance. With `admin.token` set, everything but `/health` needs
//! `Authorization: Bearer <token>`.

use super::response::{self, Body};
use crate::error::Error;
use crate::iiif::parse::{decode_segment, Part};
use crate::service::App;
use hyper::body::Incoming;
use hyper::header;
use hyper::{Method, Request, Response, StatusCode};
use std::sync::Arc;

/// Answer one admin request.
pub async fn handle(app: Arc<App>, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_owned();
    if path == "/health" {
        return text(StatusCode::OK, "ok\n");
    }
    let token = &app.config().admin.token;
    if !token.is_empty() {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        if given != Some(format!("Bearer {token}").as_str()) {
            let mut r = text(StatusCode::UNAUTHORIZED, "admin token required\n");
            response::set(&mut r, header::WWW_AUTHENTICATE, "Bearer");
            return r;
        }
    }
    let query = req.uri().query().unwrap_or("").to_owned();
    if let Some(rest) = path.strip_prefix("/admin/crawl") {
        return crawl(&app, req, rest).await;
    }
    match (req.method(), path.as_str()) {
        (&Method::GET, "/ready") => text(StatusCode::OK, "ready\n"),
        (&Method::GET, "/metrics") => {
            let mut r = response::base(StatusCode::OK, app.metrics_text());
            response::set(
                &mut r,
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            );
            r
        }
        (&Method::GET, "/admin/store/stats") => json(&app.store().stats()),
        (&Method::POST, "/admin/store/verify") => {
            let store = Arc::clone(app.store());
            blocking_json(move || store.verify()).await
        }
        (&Method::POST, "/admin/store/gc") => {
            let store = Arc::clone(app.store());
            blocking_json(move || store.gc()).await
        }
        (&Method::POST, "/admin/store/purge") => {
            let id = query
                .split('&')
                .find_map(|kv| kv.strip_prefix("id="))
                .map(|v| decode_segment(v, Part::Identifier));
            match id {
                Some(Ok(id)) if !id.is_empty() => {
                    let store = Arc::clone(app.store());
                    blocking_json(move || {
                        store.purge(&id).map(|n| serde_json::json!({ "purged": n }))
                    })
                    .await
                }
                Some(Err(e)) => response::error(&Error::Parse(e)),
                _ => text(StatusCode::BAD_REQUEST, "purge needs ?id=IDENTIFIER\n"),
            }
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "admin routes: /health /ready /metrics /admin/store/{stats,verify,gc,purge?id=}\n",
        ),
    }
}

/// Largest crawl request body (a manifest can be large, but not this large).
const MAX_CRAWL_BODY: usize = 16 << 20;

async fn crawl(app: &Arc<App>, req: Request<Incoming>, rest: &str) -> Response<Body> {
    use http_body_util::BodyExt;
    let id = rest.strip_prefix('/').filter(|s| !s.is_empty());
    match (req.method().clone(), id) {
        (Method::POST, None) => {
            let body = match http_body_util::Limited::new(req.into_body(), MAX_CRAWL_BODY)
                .collect()
                .await
            {
                Ok(b) => b.to_bytes(),
                Err(e) => {
                    return response::error(&Error::BadRequest(format!(
                        "cannot read the body: {e}"
                    )))
                }
            };
            let spec: crate::crawl::CrawlSpec = match serde_json::from_slice(&body) {
                Ok(s) => s,
                Err(e) => {
                    return response::error(&Error::BadRequest(format!(
                        "malformed crawl request: {e}"
                    )))
                }
            };
            match app.crawler().submit(app, spec).await {
                Ok(id) => {
                    let mut r = json(&serde_json::json!({ "id": id }));
                    *r.status_mut() = StatusCode::ACCEPTED;
                    response::set(&mut r, header::LOCATION, &format!("/admin/crawl/{id}"));
                    r
                }
                Err(e) => response::error(&e),
            }
        }
        (Method::GET, None) => json(&app.crawler().list()),
        (Method::GET, Some(id)) => match app.crawler().get(id) {
            Some(state) => json(&state),
            None => text(StatusCode::NOT_FOUND, "no such crawl job\n"),
        },
        (Method::DELETE, Some(id)) => {
            if app.crawler().cancel(id) {
                text(StatusCode::ACCEPTED, "cancelling\n")
            } else {
                text(StatusCode::NOT_FOUND, "no such crawl job\n")
            }
        }
        _ => text(
            StatusCode::METHOD_NOT_ALLOWED,
            "use POST /admin/crawl, GET or DELETE /admin/crawl/{id}\n",
        ),
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut r = response::base(status, body);
    response::set(&mut r, header::CONTENT_TYPE, "text/plain; charset=utf-8");
    r
}

/// Serialise `value` as the JSON body of a 200.
pub fn json<T: serde::Serialize>(value: &T) -> Response<Body> {
    match serde_json::to_string_pretty(value) {
        Ok(s) => {
            let mut r = response::base(StatusCode::OK, s);
            response::set(&mut r, header::CONTENT_TYPE, "application/json");
            r
        }
        Err(e) => response::error(&Error::Internal(e.to_string())),
    }
}

async fn blocking_json<T, F>(f: F) -> Response<Body>
where
    T: serde::Serialize + Send + 'static,
    F: FnOnce() -> std::io::Result<T> + Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(Ok(v)) => json(&v),
        Ok(Err(e)) => response::error(&Error::Internal(e.to_string())),
        Err(e) => response::error(&Error::Internal(e.to_string())),
    }
}
