//! Per-volume settings that belong to this host, not to the volume
//! (`<data dir>/volumes/<name>/settings.json`): the owner generation this host's copy
//! belongs to (a newer one in the object store means the volume was taken over
//! elsewhere and this copy is fenced), its DTL peer and mode, and whether uploads are
//! paused, and where its encryption keys come from.

use std::fs;
use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{IoContext, Result};
use crate::volume::dtl_link::DtlSettings;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalSettings {
    /// Owner generation of this host's copy (0: not recorded yet).
    #[serde(default)]
    pub owner_generation: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dtl: Option<DtlSettings>,
    #[serde(default)]
    pub uploads_paused: bool,
    /// Where this volume's keys come from (current and older ones; never the keys).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub key_sources: Vec<crate::crypto::KeySource>,
}

const FILE: &str = "settings.json";

impl LocalSettings {
    /// The settings in volume dir `dir` (defaults when there are none).
    pub fn load(dir: &Path) -> Result<LocalSettings> {
        let path = dir.join(FILE);
        match fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| crate::error::Error::Corrupt {
                key: path.display().to_string(),
                detail: format!("bad volume settings: {e}"),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(LocalSettings::default()),
            Err(e) => Err(crate::error::Error::io(format!("cannot read {}", path.display()), e)),
        }
    }

    /// Store atomically (write, fsync, rename).
    pub fn save(&self, dir: &Path) -> Result<()> {
        fs::create_dir_all(dir).ctx(|| format!("cannot create {}", dir.display()))?;
        let path = dir.join(FILE);
        let tmp = dir.join(format!("{FILE}.tmp"));
        let mut f = fs::File::create(&tmp).ctx(|| format!("cannot write {}", tmp.display()))?;
        f.write_all(&serde_json::to_vec_pretty(self).expect("serializable"))
            .and_then(|_| f.sync_all())
            .ctx(|| format!("cannot write {}", tmp.display()))?;
        fs::rename(&tmp, &path).ctx(|| format!("cannot rename {}", tmp.display()))?;
        Ok(())
    }
}
