//! The int8 GEMM's epilogue: the i32 accumulators corrected for the
//! zero points and signs, then stored as i32, converted to f32
//! (`· multiplier + bias`), or quantised again into int8/uint8 with the
//! interpreter's `Quantize` arithmetic; and the quantisation itself, which
//! the elementwise kernels share.

use inkwell::types::VectorType;
use inkwell::values::{IntValue, PointerValue, VectorValue};

use super::gemm8::{byte_offset, load_unaligned, splat_int, Constant, Layout};
use super::{Int8GemmSpec, Int8Output};
use crate::ir::Emitter;
use crate::CodegenError;

/// Writes accumulators through the output conversion.
pub(super) struct Epilogue<'e, 'a, 'ctx> {
    pub em: &'e Emitter<'a, 'ctx>,
    pub spec: &'e Int8GemmSpec,
    pub layout: Layout,
    pub tables: PointerValue<'ctx>,
    pub col: IntValue<'ctx>,
    pub shift: IntValue<'ctx>,
    pub runtime_multiplier: PointerValue<'ctx>,
    /// The tile's first row sum ([`super::Int8Runtime::row_sums`]).
    pub row_sums: PointerValue<'ctx>,
}

impl<'ctx> Epilogue<'_, '_, 'ctx> {
    /// Table `table` (0 column sums, 1 multiplier, 2 bias, 3 sign, 4 i32
    /// bias) at the
    /// tile's column `first`, one vector.
    fn table(
        &self,
        table: usize,
        first: usize,
        ty: VectorType<'ctx>,
    ) -> Result<VectorValue<'ctx>, CodegenError> {
        let em = self.em;
        let at = em.builder.build_int_add(
            self.col,
            em.i64(table * self.layout.table_len() + first),
            "entry",
        )?;
        let at = em.builder.build_int_mul(at, em.i64(4), "entry_bytes")?;
        load_unaligned(em, ty, byte_offset(em, self.tables, at)?)
    }

    /// The f32 constant `c` of the packed operand, splat to `ty`.
    fn constant(
        &self,
        c: Constant,
        ty: VectorType<'ctx>,
    ) -> Result<VectorValue<'ctx>, CodegenError> {
        let em = self.em;
        let at = self.layout.constant_offset(c);
        let value = em
            .builder
            .build_load(
                em.context.f32_type(),
                byte_offset(em, self.tables, em.i64(at))?,
                "constant",
            )?
            .into_float_value();
        em.splat(value, ty)
    }

    /// The run-time multiplier at the tile's column `first` (`valid`
    /// lanes of it inside the tensor): one value splat, or one per column
    /// (a masked load at the N edge).
    fn runtime_factor(
        &self,
        len: usize,
        first: usize,
        valid: usize,
        ty: VectorType<'ctx>,
    ) -> Result<VectorValue<'ctx>, CodegenError> {
        let em = self.em;
        let f32t = em.context.f32_type();
        if len == 1 {
            let v = em
                .builder
                .build_load(f32t, self.runtime_multiplier, "factor")?
                .into_float_value();
            return em.splat(v, ty);
        }
        let at = em
            .builder
            .build_int_add(self.col, em.i64(first), "factor_at")?;
        let at = em.float_offset(self.runtime_multiplier, at)?;
        let lanes = ty.get_size() as usize;
        if valid == lanes {
            return load_unaligned(em, ty, at);
        }
        let bool_type = em.context.bool_type();
        let mask = VectorType::const_vector(
            &(0..lanes)
                .map(|lane| bool_type.const_int(u64::from(lane < valid), false))
                .collect::<Vec<_>>(),
        );
        Ok(em
            .call_value(
                "llvm.masked.load",
                &[ty.into(), at.get_type().into()],
                &[
                    at.into(),
                    em.context.i32_type().const_int(4, false).into(),
                    mask.into(),
                    ty.const_zero().into(),
                ],
            )?
            .into_vector_value())
    }

    /// Stores vector `vector` of row `row` of the tile (`valid` lanes).
    pub fn store(
        &self,
        out: PointerValue<'ctx>,
        row: usize,
        vector: usize,
        acc: VectorValue<'ctx>,
        valid: usize,
    ) -> Result<(), CodegenError> {
        let em = self.em;
        let b = &em.builder;
        let lanes = self.layout.lanes as u32;
        let first = vector * self.layout.lanes;
        let f32v = em.context.f32_type().vec_type(lanes);
        let column_sums = self.table(0, first, acc.get_type())?;
        let shift = splat_int(em, self.shift, lanes as usize)?;
        let correction = b.build_int_mul(column_sums, shift, "correction")?;
        let mut sum = b.build_int_sub(acc, correction, "sum")?;
        if self.spec.runtime.row_sums {
            let i32t = em.context.i32_type();
            let at = byte_offset(em, self.row_sums, em.i64(4 * row))?;
            let row_sum = b.build_load(i32t, at, "row_sum")?.into_int_value();
            let zero_point = b
                .build_load(
                    i32t,
                    byte_offset(
                        em,
                        self.tables,
                        em.i64(self.layout.constant_offset(Constant::BZeroPoint)),
                    )?,
                    "b_zero_point",
                )?
                .into_int_value();
            let excess = b.build_int_mul(row_sum, zero_point, "row_excess")?;
            let excess = splat_int(em, excess, lanes as usize)?;
            sum = b.build_int_sub(sum, excess, "sum")?;
        }
        let sum = b.build_int_mul(sum, self.table(3, first, acc.get_type())?, "signed")?;
        let sum = b.build_int_add(sum, self.table(4, first, acc.get_type())?, "int_biased")?;
        let scaled = |sum: VectorValue<'ctx>| -> Result<VectorValue<'ctx>, CodegenError> {
            let value = b.build_signed_int_to_float(sum, f32v, "sum_f")?;
            let mut multiplier = self.table(1, first, f32v)?;
            if let Some(len) = self.spec.runtime.multiplier {
                let factor = self.runtime_factor(len, first, valid, f32v)?;
                multiplier = b.build_float_mul(multiplier, factor, "multiplier")?;
            }
            let value = b.build_float_mul(value, multiplier, "scaled")?;
            Ok(b.build_float_add(value, self.table(2, first, f32v)?, "biased")?)
        };
        let value = match self.spec.output {
            Int8Output::I32 => sum,
            Int8Output::F32 => scaled(sum)?,
            Int8Output::Quantized { signed, .. } => {
                let (lo, hi) = if signed {
                    (-128.0, 127.0)
                } else {
                    (0.0, 255.0)
                };
                let value = scaled(sum)?;
                let (scale, zero_point) = (
                    self.constant(Constant::OutScale, f32v)?,
                    self.constant(Constant::OutZeroPoint, f32v)?,
                );
                let quantised = quantize_with_zero_point(em, value, scale, zero_point, (lo, hi))?;
                b.build_int_truncate(quantised, em.context.i8_type().vec_type(lanes), "q")?
            }
        };
        let bytes = self.spec.output.bytes();
        let at = byte_offset(em, out, em.i64((row * self.spec.n + first) * bytes))?;
        store_masked(em, at, value, valid)
    }
}

/// `Quantize` of an f32 vector: `clamp(round_half_even(value / scale) +
/// zero_point, lo, hi)` as i32 lanes (NaN quotients count as 0, as in the
/// interpreter). `scale` is a vector (per lane, or splat), `zero_point` a
/// vector of f32 or f64 lanes: the rounded quotient is added to it, and
/// clamped, in the zero point's float type (f64 holds every i32 zero
/// point exactly).
pub(crate) fn quantize_with_zero_point<'ctx>(
    em: &Emitter<'_, 'ctx>,
    value: VectorValue<'ctx>,
    scale: VectorValue<'ctx>,
    zero_point: VectorValue<'ctx>,
    (lo, hi): (f32, f32),
) -> Result<VectorValue<'ctx>, CodegenError> {
    let b = &em.builder;
    let lanes = value.get_type().get_size();
    let intrinsic =
        |name: &str, args: &[VectorValue<'ctx>]| -> Result<VectorValue<'ctx>, CodegenError> {
            let types = [args[0].get_type().into()];
            let args: Vec<_> = args.iter().map(|v| (*v).into()).collect();
            Ok(em.call_value(name, &types, &args)?.into_vector_value())
        };
    let quotient = b.build_float_div(value, scale, "quotient")?;
    let rounded = intrinsic("llvm.roundeven", &[quotient])?;
    let is_nan = b.build_float_compare(inkwell::FloatPredicate::UNO, rounded, rounded, "nan")?;
    let rounded = b
        .build_select(is_nan, value.get_type().const_zero(), rounded, "no_nan")?
        .into_vector_value();
    let wide = zero_point.get_type();
    let rounded = if wide == value.get_type() {
        rounded
    } else {
        b.build_float_ext(rounded, wide, "wide")?
    };
    let bound = |v: f32| {
        let element = wide
            .get_element_type()
            .into_float_type()
            .const_float(f64::from(v));
        VectorType::const_vector(&vec![element; lanes as usize])
    };
    let shifted = b.build_float_add(rounded, zero_point, "shifted")?;
    let clamped = intrinsic("llvm.maxnum", &[shifted, bound(lo)])?;
    let clamped = intrinsic("llvm.minnum", &[clamped, bound(hi)])?;
    Ok(b.build_float_to_signed_int(clamped, em.context.i32_type().vec_type(lanes), "q")?)
}

/// Stores the first `valid` lanes of `value` at `at` (byte aligned).
pub(super) fn store_masked<'ctx>(
    em: &Emitter<'_, 'ctx>,
    at: PointerValue<'ctx>,
    value: VectorValue<'ctx>,
    valid: usize,
) -> Result<(), CodegenError> {
    let ty = value.get_type();
    let lanes = ty.get_size() as usize;
    if valid == lanes {
        em.builder
            .build_store(at, value)?
            .set_alignment(1)
            .map_err(|e| CodegenError::Llvm(e.to_string()))?;
        return Ok(());
    }
    let bool_type = em.context.bool_type();
    let mask = VectorType::const_vector(
        &(0..lanes)
            .map(|lane| bool_type.const_int(u64::from(lane < valid), false))
            .collect::<Vec<_>>(),
    );
    let align = em.context.i32_type().const_int(1, false);
    em.call_intrinsic(
        "llvm.masked.store",
        &[ty.into(), at.get_type().into()],
        &[value.into(), at.into(), align.into(), mask.into()],
    )?;
    Ok(())
}
