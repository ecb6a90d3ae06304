//! Quantised kernels: the int8 GEMM (u8 × s8 → i32 with a fused
//! requantisation epilogue) and the int8 convolution on it (im2col), the
//! int4 weight-only GEMV/GEMM of decode (f32 activations, or int8 ones
//! quantised per block at run time where the model allows it), the
//! generic integer MatMul, and the graph patterns that select them
//! (`Quantize` and uint8 are computed by the elementwise kernels).
//!
//! Every kernel has the uniform `KernelFn` signature and computes the
//! iterations `begin..end` of its outermost loop (B panels, output
//! columns, rows), so the executor splits it over threads like any other.

pub(crate) mod attention8;
mod conv8;
mod epilogue;
mod gemm8;
mod gemv4;
mod gemv4a8;
mod imatmul;
mod jit;
pub(crate) mod lower;
mod pattern4;
mod pattern8;

pub use gemm8::{Int8GemmSpec, Int8Output, Int8Runtime, Int8Weights};
pub use gemv4::{Int4GemmSpec, Int4Weights};
pub use gemv4a8::Int4A8Spec;
pub use jit::JitKernel;

pub(crate) use epilogue::quantize_with_zero_point;
pub(crate) use gemm8::emit as emit_int8_gemm;
pub(crate) use gemv4::emit as emit_int4_gemm;
pub(crate) use gemv4a8::emit as emit_int4_a8_gemm;
pub(crate) use imatmul::lower as lower_int_matmul;

use crate::Target;

/// How a target computes the int8 dot products of the GEMM, and the number
/// of consecutive k a packed B column holds per group (`group`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DotKind {
    /// `vpdpbusd`: four u8 × s8 products summed into each i32 lane in one
    /// instruction (AVX-512 VNNI, or AVX-VNNI on 256-bit vectors).
    Vnni,
    /// `vpmaddwd` on values widened to i16 (B stored as i16, A copied as
    /// zero-extended words per tile): two exact products per i32 lane.
    /// Not `vpmaddubsw`, whose i16 sum of two u8 × s8 products saturates
    /// (255·127·2 > 32767); the widened form is exact for every u8/s8
    /// value, so results match the interpreter bit for bit without
    /// restricting weights to 7 bits.
    Pmaddwd,
    /// `sdot` (AArch64's dot-product extension, Armv8.2 `+dotprod`): four
    /// s8 × s8 products summed into each i32 lane. Both operands are
    /// signed, so A lives in the int8 domain: a uint8 A is shifted by
    /// flipping its sign bit (`a − 128`) — see [`DotKind::a_in_int8`].
    Sdot,
    /// Plain vector IR (sign-extend, multiply, add in i32) that LLVM lowers
    /// for the target: NEON without the dot-product extension (`smull`/
    /// `smlal`-style code; the generic AArch64 CPU).
    Generic,
}

impl DotKind {
    /// The kind `target` uses.
    pub fn for_target(target: &Target) -> Self {
        match target.isa {
            _ if target.has_vnni() => DotKind::Vnni,
            crate::Isa::Avx512 | crate::Isa::Avx2 => DotKind::Pmaddwd,
            crate::Isa::Neon if target.has_dotprod() => DotKind::Sdot,
            crate::Isa::Neon => DotKind::Generic,
        }
    }

    /// Whether the products take A as int8 (else uint8): an A of the other
    /// signedness has its sign bit flipped, and the accumulators carry
    /// `±128 · Σ b` in excess, subtracted with A's zero point
    /// ([`DotKind::a_shift`]).
    pub fn a_in_int8(self) -> bool {
        self == DotKind::Sdot
    }

    /// What the accumulator holds in excess per unit of a column's sum:
    /// A's zero point moved into the domain the products take A in
    /// (`+128` for an int8 A read as uint8, `−128` for a uint8 A read as
    /// int8).
    pub fn a_shift(self, a_signed: bool) -> i64 {
        match (a_signed, self.a_in_int8()) {
            (true, false) => 128,
            (false, true) => -128,
            _ => 0,
        }
    }

    /// Consecutive k values per packed group (the bytes one i32 lane of A's
    /// broadcast carries).
    pub fn group(self) -> usize {
        match self {
            DotKind::Vnni | DotKind::Sdot => 4,
            DotKind::Pmaddwd => 2,
            DotKind::Generic => 1,
        }
    }

    /// Bytes of one stored B element: `vpmaddwd` multiplies i16, so its B
    /// is stored widened (twice int8's bytes, half of f32's), which makes
    /// each product one instruction with B read from memory.
    pub fn b_bytes(self) -> usize {
        match self {
            DotKind::Pmaddwd => 2,
            DotKind::Vnni | DotKind::Sdot | DotKind::Generic => 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use inkwell::context::Context;

    use super::*;
    use crate::kernels::Cx;
    use crate::Machine;

    /// The assembly of what `emit` generates for `target`.
    fn assembly_of(target: &str, cpu: Option<&str>, emit: impl FnOnce(Cx<'_, '_>)) -> String {
        let target = Target::parse(Some(target), cpu).unwrap();
        let machine = Machine::new(&target).unwrap();
        let context = Context::create();
        let module = machine.new_module(&context, "q");
        emit(Cx {
            context: &context,
            module: &module,
            target: &target,
        });
        machine.optimize(&module).unwrap();
        machine.emit_assembly(&module).unwrap()
    }

    /// The assembly of an int8 GEMM and an int4 GEMM for `target`.
    fn assembly(target: &str, cpu: Option<&str>) -> String {
        assembly_of(target, cpu, |cx| {
            let spec = Int8GemmSpec {
                symbol: "q8".into(),
                m: 20,
                k: 64,
                n: 40,
                a_signed: true,
                a_zero_point: 0,
                output: Int8Output::Quantized {
                    signed: true,
                    scale: 0.5,
                    zero_point: 0,
                },
                runtime: Int8Runtime::default(),
            };
            emit_int8_gemm(cx, &spec).unwrap();
            let spec = Int4GemmSpec {
                symbol: "q4".into(),
                m: 1,
                k: 64,
                n: 8,
                block: 32,
                signed: false,
                bits: 4,
                integer_zero_points: true,
            };
            emit_int4_gemm(cx, &spec).unwrap();
        })
    }

    /// The assembly of an int8-compute int4 GEMM for `target`.
    fn a8_assembly(target: &str, cpu: Option<&str>) -> String {
        assembly_of(target, cpu, |cx| {
            let spec = Int4A8Spec {
                symbol: "q4a8".into(),
                m: 1,
                k: 64,
                n: 20,
                block: 32,
                signed: false,
            };
            emit_int4_a8_gemm(cx, &spec).unwrap();
        })
    }

    #[test]
    fn int8_compute_int4_uses_each_targets_dot_product() {
        let asm = a8_assembly("x86_64-avx512", Some("icelake-server"));
        assert!(asm.contains("vpdpbusd\t%zmm") && !asm.contains("vpmaddubsw"));
        let asm = a8_assembly("x86_64-avx2", Some("alderlake"));
        assert!(asm.contains("vpdpbusd\t%ymm") && !asm.contains("vpmaddubsw"));
        let asm = a8_assembly("x86_64-avx512", None);
        assert!(asm.contains("vpmaddubsw\t%zmm") && !asm.contains("vpdpbusd"));
        let asm = a8_assembly("x86_64-avx2", None);
        assert!(asm.contains("vpmaddubsw\t%ymm") && !asm.contains("vpdpbusd"));
        let asm = a8_assembly("aarch64", Some("neoverse-n1"));
        assert!(asm.contains("sdot\tv"), "no sdot with +dotprod");
        let asm = a8_assembly("aarch64", None);
        assert!(
            !asm.contains("sdot") && asm.contains("mul"),
            "no NEON multiply"
        );
    }

    #[test]
    fn each_target_uses_its_dot_product_instruction() {
        let asm = assembly("x86_64-avx512", Some("icelake-server"));
        assert!(asm.contains("vpdpbusd\t%zmm"), "no 512-bit vpdpbusd");
        let asm = assembly("x86_64-avx2", Some("alderlake"));
        assert!(asm.contains("vpdpbusd\t%ymm"), "no 256-bit vpdpbusd");
        let asm = assembly("x86_64-avx512", None);
        assert!(asm.contains("vpmaddwd\t%zmm") && !asm.contains("vpdpbusd"));
        let asm = assembly("x86_64-avx2", None);
        assert!(asm.contains("vpmaddwd\t%ymm") && !asm.contains("vpdpbusd"));
        let asm = assembly("aarch64", None);
        assert!(
            (asm.contains("mla") || asm.contains("mlal")) && !asm.contains("sdot"),
            "no NEON multiply-add"
        );
        let asm = assembly("aarch64", Some("neoverse-n1"));
        assert!(asm.contains("sdot\tv"), "no sdot with +dotprod");
    }
}
