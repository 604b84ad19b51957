//! Request counters of one S3 store (PUTs per GiB, bytes moved), for measurements and
//! metrics.

use std::sync::atomic::{AtomicU64, Ordering};

/// Requests made by one store (SDK retries of one request count once).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct S3Stats {
    /// Single-request PutObject calls.
    pub put_requests: u64,
    /// Multipart uploads started.
    pub multipart_uploads: u64,
    /// UploadPart calls.
    pub part_requests: u64,
    pub get_requests: u64,
    pub head_requests: u64,
    pub list_requests: u64,
    pub delete_requests: u64,
    /// Object bytes sent by successful puts.
    pub bytes_uploaded: u64,
    /// Body bytes received by GETs.
    pub bytes_downloaded: u64,
}

#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) put: AtomicU64,
    pub(crate) multipart: AtomicU64,
    pub(crate) part: AtomicU64,
    pub(crate) get: AtomicU64,
    pub(crate) head: AtomicU64,
    pub(crate) list: AtomicU64,
    pub(crate) delete: AtomicU64,
    pub(crate) up: AtomicU64,
    pub(crate) down: AtomicU64,
}

pub(crate) fn bump(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

impl Counters {
    pub(crate) fn snapshot(&self) -> S3Stats {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        S3Stats {
            put_requests: g(&self.put),
            multipart_uploads: g(&self.multipart),
            part_requests: g(&self.part),
            get_requests: g(&self.get),
            head_requests: g(&self.head),
            list_requests: g(&self.list),
            delete_requests: g(&self.delete),
            bytes_uploaded: g(&self.up),
            bytes_downloaded: g(&self.down),
        }
    }
}
