//! The S3 backend (`source.kind = "s3"`): identifiers are keys below `source.s3.prefix` in
//! `source.s3.bucket`, on AWS or any S3-compatible endpoint (Ceph RGW, SeaweedFS, Garage, MinIO:
//! `source.s3.endpoint`, addressed path-style). Requests are signed (SigV4) by `object_store`, which
//! also retries idempotent reads with backoff; caching and deadlines are [`super::remote`]'s.
//!
//! Credentials come from the config or the standard `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY`
//! (and `AWS_SESSION_TOKEN`); they are never part of a message.

use super::remote::{download_with, Fetch, Io, Meta, Op};
use super::{Fingerprint, SourceError, EXTENSIONS};
use crate::config::S3SourceConfig;
use bytes::Bytes;
use futures_util::StreamExt as _;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as KeyPath;
use object_store::RetryConfig;
use object_store::{
    BackoffConfig, ClientOptions, GetOptions, GetRange, ObjectStore, ObjectStoreExt as _,
};
use std::fs::File;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

/// A bucket (and prefix) of source images.
pub(crate) struct S3Fetch {
    store: Arc<AmazonS3>,
    bucket: String,
    prefix: String,
}

impl S3Fetch {
    /// The bucket `cfg` names; `timeout` bounds each attempt (the caller bounds the whole call).
    pub(crate) fn new(cfg: &S3SourceConfig, timeout: Duration) -> Result<S3Fetch, String> {
        super::remote::install_tls_provider();
        // from_env: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_REGION...;
        // what the config sets wins.
        let mut b = AmazonS3Builder::from_env().with_bucket_name(&cfg.bucket);
        let region = if cfg.region.is_empty() {
            std::env::var("AWS_REGION").unwrap_or_else(|_| "us-east-1".into())
        } else {
            cfg.region.clone()
        };
        b = b.with_region(region);
        if !cfg.access_key_id.is_empty() {
            b = b.with_access_key_id(&cfg.access_key_id);
        }
        if !cfg.secret_access_key.is_empty() {
            b = b.with_secret_access_key(&cfg.secret_access_key);
        }
        if !cfg.endpoint.is_empty() {
            b = b
                .with_endpoint(cfg.endpoint.trim_end_matches('/'))
                .with_virtual_hosted_style_request(false);
        }
        let retry = RetryConfig {
            backoff: BackoffConfig {
                init_backoff: Duration::from_millis(50),
                max_backoff: Duration::from_secs(1),
                base: 2.0,
            },
            max_retries: 2,
            retry_timeout: timeout,
        };
        // allow_http lives in the client options, which replace the builder's own: set it here.
        let options = ClientOptions::new()
            .with_allow_http(cfg.endpoint.starts_with("http://"))
            .with_timeout(timeout)
            .with_connect_timeout(timeout.min(Duration::from_secs(5)));
        let store = b
            .with_retry(retry)
            .with_client_options(options)
            .build()
            // object_store's configuration errors name the setting, never its value.
            .map_err(|e| format!("source.s3: {e}"))?;
        let mut prefix = cfg.prefix.trim_matches('/').to_owned();
        if !prefix.is_empty() {
            prefix.push('/');
        }
        Ok(S3Fetch {
            store: Arc::new(store),
            bucket: cfg.bucket.clone(),
            prefix,
        })
    }

    fn key(&self, name: &str) -> KeyPath {
        KeyPath::from(format!("{}{name}", self.prefix))
    }
}

/// A failed request as the caller sees it. object_store's messages carry the URL and the service's
/// answer, never the signature or the keys.
fn failure(e: object_store::Error) -> SourceError {
    match e {
        object_store::Error::NotFound { path, .. } => SourceError::NotFound(path),
        object_store::Error::Precondition { path, .. } => SourceError::Unavailable {
            backend: "s3",
            reason: format!("'{path}' changed while it was being read; try again"),
        },
        other => SourceError::Unavailable {
            backend: "s3",
            reason: other.to_string(),
        },
    }
}

impl Fetch for S3Fetch {
    fn kind(&self) -> &'static str {
        "s3"
    }

    fn candidates(&self, identifier: &str) -> Result<Vec<String>, SourceError> {
        Ok(std::iter::once(identifier.to_owned())
            .chain(EXTENSIONS.iter().map(|ext| format!("{identifier}.{ext}")))
            .collect())
    }

    fn head(&self, io: &Io, name: &str) -> Result<Option<Meta>, SourceError> {
        let store = Arc::clone(&self.store);
        let key = self.key(name);
        let found = io.run(Op::Head, async move {
            match store.head(&key).await {
                Ok(m) => Ok(Some(m)),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(failure(e)),
            }
        })?;
        Ok(found.map(|m| {
            let version = m
                .e_tag
                .clone()
                .unwrap_or_else(|| m.last_modified.timestamp_micros().to_string());
            Meta {
                name: name.to_owned(),
                len: m.size,
                fingerprint: Fingerprint::new(format!(
                    "s3:{}/{}:{}:{version}",
                    self.bucket, m.location, m.size
                )),
                etag: m.e_tag,
                modified: Some(m.last_modified.into()),
            }
        }))
    }

    fn get_range(&self, io: &Io, meta: &Meta, range: Range<u64>) -> Result<Bytes, SourceError> {
        let store = Arc::clone(&self.store);
        let key = self.key(&meta.name);
        let options = GetOptions {
            range: Some(GetRange::Bounded(range)),
            if_match: meta.etag.clone(),
            ..GetOptions::default()
        };
        let bytes = io.run(Op::Get, async move {
            let got = store.get_opts(&key, options).await.map_err(failure)?;
            got.bytes().await.map_err(failure)
        })?;
        io.received(bytes.len() as u64);
        Ok(bytes)
    }

    fn download(&self, io: &Io, meta: &Meta, to: File) -> Result<u64, SourceError> {
        let store = Arc::clone(&self.store);
        let key = self.key(&meta.name);
        let options = GetOptions {
            if_match: meta.etag.clone(),
            ..GetOptions::default()
        };
        download_with(io, to, |tx| async move {
            let got = store.get_opts(&key, options).await.map_err(failure)?;
            let mut stream = got.into_stream();
            while let Some(chunk) = stream.next().await {
                if tx.send(chunk.map_err(failure)?).await.is_err() {
                    break;
                }
            }
            Ok(())
        })
    }

    fn list(&self, io: &Io) -> Result<Vec<String>, SourceError> {
        let store = Arc::clone(&self.store);
        let prefix = self.prefix.clone();
        io.run(Op::List, async move {
            let base = (!prefix.is_empty()).then(|| KeyPath::from(prefix.trim_end_matches('/')));
            let mut stream = store.list(base.as_ref());
            let mut names = Vec::new();
            while let Some(meta) = stream.next().await {
                let meta = meta.map_err(failure)?;
                let key = meta.location.to_string();
                if let Some(name) = key.strip_prefix(&prefix) {
                    names.push(name.to_owned());
                }
            }
            Ok(names)
        })
    }
}
