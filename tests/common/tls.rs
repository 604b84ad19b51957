//! Throwaway certificates for TLS tests, made by tests/dtl/make-certs.sh (openssl CLI).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// A CA and a server certificate signed by it, in PEM files.
pub struct Certs {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Make a CA and a server certificate for `sans` (e.g. `IP:127.0.0.1`) under `dir`.
pub fn make(dir: &Path, sans: &[&str]) -> Certs {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/dtl/make-certs.sh");
    let o = Command::new(script).arg(dir).args(sans).output().expect("run make-certs.sh (needs openssl)");
    assert!(o.status.success(), "make-certs.sh: {}", String::from_utf8_lossy(&o.stderr));
    Certs { ca: dir.join("ca.pem"), cert: dir.join("server.pem"), key: dir.join("server.key") }
}
