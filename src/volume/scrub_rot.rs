//! SCOs scrub could not empty because a live cluster of theirs is rotten with no good
//! copy anywhere (the local file and the object store hold the same bad bytes, or the
//! object itself is corrupt). Scrub moves everything else out of such an SCO and keeps
//! it, the rotten clusters still mapped there: reads of them fail as they did before,
//! nothing readable is lost. Later passes pass it over while its live count stays what
//! the pass left, so one rotten cluster neither fails every pass nor makes the scrubber
//! count garbage it cannot free (which would let the store grow past its bound). Once
//! the guest overwrites the rotten clusters the SCO is dead and deleted like any other;
//! when its live count changes otherwise, it is tried again.

use std::collections::HashMap;

use super::scrub_policy::Candidate;

/// The SCOs kept for rot, with the live clusters each had left.
#[derive(Debug, Default)]
pub(crate) struct RottenScos {
    kept: HashMap<u64, u64>,
}

impl RottenScos {
    /// SCO `sco` keeps `live` clusters that could not be moved (its rotten ones).
    pub fn keep(&mut self, sco: u64, live: u64) {
        self.kept.insert(sco, live);
    }

    /// Whether a pass should leave this candidate alone: kept for rot, and nothing of it
    /// changed since (a changed live count means the guest rewrote some of it: try again).
    pub fn passes_over(&self, c: &Candidate) -> bool {
        c.live > 0 && self.kept.get(&c.sco) == Some(&c.live)
    }

    /// SCO `sco` is gone from the store.
    pub fn forget(&mut self, sco: u64) {
        self.kept.remove(&sco);
    }

    /// How many SCOs are kept for rot.
    pub fn len(&self) -> usize {
        self.kept.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passed_over_until_its_live_count_changes() {
        let mut r = RottenScos::default();
        let c = |live| Candidate { sco: 7, total: 32, live };
        assert!(!r.passes_over(&c(1)));
        r.keep(7, 1);
        assert!(r.passes_over(&c(1)));
        assert!(!r.passes_over(&c(2)), "live data added: tried again");
        assert!(!r.passes_over(&c(0)), "dead: deleted as any other");
        r.forget(7);
        assert!(!r.passes_over(&c(1)));
        assert_eq!(r.len(), 0);
    }
}
