//! Cluster checksums in the TLog ([`Record::Crcs`]): logged right after the record that
//! maps a landed write, and read back on open into the checksum tables of the local SCO
//! files, so that reads of data written before a restart (clean or not) are still
//! checked for rot (see [`super::sco_crcs`]). A TLog without them (older versions)
//! replays as before: its clusters stay unknown until the uploader reads them back.

use std::collections::BTreeMap;

use super::cluster_crc;
use super::location::Location;
use super::sco_crcs::ScoCrcs;
use super::tlog::{Record, CRCS_PER_RECORD};

/// Call `f` with the records carrying the known values of `values` (checksums in
/// [`cluster_crc`] form, one per cluster from `loc`): one record per run of up to
/// [`CRCS_PER_RECORD`] consecutive known ones; unknown clusters get none.
pub fn for_each_record<E>(loc: Location, values: &[u64], mut f: impl FnMut(Record) -> Result<(), E>) -> Result<(), E> {
    let mut i = 0usize;
    while i < values.len() {
        let mut crcs = [0u32; CRCS_PER_RECORD];
        let mut n = 0usize;
        while n < CRCS_PER_RECORD && i + n < values.len() {
            match cluster_crc::get(values[i + n]) {
                Some(c) => crcs[n] = c,
                None => break,
            }
            n += 1;
        }
        if n == 0 {
            i += 1;
            continue;
        }
        f(Record::Crcs { loc: loc.advance(i as u32), count: n as u8, crcs })?;
        i += n;
    }
    Ok(())
}

/// Checksums read from TLogs on open, kept until the local SCO files are open.
#[derive(Default)]
pub struct Replayed {
    /// SCO -> (first index, checksums), in log order.
    by_sco: BTreeMap<u64, Vec<(u32, u8, [u32; CRCS_PER_RECORD])>>,
}

impl Replayed {
    /// Keep the checksums among `records` (one TLog's, in order).
    pub fn collect(&mut self, records: &[Record]) {
        for r in records {
            if let Record::Crcs { loc, count, crcs } = *r {
                self.by_sco.entry(loc.sco).or_default().push((loc.index, count, crcs));
            }
        }
    }

    /// Store the checksums of SCO `sco`'s first `clusters` clusters into `table`
    /// (later records win). Returns how many clusters got one.
    pub fn apply(&self, sco: u64, clusters: u32, table: &ScoCrcs) -> u64 {
        let mut set = 0u64;
        for &(first, count, crcs) in self.by_sco.get(&sco).map(Vec::as_slice).unwrap_or(&[]) {
            for (i, &c) in crcs[..(count as usize).min(CRCS_PER_RECORD)].iter().enumerate() {
                let idx = first.saturating_add(i as u32);
                if idx < clusters {
                    table.set(idx, c);
                    set += 1;
                }
            }
        }
        set
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::volume::tlog::{parse, TlogWriter};

    #[test]
    fn a_long_write_logs_several_records_that_round_trip() {
        // 40 clusters: 3 known, 1 unknown, then 36 known (two full records and a rest).
        let mut values: Vec<u64> = (0..40u32).map(|i| cluster_crc::known(0x1000_0000 + i)).collect();
        values[3] = cluster_crc::UNKNOWN;
        let loc = Location::new(7, 100);
        let mut recs = vec![Record::Write { cluster: 5, count: 40, loc }];
        for_each_record(loc, &values, |r| -> Result<(), ()> {
            recs.push(r);
            Ok(())
        })
        .unwrap();
        let runs: Vec<(u32, u8)> = recs[1..]
            .iter()
            .map(|r| match *r {
                Record::Crcs { loc, count, .. } => (loc.index, count),
                _ => panic!("{r:?}"),
            })
            .collect();
        assert_eq!(runs, [(100, 3), (104, 16), (120, 16), (136, 4)]);

        let t = tempfile::tempdir().unwrap();
        let path = t.path().join("t");
        let mut w = TlogWriter::new(std::fs::File::create(&path).unwrap(), 7, 0, 0);
        let mut payload = Vec::new();
        recs.iter().for_each(|r| r.encode(&mut payload));
        // Write(21 bytes) + per record 10 bytes + 4 per checksum.
        assert_eq!(payload.len(), 21 + 4 * 10 + 39 * 4);
        w.write_batch(&payload, recs.len() as u32).unwrap();
        let p = parse(&std::fs::read(&path).unwrap(), 7);
        assert!(!p.torn);
        assert_eq!(p.records, recs);

        let mut replayed = Replayed::default();
        replayed.collect(&p.records);
        let table = ScoCrcs::new(200);
        // Only clusters the SCO holds (here 130 of them) are stored.
        assert_eq!(replayed.apply(7, 130, &table), 29);
        assert_eq!(replayed.apply(8, 130, &ScoCrcs::new(200)), 0);
        for i in 0..40u32 {
            let want = (i != 3 && 100 + i < 130).then_some(0x1000_0000 + i);
            assert_eq!(table.get(100 + i), want, "cluster {i}");
        }
    }

    #[test]
    fn bad_checksum_records_are_refused() {
        let mut b = Vec::new();
        Record::Crcs { loc: Location::new(2, 3), count: 2, crcs: [9; CRCS_PER_RECORD] }.encode(&mut b);
        // Only `count` values are written.
        assert_eq!(b.len(), 18);
        for bad_count in [0u8, 17, 255] {
            let mut c = b.clone();
            c[9] = bad_count;
            c.resize(10 + 4 * 255, 0);
            let mut batch = Vec::new();
            crate::volume::tlog::encode_batch(&mut batch, 1, 0, 1, &c[..10 + 4 * bad_count as usize]);
            assert_eq!(parse(&batch, 1).records, [], "count {bad_count}");
        }
    }
}
