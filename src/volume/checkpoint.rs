//! Metadata checkpoints: every map of a volume (current and snapshots) as of the end of
//! an epoch, plus the raw size of every sealed SCO, so a restart loads it and replays
//! only later TLogs. Stored as `<volume>/meta/checkpoint/<epoch>`: LZ4 of
//!
//! ```text
//! magic "LDCKPT04" | epoch u64 | clusters u64 | map | n_scos u64 | (sco u64, clusters u32)*
//! | next_snap_id u32 | n_snaps u32
//! | (id u32, created u64, epoch u64, name_len u8, name, clusters u64, map)* | crc32c u32
//! map: n_runs u64 | (cluster u64, count u32, first entry u64)*
//! ```
//! A run's locations are consecutive in one SCO, or it repeats the ZERO marker.
//! Each snapshot keeps its own size (a volume may have been resized since). Versions 2
//! (no snapshot section) and 3 (snapshots of the volume's size) still decode.

use std::collections::BTreeMap;

use super::location::{Location, MAX_CLUSTERS_PER_SCO, ZERO};
use super::map::ClusterMap;
use super::snap_set::{Snapshot, Snapshots};
use crate::error::{Error, Result};

const MAGIC_V2: &[u8; 8] = b"LDCKPT02";
const MAGIC_V3: &[u8; 8] = b"LDCKPT03";
const MAGIC: &[u8; 8] = b"LDCKPT04";
/// Largest map a checkpoint may declare (as `create_volume` allows).
const MAX_CLUSTERS: u64 = 1 << 40;

/// What a checkpoint holds.
pub struct CheckpointData {
    pub epoch: u64,
    pub map: ClusterMap,
    pub snaps: Snapshots,
    pub sco_sizes: BTreeMap<u64, u32>,
}

fn encode_map(map: &ClusterMap, out: &mut Vec<u8>) {
    let mut runs: Vec<(u64, u32, u64)> = Vec::new();
    map.for_each_mapped(|c, e| {
        if let Some((rc, rn, re)) = runs.last_mut() {
            let contiguous = *rc + *rn as u64 == c && *rn < u32::MAX;
            let follows = if *re == ZERO {
                e == ZERO
            } else {
                match (Location::unpack(*re), Location::unpack(e)) {
                    (Some(a), Some(b)) => a.sco == b.sco && a.index as u64 + *rn as u64 == b.index as u64,
                    _ => false,
                }
            };
            if contiguous && follows {
                *rn += 1;
                return;
            }
        }
        runs.push((c, 1, e));
    });
    out.extend_from_slice(&(runs.len() as u64).to_le_bytes());
    for (c, n, e) in runs {
        out.extend_from_slice(&c.to_le_bytes());
        out.extend_from_slice(&n.to_le_bytes());
        out.extend_from_slice(&e.to_le_bytes());
    }
}

/// Serialize every map and the sealed SCOs' sizes (in clusters) as of the end of `epoch`.
pub fn encode(cp: &CheckpointData) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&cp.epoch.to_le_bytes());
    out.extend_from_slice(&cp.map.clusters().to_le_bytes());
    encode_map(&cp.map, &mut out);
    out.extend_from_slice(&(cp.sco_sizes.len() as u64).to_le_bytes());
    for (sco, n) in &cp.sco_sizes {
        out.extend_from_slice(&sco.to_le_bytes());
        out.extend_from_slice(&n.to_le_bytes());
    }
    out.extend_from_slice(&cp.snaps.next_id.to_le_bytes());
    out.extend_from_slice(&(cp.snaps.list.len() as u32).to_le_bytes());
    for s in cp.snaps.list.values() {
        out.extend_from_slice(&s.id.to_le_bytes());
        out.extend_from_slice(&s.created.to_le_bytes());
        out.extend_from_slice(&s.epoch.to_le_bytes());
        out.push(s.name.len() as u8);
        out.extend_from_slice(s.name.as_bytes());
        out.extend_from_slice(&s.map.clusters().to_le_bytes());
        encode_map(&s.map, &mut out);
    }
    let crc = crate::crc::crc32c(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    lz4_flex::block::compress_prepend_size(&out)
}

/// A bounds-checked reader over the checkpoint body.
struct Cursor<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let s = self.b.get(self.at..self.at.checked_add(n)?)?;
        self.at += n;
        Some(s)
    }
    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().unwrap()))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().unwrap()))
    }
}

fn decode_map(c: &mut Cursor, clusters: u64) -> std::result::Result<ClusterMap, &'static str> {
    let n = c.u64().ok_or("checkpoint length mismatch")?;
    let mut map = ClusterMap::new(clusters);
    for _ in 0..n {
        let (Some(start), Some(cnt), Some(e)) = (c.u64(), c.u32(), c.u64()) else {
            return Err("checkpoint length mismatch");
        };
        let cnt = cnt as u64;
        if start.checked_add(cnt).is_none_or(|end| end > clusters) {
            return Err("checkpoint run outside the volume");
        }
        match Location::unpack(e) {
            Some(l) => {
                if l.index as u64 + cnt > MAX_CLUSTERS_PER_SCO {
                    return Err("checkpoint run outside its SCO");
                }
                for i in 0..cnt {
                    map.set(start + i, l.advance(i as u32).pack());
                }
            }
            None if e == ZERO => map.fill(start, cnt, ZERO),
            None => return Err("checkpoint has an unmapped run"),
        }
    }
    Ok(map)
}

/// Decode a checkpoint (its maps have the sizes it records).
pub fn decode(key: &str, bytes: &[u8]) -> Result<CheckpointData> {
    let bad = |d: &str| Error::Corrupt { key: key.to_string(), detail: d.to_string() };
    let raw = lz4_flex::block::decompress_size_prepended(bytes).map_err(|_| bad("cannot decompress checkpoint"))?;
    if raw.len() < 36 || ![MAGIC, MAGIC_V3, MAGIC_V2].contains(&&raw[..8].try_into().unwrap()) {
        return Err(bad("bad checkpoint header"));
    }
    let v2 = &raw[..8] == MAGIC_V2;
    let v4 = &raw[..8] == MAGIC;
    let body = &raw[..raw.len() - 4];
    if crate::crc::crc32c(body) != u32::from_le_bytes(raw[raw.len() - 4..].try_into().unwrap()) {
        return Err(bad("checkpoint checksum mismatch"));
    }
    let mut c = Cursor { b: body, at: 8 };
    let epoch = c.u64().ok_or_else(|| bad("checkpoint length mismatch"))?;
    let clusters = c.u64().filter(|n| (1..MAX_CLUSTERS).contains(n)).ok_or_else(|| bad("bad checkpoint size"))?;
    let map = decode_map(&mut c, clusters).map_err(bad)?;
    let short = || bad("checkpoint length mismatch");
    let n_scos = c.u64().ok_or_else(short)?;
    let mut sco_sizes = BTreeMap::new();
    for _ in 0..n_scos {
        let (Some(sco), Some(n)) = (c.u64(), c.u32()) else { return Err(short()) };
        sco_sizes.insert(sco, n);
    }
    let mut snaps = Snapshots::default();
    if !v2 {
        snaps.next_id = c.u32().ok_or_else(short)?;
        let n = c.u32().ok_or_else(short)?;
        for _ in 0..n {
            let (Some(id), Some(created), Some(s_epoch), Some(len)) = (c.u32(), c.u64(), c.u64(), c.u8()) else {
                return Err(short());
            };
            let name = c.take(len as usize).ok_or_else(short)?;
            let name = String::from_utf8(name.to_vec()).map_err(|_| bad("bad snapshot name"))?;
            let s_clusters = if v4 {
                c.u64().filter(|n| (1..MAX_CLUSTERS).contains(n)).ok_or_else(|| bad("bad snapshot size"))?
            } else {
                clusters
            };
            let smap = decode_map(&mut c, s_clusters).map_err(bad)?;
            snaps.insert(Snapshot { id, name, created, epoch: s_epoch, map: smap });
        }
    }
    if c.at != body.len() {
        return Err(short());
    }
    Ok(CheckpointData { epoch, map, snaps, sco_sizes })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(m: &ClusterMap) -> Vec<(u64, u64)> {
        let mut a = vec![];
        m.for_each_mapped(|c, e| a.push((c, e)));
        a
    }

    #[test]
    fn round_trip() {
        let mut m = ClusterMap::new(100_000);
        for i in 0..1000 {
            m.set(i, Location::new(3, i as u32).pack());
        }
        m.set(5000, ZERO);
        m.set(5001, ZERO);
        m.set(7000, Location::new(9, 1).pack());
        let mut snaps = Snapshots::default();
        snaps.insert(Snapshot { id: 2, name: "before".into(), created: 77, epoch: 5, map: m.clone() });
        m.set(7001, Location::new(8, 2).pack());
        let sizes = BTreeMap::from([(3u64, 1000u32), (8, 3), (9, 2)]);
        let cp = CheckpointData { epoch: 42, map: m, snaps, sco_sizes: sizes.clone() };
        let b = encode(&cp);
        let d = decode("k", &b).unwrap();
        assert_eq!(d.epoch, 42);
        assert_eq!(d.sco_sizes, sizes);
        assert_eq!(entries(&d.map), entries(&cp.map));
        let s = d.snaps.by_name("before").unwrap();
        assert_eq!((s.id, s.created, s.epoch), (2, 77, 5));
        assert_eq!(entries(&s.map), entries(&cp.snaps.list[&2].map));
        assert_eq!(d.snaps.next_id, 3);
        assert_eq!((d.map.clusters(), s.map.clusters()), (100_000, 100_000));
        let mut bad = b.clone();
        let n = bad.len();
        bad[n - 1] ^= 1;
        assert!(decode("k", &bad).is_err());
    }

    #[test]
    fn snapshots_keep_their_size() {
        let mut m = ClusterMap::new(1000);
        m.set(999, Location::new(1, 0).pack());
        let mut snaps = Snapshots::default();
        snaps.insert(Snapshot { id: 1, name: "small".into(), created: 1, epoch: 1, map: m.clone() });
        m.resize(5000);
        m.set(4999, Location::new(1, 1).pack());
        let cp = CheckpointData { epoch: 2, map: m, snaps, sco_sizes: BTreeMap::new() };
        let d = decode("k", &encode(&cp)).unwrap();
        assert_eq!(d.map.clusters(), 5000);
        assert_eq!(entries(&d.map), entries(&cp.map));
        let s = d.snaps.by_name("small").unwrap();
        assert_eq!(s.map.clusters(), 1000);
        assert_eq!(entries(&s.map), vec![(999, Location::new(1, 0).pack())]);
    }
}
