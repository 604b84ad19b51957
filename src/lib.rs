//! logdisk: log-structured virtual disks with an object-store home.
pub mod frontend;
