//! Which byte ranges of a volume hold data, and which clusters differ between two
//! snapshots: answers from the cluster maps alone (no data is read). Frontends turn them
//! into their protocol's allocation maps; backups into incremental images.

use serde::{Deserialize, Serialize};

use super::engine::Volume;
use super::location::{Location, UNMAPPED, ZERO};
use super::map::ClusterMap;
use crate::error::{Error, Result};

/// A run of bytes that either holds data or reads as zeroes without holding any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    pub offset: u64,
    pub len: u64,
    /// False: never written, discarded or zeroed (reads as zeroes, costs no space).
    pub data: bool,
}

/// A run of clusters whose content differs between two snapshots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangedExtent {
    /// Byte offset in the volume.
    pub offset: u64,
    /// Bytes (a multiple of the cluster size, clipped to the volume size).
    pub length: u64,
    /// True: the newer snapshot holds data there; false: it reads as zeroes there.
    pub data: bool,
}

/// Clusters looked at per hold of the volume lock (guest IO waits at most this long).
const SCAN_CHUNK: u64 = 16_384;

impl Volume {
    /// Visit the data and hole runs of `[offset, offset+len)` in order, clipped to that
    /// range, until `f` returns false. Clusters a clone reads from a parent count as data.
    pub fn extents(&self, offset: u64, len: u64, mut f: impl FnMut(Extent) -> bool) -> Result<()> {
        if offset.checked_add(len).is_none_or(|end| end > self.size()) {
            return Err(Error::OutOfRange { op: "block-status", offset, len, size: self.size() });
        }
        if len == 0 {
            return Ok(());
        }
        let end = offset + len;
        let mut cur: Option<Extent> = None;
        let mut c = offset >> self.shift;
        let last = (end - 1) >> self.shift;
        while c <= last {
            let stop = (c + SCAN_CHUNK).min(last + 1);
            let st = self.state.lock();
            while c < stop {
                let data = Location::unpack(st.maps.lookup(c).1).is_some();
                let start = (c << self.shift).max(offset);
                let stop_b = ((c + 1) << self.shift).min(end);
                match &mut cur {
                    Some(e) if e.data == data => e.len += stop_b - start,
                    _ => {
                        if let Some(e) = cur.take() {
                            if !f(e) {
                                return Ok(());
                            }
                        }
                        cur = Some(Extent { offset: start, len: stop_b - start, data });
                    }
                }
                c += 1;
            }
        }
        if let Some(e) = cur {
            f(e);
        }
        Ok(())
    }

    /// The clusters whose content differs between snapshots `from` and `to` (compared
    /// from the maps, sharing pages skipped), as runs; `data` tells whether `to` holds
    /// data there. A cluster rewritten with the same bytes counts as changed.
    pub fn snapshot_diff(&self, from: &str, to: &str) -> Result<Vec<ChangedExtent>> {
        let a = self.snapshot_map(from)?;
        let b = self.snapshot_map(to)?;
        Ok(self.diff_maps(&a, &b))
    }

    /// Changed runs between two maps of this volume (see [`Volume::snapshot_diff`]).
    pub fn diff_maps(&self, a: &ClusterMap, b: &ClusterMap) -> Vec<ChangedExtent> {
        let st = self.state.lock();
        let layers = st.maps.layers.clone();
        drop(st);
        // What a cluster reads as: its own entry, else the parents'; all zero kinds alike.
        let effective = |m: &ClusterMap, c: u64| {
            let mut e = m.get(c);
            if e == UNMAPPED {
                e = layers.iter().map(|l| l.map.get(c)).find(|&e| e != UNMAPPED).unwrap_or(UNMAPPED);
            }
            if e == UNMAPPED {
                ZERO
            } else {
                e
            }
        };
        let mut out: Vec<ChangedExtent> = Vec::new();
        let size = self.size();
        a.diff(b, |c| {
            let ea = effective(a, c);
            let eb = effective(b, c);
            if ea == eb {
                return;
            }
            let data = eb != ZERO;
            let offset = c << self.shift;
            let length = self.cs.min(size - offset);
            match out.last_mut() {
                Some(l) if l.data == data && l.offset + l.length == offset => l.length += length,
                _ => out.push(ChangedExtent { offset, length, data }),
            }
        });
        out
    }
}
