//! The HTTP edge: the only module that knows hyper. It accepts connections (HTTP/1.1 keep-alive and
//! HTTP/2 with prior knowledge on one listener), reads each request's body (bounded), and hands
//! plain `http::Request<Bytes>` values to the routers ([`routes`] for the public listener, [`admin`]
//! for the admin one), which every test can call in-process; [`response`] holds the one place
//! where an [`crate::error::Error`] becomes a response.

pub(crate) mod admin;
pub(crate) mod auth;
pub(crate) mod cdn;
pub(crate) mod headers;
pub(crate) mod response;
pub(crate) mod routes;
pub(crate) mod viewer;

use crate::app::App;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::HeaderValue;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::convert::Infallible;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};

/// Limits of one listener.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    /// Clients must send their request headers within this time (slowloris protection).
    pub(crate) header_timeout: Duration,
    /// Connections served at once.
    pub(crate) max_connections: usize,
    /// After shutdown begins, in-flight requests get this long to finish; then each one still
    /// waiting is answered 503 (`Retry-After: 1`) instead of being dropped.
    pub(crate) shutdown_grace: Duration,
}

/// Answer one request of the public listener, its body already read: what the server does for each
/// request, and what tests call to exercise the routes in-process.
pub async fn handle(app: &Arc<App>, req: Request<Bytes>) -> Response<Bytes> {
    routes::handle(app, req).await
}

/// Answer one request of the admin listener (see [`handle`]).
pub async fn handle_admin(app: &Arc<App>, req: Request<Bytes>) -> Response<Bytes> {
    admin::handle(app, req).await
}

/// The address of the connection a request came on (a request extension; absent in in-process
/// calls). Admission names clients by it unless the proxy names them in a header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Peer(pub(crate) std::net::IpAddr);

/// The largest request body read (a crawl request can carry a manifest); larger ones get 400.
const MAX_BODY: usize = 16 << 20;

/// After the grace period, how long connections get to send their 503s before they are closed.
const FINAL_WRITE: Duration = Duration::from_secs(5);

/// The HTTP/2 connection preface a client with prior knowledge sends first (RFC 9113 §3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Serve `handler` on `listener` until `shutdown` completes, then shut down gracefully and return.
///
/// Shutdown: connections that completed their handshake before it (still in the kernel's accept
/// queue) are accepted and served, then the listener is closed, so later clients are refused at
/// once. Every request whose head arrives on an open connection is answered: keep-alive is turned
/// off and each connection closes after its current request; a fresh connection still reads its first
/// request (within the header timeout). Requests still unanswered after `shutdown_grace` get a 503
/// with `Retry-After`; only a connection that cannot take even that within a few more seconds is cut.
pub(crate) async fn serve<H, F>(
    listener: TcpListener,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
    handler: H,
) where
    H: Fn(Request<Bytes>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Bytes>> + Send + 'static,
{
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections.max(1)));
    // `stop` tells connections to finish; `abandon` tells waiting handlers to answer 503. Every
    // connection task holds a clone of `alive`: when the last one ends, `all_closed` yields None.
    let (stop_tx, stop_rx) = watch::channel(false);
    let (abandon_tx, abandon_rx) = watch::channel(false);
    let (alive, mut all_closed) = mpsc::channel::<()>(1);
    let spawn = |stream: TcpStream,
                 peer: std::net::SocketAddr,
                 permit: Option<tokio::sync::OwnedSemaphorePermit>| {
        let handler = handler.clone();
        let (stop, abandon, alive) = (stop_rx.clone(), abandon_rx.clone(), alive.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let _alive = alive;
            connection(stream, Peer(peer.ip()), limits, handler, stop, abandon).await;
        });
    };
    tokio::pin!(shutdown);
    loop {
        // At most max_connections at once: further clients wait in the accept queue, not in memory.
        let permit = tokio::select! {
            p = Arc::clone(&slots).acquire_owned() => match p { Ok(p) => p, Err(_) => break },
            () = &mut shutdown => break,
        };
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => spawn(stream, peer, Some(permit)),
                Err(e) => {
                    // Usually EMFILE: back off instead of spinning.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            () = &mut shutdown => break,
        }
    }
    // Clients whose handshake completed are waiting in the accept queue with their requests on the
    // way: serve them rather than reset them when the listener closes.
    // Taken from the socket itself (not tokio's readiness, which may lag the kernel by an event).
    let mut drained = 0usize;
    if let Ok(queue) = listener.into_std() {
        while let Ok((stream, peer)) = queue.accept() {
            let stream = stream
                .set_nonblocking(true)
                .and_then(|()| TcpStream::from_std(stream));
            if let Ok(stream) = stream {
                spawn(stream, peer, None);
                drained += 1;
            }
        }
        // Closing the listener now refuses later clients at once.
        drop(queue);
    }
    let _ = stop_tx.send(true);
    drop(alive);
    tracing::info!(drained, "listener closed; finishing open connections");
    let finished = tokio::time::timeout(limits.shutdown_grace, all_closed.recv()).await;
    if finished.is_ok() {
        tracing::info!("all connections closed");
        return;
    }
    tracing::warn!(
        "shutdown grace period ({:?}) over; answering the requests still waiting with 503",
        limits.shutdown_grace
    );
    let _ = abandon_tx.send(true);
    if tokio::time::timeout(FINAL_WRITE, all_closed.recv())
        .await
        .is_err()
    {
        tracing::warn!("closing connections that did not finish");
    }
}

/// One connection: HTTP/2 with prior knowledge or HTTP/1.1, told apart by the first bytes.
async fn connection<H, F>(
    stream: TcpStream,
    peer: Peer,
    limits: Limits,
    handler: H,
    mut stop: watch::Receiver<bool>,
    abandon: watch::Receiver<bool>,
) where
    H: Fn(Request<Bytes>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Bytes>> + Send + 'static,
{
    let _ = stream.set_nodelay(true);
    let h2 = match tokio::time::timeout(limits.header_timeout, is_h2(&stream)).await {
        Ok(Some(h2)) => h2,
        // Closed before sending anything, or silent past the header timeout.
        Ok(None) | Err(_) => return,
    };
    // Whether a request has started on this connection (see the shutdown branch below).
    let started = Arc::new(AtomicBool::new(false));
    let service = {
        let (started, stop) = (Arc::clone(&started), stop.clone());
        service_fn(move |mut req: Request<Incoming>| {
            started.store(true, Ordering::Relaxed);
            req.extensions_mut().insert(peer);
            let handler = handler.clone();
            let (mut abandon, stop) = (abandon.clone(), stop.clone());
            async move {
                let work = async {
                    match read_body(req).await {
                        Ok(req) => handler(req).await,
                        Err(resp) => resp,
                    }
                };
                // Biased: the request first, and no random choice of branch on every request.
                let resp = tokio::select! {
                    biased;
                    resp = work => resp,
                    () = raised(&mut abandon) => response::shutting_down(),
                };
                let mut resp = resp.map(Full::new);
                // Shutting down: HTTP/1.1 clients learn that this connection ends after this
                // response (HTTP/2 says so with GOAWAY).
                if !h2 && *stop.borrow() {
                    resp.headers_mut()
                        .insert(hyper::header::CONNECTION, HeaderValue::from_static("close"));
                }
                Ok::<_, Infallible>(resp)
            }
        })
    };
    let io = TokioIo::new(stream);
    let result = if h2 {
        let mut b = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
        b.timer(TokioTimer::new()).max_header_list_size(64 * 1024);
        let conn = b.serve_connection(io, service);
        tokio::pin!(conn);
        tokio::select! {
            r = conn.as_mut() => r,
            () = raised(&mut stop) => {
                conn.as_mut().graceful_shutdown();
                conn.await
            }
        }
    } else {
        let mut b = hyper::server::conn::http1::Builder::new();
        b.timer(TokioTimer::new())
            .header_read_timeout(limits.header_timeout)
            .max_buf_size(64 * 1024)
            // Checked on the parsed head too: a large head that arrives in one read must not slip
            // past the buffer limit, which hyper checks only while the head is incomplete.
            .max_header_size(64 * 1024);
        let conn = b.serve_connection(io, service);
        tokio::pin!(conn);
        tokio::select! {
            r = conn.as_mut() => r,
            () = raised(&mut stop) => {
                // hyper's graceful shutdown closes a connection that has not read anything yet,
                // which would drop a request already on its way. So a fresh connection is left to
                // read its first request (within the header timeout) and answers it with
                // `Connection: close`; on any other, keep-alive is turned off: the request in
                // progress is answered, an idle connection closes.
                if started.load(Ordering::Relaxed) {
                    conn.as_mut().graceful_shutdown();
                }
                conn.await
            }
        }
    };
    if let Err(e) = result {
        tracing::debug!("connection ended with an error: {e}");
    }
}

/// The request with its body read (at most [`MAX_BODY`] bytes), or the error response to send.
async fn read_body(req: Request<Incoming>) -> Result<Request<Bytes>, Response<Bytes>> {
    let (parts, body) = req.into_parts();
    match Limited::new(body, MAX_BODY).collect().await {
        Ok(collected) => Ok(Request::from_parts(parts, collected.to_bytes())),
        Err(e) => Err(response::error(&crate::error::Error::BadRequest(format!(
            "cannot read the request body (at most {MAX_BODY} bytes): {e}"
        )))),
    }
}

/// Resolves once the flag is set (or its sender is gone). Holds no borrow of the flag across awaits,
/// so the futures that wait on it stay `Send`.
async fn raised(flag: &mut watch::Receiver<bool>) {
    let _ = flag.wait_for(|set| *set).await;
}

/// Whether the client opens with the HTTP/2 preface; `None` if it closes first. Waits for as many
/// bytes as it takes to tell (one packet, nearly always).
async fn is_h2(stream: &TcpStream) -> Option<bool> {
    let mut buf = [0u8; 24];
    loop {
        let n = stream.peek(&mut buf).await.ok()?;
        if n == 0 {
            return None;
        }
        if buf[..n] != H2_PREFACE[..n] {
            return Some(false);
        }
        if n == H2_PREFACE.len() {
            return Some(true);
        }
        // A prefix of the preface so far: the rest is on its way.
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}
