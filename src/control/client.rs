//! CLI side of the control socket.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use super::protocol::{Request, Response};
use crate::error::{Error, Result};

/// Send one request to the daemon holding `data_dir`; `None` if no daemon answers.
pub fn try_request(data_dir: &Path, req: &Request) -> Option<Result<serde_json::Value>> {
    let path = data_dir.join(super::SOCKET_NAME);
    let mut s = UnixStream::connect(&path).ok()?;
    let _ = s.set_read_timeout(Some(Duration::from_secs(600)));
    let mut line = serde_json::to_string(req).expect("serializable");
    line.push('\n');
    if s.write_all(line.as_bytes()).is_err() {
        return None;
    }
    let mut resp = String::new();
    if BufReader::new(&s).read_line(&mut resp).is_err() || resp.is_empty() {
        return Some(Err(Error::Store(format!("daemon on {} closed the control connection", path.display()))));
    }
    let r: Response = match serde_json::from_str(&resp) {
        Ok(r) => r,
        Err(e) => return Some(Err(Error::InvalidArgument(format!("bad control response: {e}")))),
    };
    Some(if r.ok { Ok(r.result) } else { Err(Error::InvalidArgument(r.error.unwrap_or_default())) })
}
