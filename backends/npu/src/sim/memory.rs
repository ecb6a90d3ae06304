//! Bounds-checked 2-D regions of the simulator's memories.

/// A memory the simulator tracks for traffic and hazards.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mem {
    /// Weight SRAM.
    Weight,
    /// Activation SRAM.
    Act,
    /// Accumulator (addresses in int32 entries).
    Acc,
    /// The DRAM image.
    Dram,
    /// The on-chip feature-map SRAM, reached by DMA through the window at
    /// [`crate::config::FMAP_BASE`] (addresses are offsets from it).
    Fmap,
}

impl Mem {
    /// A short name for messages.
    pub fn name(self) -> &'static str {
        match self {
            Mem::Weight => "weight SRAM",
            Mem::Act => "activation SRAM",
            Mem::Acc => "accumulator",
            Mem::Dram => "DRAM image",
            Mem::Fmap => "fmap SRAM",
        }
    }
}

/// `rows` rows of `row_len` units, `stride` apart, starting at `base`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Region {
    /// The memory.
    pub mem: Mem,
    /// First unit.
    pub base: u64,
    /// Number of rows.
    pub rows: u64,
    /// Units per row.
    pub row_len: u64,
    /// Distance between row starts.
    pub stride: u64,
}

impl Region {
    /// Units from `base` to one past the last unit touched (0 when empty).
    pub fn extent(&self) -> u64 {
        if self.rows == 0 || self.row_len == 0 {
            0
        } else {
            (self.rows - 1) * self.stride + self.row_len
        }
    }

    /// The half-open bounding range `[base, base + extent)`.
    pub fn bounds(&self) -> (u64, u64) {
        (self.base, self.base + self.extent())
    }

    /// Checks the region lies within a memory of `len` units: every row, an
    /// empty one included, starts and ends inside it (so slicing a row is
    /// always in bounds); a message naming the memory and the overflowing
    /// address otherwise.
    pub fn check(&self, len: usize) -> Result<(), String> {
        if self.rows == 0 {
            return Ok(());
        }
        let end = (self.rows - 1)
            .checked_mul(self.stride)
            .and_then(|last| last.checked_add(self.base))
            .and_then(|last| last.checked_add(self.row_len))
            .unwrap_or(u64::MAX);
        if end > len as u64 {
            return Err(format!(
                "{} access [{}, {}) outside its {} {}",
                self.mem.name(),
                self.base,
                end,
                len,
                if self.mem == Mem::Acc {
                    "entries"
                } else {
                    "bytes"
                }
            ));
        }
        Ok(())
    }

    /// Start offsets of each row (valid only after [`Region::check`]).
    pub fn row_starts(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.rows).map(move |r| (self.base + r * self.stride) as usize)
    }

    /// Units touched.
    pub fn units(&self) -> u64 {
        self.rows * self.row_len
    }
}
