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
use object_store::{Attribute, Attributes, PutMode, PutOptions, PutPayload};
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

/// An S3 client for `cfg`'s bucket; `timeout` bounds each attempt (the caller bounds the whole
/// call). `what` names the config section in errors.
fn client(cfg: &S3SourceConfig, timeout: Duration, what: &str) -> Result<AmazonS3, String> {
    super::remote::install_tls_provider();
    // from_env: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_REGION...; what
    // the config sets wins.
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
    b.with_retry(retry)
        .with_client_options(options)
        .build()
        // object_store's configuration errors name the setting, never its value.
        .map_err(|e| format!("{what}: {e}"))
}

fn prefix_of(prefix: &str) -> String {
    let mut prefix = prefix.trim_matches('/').to_owned();
    if !prefix.is_empty() {
        prefix.push('/');
    }
    prefix
}

impl S3Fetch {
    /// The bucket `cfg` names; `timeout` bounds each attempt.
    pub(crate) fn new(cfg: &S3SourceConfig, timeout: Duration) -> Result<S3Fetch, String> {
        Ok(S3Fetch {
            store: Arc::new(client(cfg, timeout, "source.s3")?),
            bucket: cfg.bucket.clone(),
            prefix: prefix_of(&cfg.prefix),
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

/// A bucket of derivatives shared by the nodes of a cluster (the store's shared tier): objects are
/// created only if absent (`If-None-Match: *`), so two nodes storing one key cannot clobber each
/// other, and carry the blake3 of their bytes in their metadata, so a reader can check them.
pub(crate) struct SharedBucket {
    store: Arc<AmazonS3>,
    prefix: String,
}

/// The metadata key of the content hash (`x-amz-meta-b3`).
const HASH_META: &str = "b3";

impl SharedBucket {
    /// The bucket `cfg` names (credentials as for the S3 source).
    pub(crate) fn new(cfg: &S3SourceConfig, timeout: Duration) -> Result<SharedBucket, String> {
        Ok(SharedBucket {
            store: Arc::new(client(cfg, timeout, "store.shared")?),
            prefix: prefix_of(&cfg.prefix),
        })
    }

    fn key(&self, name: &str) -> KeyPath {
        KeyPath::from(format!("{}{name}", self.prefix))
    }

    /// The object `name` and the content hash it was stored with; `None` when there is none.
    pub(crate) fn get(
        &self,
        io: &Io,
        name: &str,
    ) -> Result<Option<(Bytes, Option<String>)>, SourceError> {
        let store = Arc::clone(&self.store);
        let key = self.key(name);
        let got = io.run(Op::Get, async move {
            let r = match store.get_opts(&key, GetOptions::default()).await {
                Ok(r) => r,
                Err(object_store::Error::NotFound { .. }) => return Ok(None),
                Err(e) => return Err(failure(e)),
            };
            let hash = r
                .attributes
                .get(&Attribute::Metadata(HASH_META.into()))
                .map(|v| v.to_string());
            Ok(Some((r.bytes().await.map_err(failure)?, hash)))
        })?;
        if let Some((bytes, _)) = &got {
            io.received(bytes.len() as u64);
        }
        Ok(got)
    }

    /// Create `name` with `bytes` unless it exists; returns whether this call created it.
    pub(crate) fn put_if_absent(
        &self,
        io: &Io,
        name: &str,
        bytes: Bytes,
        hash: String,
    ) -> Result<bool, SourceError> {
        let store = Arc::clone(&self.store);
        let key = self.key(name);
        io.run(Op::Put, async move {
            let mut attributes = Attributes::new();
            attributes.insert(Attribute::Metadata(HASH_META.into()), hash.into());
            let options = PutOptions {
                mode: PutMode::Create,
                attributes,
                ..PutOptions::default()
            };
            match store.put_opts(&key, PutPayload::from(bytes), options).await {
                Ok(_) => Ok(true),
                Err(object_store::Error::AlreadyExists { .. }) => Ok(false),
                Err(e) => Err(failure(e)),
            }
        })
    }

    /// The names below `dir` (a listing of `prefix` + `dir`).
    pub(crate) fn list(&self, io: &Io, dir: &str) -> Result<Vec<String>, SourceError> {
        let store = Arc::clone(&self.store);
        let prefix = self.prefix.clone();
        let below = self.key(dir.trim_end_matches('/'));
        io.run(Op::List, async move {
            let mut stream = store.list(Some(&below));
            let mut names = Vec::new();
            while let Some(meta) = stream.next().await {
                let key = meta.map_err(failure)?.location.to_string();
                if let Some(name) = key.strip_prefix(&prefix) {
                    names.push(name.to_owned());
                }
            }
            Ok(names)
        })
    }

    /// Remove `name` (absent is fine).
    pub(crate) fn delete(&self, io: &Io, name: &str) -> Result<(), SourceError> {
        let store = Arc::clone(&self.store);
        let key = self.key(name);
        io.run(Op::Delete, async move {
            match store.delete(&key).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                Err(e) => Err(failure(e)),
            }
        })
    }
}
