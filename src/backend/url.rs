//! Backend URLs: `file:///path` (local directory) now; `s3://bucket/prefix` later.

use std::path::PathBuf;
use std::sync::Arc;

use crate::backend::local::LocalStore;
use crate::backend::ObjectStore;
use crate::error::{Error, Result};

/// A parsed backend URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendUrl {
    File(PathBuf),
}

impl BackendUrl {
    pub fn parse(s: &str) -> Result<BackendUrl> {
        if let Some(path) = s.strip_prefix("file://") {
            if !path.starts_with('/') {
                return Err(Error::InvalidArgument(format!(
                    "bad backend URL {s:?}: a file URL needs an absolute path (file:///path)"
                )));
            }
            return Ok(BackendUrl::File(PathBuf::from(path)));
        }
        Err(Error::InvalidArgument(format!("bad backend URL {s:?}: supported schemes are file:///path")))
    }

    pub fn open(&self) -> Result<Arc<dyn ObjectStore>> {
        match self {
            BackendUrl::File(p) => Ok(Arc::new(LocalStore::open(p)?)),
        }
    }

    pub fn to_url(&self) -> String {
        match self {
            BackendUrl::File(p) => format!("file://{}", p.display()),
        }
    }
}
