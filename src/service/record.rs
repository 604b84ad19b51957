//! The served set on disk (`<data-dir>/attachments.json`): what the daemon serves and
//! how, so `logdisk serve` started again (restart, reboot, crash) brings the same
//! volumes back on the same sockets. Written atomically (tmp, fsync, rename, fsync dir).

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, IoContext, Result};

/// File name of the record inside the data dir.
pub const FILE: &str = "attachments.json";

/// How one volume (or `VOL@SNAP` view) is attached.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttachSpec {
    /// `VOL` or `VOL@SNAP`.
    pub name: String,
    /// Absolute socket path.
    pub socket: PathBuf,
    #[serde(default)]
    pub read_only: bool,
    pub num_queues: u16,
    pub queue_size: u16,
}

#[derive(Serialize, Deserialize)]
struct OnDisk {
    version: u32,
    attachments: Vec<AttachSpec>,
}

/// Load the recorded set (empty when there is none).
pub fn load(root: &Path) -> Result<BTreeMap<String, AttachSpec>> {
    let path = root.join(FILE);
    let bytes = match fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(e) => return Err(Error::io(format!("cannot read {}", path.display()), e)),
    };
    let d: OnDisk = serde_json::from_slice(&bytes)
        .map_err(|e| Error::Config(format!("{} is not a valid attachment record: {e}", path.display())))?;
    if d.version != 1 {
        return Err(Error::Config(format!("{}: unknown version {}", path.display(), d.version)));
    }
    Ok(d.attachments.into_iter().map(|s| (s.name.clone(), s)).collect())
}

/// Replace the recorded set with `set`.
pub fn save(root: &Path, set: &BTreeMap<String, AttachSpec>) -> Result<()> {
    let path = root.join(FILE);
    let tmp = root.join(format!("{FILE}.tmp"));
    let d = OnDisk { version: 1, attachments: set.values().cloned().collect() };
    let mut f = fs::File::create(&tmp).ctx(|| format!("cannot write {}", tmp.display()))?;
    f.write_all(&serde_json::to_vec_pretty(&d).expect("serializable"))
        .and_then(|_| f.sync_all())
        .ctx(|| format!("cannot write {}", tmp.display()))?;
    fs::rename(&tmp, &path).ctx(|| format!("cannot rename {}", tmp.display()))?;
    // The rename itself is durable once the directory is synced.
    fs::File::open(root).and_then(|d| d.sync_all()).ctx(|| format!("cannot sync {}", root.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_bad_file() {
        let t = tempfile::tempdir().unwrap();
        assert!(load(t.path()).unwrap().is_empty());
        let mut set = BTreeMap::new();
        let s = AttachSpec {
            name: "a@s".into(),
            socket: "/run/x.sock".into(),
            read_only: true,
            num_queues: 2,
            queue_size: 128,
        };
        set.insert(s.name.clone(), s);
        save(t.path(), &set).unwrap();
        assert_eq!(load(t.path()).unwrap(), set);
        fs::write(t.path().join(FILE), b"{nope").unwrap();
        let e = load(t.path()).unwrap_err().to_string();
        assert!(e.contains("not a valid attachment record"), "{e}");
    }
}
