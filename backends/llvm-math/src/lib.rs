//! f32 transcendentals as LLVM IR: range reduction plus polynomial or
//! rational approximations (Cephes-style exp/log/sin/cos, rational erf and
//! tanh), built on vectors of any width with nothing but target-independent
//! instructions and intrinsics (`llvm.fma`, `llvm.minnum`, `llvm.floor`, …).
//! One copy for every backend that emits LLVM IR: the GPU backend's PTX
//! emitter evaluates it on one-lane vectors, so NVIDIA GPUs compute the same
//! approximations as the CPU rather than libdevice's; the CPU kernels use it
//! on vectors of their register width (`backends/cpu/codegen/src/kernels/
//! math.rs` binds it to a kernel's builder). Measured errors are in
//! `docs/CPU_BACKEND.md`.

// No unwrap/expect on input: each remaining `expect` names its invariant
// (`#[allow(..., reason = ...)]`; see docs/SECURITY.md).
#![deny(clippy::unwrap_used, clippy::expect_used)]

use inkwell::builder::{Builder, BuilderError};
use inkwell::context::Context;
use inkwell::intrinsics::Intrinsic;
use inkwell::module::Module;
use inkwell::types::{BasicTypeEnum, VectorType};
use inkwell::values::{BasicMetadataValueEnum, VectorValue};
use inkwell::{FloatPredicate, IntPredicate};

/// Why math IR could not be built.
#[derive(Debug, thiserror::Error)]
pub enum MathError {
    /// The builder refused an instruction (it is not positioned).
    #[error("LLVM builder: {0}")]
    Builder(#[from] BuilderError),
    /// LLVM has no such intrinsic at these types.
    #[error("no intrinsic {0}")]
    Intrinsic(String),
}

type R<'ctx> = Result<VectorValue<'ctx>, MathError>;

/// Arithmetic on f32 (and matching i32) vectors of one width, emitted at
/// the builder's position.
pub struct Math<'b, 'ctx> {
    context: &'ctx Context,
    builder: &'b Builder<'ctx>,
    module: &'b Module<'ctx>,
    lanes: u32,
}

impl<'b, 'ctx> Math<'b, 'ctx> {
    /// Math on vectors of `lanes` lanes (1 for scalar code).
    pub fn new(
        context: &'ctx Context,
        builder: &'b Builder<'ctx>,
        module: &'b Module<'ctx>,
        lanes: u32,
    ) -> Self {
        Self {
            context,
            builder,
            module,
            lanes,
        }
    }

    /// A float vector with every lane `value`.
    pub fn c(&self, value: f32) -> VectorValue<'ctx> {
        let v = self.context.f32_type().const_float(f64::from(value));
        VectorType::const_vector(&vec![v; self.lanes as usize])
    }

    fn ci(&self, value: i32) -> VectorValue<'ctx> {
        let v = self.context.i32_type().const_int(value as i64 as u64, true);
        VectorType::const_vector(&vec![v; self.lanes as usize])
    }

    fn b(&self) -> &Builder<'ctx> {
        self.builder
    }

    /// `a + b`.
    pub fn add(&self, a: VectorValue<'ctx>, b: VectorValue<'ctx>) -> R<'ctx> {
        Ok(self.b().build_float_add(a, b, "add")?)
    }

    /// `a - b`.
    pub fn sub(&self, a: VectorValue<'ctx>, b: VectorValue<'ctx>) -> R<'ctx> {
        Ok(self.b().build_float_sub(a, b, "sub")?)
    }

    /// `a · b`.
    pub fn mul(&self, a: VectorValue<'ctx>, b: VectorValue<'ctx>) -> R<'ctx> {
        Ok(self.b().build_float_mul(a, b, "mul")?)
    }

    /// `a / b` (IEEE division).
    pub fn div(&self, a: VectorValue<'ctx>, b: VectorValue<'ctx>) -> R<'ctx> {
        Ok(self.b().build_float_div(a, b, "div")?)
    }

    /// `a·b + c` with one rounding.
    pub fn fma(&self, a: VectorValue<'ctx>, b: VectorValue<'ctx>, c: VectorValue<'ctx>) -> R<'ctx> {
        self.intrinsic("llvm.fma", &[a, b, c])
    }

    /// A float intrinsic overloaded on its first argument's type
    /// (`llvm.floor`, `llvm.sqrt`, `llvm.minnum`, …).
    pub fn intrinsic(&self, name: &str, args: &[VectorValue<'ctx>]) -> R<'ctx> {
        let ty: BasicTypeEnum<'ctx> = args[0].get_type().into();
        let declaration = Intrinsic::find(name)
            .and_then(|i| i.get_declaration(self.module, &[ty]))
            .ok_or_else(|| MathError::Intrinsic(name.to_string()))?;
        let args: Vec<BasicMetadataValueEnum<'ctx>> = args.iter().map(|&a| a.into()).collect();
        let call = self.b().build_call(declaration, &args, "call")?;
        match call.try_as_basic_value() {
            inkwell::values::ValueKind::Basic(v) => Ok(v.into_vector_value()),
            inkwell::values::ValueKind::Instruction(_) => {
                Err(MathError::Intrinsic(format!("{name} returns nothing")))
            }
        }
    }

    fn cmp(&self, p: FloatPredicate, a: VectorValue<'ctx>, b: VectorValue<'ctx>) -> R<'ctx> {
        Ok(self.b().build_float_compare(p, a, b, "cmp")?)
    }

    fn select(&self, c: VectorValue<'ctx>, a: VectorValue<'ctx>, b: VectorValue<'ctx>) -> R<'ctx> {
        Ok(self.b().build_select(c, a, b, "sel")?.into_vector_value())
    }

    /// Horner evaluation of `Σ coeffs[i]·x^(n-1-i)` (highest power first).
    fn poly(&self, x: VectorValue<'ctx>, coeffs: &[f32]) -> R<'ctx> {
        let mut acc = self.c(coeffs[0]);
        for &c in &coeffs[1..] {
            acc = self.fma(acc, x, self.c(c))?;
        }
        Ok(acc)
    }

    fn to_bits(&self, x: VectorValue<'ctx>) -> R<'ctx> {
        let ty = self.context.i32_type().vec_type(self.lanes);
        Ok(self.b().build_bit_cast(x, ty, "bits")?.into_vector_value())
    }

    fn float_of_bits(&self, x: VectorValue<'ctx>) -> R<'ctx> {
        let ty = self.context.f32_type().vec_type(self.lanes);
        Ok(self.b().build_bit_cast(x, ty, "float")?.into_vector_value())
    }

    /// `e^x`: `x = n·ln2 + r` with |r| ≤ ln2/2 (ln2 split in two for an
    /// exact product), a degree-6 polynomial for `e^r`, and `2^n` built in
    /// the exponent bits. Overflows to +inf, underflows gradually, NaN
    /// stays NaN.
    pub fn exp(&self, x: VectorValue<'ctx>) -> R<'ctx> {
        let clamped = self.intrinsic("llvm.minnum", &[x, self.c(88.75)])?;
        let clamped = self.intrinsic("llvm.maxnum", &[clamped, self.c(-104.0)])?;
        let (p, n) = self.exp_reduced(clamped)?;
        // 2^n as 2^(n - n/2) · 2^(n/2): both factors stay normal for n in
        // [-150, 128], so overflow and gradual underflow happen in the
        // final products.
        let half = self.b().build_right_shift(n, self.ci(1), true, "half")?;
        let rest = self.b().build_int_sub(n, half, "rest")?;
        let y = self.mul(p, self.pow2(rest)?)?;
        let y = self.mul(y, self.pow2(half)?)?;
        self.select(self.cmp(FloatPredicate::UNO, x, x)?, x, y)
    }

    /// `e^x` on x clamped to [-87, 88.3], where `2^n` is one normal float
    /// (the sigmoid's range: outside it the sigmoid is 1, or below 4.5e-39
    /// and given as σ(−88.3)); equal to [`Math::exp`] inside it, with one
    /// scaling instead of two. NaN stays NaN.
    fn exp_normal(&self, x: VectorValue<'ctx>) -> R<'ctx> {
        let clamped = self.intrinsic("llvm.minnum", &[x, self.c(88.3)])?;
        let clamped = self.intrinsic("llvm.maxnum", &[clamped, self.c(-87.0)])?;
        let (p, n) = self.exp_reduced(clamped)?;
        let y = self.mul(p, self.pow2(n)?)?;
        self.select(self.cmp(FloatPredicate::UNO, x, x)?, x, y)
    }

    /// `e^r` for the reduced argument of `x` (|r| ≤ ln2/2, ln2 split in two
    /// for an exact product) and the integer `n` with `e^x = e^r · 2^n`.
    fn exp_reduced(
        &self,
        x: VectorValue<'ctx>,
    ) -> Result<(VectorValue<'ctx>, VectorValue<'ctx>), MathError> {
        let n = self.intrinsic(
            "llvm.roundeven",
            &[self.mul(x, self.c(std::f32::consts::LOG2_E))?],
        )?;
        let r = self.fma(n, self.c(-0.693_359_4), x)?;
        let r = self.fma(n, self.c(2.121_944_4e-4), r)?;
        let p = self.poly(
            r,
            &[
                1.987_569_1e-4,
                1.398_2e-3,
                8.333_452e-3,
                4.166_579_6e-2,
                1.666_666_5e-1,
                5e-1,
            ],
        )?;
        let r2 = self.mul(r, r)?;
        let p = self.fma(p, r2, self.add(r, self.c(1.0))?)?;
        let i32v = self.context.i32_type().vec_type(self.lanes);
        let n = self.b().build_float_to_signed_int(n, i32v, "n")?;
        Ok((p, n))
    }

    /// `2^n` for integer lanes n in [-126, 127].
    fn pow2(&self, n: VectorValue<'ctx>) -> R<'ctx> {
        let biased = self.b().build_int_add(n, self.ci(127), "biased")?;
        let bits = self.b().build_left_shift(biased, self.ci(23), "bits")?;
        self.float_of_bits(bits)
    }

    /// `ln x`: `x = m·2^e` with m in [√½, √2), a degree-9 polynomial for
    /// `ln(m)`; 0 → -inf, negative → NaN, +inf → +inf. Subnormal inputs
    /// are treated as 0.
    pub fn log(&self, x: VectorValue<'ctx>) -> R<'ctx> {
        let bits = self.to_bits(x)?;
        let exponent = self
            .b()
            .build_right_shift(bits, self.ci(23), false, "exp")?;
        let exponent = self.b().build_and(exponent, self.ci(0xff), "exp")?;
        let exponent = self.b().build_int_sub(exponent, self.ci(126), "exp")?;
        let mantissa = self
            .b()
            .build_and(bits, self.ci(0x807f_ffff_u32 as i32), "man")?;
        let mantissa = self.b().build_or(mantissa, self.ci(0x3f00_0000), "man")?;
        let m = self.float_of_bits(mantissa)?;
        let f32v = self.context.f32_type().vec_type(self.lanes);
        let e = self.b().build_signed_int_to_float(exponent, f32v, "e")?;
        let small = self.cmp(
            FloatPredicate::OLT,
            m,
            self.c(std::f32::consts::FRAC_1_SQRT_2),
        )?;
        let e = self.select(small, self.sub(e, self.c(1.0))?, e)?;
        let m = self.select(small, self.add(m, m)?, m)?;
        let m = self.sub(m, self.c(1.0))?;
        let z = self.mul(m, m)?;
        let p = self.poly(
            m,
            &[
                7.037_683_6e-2,
                -1.151_461e-1,
                1.167_699_9e-1,
                -1.242_014_1e-1,
                1.424_932_3e-1,
                -1.666_805_8e-1,
                2.000_071_5e-1,
                -2.499_999_4e-1,
                3.333_333e-1,
            ],
        )?;
        let y = self.mul(self.mul(p, m)?, z)?;
        let y = self.fma(e, self.c(-2.121_944_4e-4), y)?;
        let y = self.fma(z, self.c(-0.5), y)?;
        let y = self.add(m, y)?;
        let y = self.fma(e, self.c(0.693_359_4), y)?;
        let y = self.select(
            self.cmp(FloatPredicate::OEQ, x, self.c(f32::INFINITY))?,
            x,
            y,
        )?;
        let y = self.select(
            self.cmp(FloatPredicate::OLE, x, self.c(f32::MIN_POSITIVE))?,
            self.c(f32::NEG_INFINITY),
            y,
        )?;
        let invalid = self.cmp(FloatPredicate::ULT, x, self.c(0.0))?;
        self.select(invalid, self.c(f32::NAN), y)
    }

    /// `erf x` as `x·P(x²)/Q(x²)` on x clamped to [-4, 4] (erf is ±1 in
    /// f32 beyond).
    pub fn erf(&self, x: VectorValue<'ctx>) -> R<'ctx> {
        let x = self.intrinsic("llvm.minnum", &[x, self.c(4.0)])?;
        let x = self.intrinsic("llvm.maxnum", &[x, self.c(-4.0)])?;
        let x2 = self.mul(x, x)?;
        let p = self.poly(
            x2,
            &[
                -2.726_142_3e-10,
                2.770_681_4e-8,
                -2.101_024e-6,
                -5.692_506_4e-5,
                -7.349_906_3e-4,
                -2.954_6e-3,
                -1.609_603_3e-2,
            ],
        )?;
        let q = self.poly(
            x2,
            &[
                -1.456_607_2e-5,
                -2.133_740_6e-4,
                -1.682_827e-3,
                -7.373_329_4e-3,
                -1.426_474e-2,
            ],
        )?;
        self.div(self.mul(x, p)?, q)
    }

    /// `tanh x` as `x·P(x²)/Q(x²)` on x clamped to ±7.905 (tanh is ±1 in
    /// f32 beyond); returns x itself for |x| < 4e-4.
    pub fn tanh(&self, x: VectorValue<'ctx>) -> R<'ctx> {
        let limit = 7.905_311;
        let c = self.intrinsic("llvm.minnum", &[x, self.c(limit)])?;
        let c = self.intrinsic("llvm.maxnum", &[c, self.c(-limit)])?;
        let x2 = self.mul(c, c)?;
        let p = self.poly(
            x2,
            &[
                -2.760_768_5e-16,
                2.000_188e-13,
                -8.604_672e-11,
                5.122_297e-8,
                1.485_722_4e-5,
                6.372_619_3e-4,
                4.893_524_6e-3,
            ],
        )?;
        let q = self.poly(
            x2,
            &[1.198_258_4e-6, 1.185_347_1e-4, 2.268_434_6e-3, 4.893_525e-3],
        )?;
        let y = self.div(self.mul(c, p)?, q)?;
        let abs = self.intrinsic("llvm.fabs", &[x])?;
        let tiny = self.cmp(FloatPredicate::OLT, abs, self.c(4e-4))?;
        self.select(tiny, x, y)
    }

    /// `1 / (1 + e^-x)`.
    pub fn sigmoid(&self, x: VectorValue<'ctx>) -> R<'ctx> {
        let neg = self.b().build_float_neg(x, "neg")?;
        let e = self.exp_normal(neg)?;
        self.div(self.c(1.0), self.add(self.c(1.0), e)?)
    }

    /// `sin x` (`cos` when `cosine`): reduction by π/4 octants with π/4
    /// split in three (Cody–Waite), then the sine or cosine polynomial of
    /// the octant and its sign. Accurate for |x| up to ~8192.
    pub fn sin_cos(&self, x: VectorValue<'ctx>, cosine: bool) -> R<'ctx> {
        let i32v = self.context.i32_type().vec_type(self.lanes);
        let f32v = self.context.f32_type().vec_type(self.lanes);
        let a = self.intrinsic("llvm.fabs", &[x])?;
        let j = self.b().build_float_to_signed_int(
            self.mul(a, self.c(4.0 / std::f32::consts::PI))?,
            i32v,
            "j",
        )?;
        // j = (j + 1) & ~1: the even octant boundary nearest from above.
        let j = self.b().build_int_add(j, self.ci(1), "j")?;
        let j = self.b().build_and(j, self.ci(!1), "j")?;
        let y = self.b().build_signed_int_to_float(j, f32v, "y")?;
        let r = self.fma(y, self.c(-0.785_156_25), a)?;
        let r = self.fma(y, self.c(-2.418_756_5e-4), r)?;
        let r = self.fma(y, self.c(-3.774_895e-8), r)?;
        let z = self.mul(r, r)?;
        let sin_poly = self.poly(z, &[-1.951_529_6e-4, 8.332_161e-3, -1.666_665_5e-1])?;
        let sin_r = self.fma(self.mul(sin_poly, z)?, r, r)?;
        let cos_poly = self.poly(z, &[2.443_315_7e-5, -1.388_731_6e-3, 4.166_664_6e-2])?;
        let cos_r = self.fma(
            self.mul(cos_poly, z)?,
            z,
            self.fma(z, self.c(-0.5), self.c(1.0))?,
        )?;
        // Quadrant q = (j / 2) mod 4 (+1 for the cosine).
        let q = self.b().build_right_shift(j, self.ci(1), false, "q")?;
        let q = if cosine {
            self.b().build_int_add(q, self.ci(1), "q")?
        } else {
            q
        };
        let odd = self.b().build_and(q, self.ci(1), "odd")?;
        let use_cos = self
            .b()
            .build_int_compare(IntPredicate::NE, odd, self.ci(0), "use_cos")?;
        let v = self.select(use_cos, cos_r, sin_r)?;
        let negative = self.b().build_and(q, self.ci(2), "neg")?;
        let mut flip =
            self.b()
                .build_int_compare(IntPredicate::NE, negative, self.ci(0), "flip")?;
        if !cosine {
            let below = self.cmp(FloatPredicate::OLT, x, self.c(0.0))?;
            flip = self.b().build_xor(flip, below, "flip")?;
        }
        let negated = self.b().build_float_neg(v, "negated")?;
        let v = self.select(flip, negated, v)?;
        let finite = self.cmp(FloatPredicate::OLT, a, self.c(f32::INFINITY))?;
        self.select(finite, v, self.c(f32::NAN))
    }

    /// `x^y` as `e^(y·ln|x|)` with the sign of odd integer powers of
    /// negative bases, NaN for negative bases with fractional powers, and
    /// `x^0 = 1`.
    pub fn pow(&self, x: VectorValue<'ctx>, y: VectorValue<'ctx>) -> R<'ctx> {
        let a = self.intrinsic("llvm.fabs", &[x])?;
        let r = self.exp(self.mul(y, self.log(a)?)?)?;
        let whole = self.cmp(FloatPredicate::OEQ, self.intrinsic("llvm.floor", &[y])?, y)?;
        let half = self.mul(y, self.c(0.5))?;
        let odd = self.cmp(
            FloatPredicate::ONE,
            self.intrinsic("llvm.floor", &[half])?,
            half,
        )?;
        let odd = self.b().build_and(odd, whole, "odd")?;
        let negative = self.cmp(FloatPredicate::OLT, x, self.c(0.0))?;
        let negated = self.b().build_float_neg(r, "negated")?;
        let r = self.select(self.b().build_and(negative, odd, "flip")?, negated, r)?;
        let fractional = self.b().build_not(whole, "fractional")?;
        let r = self.select(
            self.b().build_and(negative, fractional, "nan")?,
            self.c(f32::NAN),
            r,
        )?;
        let one = self.b().build_or(
            self.cmp(FloatPredicate::OEQ, y, self.c(0.0))?,
            self.cmp(FloatPredicate::OEQ, x, self.c(1.0))?,
            "one",
        )?;
        self.select(one, self.c(1.0), r)
    }
}
