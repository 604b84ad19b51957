//! The host service: the daemon's state behind the control socket, with a set of
//! served volumes that changes while it runs (attach, detach), recorded in the data dir
//! so a restart brings it back.

pub mod attachments;
pub mod fd_limit;
pub mod memory_trim;
pub mod notify;
pub mod record;

use parking_lot::Mutex;
use serde_json::{json, Value};

use crate::control::ops::{self, Served};
use crate::control::protocol::Request;
use crate::datadir::DataDir;
use crate::error::Result;
pub use attachments::{AttachRequest, Attachments, Defaults};

/// What the control server answers from.
pub struct DaemonState {
    pub data_dir: Mutex<DataDir>,
    pub attachments: Attachments,
    /// Volumes open for other exports only (`serve VOL --nbd ...` without a vhost-user
    /// socket): fixed at start.
    pub unattached: Served,
}

impl DaemonState {
    /// The served volumes by name (attached ones and those served over NBD only).
    pub fn served(&self) -> Served {
        let mut s = self.attachments.volumes();
        s.extend(self.unattached.iter().map(|(k, v)| (k.clone(), v.clone())));
        s
    }

    /// Answer one management request (the data dir is held while it runs).
    pub fn answer(&self, req: Request) -> Result<Value> {
        let mut dd = self.data_dir.lock();
        match req {
            Request::Attach { volume, socket, read_only, num_queues, queue_size } => {
                let req = AttachRequest { name: volume, socket, read_only, num_queues, queue_size };
                let spec = self.attachments.attach(&mut dd, &req)?;
                Ok(serde_json::to_value(spec).expect("serializable"))
            }
            Request::Detach { volume, force } => {
                // The data dir stays held until the volume is closed, so the same volume
                // cannot be attached (opened twice) while it closes.
                let r = self.attachments.detach(&volume, force)?;
                Ok(json!({"detached": volume, "drained": r.as_ref().is_none_or(|r| r.drained),
                    "pending_bytes": r.map_or(0, |r| r.pending_bytes)}))
            }
            Request::Resize { volume, size, shrink } => {
                let v = ops::run(&mut dd, &self.served(), Request::Resize { volume: volume.clone(), size, shrink })?;
                // A served volume's guest learns the new capacity at once.
                self.attachments.config_changed(&volume);
                Ok(v)
            }
            Request::List => {
                let mut v = ops::run(&mut dd, &self.served(), Request::List)?;
                self.add_status(&mut v);
                Ok(v)
            }
            req => ops::run(&mut dd, &self.served(), req),
        }
    }

    /// Add socket and connection state to a `volume list` answer; views (`VOL@SNAP`) and
    /// recorded attachments that failed to come back get rows of their own.
    fn add_status(&self, list: &mut Value) {
        let Some(rows) = list.as_array_mut() else { return };
        for st in self.attachments.status() {
            let fields = json!({"attached": st.attached, "socket": st.spec.socket, "connected": st.connected,
                "read_only_attach": st.spec.read_only, "num_queues": st.spec.num_queues,
                "queue_size": st.spec.queue_size, "attach_error": st.error});
            let row = match rows.iter_mut().find(|r| r["name"] == st.spec.name.as_str()) {
                Some(r) => r,
                None => {
                    rows.push(json!({"name": st.spec.name, "view": st.spec.name.contains('@')}));
                    rows.last_mut().expect("pushed")
                }
            };
            if let (Some(r), Some(f)) = (row.as_object_mut(), fields.as_object()) {
                r.extend(f.clone());
            }
        }
    }
}
