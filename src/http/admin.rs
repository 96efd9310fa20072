//! The admin listener (`admin.listen`, loopback by default, never proxied): health, readiness,
//! Prometheus metrics, store maintenance and the crawl API. With `admin.token` set, everything but
//! `/health` needs `Authorization: Bearer <token>`. Every failure goes through the same error
//! mapping as the public listener ([`response::error`]).

use super::response;
use crate::app::App;
use crate::crawl::CrawlSpec;
use crate::error::{Error, Result};
use crate::iiif::parse::{decode_segment, Part};
use crate::pipeline::blocking;
use crate::store::maintenance::Maintenance;
use bytes::Bytes;
use http::header;
use http::{Method, Request, Response, StatusCode};
use std::sync::Arc;

/// Answer one admin request.
/// What the admin listener answers (for a 404's message).
const ROUTES: &str =
    "/health /ready /metrics /admin/store/{stats,verify,gc,purge?id=} /admin/crawl";

pub(crate) async fn handle(app: &Arc<App>, req: Request<Bytes>) -> Response<Bytes> {
    route(app, req)
        .await
        .unwrap_or_else(|e| response::error(&e))
}

async fn route(app: &Arc<App>, req: Request<Bytes>) -> Result<Response<Bytes>> {
    let path = req.uri().path().to_owned();
    if path == "/health" {
        return Ok(response::text(StatusCode::OK, "ok\n"));
    }
    let token = &app.config().admin.token;
    if !token.is_empty() {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        if given != Some(format!("Bearer {token}").as_str()) {
            return Err(Error::Unauthorized);
        }
    }
    if let Some(rest) = path.strip_prefix("/admin/crawl") {
        return crawl(app, req, rest).await;
    }
    match (req.method(), path.as_str()) {
        (&Method::GET, "/ready") => Ok(response::text(StatusCode::OK, "ready\n")),
        (&Method::GET, "/metrics") => {
            let mut r = response::base(StatusCode::OK, app.metrics_text());
            response::set(
                &mut r,
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            );
            Ok(r)
        }
        (_, "/ready" | "/metrics") => Err(Error::MethodNotAllowed("GET, POST")),
        (_, p)
            if p.strip_prefix("/admin/store/")
                .is_some_and(|n| Maintenance::method(n).is_some()) =>
        {
            maintenance(app, &req, &p["/admin/store/".len()..]).await
        }
        _ => Err(Error::NoRoute(ROUTES)),
    }
}

/// `/admin/store/{name}`: one of the store's maintenance operations ([`Maintenance::ONLINE`]).
async fn maintenance(app: &Arc<App>, req: &Request<Bytes>, name: &str) -> Result<Response<Bytes>> {
    if Maintenance::method(name) != Some(req.method().as_str()) {
        return Err(Error::MethodNotAllowed("GET, POST"));
    }
    let id = match req
        .uri()
        .query()
        .unwrap_or("")
        .split('&')
        .find_map(|kv| kv.strip_prefix("id="))
    {
        Some(raw) => Some(decode_segment(raw, Part::Identifier)?),
        None => None,
    };
    let op = match Maintenance::online(name, id) {
        Some(Ok(op)) => op,
        Some(Err(why)) => return Err(Error::BadRequest(why.into())),
        None => return Err(Error::NoRoute(ROUTES)),
    };
    let purged = match &op {
        Maintenance::Purge(id) => Some(id.clone()),
        _ => None,
    };
    let store = Arc::clone(app.store());
    let (key, report) = blocking(move || op.run(&store))
        .await?
        .map_err(store_error)?;
    if let Some(id) = purged {
        app.purge_cdn(&id);
    }
    // A count is wrapped under its name; a report is the object it is.
    Ok(response::json(&if report.is_object() {
        report
    } else {
        serde_json::json!({ key: report })
    }))
}

fn store_error(e: std::io::Error) -> Error {
    Error::Store(e.into())
}

async fn crawl(app: &Arc<App>, req: Request<Bytes>, rest: &str) -> Result<Response<Bytes>> {
    let id = rest.strip_prefix('/').filter(|s| !s.is_empty());
    let crawler = app.crawler();
    match (req.method().clone(), id) {
        (Method::POST, None) => {
            let spec: CrawlSpec = serde_json::from_slice(req.body())
                .map_err(|e| Error::BadRequest(format!("malformed crawl request: {e}")))?;
            let id = crawler.submit(spec).await?;
            let mut r = response::json(&serde_json::json!({ "id": id }));
            *r.status_mut() = StatusCode::ACCEPTED;
            response::set(&mut r, header::LOCATION, &format!("/admin/crawl/{id}"));
            Ok(r)
        }
        (Method::GET, None) => Ok(response::json(&crawler.list())),
        (Method::GET, Some(id)) => crawler
            .get(id)
            .map(|state| response::json(&state))
            .ok_or_else(|| Error::NoSuchJob(id.to_owned())),
        (Method::DELETE, Some(id)) => {
            if crawler.cancel(id) {
                Ok(response::text(StatusCode::ACCEPTED, "cancelling\n"))
            } else {
                Err(Error::NoSuchJob(id.to_owned()))
            }
        }
        _ => Err(Error::MethodNotAllowed("GET, POST, DELETE")),
    }
}
