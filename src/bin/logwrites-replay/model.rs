//! The client's journal (format in crashpattern.rs) as a model of what each sector of the
//! volume may hold at a replay point.
//!
//! At a point after mark `f<id>`, flush `id` had completed, so every write acknowledged
//! before the client submitted that flush (its `A` line precedes the `F id` line) must be
//! there. A sector then holds the newest such write, or a later write to it (submitted
//! after, possibly not yet acknowledged), never an older one, never zeroes once written,
//! never bytes no write put there. Marks only raise the requirement (the maximum `F`
//! position over the marks passed).

use std::collections::HashMap;
use std::path::Path;

use anyhow::{bail, Context, Result};

use crate::crashpattern::{self, Sector, SECTOR};

#[derive(Clone, Copy)]
enum Ev {
    Ack(u64),
    Other,
}

pub struct Model {
    events: Vec<Ev>,
    /// gen -> (first sector, sectors)
    writes: HashMap<u64, (u64, u64)>,
    /// flush id -> index of its `F` line in `events`
    flush_at: HashMap<u64, usize>,
    pub acked_writes: u64,
    pub completed_flushes: u64,
    /// Writes and flushes that completed with an error.
    pub failed: u64,
    /// Journal position of the `F` line of the last flush that completed OK.
    last_flush: usize,
    /// Per sector: the newest write that must be there (0 = none).
    required: Vec<u64>,
    /// Events applied to `required`.
    cursor: usize,
    pub seed: u64,
}

/// One sector that is not what the journal allows.
pub struct Bad {
    pub sector: u64,
    pub found: String,
    pub required: u64,
}

impl Model {
    pub fn load(path: &Path, seed: u64) -> Result<Model> {
        let text = std::fs::read_to_string(path).with_context(|| format!("read journal {}", path.display()))?;
        let mut m = Model {
            events: Vec::new(),
            writes: HashMap::new(),
            flush_at: HashMap::new(),
            acked_writes: 0,
            completed_flushes: 0,
            failed: 0,
            last_flush: 0,
            required: Vec::new(),
            cursor: 0,
            seed,
        };
        let mut ended = false;
        for (n, line) in text.lines().enumerate() {
            let f: Vec<&str> = line.split_whitespace().collect();
            let num = |i: usize| -> Result<u64> {
                f.get(i).and_then(|s| s.parse().ok()).with_context(|| format!("journal line {}: '{line}'", n + 1))
            };
            let ev = match f.first().copied() {
                Some("W") => {
                    let (gen, sector, count) = (num(1)?, num(2)?, num(3)?);
                    let end = (sector + count) as usize;
                    if end > m.required.len() {
                        m.required.resize(end, 0);
                    }
                    m.writes.insert(gen, (sector, count));
                    Ev::Other
                }
                Some("A") => {
                    m.acked_writes += 1;
                    Ev::Ack(num(1)?)
                }
                Some("F") => {
                    m.flush_at.insert(num(1)?, m.events.len());
                    Ev::Other
                }
                Some("C") => {
                    m.completed_flushes += 1;
                    if let Some(&p) = m.flush_at.get(&num(1)?) {
                        m.last_flush = m.last_flush.max(p);
                    }
                    Ev::Other
                }
                Some("X" | "Y") => {
                    m.failed += 1;
                    Ev::Other
                }
                Some("M") => Ev::Other,
                Some("E") => {
                    ended = true;
                    Ev::Other
                }
                _ => bail!("journal line {}: unknown record '{line}'", n + 1),
            };
            m.events.push(ev);
        }
        if !ended {
            bail!("journal {} has no end record: the client did not finish", path.display());
        }
        Ok(m)
    }

    /// Where in the journal mark `name` ("f<id>") puts the requirement; None for other marks.
    pub fn mark_position(&self, name: &str) -> Option<usize> {
        let id: u64 = name.strip_prefix('f')?.parse().ok()?;
        self.flush_at.get(&id).copied()
    }

    /// The requirement after every flush the client saw complete.
    pub fn last_completed_flush(&self) -> usize {
        self.last_flush
    }

    /// Every acknowledged write (after a clean shutdown all of them must be there).
    pub fn end_position(&self) -> usize {
        self.events.len()
    }

    /// Raise the requirement to what was acknowledged before journal position `pos`.
    pub fn require_until(&mut self, pos: usize) {
        while self.cursor < pos.min(self.events.len()) {
            if let Ev::Ack(gen) = self.events[self.cursor] {
                if let Some(&(s, n)) = self.writes.get(&gen) {
                    for r in &mut self.required[s as usize..(s + n) as usize] {
                        // writes to one sector are never in flight together: a later ack is newer
                        *r = (*r).max(gen);
                    }
                }
            }
            self.cursor += 1;
        }
    }

    /// Sectors that must hold a write at the current requirement.
    pub fn required_sectors(&self) -> usize {
        self.required.iter().filter(|r| **r != 0).count()
    }

    /// Check a volume image; the first `limit` bad sectors in detail, and their count.
    pub fn check(&self, image: &[u8], limit: usize) -> (Vec<Bad>, u64) {
        let mut bad = Vec::new();
        let mut count = 0u64;
        for (i, s) in image.chunks_exact(SECTOR).enumerate() {
            let sector = i as u64;
            let req = self.required.get(i).copied().unwrap_or(0);
            let found = match crashpattern::classify(s, self.seed, sector) {
                Sector::Zero if req == 0 => continue,
                Sector::Zero => "zeroes".to_string(),
                Sector::Gen(g) => match self.writes.get(&g) {
                    Some(&(ws, n)) if (ws..ws + n).contains(&sector) && g >= req => continue,
                    Some(&(ws, n)) if (ws..ws + n).contains(&sector) => format!("older write {g}"),
                    _ => format!("write {g}, which the journal never sent here"),
                },
                Sector::Garbage => "bytes no write put there".to_string(),
            };
            count += 1;
            if bad.len() < limit {
                bad.push(Bad { sector, found, required: req });
            }
        }
        (bad, count)
    }
}
