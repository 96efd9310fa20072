//! The daemon: one [`App`] behind the public and the admin listener, until SIGINT or SIGTERM. Binds
//! the listeners, prints their addresses, tells systemd, serves, and shuts down in order: listeners
//! first (see `crate::http`), then the pipeline and the store.

use crate::app::App;
use crate::config::Config;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

/// Run the server until SIGINT or SIGTERM: open everything, bind both listeners, print their
/// addresses (for scripts and tests that ask for port 0), tell systemd, serve, shut down in order.
pub(crate) fn run(cfg: Config) -> io::Result<()> {
    crate::sys::keep_render_heap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("iiifd-async")
        .build()?;
    runtime.block_on(async move {
        let cfg2 = cfg.clone();
        let app = tokio::task::spawn_blocking(move || App::new(cfg2))
            .await
            .map_err(io::Error::other)??;
        tracing::info!(recovery = ?app.recovery(), "store opened");
        // Opening the index replays its log: transient memory, not ours to keep.
        crate::sys::release_free_heap();
        let app = Arc::new(app);
        app.start()?;
        let listener = bind(cfg.listen)?;
        let admin_listener = bind(cfg.admin.listen)?;
        let (addr, admin_addr) = (listener.local_addr()?, admin_listener.local_addr()?);
        // Handlers first: once the addresses are printed (or systemd is told READY), a SIGTERM must
        // stop us gracefully, not kill us the default way.
        let shutdown = shutdown_signal();
        println!("iiifd listening on http://{addr}{}/", cfg.prefix);
        println!("iiifd admin on http://{admin_addr}/");
        tracing::info!(%addr, %admin_addr, source = app.pipeline().source().kind(), workers = app.pipeline().pool().size(), "iiifd started");
        tracing::info!("{}", app.config().memory_bound());
        let codecs = crate::render::decode::jpeg::codec_description();
        if crate::render::decode::jpeg::simd() {
            tracing::info!("{codecs}");
        } else {
            tracing::warn!("{codecs}");
        }
        sd_notify("READY=1");
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|s| *s).await;
        };
        let limits = crate::http::Limits {
            header_timeout: std::time::Duration::from_millis(cfg.http.header_timeout_ms),
            max_connections: cfg.http.max_connections,
            shutdown_grace: std::time::Duration::from_secs(cfg.http.shutdown_grace_secs),
        };
        let (a, b) = (Arc::clone(&app), Arc::clone(&app));
        let public = crate::http::serve(listener, limits, stopped(stop_rx.clone()), move |req| {
            let app = Arc::clone(&a);
            async move { crate::http::handle(&app, req).await }
        });
        let admin = crate::http::serve(admin_listener, limits, stopped(stop_rx), move |req| {
            let app = Arc::clone(&b);
            async move { crate::http::handle_admin(&app, req).await }
        });
        let signal = async move {
            shutdown.await;
            sd_notify("STOPPING=1");
            let _ = stop_tx.send(true);
        };
        tokio::join!(public, admin, signal);
        let app2 = Arc::clone(&app);
        let _ = tokio::task::spawn_blocking(move || app2.shutdown()).await;
        tracing::info!("iiifd stopped");
        Ok(())
    })
}

/// Installs the SIGINT and SIGTERM handlers now, and returns what resolves when either arrives.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{signal, SignalKind};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    async move {
        match (term, int) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => {},
                    _ = int.recv() => {},
                }
            }
            (Ok(mut one), Err(e)) | (Err(e), Ok(mut one)) => {
                tracing::warn!("cannot listen for one of SIGINT/SIGTERM: {e}");
                one.recv().await;
            }
            (Err(e), Err(_)) => {
                tracing::warn!("cannot listen for SIGINT or SIGTERM: {e}");
                std::future::pending::<()>().await;
            }
        }
        tracing::info!("shutting down: finishing in-flight requests");
    }
}

/// Tell systemd about our state (`Type=notify`) when it started us: a datagram to `$NOTIFY_SOCKET`,
/// which is a path or, with a leading `@`, an abstract socket name. Silently nothing otherwise.
fn sd_notify(state: &str) {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::net::UnixDatagram;
    let Some(target) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let Ok(sock) = UnixDatagram::unbound() else {
        return;
    };
    let bytes = target.as_bytes();
    let sent = if let Some(name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        std::os::unix::net::SocketAddr::from_abstract_name(name)
            .and_then(|a| sock.send_to_addr(state.as_bytes(), &a))
    } else {
        sock.send_to(state.as_bytes(), std::path::Path::new(&target))
    };
    if let Err(e) = sent {
        tracing::warn!("sd_notify {state}: {e}");
    }
}

/// Connections the kernel may hold for us before we accept them. tokio's default (1024) is less
/// than a burst of new connections can be (2,000 at once in the overload test; a crawler, or a
/// proxy that does not keep connections alive): past it SYNs are dropped and those clients wait
/// 1-3 s for their retransmission. The kernel caps it at `net.core.somaxconn` (4096 by default).
const LISTEN_BACKLOG: u32 = 4096;

/// Listen on `addr` (with `SO_REUSEADDR`, as tokio's `bind` sets) with [`LISTEN_BACKLOG`].
fn bind(addr: SocketAddr) -> io::Result<tokio::net::TcpListener> {
    let listen = || {
        let socket = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        socket.listen(LISTEN_BACKLOG)
    };
    listen().map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))
}
