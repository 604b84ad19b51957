//! After a crash: check the batches an unsealed TLog got ahead of its data's sync
//! ("LDTU" batches, see [`super::tlog`]) against the data they map.
//!
//! Such a batch reached the disk's cache after the data it maps (the writes had
//! completed), but both were made durable by one later device flush. A power loss before
//! that flush can keep the batch and lose the data under it, as a device writes its
//! cache back in any order; its records would then map clusters to zeroes or to the stale
//! bytes of a recycled file. The checksum records each such batch carries
//! ([`Record::Crcs`], logged in the same batch as the records that map the data) are
//! compared with the SCO files. The first batch whose data does not match is cut, with
//! every batch after it: no flush completed after it (a completed flush makes the data
//! under every earlier batch durable), so no acknowledged flush loses anything, and the
//! clusters keep their older, flushed content. A cluster written without a checksum (a
//! guest changing its buffer during the write) cannot be checked; a flush whose records
//! hold one syncs the data before the records (`WriteLog::take_flush`). Known limit: the
//! records of completed writes logged before any flush (`Volume::log_completed`) can reach
//! the disk by the kernel's own writeback; such a record without checksums, kept by a power
//! loss that lost its data, maps its never-flushed cluster to what the SCO file held there.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::location::Location;
use super::tlog::{Parsed, Record};
use crate::error::{IoContext, Result};

/// What [`cut_unsynced`] found: the first batch whose data did not match.
#[derive(Debug)]
pub(crate) struct Cut {
    pub batch: u32,
    pub at: Location,
    /// Batches and records dropped (that one and every later one).
    pub batches: u32,
    pub records: usize,
}

/// Check every batch of `p` written ahead of its data against the SCO files in
/// `sco_dir` (clusters of `cluster_size` bytes) and cut `p` at the first one whose data
/// does not match. Checksums of SCOs that are not local (uploaded and dropped, so their
/// data was durable) are not checked. An SCO file that cannot be read (other than being
/// too short) is an error: cutting there could drop flushed writes.
pub(crate) fn cut_unsynced(p: &mut Parsed, sco_dir: &Path, cluster_size: u32) -> Result<Option<Cut>> {
    let cs = cluster_size as usize;
    let mut files: HashMap<u64, Option<File>> = HashMap::new();
    let mut buf = Vec::new();
    for b in p.ahead.clone() {
        for r in &p.records[b.first..b.end] {
            let Record::Crcs { loc, count, crcs } = *r else { continue };
            let path = sco_dir.join(format!("{:016x}", loc.sco));
            let file = match files.entry(loc.sco) {
                Entry::Occupied(o) => o.into_mut(),
                Entry::Vacant(v) => v.insert(match File::open(&path) {
                    Ok(f) => Some(f),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                    Err(e) => return Err(e).ctx(|| format!("cannot open {} to check a TLog tail", path.display())),
                }),
            };
            let Some(file) = file else { continue };
            let n = count as usize;
            buf.resize(n * cs, 0);
            // A short file holds none of the data: as much a mismatch as other bytes.
            let read = match file.read_exact_at(&mut buf, loc.index as u64 * cluster_size as u64) {
                Ok(()) => true,
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => false,
                Err(e) => return Err(e).ctx(|| format!("cannot read {} to check a TLog tail", path.display())),
            };
            let bad = (0..n).find(|&i| !read || crate::crc::crc32c(&buf[i * cs..(i + 1) * cs]) != crcs[i]);
            if let Some(i) = bad {
                let cut = Cut {
                    batch: b.seq,
                    at: loc.advance(i as u32),
                    batches: p.batches - b.seq,
                    records: p.records.len() - b.first,
                };
                p.cut_at(b);
                return Ok(Some(cut));
            }
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::volume::tlog::{parse, TlogWriter};

    fn batch(recs: &[Record]) -> (Vec<u8>, u32) {
        let mut p = Vec::new();
        recs.iter().for_each(|r| r.encode(&mut p));
        (p, recs.len() as u32)
    }

    fn write_crcs(cluster: u64, loc: Location, data: &[u8]) -> [Record; 2] {
        let mut crcs = [0u32; crate::volume::tlog::CRCS_PER_RECORD];
        crcs[0] = crate::crc::crc32c(data);
        [Record::Write { cluster, count: 1, loc }, Record::Crcs { loc, count: 1, crcs }]
    }

    #[test]
    fn cuts_at_the_first_batch_ahead_whose_data_is_missing() {
        let t = tempfile::tempdir().unwrap();
        let (sco_dir, cs) = (t.path().join("sco"), 4096usize);
        std::fs::create_dir(&sco_dir).unwrap();
        // SCO 3 holds clusters 0..3: the data of 0 and 1 landed, 2's did not (zeroes).
        let data: Vec<Vec<u8>> = (0..3u8).map(|i| vec![i + 1; cs]).collect();
        let mut sco = vec![0u8; 3 * cs];
        sco[..cs].copy_from_slice(&data[0]);
        sco[cs..2 * cs].copy_from_slice(&data[1]);
        std::fs::write(sco_dir.join(format!("{:016x}", 3)), &sco).unwrap();
        let path = t.path().join("tlog");
        let mut w = TlogWriter::new(File::create(&path).unwrap(), 3, 0, 0);
        // Batch 0: synced before its records (not checked even if it did not match).
        let (p, n) = batch(&write_crcs(10, Location::new(3, 2), &[9; 4096]));
        w.write_batch(&p, n).unwrap();
        // Batches 1 and 2 ahead, matching; 3 ahead, its data missing; 4 after it.
        for (seq, i) in [(1, 0usize), (2, 1)] {
            let (p, n) = batch(&write_crcs(20 + seq, Location::new(3, i as u32), &data[i]));
            w.write_batch_cached(&p, n).unwrap();
        }
        let (p, n) = batch(&write_crcs(30, Location::new(3, 2), &data[2]));
        w.write_batch_ahead(&p, n).unwrap();
        let (p, n) = batch(&[Record::Fill { cluster: 40, count: 1, entry: crate::volume::location::ZERO }]);
        w.write_batch_cached(&p, n).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let mut parsed = parse(&bytes, 3);
        assert_eq!(parsed.batches, 5);
        assert_eq!(parsed.ahead.iter().map(|a| a.seq).collect::<Vec<_>>(), [1, 2, 3, 4]);
        let whole = parsed.records.clone();
        let cut = cut_unsynced(&mut parsed, &sco_dir, cs as u32).unwrap().expect("batch 3 does not match");
        assert_eq!((cut.batch, cut.at, cut.batches, cut.records), (3, Location::new(3, 2), 2, 3));
        assert_eq!(parsed.batches, 3);
        assert_eq!(parsed.records, whole[..6]);
        assert!(parsed.torn);
        // What is left parses back to the same records once the file is cut there.
        assert_eq!(parse(&bytes[..parsed.valid_len as usize], 3).records, parsed.records);
        // Checked again: nothing more to cut. With the data there, nothing is cut.
        assert!(cut_unsynced(&mut parsed, &sco_dir, cs as u32).unwrap().is_none());
        sco[2 * cs..].copy_from_slice(&data[2]);
        std::fs::write(sco_dir.join(format!("{:016x}", 3)), &sco).unwrap();
        let mut parsed = parse(&bytes, 3);
        assert!(cut_unsynced(&mut parsed, &sco_dir, cs as u32).unwrap().is_none());
        assert_eq!(parsed.records, whole);
        // A file too short for the data is a mismatch; a missing file is not checked.
        std::fs::write(sco_dir.join(format!("{:016x}", 3)), &sco[..2 * cs]).unwrap();
        assert_eq!(cut_unsynced(&mut parse(&bytes, 3), &sco_dir, cs as u32).unwrap().map(|c| c.batch), Some(3));
        std::fs::remove_file(sco_dir.join(format!("{:016x}", 3))).unwrap();
        assert!(cut_unsynced(&mut parse(&bytes, 3), &sco_dir, cs as u32).unwrap().is_none());
        // A file that cannot be read (here a directory in its place) fails the check:
        // cutting there could drop flushed writes.
        std::fs::create_dir(sco_dir.join(format!("{:016x}", 3))).unwrap();
        let e = cut_unsynced(&mut parse(&bytes, 3), &sco_dir, cs as u32).unwrap_err();
        assert!(e.to_string().contains("to check a TLog tail"), "{e}");
    }
}
