//! vhost-user-blk frontend: serves a [`target::BlockTarget`] to a hypervisor.
pub mod target;
