//! Metadata checkpoints: the whole cluster map as of the end of an epoch, plus the raw
//! size of every sealed SCO, so a restart loads it and replays only later TLogs. Stored
//! as `<volume>/meta/checkpoint/<epoch>`: LZ4 of `magic | epoch u64 | clusters u64 |
//! n_runs u64 | runs | n_scos u64 | (sco u64, clusters u32)* | crc32c u32`, where a run is
//! `cluster u64 | count u32 | first entry u64` (locations consecutive, or a repeated ZERO
//! marker).

use std::collections::BTreeMap;

use super::location::{Location, ZERO};
use super::map::ClusterMap;
use crate::error::{Error, Result};

const MAGIC: &[u8; 8] = b"LDCKPT02";

/// Serialize `map` and the sealed SCOs' sizes (in clusters) as of the end of `epoch`.
pub fn encode(map: &ClusterMap, sco_sizes: &BTreeMap<u64, u32>, epoch: u64) -> Vec<u8> {
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
    let mut out = Vec::with_capacity(32 + runs.len() * 20);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&epoch.to_le_bytes());
    out.extend_from_slice(&map.clusters().to_le_bytes());
    out.extend_from_slice(&(runs.len() as u64).to_le_bytes());
    for (c, n, e) in runs {
        out.extend_from_slice(&c.to_le_bytes());
        out.extend_from_slice(&n.to_le_bytes());
        out.extend_from_slice(&e.to_le_bytes());
    }
    out.extend_from_slice(&(sco_sizes.len() as u64).to_le_bytes());
    for (sco, n) in sco_sizes {
        out.extend_from_slice(&sco.to_le_bytes());
        out.extend_from_slice(&n.to_le_bytes());
    }
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    lz4_flex::block::compress_prepend_size(&out)
}

/// What a checkpoint holds.
pub type Decoded = (u64, ClusterMap, BTreeMap<u64, u32>);

/// Decode a checkpoint into `(epoch, map, sco sizes)`.
pub fn decode(key: &str, bytes: &[u8], clusters: u64) -> Result<Decoded> {
    let bad = |d: &str| Error::Corrupt { key: key.to_string(), detail: d.to_string() };
    let raw = lz4_flex::block::decompress_size_prepended(bytes).map_err(|_| bad("cannot decompress checkpoint"))?;
    if raw.len() < 36 || &raw[..8] != MAGIC {
        return Err(bad("bad checkpoint header"));
    }
    let body = &raw[..raw.len() - 4];
    if crc32c::crc32c(body) != u32::from_le_bytes(raw[raw.len() - 4..].try_into().unwrap()) {
        return Err(bad("checkpoint checksum mismatch"));
    }
    let u64_at = |at: usize| u64::from_le_bytes(body[at..at + 8].try_into().unwrap());
    let epoch = u64_at(8);
    if u64_at(16) != clusters {
        return Err(bad("checkpoint is for a different volume size"));
    }
    let n = u64_at(24) as usize;
    let sizes_at = n.checked_mul(20).and_then(|b| b.checked_add(32)).filter(|&a| a + 8 <= body.len());
    let Some(sizes_at) = sizes_at else { return Err(bad("checkpoint length mismatch")) };
    let n_scos = u64_at(sizes_at) as usize;
    if Some(body.len()) != n_scos.checked_mul(12).and_then(|b| b.checked_add(sizes_at + 8)) {
        return Err(bad("checkpoint length mismatch"));
    }
    let mut sizes = BTreeMap::new();
    for i in 0..n_scos {
        let at = sizes_at + 8 + i * 12;
        sizes.insert(u64_at(at), u32::from_le_bytes(body[at + 8..at + 12].try_into().unwrap()));
    }
    let mut map = ClusterMap::new(clusters);
    for r in 0..n {
        let at = 32 + r * 20;
        let c = u64_at(at);
        let cnt = u32::from_le_bytes(body[at + 8..at + 12].try_into().unwrap()) as u64;
        let e = u64_at(at + 12);
        if c.checked_add(cnt).is_none_or(|end| end > clusters) {
            return Err(bad("checkpoint run outside the volume"));
        }
        match Location::unpack(e) {
            Some(l) => {
                if l.index as u64 + cnt > super::location::MAX_CLUSTERS_PER_SCO {
                    return Err(bad("checkpoint run outside its SCO"));
                }
                for i in 0..cnt {
                    map.set(c + i, l.advance(i as u32).pack());
                }
            }
            None if e == ZERO => {
                for i in 0..cnt {
                    map.set(c + i, ZERO);
                }
            }
            None => return Err(bad("checkpoint has an unmapped run")),
        }
    }
    Ok((epoch, map, sizes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let mut m = ClusterMap::new(100_000);
        for i in 0..1000 {
            m.set(i, Location::new(3, i as u32).pack());
        }
        m.set(5000, ZERO);
        m.set(5001, ZERO);
        m.set(7000, Location::new(9, 1).pack());
        m.set(7001, Location::new(8, 2).pack());
        let sizes = BTreeMap::from([(3u64, 1000u32), (8, 3), (9, 2)]);
        let b = encode(&m, &sizes, 42);
        let (e, d, s) = decode("k", &b, 100_000).unwrap();
        assert_eq!(e, 42);
        assert_eq!(s, sizes);
        let mut a = vec![];
        let mut z = vec![];
        m.for_each_mapped(|c, e| a.push((c, e)));
        d.for_each_mapped(|c, e| z.push((c, e)));
        assert_eq!(a, z);
        assert!(decode("k", &b, 99_999).is_err());
        let mut bad = b.clone();
        let n = bad.len();
        bad[n - 1] ^= 1;
        assert!(decode("k", &bad, 100_000).is_err());
    }
}
