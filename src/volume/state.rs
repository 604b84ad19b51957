//! The state a volume's lock guards, as components that each own their part: the write
//! log ([`WriteLog`]), the map set ([`MapSet`]), the write buffer's SCO files
//! ([`ScoSet`]) and the upload queue ([`UploadQueue`]), plus the volume's status flags.
//! One lock guards them all, so the critical sections of the engine stay as they were.

use super::map_set::MapSet;
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
}
