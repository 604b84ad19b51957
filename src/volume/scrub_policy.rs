//! Which SCOs a scrub pass rewrites. Dead SCOs (nothing live) are free to reclaim and
//! always go. The others are ranked by cost-benefit as in log-structured file systems
//! (Rosenblum & Ousterhout): space freed per byte read and copied, weighted by age,
//! `(1 - u) * age / (1 + u)` for live fraction `u`, so cold, mostly-dead SCOs go first
//! and a pass copies little. A pass stops once it has freed what it was asked to.

/// One SCO in the object store, as the accounting saw it (clusters).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Candidate {
    pub sco: u64,
    pub total: u64,
    pub live: u64,
}

/// What a scrub pass is asked to do.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Goal {
    /// Rewrite only SCOs whose live fraction is below this.
    pub max_live_fraction: f64,
    /// Stop choosing once this many garbage clusters would be freed.
    pub free_clusters: u64,
    /// Copy at most this many live clusters (at least one SCO is always taken).
    pub max_moved_clusters: u64,
    /// Also rewrite SCOs sealed under an older key of an encrypted volume (after a
    /// rotation), whatever their live part, within `max_moved_clusters`.
    pub rekey: bool,
    /// Whether (and how long) to flush and wait for every sealed SCO to be uploaded
    /// before choosing, so that the newest data is a candidate too.
    pub upload_first: UploadFirst,
}

/// A pass's wait for the newest uploads before it chooses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UploadFirst {
    /// No wait: what is uploaded covers the goal (writes waiting for space should not
    /// also wait for an upload the pass does not need: 167 ms of a 200 ms pass under
    /// 1 MiB overwrites), or the local disk is low (uploads may be failing there).
    No,
    /// At most this long, then the pass goes on with what is uploaded (the scrubber:
    /// while it waits no volume's space limits are recomputed, and uploads failing on a
    /// full write-buffer disk once held them for 13 s).
    Within(std::time::Duration),
    /// Up to the drain timeout, then the pass fails (`logdisk scrub`).
    Drain,
}

impl Goal {
    /// Every SCO below `threshold`, however much that copies (`logdisk scrub`).
    pub fn all_below(threshold: f64) -> Goal {
        Goal {
            max_live_fraction: threshold,
            free_clusters: u64::MAX,
            max_moved_clusters: u64::MAX,
            rekey: true,
            upload_first: UploadFirst::Drain,
        }
    }

    /// Only SCOs under older keys, copying at most `max_moved` live clusters (the
    /// scrubber's background rekey after a rotation).
    pub fn rekey(max_moved: u64) -> Goal {
        Goal {
            max_live_fraction: 0.0,
            free_clusters: 0,
            max_moved_clusters: max_moved,
            rekey: true,
            upload_first: UploadFirst::Drain,
        }
    }
}

/// The chosen SCOs: `(dead, victims)`; victims in the order they should be copied.
pub fn choose(cands: &[Candidate], newest: u64, goal: &Goal) -> (Vec<u64>, Vec<u64>) {
    let dead: Vec<u64> = cands.iter().filter(|c| c.live == 0).map(|c| c.sco).collect();
    let mut freed: u64 = cands.iter().filter(|c| c.live == 0).map(|c| c.total).sum();
    let mut ranked: Vec<(f64, &Candidate)> = cands
        .iter()
        .filter(|c| c.live > 0 && (c.live as f64) < goal.max_live_fraction * c.total as f64)
        .map(|c| {
            let u = c.live as f64 / c.total as f64;
            let age = newest.saturating_sub(c.sco) as f64 + 1.0;
            ((1.0 - u) * age / (1.0 + u), c)
        })
        .collect();
    ranked.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.sco.cmp(&b.1.sco)));
    let mut victims = Vec::new();
    let mut moved = 0u64;
    for (_, c) in ranked {
        if freed >= goal.free_clusters {
            break;
        }
        if !victims.is_empty() && moved + c.live > goal.max_moved_clusters {
            break;
        }
        moved += c.live;
        freed += c.total - c.live;
        victims.push(c.sco);
    }
    (dead, victims)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(sco: u64, live: u64) -> Candidate {
        Candidate { sco, total: 100, live }
    }

    #[test]
    fn dead_always_then_cheapest_and_coldest_first() {
        let cands = [c(1, 60), c(2, 0), c(3, 20), c(4, 20), c(5, 95)];
        let (dead, victims) = choose(&cands, 10, &Goal::all_below(0.9));
        assert_eq!(dead, vec![2]);
        // 3 and 4 are equally empty: the older (colder) first; 5 is above the limit.
        assert_eq!(victims, vec![3, 4, 1]);
    }

    #[test]
    fn stops_when_enough_is_freed_or_copied() {
        let cands = [c(1, 10), c(2, 50), c(3, 30), c(4, 0)];
        // The dead SCO frees 100; the best victim (1) 90 more: 190 >= 150.
        let g = Goal {
            max_live_fraction: 1.0,
            free_clusters: 150,
            max_moved_clusters: u64::MAX,
            rekey: false,
            upload_first: UploadFirst::Drain,
        };
        assert_eq!(choose(&cands, 4, &g), (vec![4], vec![1]));
        // A copy cap: the first victim always goes, the next only if it fits.
        let g = Goal {
            max_live_fraction: 1.0,
            free_clusters: u64::MAX,
            max_moved_clusters: 35,
            rekey: false,
            upload_first: UploadFirst::Drain,
        };
        assert_eq!(choose(&cands, 4, &g).1, vec![1]);
        let g = Goal {
            max_live_fraction: 1.0,
            free_clusters: u64::MAX,
            max_moved_clusters: 5,
            rekey: false,
            upload_first: UploadFirst::Drain,
        };
        assert_eq!(choose(&cands, 4, &g).1, vec![1]);
        // Strictly below the live fraction, as `logdisk scrub --threshold` promises.
        assert_eq!(choose(&cands, 4, &Goal::all_below(0.3)).1, vec![1]);
    }
}
