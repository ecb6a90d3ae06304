//! The opcode table: one line per instruction, expanded by a macro into the
//! [`Instr`] enum and the [`OPS`] specification used by the encoder, the
//! assembler and the disassembler.

use super::{Engine, FieldKind, FieldSpec, OpSpec};

const UINT: FieldKind = FieldKind::Uint;
const INT: FieldKind = FieldKind::Int;
const ENGINE: FieldKind = FieldKind::Named(&["ld", "mx", "vx", "st"]);
const SPACE: FieldKind = FieldKind::Named(&["w", "a"]);
const VMEM: FieldKind = FieldKind::Named(&["a", "acc"]);
const BINOP: FieldKind =
    FieldKind::Named(&["add", "sub", "mul", "mulq", "max", "min", "cvt", "mac"]);
const REDOP: FieldKind = FieldKind::Named(&["sum", "max", "sumsq"]);
const RQMODE: FieldKind = FieldKind::Named(&["none", "bias", "channel"]);
const SFUOP: FieldKind = FieldKind::Named(&["recip", "rsqrt", "exp2"]);

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
                fields: &[$(FieldSpec { name: stringify!($field), bits: $bits, kind: $kind }),*],
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
    Wait = 0x02 "wait" { engine: 2 ENGINE, sem: 4 UINT }
    /// Increments semaphore `sem` once every earlier instruction of `engine` completed.
    Signal = 0x03 "signal" { engine: 2 ENGINE, sem: 4 UINT }
    /// Every engine finishes all earlier instructions before any starts a later one.
    Barrier = 0x04 "barrier" {}
    /// DMA-in configuration: row strides and zero-padding of later `ld`s.
    LdCfg = 0x10 "ld.cfg" {
        dram_stride: 32 UINT, sram_stride: 24 UINT,
        pad_top: 8 UINT, pad_bottom: 8 UINT, pad_left: 16 UINT, pad_right: 16 UINT,
    }
    /// 2-D DMA load of `rows` x `row_bytes` from DRAM into SRAM, framed by zero padding.
    Ld = 0x11 "ld" { space: 2 SPACE, sram: 24 UINT, dram: 32 UINT, rows: 16 UINT, row_bytes: 24 UINT }
    /// DMA-out configuration: row strides of later `st`s.
    StCfg = 0x12 "st.cfg" { dram_stride: 32 UINT, sram_stride: 24 UINT }
    /// 2-D DMA store of `rows` x `row_bytes` from SRAM to DRAM.
    St = 0x13 "st" { space: 2 SPACE, sram: 24 UINT, dram: 32 UINT, rows: 16 UINT, row_bytes: 24 UINT }
    /// Matrix-unit configuration: row strides (bytes for `a`/`w`, int32 elements for `acc`).
    MmCfg = 0x20 "mm.cfg" { a_stride: 24 UINT, w_stride: 24 UINT, acc_stride: 24 UINT }
    /// acc[m x n] (+)= a[m x k] * w[k x n], int8 x int8 -> int32; one systolic fold.
    Matmul = 0x21 "matmul" {
        acc: 20 UINT, a: 24 UINT, w: 24 UINT, m: 16 UINT, k: 16 UINT, n: 16 UINT, accumulate: 1 UINT,
    }
    /// Requantisation parameters (TFLite semantics) of later `requant`s.
    RqCfg = 0x30 "rq.cfg" { multiplier: 32 INT, shift: 8 INT, zero_point: 16 INT, clamp_min: 8 INT, clamp_max: 8 INT }
    /// Vector-unit configuration: row strides of the destination and the two sources.
    VecCfg = 0x31 "vec.cfg" { dst_stride: 24 UINT, src_stride: 24 UINT, src2_stride: 24 UINT }
    /// int8 dst = clamp(zp + rescale(acc + bias[col])), `rows` x `cols`; `mode`
    /// none / bias (int32 per column) / channel (per-column bias, multiplier, shift).
    Requant = 0x32 "requant" { dst: 24 UINT, acc: 20 UINT, bias: 24 UINT, rows: 16 UINT, cols: 16 UINT, mode: 2 RQMODE }
    /// 2-D byte copy inside or between SRAMs (e.g. im2col).
    Vcopy = 0x33 "vcopy" { dst_space: 2 SPACE, dst: 24 UINT, src_space: 2 SPACE, src: 24 UINT, rows: 16 UINT, cols: 24 UINT }
    /// int8 table lookup: dst = table[src + 128] with a 256-byte table in activation SRAM.
    Vlut = 0x34 "vlut" { dst: 24 UINT, src: 24 UINT, table: 24 UINT, rows: 16 UINT, cols: 16 UINT }
    /// Operand pre-scaling of later `vbin`s: `MBQM(x + offset, multiplier, shift)`, multiplier 0 = bypass.
    VbinCfg = 0x35 "vbin.cfg" {
        a_offset: 16 INT, a_multiplier: 32 INT, a_shift: 8 INT,
        b_offset: 16 INT, b_multiplier: 32 INT, b_shift: 8 INT,
    }
    /// Elementwise dst = out(op(pre_a(a), pre_b(b))) over `rows` x `cols`; int8
    /// operands in activation SRAM, int32 in the accumulator; `bcast`: b is one value per row.
    Vbin = 0x36 "vbin" {
        op: 3 BINOP, dst_mem: 1 VMEM, dst: 24 UINT, a_mem: 1 VMEM, a: 24 UINT,
        b_mem: 1 VMEM, b: 24 UINT, rows: 16 UINT, cols: 16 UINT, bcast: 1 UINT,
    }
    /// Row reduction (sum / max / sum of squares) into one int32 per row in
    /// the accumulator, exact then rounded right by `shift` and saturated.
    Vred = 0x37 "vred" { op: 2 REDOP, dst: 20 UINT, src_mem: 1 VMEM, src: 24 UINT, rows: 16 UINT, cols: 16 UINT, shift: 6 UINT }
    /// Special-function unit on accumulator int32s: dst = f(src + bias) in Q`frac`.
    Vsfu = 0x38 "vsfu" { op: 2 SFUOP, dst: 20 UINT, src: 20 UINT, rows: 16 UINT, cols: 16 UINT, frac: 6 UINT, bias: 32 INT }
}

/// The specification of `opcode`, if it is part of the ISA.
pub fn spec_for_opcode(opcode: u8) -> Option<&'static OpSpec> {
    OPS.iter().find(|s| s.opcode == opcode)
}

impl Instr {
    /// The static specification of this instruction's opcode.
    #[allow(
        clippy::expect_used,
        reason = "OPS holds an entry for every Instr variant's opcode"
    )]
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
            RqCfg { .. }
            | VecCfg { .. }
            | Requant { .. }
            | Vcopy { .. }
            | Vlut { .. }
            | VbinCfg { .. }
            | Vbin { .. }
            | Vred { .. }
            | Vsfu { .. } => Some(Engine::Vx),
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
