//! Control requests and responses (JSON lines).

use serde::{Deserialize, Serialize};

use crate::crypto::KeySource;
use crate::volume::dtl_link::DtlSettings;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum Request {
    /// Every volume in the object store.
    List,
    /// Facts about one volume.
    Info { volume: String },
    /// Create a volume.
    Create {
        volume: String,
        size: u64,
        cluster_size: Option<u64>,
        sco_size: Option<u64>,
        #[serde(default)]
        dtl: Option<DtlSettings>,
        /// Encrypt with the key from this source (the source travels, never the key).
        #[serde(default)]
        key: Option<KeySource>,
    },
    /// Change this host's settings of a volume: DTL peer (`dtl_addr` "none" removes
    /// it), DTL mode, paused uploads, a new key. Takes effect at once on a served volume.
    Set {
        volume: String,
        dtl_addr: Option<String>,
        dtl_mode: Option<String>,
        uploads_paused: Option<bool>,
        #[serde(default)]
        new_key: Option<KeySource>,
    },
    /// Key sources to read keys of encrypted volumes from (by key id).
    AddKeys { sources: Vec<KeySource> },
    /// Crypto-erase an encrypted volume (refused while served).
    CryptoErase { volume: String },
    /// Take a volume over from its (dead) owner on another host.
    Takeover { volume: String, dtl: DtlSettings, force: bool },
    /// Which volumes this daemon serves.
    Served,
    /// Delete a volume (refused while served or while clones depend on it).
    Delete { volume: String },
    /// Take a snapshot.
    SnapshotCreate { volume: String, snapshot: String },
    /// A volume's snapshots with the bytes each alone holds.
    SnapshotList { volume: String },
    /// Delete a snapshot (refused while clones depend on it).
    SnapshotDelete { volume: String, snapshot: String },
    /// Make a volume's content a snapshot's (refused while served unless `force`).
    SnapshotRollback { volume: String, snapshot: String, force: bool },
    /// The extents that differ between two snapshots (from the maps).
    SnapshotDiff { volume: String, from: String, to: String },
    /// A new volume reading through to a snapshot (or to a template's content).
    Clone {
        source: String,
        snapshot: Option<String>,
        target: String,
        #[serde(default)]
        key: Option<KeySource>,
    },
    /// Freeze a volume as a read-only clone parent.
    SetTemplate { volume: String },
    /// Copy what a clone still reads from its parents, then drop them.
    Flatten { volume: String },
    /// Serve a volume (or `VOL@SNAP`, read-only) on a socket of the running daemon.
    Attach {
        volume: String,
        #[serde(default)]
        socket: Option<std::path::PathBuf>,
        #[serde(default)]
        read_only: bool,
        #[serde(default)]
        num_queues: Option<u16>,
        #[serde(default)]
        queue_size: Option<u16>,
    },
    /// Stop serving a volume (refused while a hypervisor is connected unless `force`).
    Detach {
        volume: String,
        #[serde(default)]
        force: bool,
    },
    /// Change a volume's size (shrinking needs `shrink` and a volume not served).
    Resize {
        volume: String,
        size: u64,
        #[serde(default)]
        shrink: bool,
    },
    /// Reclaim space of SCOs whose live fraction is below `threshold`.
    Scrub { volume: String, threshold: f64 },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default)]
    pub result: serde_json::Value,
}

impl Response {
    pub fn ok(result: serde_json::Value) -> Response {
        Response { ok: true, error: None, result }
    }

    pub fn err(msg: impl Into<String>) -> Response {
        Response { ok: false, error: Some(msg.into()), result: serde_json::Value::Null }
    }
}
