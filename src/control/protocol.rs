//! Control requests and responses (JSON lines).

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum Request {
    /// Every volume in the object store.
    List,
    /// Facts about one volume.
    Info { volume: String },
    /// Create a volume.
    Create { volume: String, size: u64, cluster_size: Option<u64>, sco_size: Option<u64> },
    /// Which volumes this daemon serves.
    Served,
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
