//! The uniform kernel skeleton: signature, buffer table, loop nests over
//! static shapes, element addressing, and the element types kernels handle.

use inkwell::context::Context;
use inkwell::module::Module;
use inkwell::types::{BasicTypeEnum, VectorType};
use inkwell::values::{BasicValueEnum, IntValue, PointerValue, VectorValue};
use inkwell::{AddressSpace, IntPredicate};
use m4c_ir::DType;

use crate::ir::{define_function, Emitter};
use crate::{CodegenError, Target};

/// What every generator needs: the LLVM context and module being filled and
/// the target the code is for.
#[derive(Clone, Copy)]
pub(crate) struct Cx<'a, 'ctx> {
    pub context: &'ctx Context,
    pub module: &'a Module<'ctx>,
    pub target: &'a Target,
}

impl Cx<'_, '_> {
    /// f32 lanes of one vector register of the target.
    pub fn lanes(&self) -> u32 {
        self.target.isa.f32_lanes() as u32
    }
}

/// The element types kernels compute with (`bool` is one byte in memory
/// and an `i1` in registers).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Elem {
    F32,
    I64,
    I32,
    I8,
    /// uint8 (quantised activations): unsigned comparisons, division and
    /// conversions.
    U8,
    Bool,
}

impl Elem {
    /// The kernel element type of `dtype`; f16, bf16 and int4 tensors are
    /// only moved, never computed on, by this backend.
    pub fn of(dtype: DType, what: &str) -> Result<Self, CodegenError> {
        Ok(match dtype {
            DType::F32 => Elem::F32,
            DType::I64 => Elem::I64,
            DType::I32 => Elem::I32,
            DType::I8 => Elem::I8,
            DType::U8 => Elem::U8,
            DType::Bool => Elem::Bool,
            other => {
                return Err(CodegenError::Unsupported(format!(
                    "{what} on {other} tensors (the CPU backend computes in f32, i64, i32, i8, u8 and bool)"
                )))
            }
        })
    }

    /// The type one element has in memory.
    pub fn memory_type<'ctx>(self, context: &'ctx Context) -> BasicTypeEnum<'ctx> {
        match self {
            Elem::F32 => context.f32_type().into(),
            Elem::I64 => context.i64_type().into(),
            Elem::I32 => context.i32_type().into(),
            Elem::I8 | Elem::U8 | Elem::Bool => context.i8_type().into(),
        }
    }

    /// The type one element has in registers.
    pub fn register_type<'ctx>(self, context: &'ctx Context) -> BasicTypeEnum<'ctx> {
        match self {
            Elem::Bool => context.bool_type().into(),
            other => other.memory_type(context),
        }
    }

    /// A vector of `lanes` register elements.
    pub fn vector<'ctx>(self, context: &'ctx Context, lanes: u32) -> VectorType<'ctx> {
        match self.register_type(context) {
            BasicTypeEnum::FloatType(t) => t.vec_type(lanes),
            BasicTypeEnum::IntType(t) => t.vec_type(lanes),
            _ => unreachable!("elements are ints or floats"),
        }
    }

    /// Bytes of one element in memory.
    pub fn bytes(self) -> u32 {
        match self {
            Elem::F32 | Elem::I32 => 4,
            Elem::I64 => 8,
            Elem::I8 | Elem::U8 | Elem::Bool => 1,
        }
    }

    /// Whether this is the float type.
    pub fn is_float(self) -> bool {
        self == Elem::F32
    }

    /// Whether integers of this type compare, divide and widen unsigned.
    pub fn is_unsigned(self) -> bool {
        matches!(self, Elem::U8 | Elem::Bool)
    }
}

/// The integer type of `bytes` bytes (1, 2, 4 or 8), used to move
/// elements without interpreting them.
pub(crate) fn int_type(context: &Context, bytes: u32) -> inkwell::types::IntType<'_> {
    match bytes {
        1 => context.i8_type(),
        2 => context.i16_type(),
        4 => context.i32_type(),
        _ => context.i64_type(),
    }
}

/// The fewest iterations a kernel's parallel axis should have: enough
/// that the executor's threads get shares of nearly equal work (two
/// threads split 32 equal iterations 16:16, 3 iterations 1:2).
pub(crate) const MIN_PARALLEL: usize = 32;

/// How many leading axes of a loop nest over `dims` form its parallel axis
/// (iterated by [`Kernel::nest_folded`]): the fewest whose product reaches
/// [`MIN_PARALLEL`], all of them if none does (at least one when there is
/// one), so a batch of 1 or a 3-channel plane does not leave every thread
/// but one idle.
pub(crate) fn fold_axes(dims: &[usize]) -> usize {
    let mut product = 1usize;
    for (i, &d) in dims.iter().enumerate() {
        product = product.saturating_mul(d);
        if product >= MIN_PARALLEL {
            return i + 1;
        }
    }
    dims.len()
}

/// The iterations of the parallel axis [`fold_axes`] makes of `dims` (1
/// for no axes).
pub(crate) fn folded_extent(dims: &[usize]) -> usize {
    dims[..fold_axes(dims)].iter().product()
}

/// Row-major strides (in elements) of `shape`.
pub(crate) fn contiguous_strides(shape: &[usize]) -> Vec<i64> {
    let mut strides = vec![0i64; shape.len()];
    let mut step = 1i64;
    for d in (0..shape.len()).rev() {
        strides[d] = step;
        step *= shape[d] as i64;
    }
    strides
}

/// Strides (in elements) that read a row-major tensor of `shape` at the
/// positions of the larger `out` shape it broadcasts to (numpy rules:
/// trailing axes aligned, size-1 axes repeated with stride 0).
pub(crate) fn broadcast_strides(shape: &[usize], out: &[usize]) -> Vec<i64> {
    let own = contiguous_strides(shape);
    let skip = out.len() - shape.len();
    (0..out.len())
        .map(|d| {
            if d < skip || (shape[d - skip] == 1 && out[d] != 1) {
                0
            } else {
                own[d - skip]
            }
        })
        .collect()
}

/// One kernel being generated: its emitter, buffer pointers, iteration
/// range and scratch pointer.
pub(crate) struct Kernel<'a, 'ctx> {
    pub cx: Cx<'a, 'ctx>,
    pub em: Emitter<'a, 'ctx>,
    pub buffers: Vec<PointerValue<'ctx>>,
    pub begin: IntValue<'ctx>,
    pub end: IntValue<'ctx>,
    pub scratch: PointerValue<'ctx>,
    /// The `i32` status the kernel returns (0, or the `STATUS_*` bits of
    /// `m4c_cpu_device` it reported).
    status: PointerValue<'ctx>,
}

impl<'a, 'ctx> Kernel<'a, 'ctx> {
    /// Defines the exported kernel `symbol` reading `buffers` pointers from
    /// its table.
    pub fn define(cx: Cx<'a, 'ctx>, symbol: &str, buffers: usize) -> Result<Self, CodegenError> {
        let context = cx.context;
        let ptr = context.ptr_type(AddressSpace::default());
        let i64t = context.i64_type();
        let ty = context
            .i32_type()
            .fn_type(&[ptr.into(), i64t.into(), i64t.into(), ptr.into()], false);
        let em = define_function(context, cx.module, cx.target, symbol, ty, true);
        let table = em.ptr_param(0);
        let mut pointers = Vec::with_capacity(buffers);
        for i in 0..buffers {
            // SAFETY: builds a GEP into the pointer table; the executor
            // passes exactly `buffers` pointers.
            let slot = unsafe {
                em.builder
                    .build_in_bounds_gep(ptr, table, &[em.i64(i)], "slot")?
            };
            pointers.push(
                em.builder
                    .build_load(ptr, slot, "buf")?
                    .into_pointer_value(),
            );
        }
        let (begin, end, scratch) = (em.int_param(1), em.int_param(2), em.ptr_param(3));
        let status = em.builder.build_alloca(context.i32_type(), "status")?;
        em.builder
            .build_store(status, context.i32_type().const_zero())?;
        Ok(Self {
            cx,
            em,
            buffers: pointers,
            begin,
            end,
            scratch,
            status,
        })
    }

    /// Reports `code` (a `STATUS_*` bit of `m4c_cpu_device`) in the
    /// kernel's status when `cond` (an `i1` or a vector of them, any lane)
    /// holds; the executor turns a non-zero status into an error.
    pub fn report_if(&self, cond: BasicValueEnum<'ctx>, code: i32) -> Result<(), CodegenError> {
        let b = &self.em.builder;
        let cond = match cond {
            BasicValueEnum::VectorValue(v) => {
                let lanes = std::num::NonZeroU32::new(v.get_type().get_size())
                    .ok_or_else(|| CodegenError::Unsupported("an empty vector condition".into()))?;
                let bits = self
                    .cx
                    .context
                    .custom_width_int_type(lanes)
                    .map_err(|e| CodegenError::Llvm(e.to_string()))?;
                let mask = b.build_bit_cast(v, bits, "mask")?.into_int_value();
                b.build_int_compare(inkwell::IntPredicate::NE, mask, bits.const_zero(), "any")?
            }
            other => other.into_int_value(),
        };
        let i32t = self.cx.context.i32_type();
        let flag = b.build_select(
            cond,
            i32t.const_int(code as u64, false),
            i32t.const_zero(),
            "flag",
        )?;
        let old = b.build_load(i32t, self.status, "status")?.into_int_value();
        let new = b.build_or(old, flag.into_int_value(), "status")?;
        b.build_store(self.status, new)?;
        Ok(())
    }

    /// Closes the function, returning its status.
    pub fn finish(self) -> Result<(), CodegenError> {
        let status =
            self.em
                .builder
                .build_load(self.cx.context.i32_type(), self.status, "status")?;
        self.em.builder.build_return(Some(&status))?;
        Ok(())
    }

    /// A signed `i64` constant.
    pub fn int(&self, value: i64) -> IntValue<'ctx> {
        self.cx.context.i64_type().const_int(value as u64, true)
    }

    /// `base + Σ index[d]·strides[d]`.
    pub fn linear(
        &self,
        base: i64,
        index: &[IntValue<'ctx>],
        strides: &[i64],
    ) -> Result<IntValue<'ctx>, CodegenError> {
        let mut at = self.int(base);
        for (&i, &s) in index.iter().zip(strides) {
            match s {
                0 => {}
                1 => at = self.em.builder.build_int_add(at, i, "at")?,
                s => at = self.em.mul_add(i, self.int(s), at)?,
            }
        }
        Ok(at)
    }

    /// The address of element `index` of `elem`-typed memory at `base`.
    pub fn element(
        &self,
        base: PointerValue<'ctx>,
        elem: BasicTypeEnum<'ctx>,
        index: IntValue<'ctx>,
    ) -> Result<PointerValue<'ctx>, CodegenError> {
        // SAFETY: builds a GEP only; each generator keeps its indices inside
        // the static shapes of its buffers (checked by the kernel tests).
        Ok(unsafe { self.em.builder.build_gep(elem, base, &[index], "el")? })
    }

    /// Loads `lanes` consecutive elements of type `elem` at `at` as a
    /// register vector (bools become `i1`).
    pub fn load(
        &self,
        elem: Elem,
        lanes: u32,
        at: PointerValue<'ctx>,
    ) -> Result<VectorValue<'ctx>, CodegenError> {
        let memory = match elem.memory_type(self.cx.context) {
            BasicTypeEnum::FloatType(t) => t.vec_type(lanes),
            BasicTypeEnum::IntType(t) => t.vec_type(lanes),
            _ => unreachable!("elements are ints or floats"),
        };
        let value = self.em.builder.build_load(memory, at, "v")?;
        inkwell::values::BasicValue::as_instruction_value(&value)
            .ok_or(CodegenError::Internal("a load is an instruction"))?
            .set_alignment(elem.bytes())
            .map_err(|e| CodegenError::Llvm(e.to_string()))?;
        let value = value.into_vector_value();
        if elem == Elem::Bool {
            let zero = memory.const_zero();
            return Ok(self.em.builder.build_int_compare(
                inkwell::IntPredicate::NE,
                value,
                zero,
                "bool",
            )?);
        }
        Ok(value)
    }

    /// Stores a register vector of `elem`s at `at`.
    pub fn store(
        &self,
        elem: Elem,
        at: PointerValue<'ctx>,
        value: VectorValue<'ctx>,
    ) -> Result<(), CodegenError> {
        let value = if elem == Elem::Bool {
            let lanes = value.get_type().get_size();
            let bytes = self.cx.context.i8_type().vec_type(lanes);
            self.em.builder.build_int_z_extend(value, bytes, "byte")?
        } else {
            value
        };
        self.em
            .builder
            .build_store(at, value)?
            .set_alignment(elem.bytes())
            .map_err(|e| CodegenError::Llvm(e.to_string()))
    }

    /// Loads the f32 lanes of `mask` (an `i1` vector) at `at`; the other
    /// lanes are 0 and their memory is not read.
    pub fn masked_load(
        &self,
        at: PointerValue<'ctx>,
        mask: VectorValue<'ctx>,
    ) -> Result<VectorValue<'ctx>, CodegenError> {
        let ty = self
            .cx
            .context
            .f32_type()
            .vec_type(mask.get_type().get_size());
        let align = self.cx.context.i32_type().const_int(4, false);
        Ok(self
            .em
            .call_value(
                "llvm.masked.load",
                &[ty.into(), at.get_type().into()],
                &[at.into(), align.into(), mask.into(), ty.const_zero().into()],
            )?
            .into_vector_value())
    }

    /// Gathers the f32 elements `index` (an `i64` vector of element
    /// indices) of `buffer` in the lanes of `mask`; the other lanes are
    /// `fill` and their memory is not read.
    pub fn masked_gather(
        &self,
        buffer: PointerValue<'ctx>,
        index: VectorValue<'ctx>,
        mask: VectorValue<'ctx>,
        fill: f32,
    ) -> Result<VectorValue<'ctx>, CodegenError> {
        let lanes = index.get_type().get_size();
        let b = &self.em.builder;
        let i64t = self.cx.context.i64_type();
        let four = VectorType::const_vector(&vec![i64t.const_int(4, false); lanes as usize]);
        let bytes = b.build_int_mul(index, four, "bytes")?;
        let base = b.build_ptr_to_int(buffer, i64t, "base")?;
        let address = b.build_int_add(bytes, self.splat_i64(base, lanes)?, "address")?;
        let pointers = b.build_int_to_ptr(
            address,
            self.cx
                .context
                .ptr_type(AddressSpace::default())
                .vec_type(lanes),
            "pointers",
        )?;
        let f32t = self.cx.context.f32_type();
        let fill =
            VectorType::const_vector(&vec![f32t.const_float(f64::from(fill)); lanes as usize]);
        let align = self.cx.context.i32_type().const_int(4, false);
        Ok(self
            .em
            .call_value(
                "llvm.masked.gather",
                &[f32t.vec_type(lanes).into(), pointers.get_type().into()],
                &[pointers.into(), align.into(), mask.into(), fill.into()],
            )?
            .into_vector_value())
    }

    /// Loads `lanes` floats at `at`: all of them, or with a mask only its
    /// lanes ([`Self::masked_load`]), as for a row's partial last vector.
    pub fn load_f32(
        &self,
        at: PointerValue<'ctx>,
        lanes: u32,
        mask: Option<VectorValue<'ctx>>,
    ) -> Result<VectorValue<'ctx>, CodegenError> {
        match mask {
            Some(mask) => self.masked_load(at, mask),
            None => self.load(Elem::F32, lanes, at),
        }
    }

    /// Stores `value` at `at`: every lane, or with a mask only its lanes
    /// ([`Self::masked_store`]).
    pub fn store_f32(
        &self,
        at: PointerValue<'ctx>,
        value: VectorValue<'ctx>,
        mask: Option<VectorValue<'ctx>>,
    ) -> Result<(), CodegenError> {
        match mask {
            Some(mask) => self.masked_store(at, value, mask),
            None => self.store(Elem::F32, at, value),
        }
    }

    /// Stores the lanes of `value` that `mask` selects at `at`; the other
    /// lanes' memory is not written.
    pub fn masked_store(
        &self,
        at: PointerValue<'ctx>,
        value: VectorValue<'ctx>,
        mask: VectorValue<'ctx>,
    ) -> Result<(), CodegenError> {
        let align = self.cx.context.i32_type().const_int(4, false);
        self.em.call_intrinsic(
            "llvm.masked.store",
            &[value.get_type().into(), at.get_type().into()],
            &[value.into(), at.into(), align.into(), mask.into()],
        )?;
        Ok(())
    }

    /// The transpose of the square block `rows` (as many vectors as each
    /// has lanes, a power of two): vector `j` of the result holds lane `j`
    /// of every row. log2(lanes) rounds of interleaving row `i` with row
    /// `i + lanes/2` (a perfect shuffle; after as many rounds as the index
    /// has bits, every element is back in its transposed place).
    pub fn transpose(
        &self,
        rows: &[VectorValue<'ctx>],
    ) -> Result<Vec<VectorValue<'ctx>>, CodegenError> {
        let n = rows.len();
        if !n.is_power_of_two() || rows.iter().any(|r| r.get_type().get_size() as usize != n) {
            return Err(CodegenError::Internal("a transposed block is square"));
        }
        let i32t = self.cx.context.i32_type();
        let interleave = |half: usize| {
            let lanes: Vec<_> = (0..n / 2)
                .flat_map(|i| [half + i, n + half + i])
                .map(|lane| i32t.const_int(lane as u64, false))
                .collect();
            VectorType::const_vector(&lanes)
        };
        let (low, high) = (interleave(0), interleave(n / 2));
        let b = &self.em.builder;
        let mut rows = rows.to_vec();
        for _ in 0..n.trailing_zeros() {
            let mut next = Vec::with_capacity(n);
            for i in 0..n / 2 {
                let (x, y) = (rows[i], rows[i + n / 2]);
                next.push(b.build_shuffle_vector(x, y, low, "zip_lo")?);
                next.push(b.build_shuffle_vector(x, y, high, "zip_hi")?);
            }
            rows = next;
        }
        Ok(rows)
    }

    /// The `i1` vector of `lanes` lanes whose lanes below `count` (a
    /// run-time `i64`, any value) are set.
    pub fn lanes_below(
        &self,
        lanes: u32,
        count: IntValue<'ctx>,
    ) -> Result<VectorValue<'ctx>, CodegenError> {
        let count = self.splat_i64(count, lanes)?;
        Ok(self.em.builder.build_int_compare(
            IntPredicate::SLT,
            self.lane_indices(lanes),
            count,
            "below",
        )?)
    }

    /// The `i64` vector `0, 1, …, lanes − 1`: each lane's own index.
    pub fn lane_indices(&self, lanes: u32) -> VectorValue<'ctx> {
        let i64t = self.cx.context.i64_type();
        VectorType::const_vector(
            &(0..lanes)
                .map(|l| i64t.const_int(u64::from(l), false))
                .collect::<Vec<_>>(),
        )
    }

    /// An `i64` scalar in every one of `lanes` lanes.
    pub fn splat_i64(
        &self,
        value: IntValue<'ctx>,
        lanes: u32,
    ) -> Result<VectorValue<'ctx>, CodegenError> {
        let one = self.em.builder.build_insert_element(
            self.cx.context.i64_type().vec_type(1).get_poison(),
            value,
            self.cx.context.i32_type().const_zero(),
            "one",
        )?;
        self.splat_lane(one, lanes)
    }

    /// The constant `i1` vector whose first `count` of `lanes` lanes are
    /// set.
    pub fn prefix_mask(&self, lanes: u32, count: usize) -> VectorValue<'ctx> {
        let bool_type = self.cx.context.bool_type();
        VectorType::const_vector(
            &(0..lanes as usize)
                .map(|lane| bool_type.const_int(u64::from(lane < count), false))
                .collect::<Vec<_>>(),
        )
    }

    /// Loads one element and broadcasts it to `lanes` lanes.
    pub fn load_splat(
        &self,
        elem: Elem,
        lanes: u32,
        at: PointerValue<'ctx>,
    ) -> Result<VectorValue<'ctx>, CodegenError> {
        let one = self.load(elem, 1, at)?;
        self.splat_lane(one, lanes)
    }

    /// Broadcasts lane 0 of `value` to `lanes` lanes.
    pub fn splat_lane(
        &self,
        value: VectorValue<'ctx>,
        lanes: u32,
    ) -> Result<VectorValue<'ctx>, CodegenError> {
        if value.get_type().get_size() == lanes {
            return Ok(value);
        }
        let zero = self.cx.context.i32_type().const_zero();
        let mask = VectorType::const_vector(&vec![zero; lanes as usize]);
        Ok(self.em.builder.build_shuffle_vector(
            value,
            value.get_type().get_poison(),
            mask,
            "splat",
        )?)
    }

    /// A stack slot for `ty` allocated in the entry block (so loops can
    /// carry values through it; LLVM promotes it to registers).
    pub fn slot(&self, ty: BasicTypeEnum<'ctx>) -> Result<PointerValue<'ctx>, CodegenError> {
        let entry = self
            .em
            .function
            .get_first_basic_block()
            .ok_or(CodegenError::Internal("functions have an entry block"))?;
        let builder = self.cx.context.create_builder();
        match entry.get_first_instruction() {
            Some(first) => builder.position_before(&first),
            None => builder.position_at_end(entry),
        }
        Ok(builder.build_alloca(ty, "slot")?)
    }

    /// Emits a pass over `len` consecutive positions: full `lanes`-wide
    /// vectors, then the remainder one at a time; `body(position, lanes)`.
    pub fn row(
        &self,
        len: usize,
        lanes: u32,
        body: &mut dyn FnMut(IntValue<'ctx>, u32) -> Result<(), CodegenError>,
    ) -> Result<(), CodegenError> {
        let vectors = len / lanes as usize;
        if vectors > 0 {
            self.em
                .counted_loop(self.em.i64(0), self.em.i64(vectors), |v| {
                    let at =
                        self.em
                            .builder
                            .build_int_mul(v, self.em.i64(lanes as usize), "pos")?;
                    body(at, lanes)
                })?;
        }
        if !len.is_multiple_of(lanes as usize) {
            self.em.counted_loop(
                self.em.i64(vectors * lanes as usize),
                self.em.i64(len),
                |p| body(p, 1),
            )?;
        }
        Ok(())
    }

    /// [`Self::row`] with the remainder as one vector of `lanes` under a
    /// mask instead of one element at a time: `body(position, lanes,
    /// mask)`, the mask `Some` for the remainder only. Why: a scalar
    /// remainder of a vector function (exp) costs as much per element as
    /// a vector does for `lanes`; a softmax over 197 scores (ViT's tokens)
    /// spent as long on its 5 last scores as on the 192 before them.
    pub fn row_masked(
        &self,
        len: usize,
        lanes: u32,
        body: &mut dyn FnMut(
            IntValue<'ctx>,
            u32,
            Option<VectorValue<'ctx>>,
        ) -> Result<(), CodegenError>,
    ) -> Result<(), CodegenError> {
        let full = len / lanes as usize * lanes as usize;
        self.row(full, lanes, &mut |pos, width| body(pos, width, None))?;
        if full < len {
            let mask = self.prefix_mask(lanes, len - full);
            body(self.em.i64(full), lanes, Some(mask))?;
        }
        Ok(())
    }

    /// [`Self::nest`] with the first `fold` axes of `dims` iterated as one
    /// ranged loop over their product (the kernel's parallel axis, see
    /// [`fold_axes`]), each index recovered by a division by constants, and
    /// the other axes nested inside it.
    pub fn nest_folded(
        &self,
        dims: &[usize],
        fold: usize,
        body: &mut dyn FnMut(&[IntValue<'ctx>]) -> Result<(), CodegenError>,
    ) -> Result<(), CodegenError> {
        if fold <= 1 || dims.len() < fold || dims[..fold].contains(&0) {
            return self.nest(dims, true, body);
        }
        let (outer, inner) = dims.split_at(fold);
        let extent: usize = outer.iter().product();
        self.nest(&[extent], true, &mut |flat: &[IntValue<'ctx>]| {
            let mut index = Vec::with_capacity(dims.len());
            let mut below = extent;
            for &size in outer {
                below /= size;
                let b = &self.em.builder;
                let i = b.build_int_unsigned_div(flat[0], self.int(below as i64), "fi")?;
                let i = b.build_int_unsigned_rem(i, self.int(size as i64), "fi")?;
                index.push(i);
            }
            self.nest_level(inner, false, &mut index, body)
        })
    }

    /// Emits loops over `dims` (outermost first, the outermost restricted
    /// to `begin..end` when `ranged`) and calls `body` with the indices.
    pub fn nest(
        &self,
        dims: &[usize],
        ranged: bool,
        body: &mut dyn FnMut(&[IntValue<'ctx>]) -> Result<(), CodegenError>,
    ) -> Result<(), CodegenError> {
        let mut index = Vec::with_capacity(dims.len());
        self.nest_level(dims, ranged, &mut index, body)
    }

    fn nest_level(
        &self,
        dims: &[usize],
        ranged: bool,
        index: &mut Vec<IntValue<'ctx>>,
        body: &mut dyn FnMut(&[IntValue<'ctx>]) -> Result<(), CodegenError>,
    ) -> Result<(), CodegenError> {
        let Some((&first, rest)) = dims.split_first() else {
            return body(index);
        };
        let (start, stop) = if ranged {
            (self.begin, self.em.umin(self.end, self.em.i64(first))?)
        } else {
            (self.em.i64(0), self.em.i64(first))
        };
        self.em.counted_loop(start, stop, |i| {
            index.push(i);
            self.nest_level(rest, false, index, body)?;
            index.pop();
            Ok(())
        })
    }
}
