//! Driver side of one split virtqueue, laid out in guest memory by us.
//!
//! Every request slot `i` owns descriptors `3i` (header), `3i+1` (data) and `3i+2`
//! (status), so a completion's id names its slot and nothing is allocated per request. A
//! flush chains the header straight to the status descriptor.

use std::sync::atomic::{fence, AtomicU16, Ordering};

use crate::mem::GuestMem;

const VRING_DESC_F_NEXT: u16 = 1;
const VRING_DESC_F_WRITE: u16 = 2;
const VRING_USED_F_NO_NOTIFY: u16 = 1;

/// Where one queue's rings live (guest addresses).
#[derive(Clone, Copy, Debug)]
pub struct RingLayout {
    pub size: u16,
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
}

impl RingLayout {
    /// Rings for a queue of `size` entries starting at `base` (4 KiB aligned).
    pub fn new(base: u64, size: u16) -> RingLayout {
        let qs = u64::from(size);
        let desc = base;
        let avail = desc + 16 * qs;
        let avail_end = avail + 6 + 2 * qs;
        let used = (avail_end + 4095) & !4095;
        RingLayout { size, desc, avail, used }
    }

    /// Bytes from `desc` to the end of the used ring (with its avail_event).
    pub fn span(&self) -> u64 {
        self.used + 6 + 8 * u64::from(self.size) - self.desc
    }
}

/// Per-slot guest addresses: header (16 bytes), status (1 byte), data buffer.
#[derive(Clone, Copy, Debug)]
pub struct SlotAddrs {
    pub hdr: u64,
    pub status: u64,
    pub data: u64,
}

pub struct Vq<'m> {
    mem: &'m GuestMem,
    l: RingLayout,
    event_idx: bool,
    /// avail idx we have written entries up to (not necessarily published).
    shadow_avail: u16,
    /// avail idx last published to the device.
    published: u16,
    used_seen: u16,
}

impl<'m> Vq<'m> {
    pub fn new(mem: &'m GuestMem, l: RingLayout, event_idx: bool) -> Vq<'m> {
        // Fresh rings: zero them (flags 0 = we want interrupts).
        mem.slice_mut(l.desc, l.span() as usize).fill(0);
        Vq { mem, l, event_idx, shadow_avail: 0, published: 0, used_seen: 0 }
    }

    #[inline]
    fn w16(&self, gpa: u64, v: u16) {
        // SAFETY: in-bounds, 2-aligned address in the shared mapping.
        unsafe { std::ptr::write_volatile(self.mem.ptr(gpa, 2) as *mut u16, v.to_le()) }
    }
    #[inline]
    fn w32(&self, gpa: u64, v: u32) {
        // SAFETY: in-bounds, 4-aligned address in the shared mapping.
        unsafe { std::ptr::write_volatile(self.mem.ptr(gpa, 4) as *mut u32, v.to_le()) }
    }
    #[inline]
    fn w64(&self, gpa: u64, v: u64) {
        // SAFETY: in-bounds, 8-aligned address in the shared mapping.
        unsafe { std::ptr::write_volatile(self.mem.ptr(gpa, 8) as *mut u64, v.to_le()) }
    }
    #[inline]
    fn r16(&self, gpa: u64) -> u16 {
        // SAFETY: in-bounds, 2-aligned address in the shared mapping.
        u16::from_le(unsafe { std::ptr::read_volatile(self.mem.ptr(gpa, 2) as *const u16) })
    }
    #[inline]
    fn r32(&self, gpa: u64) -> u32 {
        // SAFETY: in-bounds, 4-aligned address in the shared mapping.
        u32::from_le(unsafe { std::ptr::read_volatile(self.mem.ptr(gpa, 4) as *const u32) })
    }
    #[inline]
    fn atomic16(&self, gpa: u64) -> &AtomicU16 {
        // SAFETY: in-bounds, 2-aligned; the device accesses it concurrently, hence atomic.
        unsafe { &*(self.mem.ptr(gpa, 2) as *const AtomicU16) }
    }

    fn write_desc(&self, idx: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let a = self.l.desc + 16 * u64::from(idx);
        self.w64(a, addr);
        self.w32(a + 8, len);
        self.w16(a + 12, flags);
        self.w16(a + 14, next);
    }

    /// Fill the descriptor table entries of `slot` that never change.
    pub fn init_slot(&self, slot: u16, a: &SlotAddrs, data_len: u32) {
        let h = 3 * slot;
        self.write_desc(h, a.hdr, 16, VRING_DESC_F_NEXT, h + 1);
        self.write_desc(h + 1, a.data, data_len, VRING_DESC_F_NEXT, h + 2);
        self.write_desc(h + 2, a.status, 1, VRING_DESC_F_WRITE, 0);
    }

    /// Queue a request on `slot` (not yet visible to the device: see [`Vq::publish`]).
    /// `data`: `None` for a request without data (flush), else (length, device-writable).
    #[inline]
    pub fn push(&mut self, slot: u16, a: &SlotAddrs, req_type: u32, sector: u64, data: Option<(u32, bool)>) {
        let h = 3 * slot;
        self.w32(a.hdr, req_type);
        self.w32(a.hdr + 4, 0);
        self.w64(a.hdr + 8, sector);
        // SAFETY: the status byte belongs to this idle slot.
        unsafe { std::ptr::write_volatile(self.mem.ptr(a.status, 1), 0xff) };
        let d = self.l.desc + 16 * u64::from(h);
        match data {
            None => self.w16(d + 14, h + 2),
            Some((len, write)) => {
                self.w16(d + 14, h + 1);
                let dd = d + 16;
                self.w32(dd + 8, len);
                self.w16(dd + 12, VRING_DESC_F_NEXT | if write { VRING_DESC_F_WRITE } else { 0 });
            }
        }
        let pos = u64::from(self.shadow_avail % self.l.size);
        self.w16(self.l.avail + 4 + 2 * pos, h);
        self.shadow_avail = self.shadow_avail.wrapping_add(1);
    }

    /// Make queued requests visible; returns true when the device wants a kick.
    #[inline]
    pub fn publish(&mut self) -> bool {
        if self.shadow_avail == self.published {
            return false;
        }
        let old = self.published;
        let new = self.shadow_avail;
        // Descriptors, headers and ring entries before the index.
        self.atomic16(self.l.avail + 2).store(new.to_le(), Ordering::Release);
        self.published = new;
        // The index before reading the device's suppression state.
        fence(Ordering::SeqCst);
        if self.event_idx {
            let avail_event = self.r16(self.l.used + 4 + 8 * u64::from(self.l.size));
            // vring_need_event(event, new, old)
            new.wrapping_sub(avail_event).wrapping_sub(1) < new.wrapping_sub(old)
        } else {
            self.r16(self.l.used) & VRING_USED_F_NO_NOTIFY == 0
        }
    }

    /// The device's used idx (acquire: entries and status bytes before it are visible).
    #[inline]
    pub fn used_idx(&self) -> u16 {
        u16::from_le(self.atomic16(self.l.used + 2).load(Ordering::Acquire))
    }

    /// Next used entry, if any, as (slot, used length).
    #[inline]
    pub fn pop_used(&mut self, used_idx: u16) -> Option<(u16, u32)> {
        if self.used_seen == used_idx {
            return None;
        }
        let e = self.l.used + 4 + 8 * u64::from(self.used_seen % self.l.size);
        let id = self.r32(e);
        let len = self.r32(e + 4);
        self.used_seen = self.used_seen.wrapping_add(1);
        Some(((id / 3) as u16, len))
    }

    /// Before sleeping on the call eventfd: ask for a notification at the next used entry.
    /// Returns true when entries arrived meanwhile (do not sleep).
    #[inline]
    pub fn arm(&self) -> bool {
        if self.event_idx {
            let a = self.l.avail + 4 + 2 * u64::from(self.l.size);
            self.atomic16(a).store(self.used_seen.to_le(), Ordering::Relaxed);
            fence(Ordering::SeqCst);
        }
        self.used_idx() != self.used_seen
    }

    /// The status byte of a completed slot.
    #[inline]
    pub fn status(&self, a: &SlotAddrs) -> u8 {
        // SAFETY: in bounds; the device wrote it before publishing the used entry.
        unsafe { std::ptr::read_volatile(self.mem.ptr(a.status, 1)) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_fits() {
        for qs in [16u16, 128, 256, 1024] {
            let l = RingLayout::new(0, qs);
            assert_eq!(l.used % 4096, 0);
            assert!(l.used >= l.avail + 6 + 2 * u64::from(qs));
            assert!(l.span() <= 64 << 10, "queue size {qs}");
        }
    }

    #[test]
    fn push_publish_pop() {
        let mem = GuestMem::new(1 << 20).unwrap();
        let l = RingLayout::new(0, 16);
        let mut vq = Vq::new(&mem, l, true);
        let a = SlotAddrs { hdr: 0x10000, status: 0x10010, data: 0x11000 };
        vq.init_slot(2, &a, 4096);
        vq.push(2, &a, 1, 8, Some((4096, false)));
        // avail_event is 0 and old idx 0: the first publish needs a kick.
        assert!(vq.publish());
        assert_eq!(vq.r16(l.avail + 2), 1);
        assert_eq!(vq.r16(l.avail + 4), 6);
        assert_eq!(vq.r16(l.desc + 16 * 6 + 14), 7);
        assert!(!vq.publish(), "nothing new");
        // The "device" completes it.
        vq.w32(l.used + 4, 6);
        vq.w32(l.used + 8, 1);
        vq.w16(l.used + 2, 1);
        assert!(vq.arm());
        assert_eq!(vq.pop_used(vq.used_idx()), Some((2, 1)));
        assert_eq!(vq.pop_used(vq.used_idx()), None);
        assert!(!vq.arm());
        assert_eq!(vq.status(&a), 0xff);
        // A flush: header chained to the status descriptor.
        vq.push(2, &a, 4, 0, None);
        assert_eq!(vq.r16(l.desc + 16 * 6 + 14), 8);
    }
}
