//! Fault injection for crash tests: `LOGDISK_FAULT=<point>` makes the process abort
//! (no cleanup, like kill -9) when it reaches the named point. Unset in production.

use std::sync::OnceLock;

/// Abort here if `LOGDISK_FAULT` names this point.
pub fn point(name: &str) {
    static WANTED: OnceLock<Option<String>> = OnceLock::new();
    if WANTED.get_or_init(|| std::env::var("LOGDISK_FAULT").ok()).as_deref() == Some(name) {
        eprintln!("fault injection: aborting at {name}");
        std::process::abort();
    }
}
