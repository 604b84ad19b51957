//! The state a volume's lock guards, as components that each own their part: the write
//! log (`WriteLog`), the map set (`MapSet`), the write buffer's SCO files (`ScoSet`)
//! and the upload queue (`UploadQueue`), plus the volume's status flags.
//! One lock guards them all, so the critical sections of the engine stay as they were.

use std::sync::Arc;

use super::location::Location;
use super::map_set::MapSet;
use super::sco_file::ScoFile;
use super::sco_set::ScoSet;
use super::upload_queue::UploadQueue;
use super::write_log::WriteLog;

pub(crate) struct State {
    pub log: WriteLog,
    pub maps: MapSet,
    pub scos: ScoSet,
    pub uploads: UploadQueue,
    pub failed: Option<String>,
    pub closed: bool,
    /// A newer owner generation holds the volume: no more writes or uploads here.
    pub fenced: bool,
}

impl State {
    /// A volume with nothing written, whose next epoch is `next_epoch`.
    pub fn empty(clusters: u64, next_epoch: u64) -> State {
        State {
            log: WriteLog::new(next_epoch),
            maps: MapSet::new(clusters),
            scos: ScoSet::default(),
            uploads: UploadQueue::default(),
            failed: None,
            closed: false,
            fenced: false,
        }
    }

    /// Reserve up to `want` clusters at the tail of the open SCO (the caller opened one
    /// with room): the file, the first index and the clusters taken. Counts them in the
    /// write buffer and the log; the reservation is in flight until [`State::land`].
    pub fn reserve_tail(&mut self, want: u64, sco_clusters: u32, shift: u32) -> (Arc<ScoFile>, u32, u32) {
        let o = self.log.open.as_mut().expect("open epoch");
        let take = (sco_clusters - o.next_index).min(want.min(u32::MAX as u64) as u32);
        let index = o.next_index;
        o.next_index += take;
        let file = o.sco.clone();
        let epoch = o.epoch;
        let l = self.scos.local.get_mut(&epoch).expect("local SCO of open epoch");
        l.inflight += 1;
        l.clusters = index + take;
        self.scos.wb_bytes += (take as u64) << shift;
        self.scos.log_clusters += take as u64;
        (file, index, take)
    }

    /// Finish a reservation of `take` clusters at `(sco, index)` for `cluster`: keep
    /// their checksums (`crcs`, one per cluster, or empty) and, if the data landed
    /// (`ok`), map them and mark the SCO dirty. Returns where they landed (`None`: not).
    /// The caller logs the record.
    pub fn land(&mut self, sco: u64, index: u32, cluster: u64, take: u32, ok: bool, crcs: &[u64]) -> Option<Location> {
        if let Some(l) = self.scos.local.get_mut(&sco) {
            l.inflight -= 1;
            if ok && crcs.len() == take as usize {
                l.file.crcs.store(index, crcs);
            } else {
                (index..index + take).for_each(|i| l.file.crcs.clear(i));
            }
        }
        if !ok {
            return None;
        }
        let loc = Location::new(sco, index);
        for i in 0..take as u64 {
            self.maps.map.set(cluster + i, loc.advance(i as u32).pack());
        }
        self.log.dirty.insert(sco);
        Some(loc)
    }
}
