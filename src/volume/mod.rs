//! The volume driver: map, write buffer (SCOs + TLogs), read cache, flush, upload
//! pipeline and restart. Knows nothing of virtio.

pub mod checkpoint;
pub mod cluster_crc;
pub mod counters;
pub mod crc_records;
pub mod dtl_link;
pub mod engine;
pub mod epochs;
pub mod extents;
pub mod fencing;
pub mod flush;
pub mod iov;
pub mod layers;
pub mod local_read;
pub mod location;
pub mod map;
pub mod map_set;
pub mod meta;
pub mod plan;
pub mod read_cache;
pub mod read_path;
pub mod recovery;
pub mod rekey;
pub mod replay;
pub mod sco_crcs;
pub mod sco_file;
pub mod sco_set;
pub mod scrub;
pub mod scrub_policy;
pub mod scrubber;
pub mod snap_set;
pub mod snapshots;
pub mod space;
pub mod spare_sco;
pub mod state;
pub mod sync_set;
pub mod tlog;
pub mod tlog_fuzzing;
pub mod upload_queue;
pub mod uploads;
pub mod write_log;
pub mod write_pacer;
pub mod write_path;

pub use engine::{EngineOptions, Volume, VolumeEnv};
pub use epochs::CloseReport;
pub use meta::{ParentRef, VolumeMeta};
