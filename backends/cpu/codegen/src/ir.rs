//! Small helpers over inkwell's builder for the patterns every kernel uses:
//! target-tagged functions, float-pointer offsets, counted loops, splats and
//! intrinsic calls.

use inkwell::attributes::AttributeLoc;
use inkwell::builder::Builder;
use inkwell::context::Context;
use inkwell::intrinsics::Intrinsic;
use inkwell::module::{Linkage, Module};
use inkwell::types::{BasicTypeEnum, FunctionType, VectorType};
use inkwell::values::BasicValue;
use inkwell::values::{
    BasicMetadataValueEnum, BasicValueEnum, FloatValue, FunctionValue, IntValue, PointerValue,
    VectorValue,
};
use inkwell::IntPredicate;

use crate::{CodegenError, Target};

/// A builder positioned inside one function being generated.
pub(crate) struct Emitter<'a, 'ctx> {
    pub context: &'ctx Context,
    pub module: &'a Module<'ctx>,
    pub builder: Builder<'ctx>,
    pub function: FunctionValue<'ctx>,
}

/// Adds a function tagged with the target's CPU and features (so every code
/// path, including MCJIT's, selects the target's vector instructions) and
/// positions a new emitter at its entry block.
pub(crate) fn define_function<'a, 'ctx>(
    context: &'ctx Context,
    module: &'a Module<'ctx>,
    target: &Target,
    name: &str,
    ty: FunctionType<'ctx>,
    exported: bool,
) -> Emitter<'a, 'ctx> {
    let linkage = if exported {
        Linkage::External
    } else {
        Linkage::Internal
    };
    let function = module.add_function(name, ty, Some(linkage));
    let attributes = [
        context.create_string_attribute("target-cpu", &target.cpu),
        context.create_string_attribute("target-features", target.features()),
        context.create_enum_attribute(
            inkwell::attributes::Attribute::get_named_enum_kind_id("nounwind"),
            0,
        ),
    ];
    for attribute in attributes {
        function.add_attribute(AttributeLoc::Function, attribute);
    }
    let noalias = inkwell::attributes::Attribute::get_named_enum_kind_id("noalias");
    for (i, param) in function.get_param_iter().enumerate() {
        if param.is_pointer_value() {
            function.add_attribute(
                AttributeLoc::Param(i as u32),
                context.create_enum_attribute(noalias, 0),
            );
        }
    }
    let builder = context.create_builder();
    builder.position_at_end(context.append_basic_block(function, "entry"));
    Emitter {
        context,
        module,
        builder,
        function,
    }
}

impl<'ctx> Emitter<'_, 'ctx> {
    /// An `i64` constant.
    pub fn i64(&self, value: usize) -> IntValue<'ctx> {
        self.context.i64_type().const_int(value as u64, false)
    }

    /// Parameter `index` as an integer.
    #[allow(
        clippy::expect_used,
        reason = "kernels ask only for parameters of the signature they declared"
    )]
    pub fn int_param(&self, index: u32) -> IntValue<'ctx> {
        self.function
            .get_nth_param(index)
            .expect("parameter exists")
            .into_int_value()
    }

    /// Parameter `index` as a pointer.
    #[allow(
        clippy::expect_used,
        reason = "kernels ask only for parameters of the signature they declared"
    )]
    pub fn ptr_param(&self, index: u32) -> PointerValue<'ctx> {
        self.function
            .get_nth_param(index)
            .expect("parameter exists")
            .into_pointer_value()
    }

    /// `ptr + index` floats.
    pub fn float_offset(
        &self,
        ptr: PointerValue<'ctx>,
        index: IntValue<'ctx>,
    ) -> Result<PointerValue<'ctx>, CodegenError> {
        // SAFETY: this only builds a GEP instruction; it dereferences
        // nothing at generation time. The generated code's indices stay in
        // bounds by construction of each kernel (checked by its tests).
        Ok(unsafe {
            self.builder
                .build_in_bounds_gep(self.context.f32_type(), ptr, &[index], "at")?
        })
    }

    /// `a * b + c` on integers.
    pub fn mul_add(
        &self,
        a: IntValue<'ctx>,
        b: IntValue<'ctx>,
        c: IntValue<'ctx>,
    ) -> Result<IntValue<'ctx>, CodegenError> {
        let product = self.builder.build_int_mul(a, b, "mul")?;
        Ok(self.builder.build_int_add(product, c, "add")?)
    }

    /// Loads a vector from `at`, which need only be float-aligned.
    pub fn load_vector(
        &self,
        ty: VectorType<'ctx>,
        at: PointerValue<'ctx>,
    ) -> Result<VectorValue<'ctx>, CodegenError> {
        let load = self.builder.build_load(ty, at, "vec")?;
        load.as_instruction_value()
            .ok_or_else(|| CodegenError::Llvm("a load built no instruction".into()))?
            .set_alignment(4)
            .map_err(|e| CodegenError::Llvm(e.to_string()))?;
        Ok(load.into_vector_value())
    }

    /// Stores a vector at `at`, which need only be float-aligned.
    pub fn store_vector(
        &self,
        at: PointerValue<'ctx>,
        value: VectorValue<'ctx>,
    ) -> Result<(), CodegenError> {
        self.builder
            .build_store(at, value)?
            .set_alignment(4)
            .map_err(|e| CodegenError::Llvm(e.to_string()))
    }

    /// The smaller of two unsigned integers.
    pub fn umin(
        &self,
        a: IntValue<'ctx>,
        b: IntValue<'ctx>,
    ) -> Result<IntValue<'ctx>, CodegenError> {
        self.unsigned_pick(a, b, true)
    }

    /// The larger of two unsigned integers.
    pub fn umax(
        &self,
        a: IntValue<'ctx>,
        b: IntValue<'ctx>,
    ) -> Result<IntValue<'ctx>, CodegenError> {
        self.unsigned_pick(a, b, false)
    }

    /// `a` or `b`, whichever is the smaller (`smaller`) or the larger.
    fn unsigned_pick(
        &self,
        a: IntValue<'ctx>,
        b: IntValue<'ctx>,
        smaller: bool,
    ) -> Result<IntValue<'ctx>, CodegenError> {
        let less = self
            .builder
            .build_int_compare(IntPredicate::ULT, a, b, "lt")?;
        let (then, other) = if smaller { (a, b) } else { (b, a) };
        Ok(self
            .builder
            .build_select(less, then, other, "pick")?
            .into_int_value())
    }

    /// Emits a loop over `start..end` in chunks of `size`: `body(first,
    /// last)` for each `first..last` (the last chunk shorter). The GEMMs
    /// take their panels so, a chunk's worth sharing the L2.
    pub fn chunked_loop(
        &self,
        start: IntValue<'ctx>,
        end: IntValue<'ctx>,
        size: usize,
        mut body: impl FnMut(IntValue<'ctx>, IntValue<'ctx>) -> Result<(), CodegenError>,
    ) -> Result<(), CodegenError> {
        let span = self.builder.build_int_sub(end, start, "span")?;
        let chunks = self.builder.build_int_unsigned_div(
            self.builder
                .build_int_add(span, self.i64(size - 1), "span_up")?,
            self.i64(size),
            "chunks",
        )?;
        self.counted_loop(self.i64(0), chunks, |c| {
            let first = self.mul_add(c, self.i64(size), start)?;
            let last = self.builder.build_int_add(first, self.i64(size), "last")?;
            body(first, self.umin(last, end)?)
        })
    }

    /// Emits `for i in start..end { body(i) }` and leaves the builder after
    /// the loop.
    pub fn counted_loop(
        &self,
        start: IntValue<'ctx>,
        end: IntValue<'ctx>,
        mut body: impl FnMut(IntValue<'ctx>) -> Result<(), CodegenError>,
    ) -> Result<(), CodegenError> {
        let before = self.current_block();
        let header = self.context.append_basic_block(self.function, "loop");
        let body_block = self.context.append_basic_block(self.function, "body");
        let exit = self.context.append_basic_block(self.function, "exit");
        self.builder.build_unconditional_branch(header)?;
        self.builder.position_at_end(header);
        let index = self.builder.build_phi(self.context.i64_type(), "i")?;
        index.add_incoming(&[(&start, before)]);
        let i = index.as_basic_value().into_int_value();
        let more = self
            .builder
            .build_int_compare(IntPredicate::ULT, i, end, "more")?;
        self.builder
            .build_conditional_branch(more, body_block, exit)?;
        self.builder.position_at_end(body_block);
        body(i)?;
        let next = self.builder.build_int_add(i, self.i64(1), "next")?;
        index.add_incoming(&[(&next, self.current_block())]);
        self.builder.build_unconditional_branch(header)?;
        self.builder.position_at_end(exit);
        Ok(())
    }

    /// Emits `if condition { then() }` and leaves the builder after it.
    pub fn if_then(
        &self,
        condition: IntValue<'ctx>,
        then: impl FnOnce() -> Result<(), CodegenError>,
    ) -> Result<(), CodegenError> {
        let then_block = self.context.append_basic_block(self.function, "then");
        let join = self.context.append_basic_block(self.function, "join");
        self.builder
            .build_conditional_branch(condition, then_block, join)?;
        self.builder.position_at_end(then_block);
        then()?;
        self.builder.build_unconditional_branch(join)?;
        self.builder.position_at_end(join);
        Ok(())
    }

    /// A vector with every lane equal to `scalar`.
    pub fn splat(
        &self,
        scalar: FloatValue<'ctx>,
        ty: VectorType<'ctx>,
    ) -> Result<VectorValue<'ctx>, CodegenError> {
        let zero = self.context.i32_type().const_zero();
        let single = self
            .builder
            .build_insert_element(ty.get_poison(), scalar, zero, "one")?;
        let mask = VectorType::const_vector(&vec![zero; ty.get_size() as usize]);
        Ok(self
            .builder
            .build_shuffle_vector(single, ty.get_poison(), mask, "splat")?)
    }

    /// Calls the overloaded intrinsic `name` instantiated at `types`.
    pub fn call_intrinsic(
        &self,
        name: &str,
        types: &[BasicTypeEnum<'ctx>],
        args: &[BasicMetadataValueEnum<'ctx>],
    ) -> Result<Option<BasicValueEnum<'ctx>>, CodegenError> {
        let declaration = Intrinsic::find(name)
            .and_then(|intrinsic| intrinsic.get_declaration(self.module, types))
            .ok_or_else(|| CodegenError::Llvm(format!("no intrinsic {name}")))?;
        let call = self.builder.build_call(declaration, args, "call")?;
        Ok(match call.try_as_basic_value() {
            inkwell::values::ValueKind::Basic(value) => Some(value),
            inkwell::values::ValueKind::Instruction(_) => None,
        })
    }

    /// [`Self::call_intrinsic`] of an intrinsic that returns a value; an
    /// error names it if LLVM gave none.
    pub fn call_value(
        &self,
        name: &str,
        types: &[BasicTypeEnum<'ctx>],
        args: &[BasicMetadataValueEnum<'ctx>],
    ) -> Result<BasicValueEnum<'ctx>, CodegenError> {
        self.call_intrinsic(name, types, args)?
            .ok_or_else(|| CodegenError::Llvm(format!("{name} returned no value")))
    }

    /// Prefetches the cache line holding element `index` of `elem`s from
    /// `base` (`write`: with intent to write; `locality` 3 keeps it in
    /// every level, lower values in fewer). The address may lie past the
    /// buffer: a prefetch never faults.
    pub fn prefetch(
        &self,
        elem: BasicTypeEnum<'ctx>,
        base: PointerValue<'ctx>,
        index: IntValue<'ctx>,
        write: bool,
        locality: u64,
    ) -> Result<(), CodegenError> {
        // SAFETY: a plain (not in-bounds) GEP whose address is only
        // prefetched, never loaded from or stored to, so it may leave the
        // buffer.
        let at = unsafe {
            self.builder
                .build_gep(elem, base, &[index], "prefetch_at")?
        };
        let i32t = self.context.i32_type();
        self.call_intrinsic(
            "llvm.prefetch",
            &[at.get_type().into()],
            &[
                at.into(),
                i32t.const_int(u64::from(write), false).into(),
                i32t.const_int(locality, false).into(),
                i32t.const_int(1, false).into(),
            ],
        )?;
        Ok(())
    }

    /// The block the builder is in.
    #[allow(
        clippy::expect_used,
        reason = "an emitter's builder is positioned in its function from creation on"
    )]
    pub fn current_block(&self) -> inkwell::basic_block::BasicBlock<'ctx> {
        self.builder
            .get_insert_block()
            .expect("builder is positioned")
    }
}
