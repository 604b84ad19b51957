//! logdisk: log-structured virtual disks with an object-store home.
//!
//! Data path: `frontend` (vhost-user-blk) → `logdisk_shm` (guest memory as iovecs) →
//! `volume` (map, write buffer, read cache) → `backend` (object stores, uploader).

pub mod backend;
pub mod config;
pub mod control;
pub mod crc;
pub mod crypto;
pub mod datadir;
pub mod dtl;
pub mod error;
pub mod fault;
pub mod frontend;
pub mod local_settings;
pub mod nbd;
pub mod service;
pub mod takeover;
pub mod units;
pub mod volume;

pub use error::{Error, Result};
