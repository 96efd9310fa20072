//! An in-process server: the library's `App` built from a configuration (with the directory backend
//! over a copy of the examples, or an in-memory backend), requests handed to its routers as plain
//! `http::Request` values. No socket, no process: for routes, headers, errors and the admin API.

use super::{copy_dir, examples, Response};
use bytes::Bytes;
use iiifd::config::Config;
use iiifd::source::Backend;
use iiifd::App;
use std::path::PathBuf;
use std::sync::Arc;

/// An `App` on a tokio runtime, with its store (and image copy) in a temp dir.
pub struct InProcess {
    pub app: Arc<App>,
    pub images: PathBuf,
    pub store: PathBuf,
    rt: tokio::runtime::Runtime,
    _tmp: tempfile::TempDir,
}

impl InProcess {
    /// Over a copy of the example images, default configuration.
    pub fn start() -> InProcess {
        InProcess::with(|_| {}, None)
    }

    /// Over a copy of the example images (or `source`, when given), after `configure` edits the
    /// default configuration.
    pub fn with(
        configure: impl FnOnce(&mut Config),
        source: Option<Arc<dyn Backend>>,
    ) -> InProcess {
        let tmp = tempfile::tempdir().expect("tempdir");
        let images = tmp.path().join("images");
        copy_dir(&examples(), &images);
        let store = tmp.path().join("store");
        let mut config = Config {
            images: images.clone(),
            ..Config::default()
        };
        config.store.path = store.clone();
        config.store.min_free_bytes = 0;
        configure(&mut config);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let app = rt.block_on(async {
            let app = match source {
                Some(s) => App::with_source(config, s),
                None => App::new(config),
            }
            .expect("app");
            app.start().expect("start");
            Arc::new(app)
        });
        InProcess {
            app,
            images,
            store,
            rt,
            _tmp: tmp,
        }
    }

    fn send(
        &self,
        admin: bool,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Response {
        let mut b = http::Request::builder().method(method).uri(path);
        b = b.header("host", "iiifd.test");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let req = b.body(Bytes::copy_from_slice(body)).expect("request");
        let app = Arc::clone(&self.app);
        let resp = self.rt.block_on(async move {
            if admin {
                iiifd::handle_admin(&app, req).await
            } else {
                iiifd::handle(&app, req).await
            }
        });
        Response {
            status: resp.status().as_u16(),
            headers: resp
                .headers()
                .iter()
                .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
                .collect(),
            body: resp.body().to_vec(),
        }
    }

    pub fn get(&self, path: &str) -> Response {
        self.send(false, "GET", path, &[], b"")
    }

    pub fn request(&self, method: &str, path: &str, headers: &[(&str, &str)]) -> Response {
        self.send(false, method, path, headers, b"")
    }

    pub fn admin(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Response {
        self.send(true, method, path, headers, body)
    }

    /// The value of an unlabelled Prometheus metric.
    pub fn metric(&self, name: &str) -> f64 {
        let text = self.admin("GET", "/metrics", &[], b"").text();
        text.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("metric {name} not found"))
    }

    /// Wait (up to 60 s) until `f` holds.
    pub fn wait_for(&self, what: &str, mut f: impl FnMut(&InProcess) -> bool) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while !f(self) {
            assert!(
                std::time::Instant::now() < deadline,
                "timed out waiting for {what}"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        let app = Arc::clone(&self.app);
        self.rt.block_on(async move {
            let _ = tokio::task::spawn_blocking(move || app.shutdown()).await;
        });
    }
}
