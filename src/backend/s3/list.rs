//! Listings: paginated ListObjectsV2, with delimiter "/" for the next path components,
//! skipping "directories" that no longer hold any object.

use super::errors::classify;
use super::stats::bump;
use super::S3Store;
use crate::backend::ObjectInfo;
use crate::error::{Error, Result};

impl S3Store {
    /// One listing, paginated. With a delimiter: (common prefixes, objects) directly below.
    pub(super) async fn list_pages(
        &self,
        full_prefix: &str,
        delimiter: bool,
        what: &str,
    ) -> Result<(Vec<String>, Vec<ObjectInfo>)> {
        let ctx = self.ctx("list", what, self.read_timeout.as_secs());
        let mut dirs = Vec::new();
        let mut objects = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut req = self
                .read
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(full_prefix)
                .max_keys(self.page_size)
                .set_continuation_token(token.take());
            if delimiter {
                req = req.delimiter("/");
            }
            bump(&self.counters.list, 1);
            let out = req.send().await.map_err(|e| classify(e, &ctx))?;
            for cp in out.common_prefixes() {
                if let Some(p) = cp.prefix() {
                    dirs.push(p.to_string());
                }
            }
            for o in out.contents() {
                if let Some(k) = o.key() {
                    objects.push(ObjectInfo { key: k.to_string(), size: o.size().unwrap_or(0).max(0) as u64 });
                }
            }
            match out.next_continuation_token() {
                Some(t) if out.is_truncated().unwrap_or(false) && !t.is_empty() => token = Some(t.to_string()),
                _ => break,
            }
        }
        Ok((dirs, objects))
    }

    /// Keep the common prefixes that hold at least one object. Some servers (SeaweedFS)
    /// keep listing a "directory" after its last object is deleted.
    pub(super) async fn non_empty(&self, dirs: Vec<String>, what: &str) -> Result<Vec<String>> {
        let mut keep = Vec::with_capacity(dirs.len());
        let mut tasks = tokio::task::JoinSet::new();
        let mut pending = dirs.into_iter();
        loop {
            while tasks.len() < 8 {
                let Some(d) = pending.next() else { break };
                bump(&self.counters.list, 1);
                let req = self.read.list_objects_v2().bucket(&self.bucket).prefix(&d).max_keys(1);
                tasks.spawn(async move { (d, req.send().await) });
            }
            let Some(joined) = tasks.join_next().await else { break };
            let (d, res) = joined.map_err(|e| Error::Store(format!("list {what}: {e}")))?;
            let out = res.map_err(|e| classify(e, &self.ctx("list", what, self.read_timeout.as_secs())))?;
            if out.key_count().unwrap_or(0) > 0 || !out.contents().is_empty() {
                keep.push(d);
            }
        }
        Ok(keep)
    }
}
