//! Snapshot operations of a volume: create, list, delete, roll back, open a snapshot as a
//! read-only view, and flatten a clone (the snapshot set itself is [`super::snap_set`]).

use std::sync::Arc;

use super::engine::{Volume, VolumeEnv};
use super::iov::AlignedBuf;
use super::layers::{layer_of, load_layers};
use super::location::{Location, UNMAPPED};
use super::map::ClusterMap;
use super::meta::VolumeMeta;
pub use super::snap_set::SnapshotInfo;
use super::snap_set::{Relocation, Snapshot};
use super::state::State;
use super::tlog::{Record, SnapName};
use crate::error::{Error, Result};
use crate::units::validate_name;

fn now_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

impl Volume {
    /// Take snapshot `name`: make every completed write durable, log a snapshot record
    /// that freezes the current map (pages are shared, no data is copied) and seal the
    /// epoch so the snapshot is at an epoch boundary. Crash-consistent while IO runs.
    pub fn create_snapshot(&self, name: &str) -> Result<SnapshotInfo> {
        validate_name("snapshot", name)?;
        let tname = SnapName::new(name).expect("validated");
        self.flush()?;
        let info = {
            let mut st = self.state.lock();
            self.check_writable(&st)?;
            if st.maps.snaps.by_name(name).is_some() {
                return Err(Error::InvalidArgument(format!("snapshot {}@{name} already exists", self.name)));
            }
            let id = st.maps.snaps.next_id.max(1);
            let created = now_secs();
            self.append_record(&mut st, &Record::Snapshot { id, created, name: tname })?;
            let epoch = st.log.open.as_ref().expect("open epoch").epoch;
            let map = st.maps.map.clone();
            st.maps.snaps.insert(Snapshot { id, name: name.to_string(), created, epoch, map });
            self.roll(&mut st, false)?;
            SnapshotInfo { name: name.to_string(), id, created, epoch, exclusive_bytes: 0 }
        };
        self.flush()?;
        self.env.uploader.notify();
        tracing::info!(volume = %self.name, snapshot = name, epoch = info.epoch, "snapshot created");
        Ok(info)
    }

    /// Every snapshot, oldest first.
    pub fn snapshots(&self) -> Vec<SnapshotInfo> {
        self.state.lock().maps.snaps.list.values().map(Snapshot::info).collect()
    }

    /// The frozen map of snapshot `name`.
    pub fn snapshot_map(&self, name: &str) -> Result<ClusterMap> {
        let st = self.state.lock();
        st.maps.snaps.by_name(name).map(|s| s.map.clone()).ok_or_else(|| self.no_snapshot(name))
    }

    fn no_snapshot(&self, name: &str) -> Error {
        Error::InvalidArgument(format!("snapshot {}@{name} does not exist", self.name))
    }

    /// Delete snapshot `name` (the caller checks that no clone depends on it). Its
    /// exclusive data becomes garbage for scrub.
    pub fn delete_snapshot(&self, name: &str) -> Result<()> {
        {
            let mut st = self.state.lock();
            self.check_writable(&st)?;
            let id = st.maps.snaps.by_name(name).ok_or_else(|| self.no_snapshot(name))?.id;
            self.append_record(&mut st, &Record::SnapDelete { id })?;
            st.maps.snaps.list.remove(&id);
        }
        self.flush()?;
        tracing::info!(volume = %self.name, snapshot = name, "snapshot deleted");
        Ok(())
    }

    /// Make the volume's content snapshot `name`'s; every snapshot is kept.
    pub fn rollback(&self, name: &str) -> Result<()> {
        self.flush()?;
        {
            let mut st = self.state.lock();
            self.check_writable(&st)?;
            let s = st.maps.snaps.by_name(name).ok_or_else(|| self.no_snapshot(name))?;
            let (id, mut map) = (s.id, s.map.clone());
            self.append_record(&mut st, &Record::Rollback { id })?;
            // The volume keeps its size; the snapshot's content is what fits.
            map.resize(st.maps.map.clusters());
            st.maps.map = map;
        }
        self.flush()?;
        tracing::info!(volume = %self.name, snapshot = name, "rolled back");
        Ok(())
    }

    /// A read-only view of `map` of volume `meta` (a snapshot, or a template's content),
    /// reading through to `meta`'s own parents. Its data must be in the object store.
    pub fn open_view(env: Arc<VolumeEnv>, meta: VolumeMeta, label: &str, map: ClusterMap) -> Result<Arc<Volume>> {
        let mut layers = vec![layer_of(&env.cache, &meta, map)];
        layers.extend(load_layers(env.store.as_ref(), &env.cache, &meta)?);
        // A snapshot keeps the size the volume had when it was taken.
        let clusters = layers[0].map.clusters();
        let mut st = State::empty(clusters, 1);
        st.maps.layers = layers;
        let mut vmeta = meta;
        vmeta.size = clusters * vmeta.cluster_size as u64;
        vmeta.name = label.to_string();
        vmeta.read_only = true;
        let vol = Arc::new(Volume::new_internal(vmeta, std::path::PathBuf::new(), env.clone(), true, st));
        env.open_volumes.lock().push(Arc::downgrade(&vol));
        Ok(vol)
    }

    /// The parent chain this volume reads through (nearest first).
    pub fn parent_volumes(&self) -> Vec<String> {
        self.state.lock().maps.layers.iter().map(|l| l.volume.clone()).collect()
    }

    /// Apply a scrub of `volume` to this volume's layers of it.
    pub(crate) fn relocate_layers(&self, volume: &str, reloc: &Relocation) {
        let mut st = self.state.lock();
        for l in st.maps.layers.iter_mut() {
            if l.volume == volume {
                *l = Arc::new(l.relocated(reloc));
            }
        }
    }

    /// Copy every cluster this clone still reads from its parents into its own SCOs, so
    /// it no longer needs them; waits until the copies are in the object store. The
    /// caller then drops the parent from the volume's record.
    pub fn flatten(&self) -> Result<u64> {
        {
            let st = self.state.lock();
            if !st.maps.snaps.list.is_empty() {
                return Err(Error::InvalidArgument(format!(
                    "volume {} has snapshots, which read through to its parent too: delete them before flattening",
                    self.name
                )));
            }
        }
        const RUN: u64 = 256;
        let clusters = self.size() / self.cs;
        let mut buf = AlignedBuf::zeroed((RUN * self.cs) as usize);
        let mut copied = 0u64;
        let mut c = 0u64;
        while c < clusters {
            // The next run of clusters that read parent data.
            let (start, n) = {
                let st = self.state.lock();
                let inherited = |c: u64| {
                    let (layer, e) = st.maps.lookup(c);
                    layer > 0 && Location::unpack(e).is_some()
                };
                while c < clusters && !inherited(c) {
                    c += 1;
                }
                let start = c;
                while c < clusters && c - start < RUN && inherited(c) {
                    c += 1;
                }
                (start, c - start)
            };
            if n == 0 {
                break;
            }
            let bytes = (n * self.cs) as usize;
            self.read_at(start * self.cs, &mut buf[..bytes])?;
            self.write_if_unmapped(start, &buf[..bytes])?;
            copied += bytes as u64;
        }
        self.flush()?;
        self.upload_all("after flattening")?;
        self.state.lock().maps.layers.clear();
        tracing::info!(volume = %self.name, copied, "flattened");
        Ok(copied)
    }

    /// Write whole clusters from `cluster`, mapping only clusters that are still
    /// unmapped when the data has landed (a guest write in between wins).
    fn write_if_unmapped(&self, cluster: u64, data: &[u8]) -> Result<()> {
        self.append_data(data, |st, loc, done, take| {
            let first = cluster + done as u64;
            let mut i = 0u32;
            while i < take {
                if st.maps.map.get(first + i as u64) != UNMAPPED {
                    i += 1;
                    continue;
                }
                let start = i;
                while i < take && st.maps.map.get(first + i as u64) == UNMAPPED {
                    i += 1;
                }
                let run = loc.advance(start);
                for k in 0..i - start {
                    st.maps.map.set(first + (start + k) as u64, run.advance(k).pack());
                }
                self.append_record(st, &Record::Write { cluster: first + start as u64, count: i - start, loc: run })?;
            }
            Ok(())
        })
    }
}
