//! The opcode table: one line per instruction, expanded by a macro into the
//! [`Instr`] enum and the [`OPS`] specification used by the encoder, the
//! assembler and the disassembler.

use super::{Engine, FieldKind, FieldSpec, OpSpec};

macro_rules! instruction_set {
    ($(
        $(#[$doc:meta])*
        $variant:ident = $opcode:literal $mnemonic:literal
            { $($field:ident : $bits:literal $kind:ident),* $(,)? }
    )*) => {
        /// One decoded instruction; every operand is held as `i64` and was
        /// range-checked against its field width.
        #[derive(Clone, Debug, PartialEq, Eq)]
        pub enum Instr {
            $($(#[$doc])* $variant { $(
                #[allow(missing_docs)]
                $field: i64
            ),* },)*
        }

        /// The specification of every opcode, in opcode order.
        pub const OPS: &[OpSpec] = &[$(
            OpSpec {
                opcode: $opcode,
                mnemonic: $mnemonic,
                fields: &[$(FieldSpec { name: stringify!($field), bits: $bits, kind: FieldKind::$kind }),*],
            },
        )*];

        impl Instr {
            /// The opcode of this instruction.
            pub fn opcode(&self) -> u8 {
                match self { $(Instr::$variant { .. } => $opcode,)* }
            }

            /// Operand values in field order.
            pub fn field_values(&self) -> Vec<i64> {
                match self { $(Instr::$variant { $($field),* } => vec![$(*$field),*],)* }
            }

            /// Builds an instruction from its opcode and operand values in
            /// field order; `None` for an unknown opcode or a wrong count.
            pub fn from_values(opcode: u8, values: &[i64]) -> Option<Instr> {
                match opcode {
                    $($opcode => {
                        let mut it = values.iter().copied();
                        let instr = Instr::$variant { $($field: it.next()?),* };
                        it.next().is_none().then_some(instr)
                    })*
                    _ => None,
                }
            }
        }
    };
}

instruction_set! {
    /// End of program: the front-end stops dispatching; the run ends when all engines drain.
    Halt = 0x01 "halt" {}
    /// Blocks `engine` until semaphore `sem` is positive, then decrements it.
    Wait = 0x02 "wait" { engine: 2 Engine, sem: 4 Uint }
    /// Increments semaphore `sem` once every earlier instruction of `engine` completed.
    Signal = 0x03 "signal" { engine: 2 Engine, sem: 4 Uint }
    /// Every engine finishes all earlier instructions before any starts a later one.
    Barrier = 0x04 "barrier" {}
    /// DMA-in configuration: row strides and zero-padding of later `ld`s.
    LdCfg = 0x10 "ld.cfg" {
        dram_stride: 32 Uint, sram_stride: 24 Uint,
        pad_top: 8 Uint, pad_bottom: 8 Uint, pad_left: 16 Uint, pad_right: 16 Uint,
    }
    /// 2-D DMA load of `rows` x `row_bytes` from DRAM into SRAM, framed by zero padding.
    Ld = 0x11 "ld" { space: 2 Space, sram: 24 Uint, dram: 32 Uint, rows: 16 Uint, row_bytes: 24 Uint }
    /// DMA-out configuration: row strides of later `st`s.
    StCfg = 0x12 "st.cfg" { dram_stride: 32 Uint, sram_stride: 24 Uint }
    /// 2-D DMA store of `rows` x `row_bytes` from SRAM to DRAM.
    St = 0x13 "st" { space: 2 Space, sram: 24 Uint, dram: 32 Uint, rows: 16 Uint, row_bytes: 24 Uint }
    /// Matrix-unit configuration: row strides (bytes for `a`/`w`, int32 elements for `acc`).
    MmCfg = 0x20 "mm.cfg" { a_stride: 24 Uint, w_stride: 24 Uint, acc_stride: 24 Uint }
    /// acc[m x n] (+)= a[m x k] * w[k x n], int8 x int8 -> int32; one systolic fold.
    Matmul = 0x21 "matmul" {
        acc: 20 Uint, a: 24 Uint, w: 24 Uint, m: 16 Uint, k: 16 Uint, n: 16 Uint, accumulate: 1 Uint,
    }
    /// Requantisation parameters (TFLite semantics) of later `requant`s.
    RqCfg = 0x30 "rq.cfg" { multiplier: 32 Int, shift: 8 Int, zero_point: 16 Int, clamp_min: 8 Int, clamp_max: 8 Int }
    /// Vector-unit configuration: row strides of the destination and the two sources.
    VecCfg = 0x31 "vec.cfg" { dst_stride: 24 Uint, src_stride: 24 Uint, src2_stride: 24 Uint }
    /// int8 dst = clamp(zp + rescale(acc + bias[col])), `rows` x `cols`.
    Requant = 0x32 "requant" { dst: 24 Uint, acc: 20 Uint, bias: 24 Uint, rows: 16 Uint, cols: 16 Uint, use_bias: 1 Uint }
    /// 2-D byte copy inside or between SRAMs (e.g. im2col).
    Vcopy = 0x33 "vcopy" { dst_space: 2 Space, dst: 24 Uint, src_space: 2 Space, src: 24 Uint, rows: 16 Uint, cols: 24 Uint }
    /// int8 table lookup: dst = table[src + 128] with a 256-byte table in activation SRAM.
    Vlut = 0x34 "vlut" { dst: 24 Uint, src: 24 Uint, table: 24 Uint, rows: 16 Uint, cols: 16 Uint }
}

/// The specification of `opcode`, if it is part of the ISA.
pub fn spec_for_opcode(opcode: u8) -> Option<&'static OpSpec> {
    OPS.iter().find(|s| s.opcode == opcode)
}

impl Instr {
    /// The static specification of this instruction's opcode.
    pub fn spec(&self) -> &'static OpSpec {
        spec_for_opcode(self.opcode()).expect("every variant is in OPS")
    }

    /// The engine that executes this instruction; `None` for front-end
    /// control (`halt`, `barrier`).
    pub fn engine(&self) -> Option<Engine> {
        use Instr::*;
        match self {
            Halt {} | Barrier {} => None,
            Wait { engine, .. } | Signal { engine, .. } => {
                Engine::ALL.get(*engine as usize).copied()
            }
            LdCfg { .. } | Ld { .. } => Some(Engine::Ld),
            StCfg { .. } | St { .. } => Some(Engine::St),
            MmCfg { .. } | Matmul { .. } => Some(Engine::Mx),
            RqCfg { .. } | VecCfg { .. } | Requant { .. } | Vcopy { .. } | Vlut { .. } => {
                Some(Engine::Vx)
            }
        }
    }

    /// Checks every operand against its field width; the first offending
    /// field's name and value on failure.
    pub fn check_ranges(&self) -> Result<(), (&'static str, i64)> {
        for (field, value) in self.spec().fields.iter().zip(self.field_values()) {
            let (lo, hi) = field.range();
            if value < lo || value > hi {
                return Err((field.name, value));
            }
        }
        Ok(())
    }
}
