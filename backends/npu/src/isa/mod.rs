//! The NPU instruction set: opcodes, operand fields and the 128-bit encoding.
//!
//! Every instruction is one little-endian `u128`: bits 0..8 hold the opcode,
//! the operand fields follow in declaration order from bit 8 upwards, and all
//! bits after the last field are reserved (must be zero). `docs/NPU_ISA.md`
//! is the human-readable specification of the same table.

pub mod encoding;
mod table;

pub use encoding::{decode_word, encode_word};
pub use table::{spec_for_opcode, Instr, OPS};

/// One of the four engines that execute instructions concurrently.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Engine {
    /// DMA-in: DRAM to SRAM loads.
    Ld,
    /// The systolic matrix unit: int8 matmul into the int32 accumulator.
    Mx,
    /// The vector unit: requantisation, copies, LUT lookups.
    Vx,
    /// DMA-out: SRAM to DRAM stores.
    St,
}

impl Engine {
    /// All engines, in encoding order (the index is the 2-bit field value).
    pub const ALL: [Engine; 4] = [Engine::Ld, Engine::Mx, Engine::Vx, Engine::St];

    /// The assembler name of this engine.
    pub fn name(self) -> &'static str {
        match self {
            Engine::Ld => "ld",
            Engine::Mx => "mx",
            Engine::Vx => "vx",
            Engine::St => "st",
        }
    }

    /// The index used in the encoding and in per-engine arrays.
    pub fn index(self) -> usize {
        self as usize
    }
}

/// An on-chip memory that load/store/copy instructions address by bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Space {
    /// The weight SRAM (matrix unit's `w` operand).
    Weight,
    /// The activation SRAM (matrix `a` operand, vector unit operands, outputs).
    Act,
}

impl Space {
    /// The space with encoding value `v`, if any (2-bit field; 2 and 3 are invalid).
    pub fn from_code(v: i64) -> Option<Space> {
        match v {
            0 => Some(Space::Weight),
            1 => Some(Space::Act),
            _ => None,
        }
    }
}

/// How the assembler spells and checks one operand field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FieldKind {
    /// Unsigned integer.
    Uint,
    /// Two's-complement signed integer.
    Int,
    /// An enumeration spelled by name: value `i` is `names[i]`; values past
    /// the list are invalid encodings.
    Named(&'static [&'static str]),
}

/// One operand field of an instruction.
#[derive(Debug)]
pub struct FieldSpec {
    /// The name used in assembly (`name=value`).
    pub name: &'static str,
    /// Width in bits.
    pub bits: u32,
    /// How the value is spelled and range-checked.
    pub kind: FieldKind,
}

impl FieldSpec {
    /// The inclusive range of values this field can hold.
    pub fn range(&self) -> (i64, i64) {
        match self.kind {
            FieldKind::Int => (-(1i64 << (self.bits - 1)), (1i64 << (self.bits - 1)) - 1),
            FieldKind::Uint => (0, (1i64 << self.bits) - 1),
            FieldKind::Named(names) => (0, names.len() as i64 - 1),
        }
    }
}

/// The static description of one opcode.
#[derive(Debug)]
pub struct OpSpec {
    /// The 8-bit opcode.
    pub opcode: u8,
    /// The assembler mnemonic.
    pub mnemonic: &'static str,
    /// Operand fields in encoding order.
    pub fields: &'static [FieldSpec],
}
