//! Reusable page-aligned buffers for SCO uploads, one pair per uploader thread.
//!
//! An upload reads a whole SCO (O_DIRECT, straight from the disk into `raw`, no page-cache
//! copy) and encodes it into `out`, which the local object store writes with O_DIRECT too.
//! Allocating 2 x 64 MiB per upload costs a page fault and a page clear per 4 KiB, so the
//! buffers are kept while the thread is busy and dropped when it goes idle
//! ([`release`]), which bounds memory to two SCOs per busy uploader thread.

use std::cell::RefCell;

use crate::volume::iov::AlignedBuf;

thread_local! {
    static BUFS: RefCell<(Option<AlignedBuf>, Option<AlignedBuf>)> = const { RefCell::new((None, None)) };
}

fn fit(slot: &mut Option<AlignedBuf>, len: usize) -> &mut AlignedBuf {
    if slot.as_ref().is_none_or(|b| b.len() < len) {
        *slot = None; // free the old one before allocating the new one
        *slot = Some(AlignedBuf::zeroed(len.next_multiple_of(4096)));
    }
    slot.as_mut().expect("just filled")
}

/// Run `f` with this thread's buffers: `raw` of at least `raw_len` bytes and `out` of at
/// least `out_len` bytes (both page-aligned, contents unspecified).
pub fn with<T>(raw_len: usize, out_len: usize, f: impl FnOnce(&mut [u8], &mut [u8]) -> T) -> T {
    BUFS.with(|b| {
        let mut b = b.borrow_mut();
        let (raw, out) = &mut *b;
        let raw = fit(raw, raw_len);
        let out = fit(out, out_len);
        f(&mut raw[..raw_len], &mut out[..out_len])
    })
}

/// Drop this thread's buffers (the thread has no upload to do).
pub fn release() {
    BUFS.with(|b| *b.borrow_mut() = (None, None));
}
