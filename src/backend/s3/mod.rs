//! The S3 object store (`s3://BUCKET/PREFIX`): the blocking `ObjectStore` trait over
//! aws-sdk-s3 on an internal tokio runtime. Puts are create-only (`If-None-Match: *`),
//! large objects go up in parts, reads are ranged GETs with a deadline, listings are
//! paginated. Failures become `ObjectNotFound`, `ObjectExists`, `StoreTimeout` or a
//! short `Store` line (transient: the uploader retries those).

mod connect;
mod errors;
mod list;
mod multipart;
mod stats;

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::Client;
use tokio::runtime::Runtime;

use self::connect::Clients;
use self::errors::{body_error, classify, status_and_code, Ctx, Redactor};
use self::multipart::Multipart;
pub use self::stats::S3Stats;
use self::stats::{bump, Counters};
use crate::backend::{ObjectInfo, ObjectStore};
use crate::config::S3Config;
use crate::error::{Error, Result};

/// An S3 bucket (and optional key prefix) as an object store.
pub struct S3Store {
    counters: Counters,
    rt: Option<Runtime>,
    read: Client,
    write: Client,
    bucket: String,
    /// Empty or ends with `/`.
    prefix: String,
    url: String,
    redactor: Redactor,
    read_timeout: Duration,
    /// Longest gap in a streamed body of a whole-object GET.
    read_attempt: Duration,
    write_attempt_secs: u64,
    multipart_threshold: usize,
    part_size: usize,
    multipart_concurrency: usize,
    page_size: i32,
    /// Cleared if the server refuses `If-None-Match` (501): then a HEAD guards the put.
    conditional_puts: AtomicBool,
}

/// Reject keys the local store would reject too, so both stores share one contract.
fn check_key(key: &str) -> Result<()> {
    if key.is_empty() || key.split('/').any(|c| c.is_empty() || c == "." || c == "..") {
        return Err(Error::InvalidArgument(format!("bad object key {key:?}")));
    }
    Ok(())
}

/// Total size from a `Content-Range: bytes a-b/total` header.
fn content_range_total(h: &str) -> Option<u64> {
    h.rsplit_once('/').and_then(|(_, t)| t.trim().parse().ok())
}

impl S3Store {
    /// Connect to `bucket` and check it exists. `prefix` has no leading or trailing `/`.
    pub fn open(bucket: &str, prefix: &str, cfg: &S3Config) -> Result<S3Store> {
        cfg.validate()?;
        let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2).clamp(2, 4);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name("logdisk-s3")
            .enable_all()
            .build()
            .map_err(|e| Error::io("cannot start the S3 client runtime", e))?;
        let opened = run_on(&rt, async {
            let clients: Clients = connect::build(cfg).await?;
            connect::check_bucket(&clients, bucket, cfg).await?;
            Ok::<_, Error>(clients)
        });
        let clients = match opened {
            Ok(c) => c,
            Err(e) => {
                rt.shutdown_background();
                return Err(e);
            }
        };
        let prefix = prefix.trim_matches('/');
        let url = if prefix.is_empty() { format!("s3://{bucket}") } else { format!("s3://{bucket}/{prefix}") };
        tracing::info!(url = %url, endpoint = %clients.endpoint, "S3 object store opened");
        Ok(S3Store {
            counters: Counters::default(),
            rt: Some(rt),
            read: clients.read,
            write: clients.write,
            bucket: bucket.to_string(),
            prefix: if prefix.is_empty() { String::new() } else { format!("{prefix}/") },
            url,
            redactor: clients.redactor,
            read_timeout: Duration::from_secs(cfg.read_timeout()),
            read_attempt: Duration::from_secs(cfg.read_attempt_timeout_secs),
            write_attempt_secs: cfg.write_attempt_timeout_secs,
            multipart_threshold: cfg.multipart_threshold.0 as usize,
            part_size: cfg.part_size.0 as usize,
            multipart_concurrency: cfg.multipart_concurrency,
            page_size: cfg.list_page_size as i32,
            conditional_puts: AtomicBool::new(true),
        })
    }

    /// Requests made so far.
    pub fn stats(&self) -> S3Stats {
        self.counters.snapshot()
    }

    fn full_key(&self, key: &str) -> Result<String> {
        check_key(key)?;
        Ok(format!("{}{}", self.prefix, key))
    }

    fn block_on<F>(&self, f: F) -> Result<F::Output>
    where
        F: Future + Send,
        F::Output: Send,
    {
        let rt = self.rt.as_ref().ok_or(Error::ShutDown)?;
        Ok(run_on(rt, f))
    }

    fn ctx<'a>(&'a self, op: &'static str, key: &'a str, timeout_secs: u64) -> Ctx<'a> {
        Ctx { op, key, bucket: &self.bucket, timeout_secs }
    }

    /// Run a read with the overall read deadline (which also bounds reading the body).
    fn read_op<T, F>(&self, op: &'static str, key: &str, f: F) -> Result<T>
    where
        F: Future<Output = Result<T>> + Send,
        T: Send,
    {
        let deadline = self.read_timeout;
        let started = Instant::now();
        let r = self.block_on(async move {
            match tokio::time::timeout(deadline, f).await {
                Ok(r) => r,
                Err(_) => Err(Error::StoreTimeout { what: format!("{op} {key}"), secs: deadline.as_secs() }),
            }
        })?;
        tracing::trace!(op, key, elapsed_ms = started.elapsed().as_millis() as u64, ok = r.is_ok(), "s3 read");
        r.map_err(|e| self.redactor.error(e))
    }

    /// GET with an optional Range header. With `stall`, the body may take as long as it
    /// needs as long as data keeps coming (no gap longer than `stall`).
    async fn get_object(
        &self,
        key: &str,
        full: &str,
        range: Option<String>,
        stall: Option<Duration>,
    ) -> Result<GetAnswer> {
        let secs = self.read_timeout.as_secs();
        let ctx = self.ctx("get", key, secs);
        bump(&self.counters.get, 1);
        let out = match self.read.get_object().bucket(&self.bucket).key(full).set_range(range).send().await {
            Ok(o) => o,
            Err(e) => {
                let (status, code) = status_and_code(&e);
                if status == Some(416) || code.as_deref() == Some("InvalidRange") {
                    return Ok(GetAnswer::Unsatisfiable);
                }
                return Err(classify(e, &ctx));
            }
        };
        let content_range = out.content_range().map(str::to_string);
        let body: Vec<u8> = match stall {
            None => out.body.collect().await.map_err(|e| body_error(&e, &ctx))?.into_bytes().into(),
            Some(stall) => {
                let mut body = out.body;
                let mut v = Vec::with_capacity(out.content_length.unwrap_or(0).clamp(0, 1 << 30) as usize);
                loop {
                    match tokio::time::timeout(stall, body.try_next()).await {
                        Ok(Ok(Some(chunk))) => v.extend_from_slice(&chunk),
                        Ok(Ok(None)) => break,
                        Ok(Err(e)) => return Err(body_error(&e, &ctx)),
                        Err(_) => {
                            return Err(Error::StoreTimeout {
                                what: format!("get {key} (no data for {} s)", stall.as_secs()),
                                secs: stall.as_secs(),
                            })
                        }
                    }
                }
                v
            }
        };
        bump(&self.counters.down, body.len() as u64);
        Ok(GetAnswer::Data { body, content_range })
    }

    async fn head_size(&self, key: &str, full: &str) -> Result<u64> {
        let ctx = self.ctx("head", key, self.read_timeout.as_secs());
        bump(&self.counters.head, 1);
        let out = self.read.head_object().bucket(&self.bucket).key(full).send().await.map_err(|e| classify(e, &ctx))?;
        Ok(out.content_length().unwrap_or(0).max(0) as u64)
    }

    async fn put_small(&self, key: &str, full: &str, data: &[u8], conditional: bool) -> Result<()> {
        let mut req = self.write.put_object().bucket(&self.bucket).key(full).body(ByteStream::from(data.to_vec()));
        if conditional {
            req = req.if_none_match("*");
        }
        bump(&self.counters.put, 1);
        match req.send().await {
            Ok(_) => {
                bump(&self.counters.up, data.len() as u64);
                Ok(())
            }
            Err(e) => {
                let (status, code) = status_and_code(&e);
                if conditional && (status == Some(501) || code.as_deref() == Some("NotImplemented")) {
                    return Err(Error::Store(NO_CONDITIONAL.into()));
                }
                Err(classify(e, &self.ctx("put", key, self.write_attempt_secs)))
            }
        }
    }

    async fn put_async(&self, key: &str, full: &str, data: &[u8]) -> Result<()> {
        let conditional = self.conditional_puts.load(Ordering::Relaxed);
        if data.len() > self.multipart_threshold {
            // A large upload is worth a HEAD first: do not send 16+ MiB to learn the key exists.
            match self.head_size(key, full).await {
                Ok(_) => return Err(Error::ObjectExists(key.to_string())),
                Err(Error::ObjectNotFound(_)) => {}
                Err(e) => return Err(e),
            }
            let mp = Multipart {
                client: &self.write,
                bucket: &self.bucket,
                full_key: full,
                key,
                part_size: self.part_size,
                concurrency: self.multipart_concurrency,
                conditional,
                timeout_secs: self.write_attempt_secs,
                counters: &self.counters,
            };
            bump(&self.counters.multipart, 1);
            mp.run(data).await?;
            bump(&self.counters.up, data.len() as u64);
            return Ok(());
        }
        if !conditional {
            match self.head_size(key, full).await {
                Ok(_) => return Err(Error::ObjectExists(key.to_string())),
                Err(Error::ObjectNotFound(_)) => {}
                Err(e) => return Err(e),
            }
            return self.put_small(key, full, data, false).await;
        }
        match self.put_small(key, full, data, true).await {
            Err(Error::Store(m)) if m == NO_CONDITIONAL => {
                tracing::warn!(url = %self.url, "the S3 server does not support If-None-Match on PUT; \
                    falling back to HEAD before PUT (not safe against concurrent writers)");
                self.conditional_puts.store(false, Ordering::Relaxed);
                match self.head_size(key, full).await {
                    Ok(_) => Err(Error::ObjectExists(key.to_string())),
                    Err(Error::ObjectNotFound(_)) => self.put_small(key, full, data, false).await,
                    Err(e) => Err(e),
                }
            }
            r => r,
        }
    }
}

const NO_CONDITIONAL: &str = "conditional put not implemented by the server";

enum GetAnswer {
    Data {
        body: Vec<u8>,
        content_range: Option<String>,
    },
    /// 416: the range starts at or after the end of the object.
    Unsatisfiable,
}

/// Run `f` on `rt`, also when the caller is itself inside some tokio runtime (where
/// `block_on` would panic): then a scoped helper thread does the blocking.
fn run_on<F>(rt: &Runtime, f: F) -> F::Output
where
    F: Future + Send,
    F::Output: Send,
{
    if tokio::runtime::Handle::try_current().is_ok() {
        std::thread::scope(|s| s.spawn(|| rt.block_on(f)).join().expect("S3 request thread panicked"))
    } else {
        rt.block_on(f)
    }
}

impl Drop for S3Store {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

impl ObjectStore for S3Store {
    fn url(&self) -> String {
        self.url.clone()
    }

    fn put(&self, key: &str, data: &[u8]) -> Result<()> {
        let full = self.full_key(key)?;
        let started = Instant::now();
        let r = self.block_on(self.put_async(key, &full, data))?.map_err(|e| self.redactor.error(e));
        tracing::debug!(
            key,
            bytes = data.len(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            ok = r.is_ok(),
            "s3 put"
        );
        r
    }

    /// Whole objects (TLogs, checkpoints, metadata) can be large: the answer must start
    /// within the read deadline (the SDK's operation timeout), then the body may take as
    /// long as it keeps flowing.
    fn get(&self, key: &str) -> Result<Vec<u8>> {
        let full = self.full_key(key)?;
        let r = self.block_on(async {
            match self.get_object(key, &full, None, Some(self.read_attempt)).await? {
                GetAnswer::Data { body, .. } => Ok(body),
                GetAnswer::Unsatisfiable => Ok(Vec::new()),
            }
        })?;
        r.map_err(|e| self.redactor.error(e))
    }

    fn get_range(&self, key: &str, offset: u64, len: u64) -> Result<Vec<u8>> {
        let full = self.full_key(key)?;
        self.read_op("get", key, async {
            if len == 0 {
                self.head_size(key, &full).await?;
                return Ok(Vec::new());
            }
            let last = offset.saturating_add(len - 1);
            match self.get_object(key, &full, Some(format!("bytes={offset}-{last}")), None).await? {
                GetAnswer::Unsatisfiable => Ok(Vec::new()),
                // A server that ignored the range sent the whole object.
                GetAnswer::Data { body, content_range: None } => {
                    let start = (offset as usize).min(body.len());
                    let end = (offset.saturating_add(len) as usize).min(body.len());
                    Ok(body[start..end].to_vec())
                }
                GetAnswer::Data { mut body, content_range: Some(_) } => {
                    body.truncate(len as usize);
                    Ok(body)
                }
            }
        })
    }

    fn get_tail(&self, key: &str, len: u64) -> Result<(Vec<u8>, u64)> {
        let full = self.full_key(key)?;
        self.read_op("get", key, async {
            if len == 0 {
                return Ok((Vec::new(), self.head_size(key, &full).await?));
            }
            match self.get_object(key, &full, Some(format!("bytes=-{len}")), None).await? {
                // Suffix ranges of an empty object are unsatisfiable.
                GetAnswer::Unsatisfiable => {
                    let size = self.head_size(key, &full).await?;
                    if size == 0 {
                        Ok((Vec::new(), 0))
                    } else {
                        Err(Error::Store(format!("get {key}: the server refused the suffix range of {len} bytes")))
                    }
                }
                GetAnswer::Data { body, content_range: Some(cr) } => {
                    let total = content_range_total(&cr)
                        .ok_or_else(|| Error::Store(format!("get {key}: unparsable Content-Range {cr:?}")))?;
                    Ok((body, total))
                }
                GetAnswer::Data { body, content_range: None } => {
                    let total = body.len() as u64;
                    let start = body.len().saturating_sub(len as usize);
                    Ok((body[start..].to_vec(), total))
                }
            }
        })
    }

    fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        let full_prefix = format!("{}{}", self.prefix, prefix);
        let (_, objects) = self.read_op("list", prefix, self.list_pages(&full_prefix, false, prefix))?;
        let mut out: Vec<ObjectInfo> = objects
            .into_iter()
            .filter_map(|o| o.key.strip_prefix(&self.prefix).map(|k| ObjectInfo { key: k.to_string(), size: o.size }))
            .collect();
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    fn list_children(&self, prefix: &str) -> Result<Vec<String>> {
        let full_prefix = format!("{}{}", self.prefix, prefix);
        let (dirs, objects) = self.read_op("list", prefix, async {
            let (dirs, objects) = self.list_pages(&full_prefix, true, prefix).await?;
            Ok((self.non_empty(dirs, prefix).await?, objects))
        })?;
        let mut out: Vec<String> = dirs
            .iter()
            .map(|d| d.as_str())
            .chain(objects.iter().map(|o| o.key.as_str()))
            .filter_map(|k| k.strip_prefix(full_prefix.as_str()))
            .map(|k| k.trim_end_matches('/').to_string())
            .filter(|k| !k.is_empty())
            .collect();
        out.sort();
        out.dedup();
        Ok(out)
    }

    fn delete(&self, key: &str) -> Result<()> {
        let full = self.full_key(key)?;
        self.read_op("delete", key, async {
            let ctx = self.ctx("delete", key, self.read_timeout.as_secs());
            bump(&self.counters.delete, 1);
            match self.read.delete_object().bucket(&self.bucket).key(&full).send().await {
                Ok(_) => Ok(()),
                Err(e) => match classify(e, &ctx) {
                    Error::ObjectNotFound(_) => Ok(()),
                    other => Err(other),
                },
            }
        })
    }

    fn delete_many(&self, keys: &[String]) -> Result<()> {
        use aws_sdk_s3::types::{Delete, ObjectIdentifier};
        /// The most keys S3 takes in one DeleteObjects request.
        const BATCH: usize = 1000;
        for chunk in keys.chunks(BATCH) {
            if chunk.len() == 1 {
                self.delete(&chunk[0])?;
                continue;
            }
            let mut ids = Vec::with_capacity(chunk.len());
            for k in chunk {
                let full = self.full_key(k)?;
                ids.push(
                    ObjectIdentifier::builder()
                        .key(full)
                        .build()
                        .map_err(|e| Error::Store(format!("delete {k}: {e}")))?,
                );
            }
            let delete = Delete::builder()
                .set_objects(Some(ids))
                .quiet(true)
                .build()
                .map_err(|e| Error::Store(format!("delete of {} objects: {e}", chunk.len())))?;
            let first = &chunk[0];
            self.read_op("delete-objects", first, async {
                let ctx = self.ctx("delete-objects", first, self.read_timeout.as_secs());
                bump(&self.counters.delete, 1);
                let out = self
                    .read
                    .delete_objects()
                    .bucket(&self.bucket)
                    .delete(delete)
                    .send()
                    .await
                    .map_err(|e| classify(e, &ctx))?;
                // Quiet mode lists only failures; a missing key is not one.
                match out.errors().iter().find(|e| e.code() != Some("NoSuchKey")) {
                    Some(e) => Err(Error::Store(format!(
                        "delete of {}: {} {}",
                        e.key().unwrap_or("?"),
                        e.code().unwrap_or(""),
                        e.message().unwrap_or("")
                    ))),
                    None => Ok(()),
                }
            })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_ranges() {
        assert!(check_key("v/g000001/sco/01").is_ok());
        for bad in ["", "/a", "a/", "a//b", "../x", "a/./b"] {
            assert!(check_key(bad).is_err(), "{bad}");
        }
        assert_eq!(content_range_total("bytes 10-19/1234"), Some(1234));
        assert_eq!(content_range_total("bytes */55"), Some(55));
        assert_eq!(content_range_total("bytes 0-1/*"), None);
    }
}
