//! Shared-memory data path for logdisk.
//!
//! The hypervisor shares the guest's RAM with the daemon (memfd / hugetlbfs regions mapped
//! by vm-memory). This crate turns virtio descriptors into iovec lists that point straight
//! into that mapped memory, after checking every descriptor against the guest's regions, so
//! that block IO moves data between guest memory and files with no userspace copy and no
//! heap allocation per request ([`iovec`]). It also holds a small io_uring wrapper, one ring
//! per queue worker with an eventfd for completions, which can take guest memory as
//! registered buffers ([`uring`]).

pub mod iovec;
pub mod uring;

pub use iovec::{Desc, DescStream, GuestIoVecs, IoVecBuf, IoVecBuilder, ShmError};
pub use uring::{fixed_submitted, Completion, Uring};
