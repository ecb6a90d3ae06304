//! The hazard checker: flags two engines touching overlapping memory (one
//! of them writing) with no semaphore chain ordering them.
//!
//! Ordering is tracked with vector clocks: every engine counts its
//! instructions; a `signal` publishes the signaller's clock and the
//! matching `wait` merges it. Regions are compared by their bounding byte
//! ranges, so interleaved strided regions can be reported conservatively.

use super::memory::{Mem, Region};
use crate::isa::Engine;

/// A vector clock: instructions each engine had completed, as known here.
pub type Clock = [u64; 4];

/// Two unordered conflicting accesses.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Hazard {
    /// The memory.
    pub mem: Mem,
    /// Overlapping bounding range start.
    pub start: u64,
    /// Overlapping bounding range end (exclusive).
    pub end: u64,
    /// The earlier instruction (index) and its engine.
    pub first: (usize, Engine),
    /// The later instruction (index) and its engine.
    pub second: (usize, Engine),
}

struct Record {
    mem: Mem,
    start: u64,
    end: u64,
    engine: usize,
    epoch: u64,
    write: bool,
    index: usize,
}

/// Remembers recent accesses and checks new ones against them.
#[derive(Default)]
pub struct HazardChecker {
    records: Vec<Record>,
    /// Hazards found so far (at most [`HazardChecker::MAX_REPORTED`]).
    pub hazards: Vec<Hazard>,
}

impl HazardChecker {
    /// Hazards kept for the report.
    pub const MAX_REPORTED: usize = 64;
    const MAX_RECORDS: usize = 4096;

    /// Checks and records one access by `engine` (whose clock is `clock`,
    /// already advanced for this instruction).
    pub fn access(
        &mut self,
        region: &Region,
        write: bool,
        engine: usize,
        clock: &Clock,
        index: usize,
    ) {
        let (start, end) = region.bounds();
        if start == end {
            return;
        }
        for r in &self.records {
            let overlaps = r.mem == region.mem && r.start < end && start < r.end;
            if overlaps
                && r.engine != engine
                && (r.write || write)
                && clock[r.engine] < r.epoch
                && self.hazards.len() < Self::MAX_REPORTED
            {
                self.hazards.push(Hazard {
                    mem: region.mem,
                    start: start.max(r.start),
                    end: end.min(r.end),
                    first: (r.index, Engine::ALL[r.engine]),
                    second: (index, Engine::ALL[engine]),
                });
            }
        }
        // A record is redundant once a later access of the same kind covers it
        // and is ordered after it: any future conflict with it also conflicts
        // with (or is ordered after) the new record.
        self.records.retain(|r| {
            let covered = r.mem == region.mem && start <= r.start && r.end <= end;
            let ordered = r.engine == engine || clock[r.engine] >= r.epoch;
            !(covered && ordered && (write || !r.write))
        });
        if self.records.len() >= Self::MAX_RECORDS {
            self.records.remove(0);
        }
        self.records.push(Record {
            mem: region.mem,
            start,
            end,
            engine,
            epoch: clock[engine],
            write,
            index,
        });
    }
}
