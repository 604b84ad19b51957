//! Raw iovec helpers for the IO path: slicing a request's buffers (which point into
//! guest memory) into sub-ranges, zeroing them and copying into them, without
//! allocating. `IoSlice`/`IoSliceMut` are ABI-compatible with `libc::iovec` on Unix.

use std::io::{IoSlice, IoSliceMut};

pub use libc::iovec;

/// View `IoSlice`s as iovecs.
pub fn from_slices<'a>(bufs: &'a [IoSlice<'_>]) -> &'a [iovec] {
    // SAFETY: IoSlice is #[repr(transparent)] over iovec on Unix.
    unsafe { std::slice::from_raw_parts(bufs.as_ptr() as *const iovec, bufs.len()) }
}

/// View `IoSliceMut`s as iovecs.
pub fn from_slices_mut<'a>(bufs: &'a [IoSliceMut<'_>]) -> &'a [iovec] {
    // SAFETY: IoSliceMut is #[repr(transparent)] over iovec on Unix.
    unsafe { std::slice::from_raw_parts(bufs.as_ptr() as *const iovec, bufs.len()) }
}

/// Total bytes of `iovs`.
pub fn total(iovs: &[iovec]) -> u64 {
    iovs.iter().map(|v| v.iov_len as u64).sum()
}

/// Set `out` to the iovecs covering bytes `[start, start+len)` of `iovs`.
pub fn sub_range(iovs: &[iovec], start: u64, len: u64, out: &mut Vec<iovec>) {
    out.clear();
    append_sub_range(iovs, start, len, out);
}

/// Append to `out` the iovecs covering bytes `[start, start+len)` of `iovs`.
pub fn append_sub_range(iovs: &[iovec], mut start: u64, mut len: u64, out: &mut Vec<iovec>) {
    for v in iovs {
        if len == 0 {
            break;
        }
        let vlen = v.iov_len as u64;
        if start >= vlen {
            start -= vlen;
            continue;
        }
        let take = (vlen - start).min(len);
        out.push(iovec {
            // SAFETY: start < vlen, so the pointer stays inside the buffer.
            iov_base: unsafe { (v.iov_base as *mut u8).add(start as usize) } as *mut libc::c_void,
            iov_len: take as usize,
        });
        len -= take;
        start = 0;
    }
}

/// Fill every buffer with zeroes.
///
/// # Safety
/// The iovecs must describe writable memory valid for the duration of the call.
pub unsafe fn zero(iovs: &[iovec]) {
    for v in iovs {
        std::ptr::write_bytes(v.iov_base as *mut u8, 0, v.iov_len);
    }
}

/// Copy `src` into the buffers (which must hold at least `src.len()` bytes).
///
/// # Safety
/// The iovecs must describe writable memory valid for the duration of the call.
pub unsafe fn copy_in(iovs: &[iovec], src: &[u8]) {
    let mut at = 0;
    for v in iovs {
        if at >= src.len() {
            break;
        }
        let n = v.iov_len.min(src.len() - at);
        std::ptr::copy_nonoverlapping(src.as_ptr().add(at), v.iov_base as *mut u8, n);
        at += n;
    }
}

/// Copy the buffers' bytes into `dst` (up to `dst.len()`).
///
/// # Safety
/// The iovecs must describe readable memory valid for the duration of the call.
pub unsafe fn copy_out(iovs: &[iovec], dst: &mut [u8]) {
    let mut at = 0;
    for v in iovs {
        if at >= dst.len() {
            break;
        }
        let n = v.iov_len.min(dst.len() - at);
        std::ptr::copy_nonoverlapping(v.iov_base as *const u8, dst.as_mut_ptr().add(at), n);
        at += n;
    }
}

/// True when every buffer and length is a multiple of `align` (for O_DIRECT).
pub fn aligned(iovs: &[iovec], align: usize) -> bool {
    iovs.iter().all(|v| (v.iov_base as usize).is_multiple_of(align) && v.iov_len % align == 0)
}

/// A heap buffer aligned to 4096 bytes (for O_DIRECT bounce IO).
pub struct AlignedBuf {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: AlignedBuf owns its allocation exclusively.
unsafe impl Send for AlignedBuf {}

// SAFETY: shared references only read the buffer (`Deref`); writes need `&mut`.
unsafe impl Sync for AlignedBuf {}

/// Bytes of [`zeroes`].
const ZEROES_LEN: usize = 1 << 20;

/// A shared, aligned, read-only buffer of zeroes, for O_DIRECT writes of zeroes.
pub fn zeroes() -> &'static AlignedBuf {
    static ZEROES: std::sync::OnceLock<AlignedBuf> = std::sync::OnceLock::new();
    ZEROES.get_or_init(|| AlignedBuf::zeroed(ZEROES_LEN))
}

impl AlignedBuf {
    pub fn zeroed(len: usize) -> AlignedBuf {
        let layout = std::alloc::Layout::from_size_align(len.max(1), 4096).expect("layout");
        // SAFETY: layout has non-zero size.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        if ptr.is_null() {
            std::alloc::handle_alloc_error(layout);
        }
        AlignedBuf { ptr, len }
    }

    pub fn as_iovec(&mut self) -> iovec {
        iovec { iov_base: self.ptr as *mut libc::c_void, iov_len: self.len }
    }
}

impl std::ops::Deref for AlignedBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: ptr is valid for len bytes.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

impl std::ops::DerefMut for AlignedBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: ptr is valid for len bytes and uniquely owned.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        let layout = std::alloc::Layout::from_size_align(self.len.max(1), 4096).expect("layout");
        // SAFETY: allocated with the same layout.
        unsafe { std::alloc::dealloc(self.ptr, layout) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sub_ranges() {
        let mut a = [0u8; 10];
        let mut b = [0u8; 6];
        {
            let bufs = [IoSliceMut::new(&mut a), IoSliceMut::new(&mut b)];
            let iovs = from_slices_mut(&bufs);
            assert_eq!(total(iovs), 16);
            let mut out = Vec::new();
            sub_range(iovs, 8, 5, &mut out);
            assert_eq!(out.len(), 2);
            assert_eq!((out[0].iov_len, out[1].iov_len), (2, 3));
            unsafe { copy_in(&out, b"hello") };
        }
        assert_eq!(&a[8..], b"he");
        assert_eq!(&b[..3], b"llo");
        let mut ab = AlignedBuf::zeroed(8192);
        assert!(aligned(&[ab.as_iovec()], 4096));
    }
}
