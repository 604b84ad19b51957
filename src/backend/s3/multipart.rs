//! Multipart upload of one large object: parts uploaded with bounded concurrency, a
//! create-only completion (`If-None-Match: *`), and an abort of the upload on any failure
//! so no orphaned parts are left behind.

use std::ops::Range;

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use aws_sdk_s3::Client;
use tokio::task::JoinSet;

use super::errors::{classify, Ctx};
use super::stats::Counters;
use crate::error::{Error, Result};

/// One multipart upload.
pub(crate) struct Multipart<'a> {
    pub client: &'a Client,
    pub bucket: &'a str,
    /// Full key in the bucket (store prefix included).
    pub full_key: &'a str,
    /// The caller's key, for messages.
    pub key: &'a str,
    pub part_size: usize,
    pub concurrency: usize,
    /// Send `If-None-Match: *` on completion.
    pub conditional: bool,
    /// Reported in `StoreTimeout` errors.
    pub timeout_secs: u64,
    pub counters: &'a Counters,
}

/// Parts of `part` bytes; a remainder under half a part joins the last part instead of
/// making a tiny one (an SCO of 32 MiB plus its index is 4 parts of 8 MiB, not 5).
fn part_ranges(len: usize, part: usize) -> Vec<Range<usize>> {
    let mut out: Vec<Range<usize>> = (0..len / part).map(|i| i * part..(i + 1) * part).collect();
    let rest = len % part;
    match out.last_mut() {
        Some(last) if rest > 0 && rest < part / 2 => last.end = len,
        _ if rest > 0 => out.push(len - rest..len),
        _ => {}
    }
    out
}

impl Multipart<'_> {
    fn ctx(&self, op: &'static str) -> Ctx<'_> {
        Ctx { op, key: self.key, bucket: self.bucket, timeout_secs: self.timeout_secs }
    }

    /// Upload `data`; on failure the upload is aborted.
    pub async fn run(&self, data: &[u8]) -> Result<()> {
        let created = self
            .client
            .create_multipart_upload()
            .bucket(self.bucket)
            .key(self.full_key)
            .send()
            .await
            .map_err(|e| classify(e, &self.ctx("start multipart upload of")))?;
        let upload_id = created
            .upload_id()
            .ok_or_else(|| Error::Store(format!("start multipart upload of {}: no upload id in the answer", self.key)))?
            .to_string();
        let result = self.upload_and_complete(&upload_id, data).await;
        if result.is_err() {
            let abort = self
                .client
                .abort_multipart_upload()
                .bucket(self.bucket)
                .key(self.full_key)
                .upload_id(&upload_id)
                .send();
            if let Err(e) = abort.await {
                tracing::warn!(key = self.key, error = %classify(e, &self.ctx("abort multipart upload of")),
                    "cannot abort a failed multipart upload; its parts stay until the bucket's lifecycle rules remove them");
            }
        }
        result
    }

    async fn upload_and_complete(&self, upload_id: &str, data: &[u8]) -> Result<()> {
        let ranges = part_ranges(data.len(), self.part_size);
        let mut parts: Vec<CompletedPart> = Vec::with_capacity(ranges.len());
        let mut tasks = JoinSet::new();
        let mut next = 0;
        while next < ranges.len() || !tasks.is_empty() {
            while next < ranges.len() && tasks.len() < self.concurrency {
                let number = next as i32 + 1;
                let req = self
                    .client
                    .upload_part()
                    .bucket(self.bucket)
                    .key(self.full_key)
                    .upload_id(upload_id)
                    .part_number(number)
                    .body(ByteStream::from(data[ranges[next].clone()].to_vec()));
                self.counters.part.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tasks.spawn(async move { (number, req.send().await) });
                next += 1;
            }
            let Some(joined) = tasks.join_next().await else { break };
            let (number, res) = joined.map_err(|e| Error::Store(format!("upload part of {}: {e}", self.key)))?;
            match res {
                Ok(out) => {
                    let etag = out.e_tag().unwrap_or_default().to_string();
                    parts.push(CompletedPart::builder().part_number(number).e_tag(etag).build());
                }
                Err(e) => {
                    tasks.abort_all();
                    return Err(classify(e, &self.ctx("upload part of")));
                }
            }
        }
        parts.sort_by_key(|p| p.part_number());
        let mut complete = self
            .client
            .complete_multipart_upload()
            .bucket(self.bucket)
            .key(self.full_key)
            .upload_id(upload_id)
            .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(parts)).build());
        if self.conditional {
            complete = complete.if_none_match("*");
        }
        complete.send().await.map_err(|e| classify(e, &self.ctx("complete multipart upload of")))?;
        tracing::debug!(key = self.key, bytes = data.len(), "multipart upload complete");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_cover_the_object() {
        assert_eq!(part_ranges(11, 4), vec![0..4, 4..8, 8..11]);
        assert_eq!(part_ranges(9, 4), vec![0..4, 4..9]);
        assert_eq!(part_ranges(8, 4), vec![0..4, 4..8]);
        assert_eq!(part_ranges(3, 4), vec![0..3]);
        assert_eq!(part_ranges((32 << 20) + 4096, 8 << 20).len(), 4);
        assert!(part_ranges(0, 4).is_empty());
    }
}
