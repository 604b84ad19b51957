//! What `volume list` / `volume info` report about a volume ([`VolumeInfo`], with its
//! DTL part [`DtlInfo`]), and how a [`DataDir`] gathers it for an open volume.

use serde::Serialize;

use super::DataDir;
use crate::backend::keys;
use crate::error::Result;
use crate::volume::snapshots::SnapshotInfo;
use crate::volume::Volume;

/// Summary of a volume for `volume list` / `volume info`.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct VolumeInfo {
    pub name: String,
    pub size: u64,
    pub cluster_size: u32,
    pub sco_size: u64,
    pub created: u64,
    pub generation: u32,
    pub read_only: bool,
    pub backend: String,
    /// Bytes of clusters that hold data.
    pub written_bytes: u64,
    /// Bytes of this volume's objects in the object store.
    pub stored_bytes: u64,
    pub objects: u64,
    /// Local bytes not yet uploaded.
    pub pending_upload_bytes: u64,
    /// Raw bytes of the SCO objects / their stored bytes (1.0 when there are none).
    pub compression_ratio: f64,
    pub map_memory_bytes: u64,
    /// Raw bytes of uploaded SCOs that no map references any more (scrub reclaims them).
    #[serde(default)]
    pub garbage_bytes: u64,
    #[serde(default)]
    pub template: bool,
    /// `VOL@SNAP` (or a template's name) this clone reads through to.
    #[serde(default)]
    pub parent: Option<String>,
    #[serde(default)]
    pub snapshots: Vec<SnapshotInfo>,
    /// This host's DTL peer of the volume and how well it covers the writes.
    #[serde(default)]
    pub dtl: Option<DtlInfo>,
    #[serde(default)]
    pub uploads_paused: bool,
    /// Bytes some map (current or snapshot) references.
    #[serde(default)]
    pub live_bytes: u64,
    /// Object-store bytes per live byte.
    #[serde(default)]
    pub space_amplification: f64,
    /// Bytes put to the object store per byte the guests wrote, since the daemon started.
    #[serde(default)]
    pub write_amplification: f64,
    /// The scrubber's view: state (ok, scrubbing, throttled, full), why, budget, passes.
    #[serde(default)]
    pub space: Option<crate::volume::space::SpaceFigures>,
    /// Encrypted volumes: the id of the key new objects are sealed with (never the key).
    #[serde(default)]
    pub key_id: Option<String>,
}

/// DTL part of `volume info`.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct DtlInfo {
    pub addr: String,
    /// sync, async or none.
    pub mode: String,
    /// in_sync, catching_up, degraded, needs_resync, fenced, closed; `idle` when the
    /// volume is not served; `off` without a DTL.
    pub state: String,
    #[serde(default)]
    pub detail: String,
}

impl DataDir {
    /// Facts about an open volume.
    pub fn volume_info(&self, vol: &Volume) -> Result<VolumeInfo> {
        let m = vol.meta();
        let objs = self.store.list(&keys::volume_prefix(&m.name))?;
        let s = vol.stats();
        // Compression: raw bytes of the SCOs in the store / their stored bytes.
        let raw_sizes = vol.sealed_sco_bytes();
        let (mut raw, mut stored) = (0u64, 0u64);
        for o in &objs {
            if let Some((_, "sco", n)) = keys::parse_data_key(&m.name, &o.key) {
                if let Some(r) = raw_sizes.get(&n) {
                    raw += r;
                    stored += o.size;
                }
            }
        }
        let space = vol.space()?;
        let usage = vol.usage();
        let live_bytes = usage.live * vol.cluster_size();
        let stored_bytes: u64 = objs.iter().map(|o| o.size).sum();
        let mut figures = vol.space.figures();
        figures.live_bytes = live_bytes;
        figures.garbage_bytes = usage.garbage * vol.cluster_size();
        figures.log_bytes = usage.log * vol.cluster_size();
        let guest_bytes = vol.counters.write_bytes.load(std::sync::atomic::Ordering::Relaxed);
        let settings = self.local_settings(&m.name)?;
        let dtl = match (vol.dtl_status(), settings.dtl) {
            (Some((d, state, detail)), _) => {
                DtlInfo { addr: d.addr, mode: d.mode.to_string(), state: state.into(), detail }
            }
            (None, Some(d)) => {
                DtlInfo { addr: d.addr, mode: d.mode.to_string(), state: "idle".into(), detail: String::new() }
            }
            (None, None) => {
                DtlInfo { addr: String::new(), mode: "none".into(), state: "off".into(), detail: String::new() }
            }
        };
        Ok(VolumeInfo {
            dtl: Some(dtl),
            uploads_paused: vol.uploads_paused() || settings.uploads_paused,
            garbage_bytes: space.garbage_bytes,
            template: m.template,
            parent: m.parent.as_ref().map(|p| p.to_string()),
            snapshots: space.snapshots,
            name: m.name.clone(),
            size: vol.size(),
            cluster_size: m.cluster_size,
            sco_size: m.sco_clusters as u64 * m.cluster_size as u64,
            created: m.created,
            generation: m.generation,
            read_only: m.read_only,
            backend: self.backend_url(),
            written_bytes: s.mapped_clusters * m.cluster_size as u64,
            stored_bytes,
            live_bytes,
            space_amplification: if live_bytes == 0 { 1.0 } else { stored_bytes as f64 / live_bytes as f64 },
            write_amplification: if guest_bytes == 0 {
                0.0
            } else {
                s.uploaded_stored_bytes as f64 / guest_bytes as f64
            },
            space: Some(figures),
            objects: objs.len() as u64,
            pending_upload_bytes: s.wb_bytes,
            key_id: m.encryption.as_ref().map(|e| e.key_id.clone()),
            compression_ratio: if stored == 0 { 1.0 } else { raw as f64 / stored as f64 },
            map_memory_bytes: s.map_memory_bytes,
        })
    }
}
