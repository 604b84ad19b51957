//! Tests of the TLog writer and parser (`super::tlog`).

use super::*;
use crate::volume::location::{Location, UNMAPPED, ZERO};

#[test]
fn direct_batches_skip_padding_and_zeroed_tail() {
    use std::os::unix::fs::MetadataExt;
    // /var/tmp: a real disk here (O_DIRECT); elsewhere the writer falls back cleanly.
    let t = tempfile::tempdir_in("/var/tmp").or_else(|_| tempfile::tempdir()).unwrap();
    let path = t.path().join("t");
    let mut w = TlogWriter::create(&path, 5, true).unwrap();
    let dev = std::fs::metadata(&path).unwrap().dev();
    let direct = w.device() == Some(dev);
    let mut sfs: libc::statfs = unsafe { std::mem::zeroed() };
    let c = std::ffi::CString::new(t.path().as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: statfs fills the struct for a valid path.
    assert_eq!(unsafe { libc::statfs(c.as_ptr(), &mut sfs) }, 0);
    #[allow(clippy::unnecessary_cast)]
    if sfs.f_type as i64 == 0xEF53 {
        assert!(direct, "ext4 supports O_DIRECT TLog batches");
    }
    let mut want = Vec::new();
    for i in 0..40u64 {
        let recs: Vec<Record> = (0..=i % 7)
            .map(|k| Record::Write { cluster: i * 10 + k, count: 1, loc: Location::new(5, i as u32) })
            .collect();
        let mut p = Vec::new();
        recs.iter().for_each(|r| r.encode(&mut p));
        // Batches through the page cache (completed writes) between O_DIRECT ones
        // (flushes), several sharing a page: the same layout either way.
        if i % 3 == 0 {
            w.write_batch(&p, recs.len() as u32).unwrap();
        } else {
            w.write_batch_cached(&p, recs.len() as u32).unwrap();
        }
        want.extend(recs);
    }
    // What a crash leaves in the page cache, and, once synced and dropped from the
    // cache, what the disk holds: the same batches.
    let cached = std::fs::read(&path).unwrap();
    w.sync().unwrap();
    let f = File::open(&path).unwrap();
    // SAFETY: plain syscall on an fd we own; advice only.
    unsafe { libc::posix_fadvise(std::os::unix::io::AsRawFd::as_raw_fd(&f), 0, 0, libc::POSIX_FADV_DONTNEED) };
    let bytes = std::fs::read(&path).unwrap();
    assert!(cached == bytes, "the page cache and the disk hold the same TLog");
    if direct {
        assert!(
            bytes.len() as u64 >= MIN_ZERO_CHUNK && bytes.len().is_multiple_of(4096),
            "zeroed region: {}",
            bytes.len()
        );
        // Every batch starts on a fresh sector: the second one right after the first's
        // (through the page cache: written ahead of its data's sync).
        assert_eq!(&bytes[..4], &MAGIC.to_le_bytes());
        assert_eq!(&bytes[512..516], &MAGIC_AHEAD.to_le_bytes());
        assert!(bytes[100..512].iter().all(|&b| b == 0), "padding after the first batch");
    }
    // As a crash would leave it: batches, padding, zeroed tail.
    let p = parse(&bytes, 5);
    assert!(!p.torn);
    assert_eq!(p.records, want);
    assert_eq!(p.batches, 40);
    let ahead: Vec<u32> = p.ahead.iter().map(|a| a.seq).collect();
    assert_eq!(ahead, (0..40).filter(|i| i % 3 != 0).collect::<Vec<u32>>(), "cached batches are written ahead");
    // A torn last batch (garbage after the sector start) is cut, the rest survives.
    let mut bad = bytes.clone();
    let last = p.valid_len as usize - 10;
    bad[last] ^= 0xff;
    let q = parse(&bad, 5);
    assert!(q.torn);
    assert_eq!(q.batches, 39);
    // Sealed: the file is trimmed to its batches and parses as a sealed TLog.
    let mut p2 = Vec::new();
    Record::Seal { sco: 5, clusters: 40 }.encode(&mut p2);
    w.write_batch(&p2, 1).unwrap();
    w.finish();
    w.sync().unwrap();
    let bytes = std::fs::read(&path).unwrap();
    assert!(bytes.len() < 40 * 512 + 1024, "trimmed after the seal: {}", bytes.len());
    let p = parse_sealed("k", &bytes, 5).unwrap();
    assert_eq!(p.sealed(), Some((5, 40)));
    assert_eq!(p.records.len(), want.len() + 1);
}

#[test]
fn cached_batches_keep_what_the_page_held_before() {
    // A TLog continued by a second writer (its page in front of the next batch unknown
    // to it), then cached and O_DIRECT batches over several pages and zeroed-region
    // growths: every batch survives, in the cache and on the disk.
    let t = tempfile::tempdir_in("/var/tmp").or_else(|_| tempfile::tempdir()).unwrap();
    let path = t.path().join("t");
    let mut w = TlogWriter::create(&path, 9, true).unwrap();
    let batch = |i: u64| -> (Vec<u8>, Vec<Record>) {
        let recs: Vec<Record> = (0..1 + i % 50)
            .map(|k| Record::Write { cluster: i * 100 + k, count: 1, loc: Location::new(9, i as u32) })
            .collect();
        let mut p = Vec::new();
        recs.iter().for_each(|r| r.encode(&mut p));
        (p, recs)
    };
    let mut want = Vec::new();
    for i in 0..5 {
        let (p, recs) = batch(i);
        w.write_batch_cached(&p, recs.len() as u32).unwrap();
        want.extend(recs);
    }
    w.sync().unwrap();
    let (len, seq) = (w.len, w.seq);
    drop(w);
    let f = std::fs::OpenOptions::new().read(true).write(true).open(&path).unwrap();
    let mut w = TlogWriter::new(f, 9, len, seq).with_direct(&path);
    for i in 5..400 {
        let (p, recs) = batch(i);
        if i % 11 == 0 {
            w.write_batch(&p, recs.len() as u32).unwrap();
        } else {
            w.write_batch_cached(&p, recs.len() as u32).unwrap();
        }
        want.extend(recs);
    }
    let cached = std::fs::read(&path).unwrap();
    assert_eq!(parse(&cached, 9).records, want, "the page cache");
    w.sync().unwrap();
    let f = File::open(&path).unwrap();
    // SAFETY: plain syscall on an fd we own; advice only.
    unsafe { libc::posix_fadvise(std::os::unix::io::AsRawFd::as_raw_fd(&f), 0, 0, libc::POSIX_FADV_DONTNEED) };
    let p = parse(&std::fs::read(&path).unwrap(), 9);
    assert!(!p.torn);
    assert_eq!(p.batches, 400);
    assert_eq!(p.records, want, "the disk");
}

#[test]
fn batches_round_trip_and_torn_tail() {
    let t = tempfile::tempdir().unwrap();
    let f = File::create(t.path().join("t")).unwrap();
    let mut w = TlogWriter::new(f, 9, 0, 0);
    let batch = |w: &mut TlogWriter, rs: &[Record]| {
        let mut p = Vec::new();
        rs.iter().for_each(|r| r.encode(&mut p));
        w.write_batch(&p, rs.len() as u32).unwrap();
    };
    let recs = [
        Record::Write { cluster: 10, count: 3, loc: Location::new(9, 0) },
        Record::Fill { cluster: 11, count: 1, entry: ZERO },
        Record::Fill { cluster: 0, count: 1 << 40, entry: UNMAPPED },
    ];
    batch(&mut w, &recs[..1]);
    batch(&mut w, &recs[1..]);
    batch(&mut w, &[Record::Seal { sco: 9, clusters: 3 }]);
    let bytes = std::fs::read(t.path().join("t")).unwrap();
    let p = parse(&bytes, 9);
    assert!(!p.torn);
    assert_eq!(&p.records[..3], &recs);
    assert_eq!(p.sealed(), Some((9, 3)));
    parse_sealed("k", &bytes, 9).unwrap();
    // Wrong epoch: nothing valid.
    assert!(parse(&bytes, 8).torn);
    // Truncate in the middle of the last batch: earlier batches survive.
    let cut = &bytes[..bytes.len() - 3];
    let p = parse(cut, 9);
    assert!(p.torn);
    assert_eq!(p.records.len(), 3);
    assert!(parse_sealed("k", cut, 9).is_err());
    // Flip a byte in the second batch: only the first survives.
    let mut bad = bytes.clone();
    bad[HEADER_LEN + 21 + HEADER_LEN + 2] ^= 1;
    let p = parse(&bad, 9);
    assert_eq!(p.records.len(), 1);
}
