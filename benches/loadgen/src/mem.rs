//! "Guest memory": one memfd, mapped shared here and handed to the backend with
//! SET_MEM_TABLE. Guest physical address 0 is the start of the mapping.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd};

use anyhow::{bail, Result};

pub struct GuestMem {
    ptr: *mut u8,
    size: usize,
    file: File,
}

// SAFETY: the mapping lives as long as `GuestMem`; all concurrent access to it goes through
// raw pointers with volatile or atomic operations on disjoint per-queue areas.
unsafe impl Send for GuestMem {}
unsafe impl Sync for GuestMem {}

impl GuestMem {
    pub fn new(size: usize) -> Result<GuestMem> {
        // SAFETY: memfd_create with a static NUL-terminated name.
        let fd = unsafe { libc::memfd_create(c"logdisk-loadgen".as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            bail!("memfd_create: {}", io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor that we own.
        let file = unsafe { File::from_raw_fd(fd) };
        file.set_len(size as u64)?;
        // SAFETY: mapping a file we own, shared, with the file's length.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                size,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_POPULATE,
                file.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            bail!("mmap of {size} bytes of guest memory: {}", io::Error::last_os_error());
        }
        Ok(GuestMem { ptr: ptr as *mut u8, size, file })
    }

    pub fn size(&self) -> usize {
        self.size
    }

    pub fn fd(&self) -> i32 {
        self.file.as_raw_fd()
    }

    pub fn host_addr(&self) -> u64 {
        self.ptr as u64
    }

    /// Host pointer for guest address `gpa`, with `len` bytes in bounds.
    #[inline]
    pub fn ptr(&self, gpa: u64, len: usize) -> *mut u8 {
        assert!(gpa as usize + len <= self.size, "guest address {gpa:#x}+{len} out of bounds");
        // SAFETY: in bounds of the mapping (checked above).
        unsafe { self.ptr.add(gpa as usize) }
    }

    /// A mutable byte slice of guest memory. The caller must own the area (no other thread
    /// and no in-flight request of the device may touch it meanwhile).
    #[allow(clippy::mut_from_ref)]
    pub fn slice_mut(&self, gpa: u64, len: usize) -> &mut [u8] {
        // SAFETY: bounds checked by `ptr`; exclusivity is the caller's contract.
        unsafe { std::slice::from_raw_parts_mut(self.ptr(gpa, len), len) }
    }

    /// A byte slice of guest memory, which the device has finished writing.
    pub fn slice(&self, gpa: u64, len: usize) -> &[u8] {
        // SAFETY: bounds checked by `ptr`.
        unsafe { std::slice::from_raw_parts(self.ptr(gpa, len), len) }
    }
}

impl Drop for GuestMem {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what `new` mapped.
        unsafe { libc::munmap(self.ptr as *mut libc::c_void, self.size) };
    }
}
