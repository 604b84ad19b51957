//! TLog records: what one entry of a TLog batch says, and its byte encoding.
//!
//! ```text
//! 1 Write { cluster u64, count u32, location u64 }   clusters -> consecutive locations
//! 2 Fill  { cluster u64, count u64, entry u8 }       clusters -> ZERO or UNMAPPED
//! 3 Seal  { sco u64, clusters u32 }                  last record of a sealed TLog
//! 4 Snapshot { id u32, created u64, name_len u8, name }  snapshot of the map here
//! 5 SnapDelete { id u32 }
//! 6 Rollback { id u32 }                              map := snapshot's map
//! 7 Relocate { from u64, count u32, to u64 }         scrub moved data: in every
//!                                                    map, from+i -> to+i
//! 8 Resize { clusters u64 }
//! 9 Crcs { location u64, count u8, crc32c u32 * count }  checksums of `count`
//!                                                    clusters from location (1..=16)
//! ```

use super::location::{Location, UNMAPPED, ZERO};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Record {
    /// `count` clusters from `cluster` now live at consecutive locations from `loc`.
    Write { cluster: u64, count: u32, loc: Location },
    /// `count` clusters from `cluster` now hold `entry` (ZERO or UNMAPPED).
    Fill { cluster: u64, count: u64, entry: u64 },
    /// The epoch's SCO was sealed with `clusters` clusters of data.
    Seal { sco: u64, clusters: u32 },
    /// Snapshot `id` named `name` of the map as of this record.
    Snapshot { id: u32, created: u64, name: SnapName },
    /// Snapshot `id` is gone.
    SnapDelete { id: u32 },
    /// The current map becomes snapshot `id`'s map.
    Rollback { id: u32 },
    /// Scrub moved `count` clusters from `from` to `to`: every map entry (current map
    /// and every snapshot) equal to `from + i` becomes `to + i`.
    Relocate { from: Location, count: u32, to: Location },
    /// The volume has `clusters` clusters from here on (grown, or shrunk: clusters beyond
    /// the end are dropped). Snapshots keep the size they had.
    Resize { clusters: u64 },
    /// The crc32c of the `count` (1..=[`CRCS_PER_RECORD`]) clusters of data from `loc`
    /// (entries past `count` are zero). Logged after the record that maps them, so a
    /// restart can check reads of local SCO data for rot (see `super::crc_records`).
    Crcs { loc: Location, count: u8, crcs: [u32; CRCS_PER_RECORD] },
}

/// Most cluster checksums one [`Record::Crcs`] carries.
pub const CRCS_PER_RECORD: usize = 16;

/// A snapshot name stored inline (1..=64 bytes), so records stay `Copy`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct SnapName {
    len: u8,
    bytes: [u8; 64],
}

impl SnapName {
    /// `None` when the name does not fit.
    pub fn new(name: &str) -> Option<SnapName> {
        if name.is_empty() || name.len() > 64 {
            return None;
        }
        let mut bytes = [0u8; 64];
        bytes[..name.len()].copy_from_slice(name.as_bytes());
        Some(SnapName { len: name.len() as u8, bytes })
    }

    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.bytes[..self.len as usize]).unwrap_or("?")
    }
}

impl std::fmt::Debug for SnapName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.as_str())
    }
}

impl Record {
    pub fn encode(&self, out: &mut Vec<u8>) {
        match *self {
            Record::Write { cluster, count, loc } => {
                out.push(1);
                out.extend_from_slice(&cluster.to_le_bytes());
                out.extend_from_slice(&count.to_le_bytes());
                out.extend_from_slice(&loc.pack().to_le_bytes());
            }
            Record::Fill { cluster, count, entry } => {
                out.push(2);
                out.extend_from_slice(&cluster.to_le_bytes());
                out.extend_from_slice(&count.to_le_bytes());
                out.push(entry as u8);
            }
            Record::Seal { sco, clusters } => {
                out.push(3);
                out.extend_from_slice(&sco.to_le_bytes());
                out.extend_from_slice(&clusters.to_le_bytes());
            }
            Record::Snapshot { id, created, name } => {
                out.push(4);
                out.extend_from_slice(&id.to_le_bytes());
                out.extend_from_slice(&created.to_le_bytes());
                out.push(name.len);
                out.extend_from_slice(name.as_str().as_bytes());
            }
            Record::SnapDelete { id } => {
                out.push(5);
                out.extend_from_slice(&id.to_le_bytes());
            }
            Record::Rollback { id } => {
                out.push(6);
                out.extend_from_slice(&id.to_le_bytes());
            }
            Record::Relocate { from, count, to } => {
                out.push(7);
                out.extend_from_slice(&from.pack().to_le_bytes());
                out.extend_from_slice(&count.to_le_bytes());
                out.extend_from_slice(&to.pack().to_le_bytes());
            }
            Record::Resize { clusters } => {
                out.push(8);
                out.extend_from_slice(&clusters.to_le_bytes());
            }
            Record::Crcs { loc, count, crcs } => {
                out.push(9);
                out.extend_from_slice(&loc.pack().to_le_bytes());
                out.push(count);
                for c in &crcs[..(count as usize).min(CRCS_PER_RECORD)] {
                    out.extend_from_slice(&c.to_le_bytes());
                }
            }
        }
    }

    pub(super) fn decode(b: &[u8]) -> Option<(Record, usize)> {
        let u64_at = |at: usize| b.get(at..at + 8).map(|s| u64::from_le_bytes(s.try_into().unwrap()));
        let u32_at = |at: usize| b.get(at..at + 4).map(|s| u32::from_le_bytes(s.try_into().unwrap()));
        match *b.first()? {
            1 => {
                let loc = Location::unpack(u64_at(13)?)?;
                Some((Record::Write { cluster: u64_at(1)?, count: u32_at(9)?, loc }, 21))
            }
            2 => {
                let entry = *b.get(17)? as u64;
                if entry != ZERO && entry != UNMAPPED {
                    return None;
                }
                Some((Record::Fill { cluster: u64_at(1)?, count: u64_at(9)?, entry }, 18))
            }
            3 => Some((Record::Seal { sco: u64_at(1)?, clusters: u32_at(9)? }, 13)),
            4 => {
                let len = *b.get(13)? as usize;
                let name = std::str::from_utf8(b.get(14..14 + len)?).ok()?;
                Some((Record::Snapshot { id: u32_at(1)?, created: u64_at(5)?, name: SnapName::new(name)? }, 14 + len))
            }
            5 => Some((Record::SnapDelete { id: u32_at(1)? }, 5)),
            6 => Some((Record::Rollback { id: u32_at(1)? }, 5)),
            7 => {
                let from = Location::unpack(u64_at(1)?)?;
                let to = Location::unpack(u64_at(13)?)?;
                Some((Record::Relocate { from, count: u32_at(9)?, to }, 21))
            }
            8 => Some((Record::Resize { clusters: u64_at(1)? }, 9)),
            9 => {
                let loc = Location::unpack(u64_at(1)?)?;
                let count = *b.get(9)?;
                if count == 0 || count as usize > CRCS_PER_RECORD {
                    return None;
                }
                let mut crcs = [0u32; CRCS_PER_RECORD];
                for (i, c) in crcs[..count as usize].iter_mut().enumerate() {
                    *c = u32_at(10 + 4 * i)?;
                }
                Some((Record::Crcs { loc, count, crcs }, 10 + 4 * count as usize))
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip() {
        let all = [
            Record::Write { cluster: 10, count: 3, loc: Location::new(9, 0) },
            Record::Fill { cluster: 11, count: 1, entry: ZERO },
            Record::Fill { cluster: 0, count: 1 << 40, entry: UNMAPPED },
            Record::Seal { sco: 9, clusters: 3 },
            Record::Snapshot { id: 3, created: 1234, name: SnapName::new("s1.daily").unwrap() },
            Record::SnapDelete { id: 2 },
            Record::Rollback { id: 3 },
            Record::Relocate { from: Location::new(2, 5), count: 7, to: Location::new(9, 3) },
            Record::Resize { clusters: 77 },
            Record::Crcs { loc: Location::new(9, 1), count: 3, crcs: [7, 8, 9, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0] },
        ];
        for r in &all {
            let mut b = Vec::new();
            r.encode(&mut b);
            assert_eq!(Record::decode(&b), Some((*r, b.len())));
        }
    }
}
