//! One kernel function under construction: its builder, its two buffer
//! parameters, the NVVM intrinsics (thread and block indices, barriers),
//! tensor loads and stores, shared-memory arrays and the control flow
//! every kernel shape uses (guards, counted loops, scalars in allocas
//! that LLVM's `mem2reg` turns into registers).

use inkwell::basic_block::BasicBlock;
use inkwell::builder::Builder;
use inkwell::context::Context;
use inkwell::intrinsics::Intrinsic;
use inkwell::module::{Linkage, Module};
use inkwell::types::{BasicType, BasicTypeEnum};
use inkwell::values::{
    BasicMetadataValueEnum, BasicValueEnum, FloatValue, FunctionValue, GlobalValue, IntValue,
    PointerValue,
};
use inkwell::{AddressSpace, IntPredicate};
use m4c_gpu_device::Space;
use m4c_ir::DType;

use super::Fail;
use crate::kernel::Operand;

/// LLVM's `ptx_kernel` calling convention (`CallingConv::PTX_Kernel`).
const PTX_KERNEL: u32 = 71;
/// NVPTX's global and shared address spaces.
const GLOBAL: u16 = 1;
const SHARED: u16 = 3;

/// What the kernels are built for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Flavor {
    /// NVIDIA GPUs: `ptx_kernel` functions, special registers, barriers,
    /// global and shared address spaces.
    Nvptx,
    /// This host, for testing the emitter's IR without a GPU: each
    /// kernel also takes a pointer to its thread's `[tid.x, tid.y,
    /// ctaid.x, ctaid.y, ctaid.z]`, barriers call `m4c_host_barrier`, and
    /// memory is the default address space (`ptx/host_tests.rs`).
    #[cfg(test)]
    Host,
}

/// The host flavor's barrier function.
#[cfg(test)]
pub(crate) const HOST_BARRIER: &str = "m4c_host_barrier";

/// A kernel function being built.
pub(crate) struct Cx<'a, 'ctx> {
    pub context: &'ctx Context,
    pub module: &'a Module<'ctx>,
    pub b: Builder<'ctx>,
    pub name: String,
    func: FunctionValue<'ctx>,
    /// The block holding the allocas (first in the function).
    allocas: BasicBlock<'ctx>,
    arena: PointerValue<'ctx>,
    weights: PointerValue<'ctx>,
    flavor: Flavor,
}

impl<'a, 'ctx> Cx<'a, 'ctx> {
    /// A new kernel `name(ptr addrspace(1) arena, ptr addrspace(1)
    /// weights)` launched with at most `threads` invocations per block
    /// and, with `min_blocks`, registers bounded so that many blocks fit
    /// on one SM (CUDA's `__launch_bounds__`); the builder in its body.
    pub fn kernel(
        context: &'ctx Context,
        module: &'a Module<'ctx>,
        name: &str,
        threads: usize,
        min_blocks: Option<u64>,
        flavor: Flavor,
    ) -> Result<Self, Fail> {
        #[cfg(test)]
        if flavor == Flavor::Host {
            let ptr = context.ptr_type(AddressSpace::default());
            let ty = context
                .void_type()
                .fn_type(&[ptr.into(), ptr.into(), ptr.into()], false);
            let func = module.add_function(name, ty, None);
            return Self::body(context, module, name, func, flavor);
        }
        let ptr = context.ptr_type(AddressSpace::from(GLOBAL));
        let ty = context
            .void_type()
            .fn_type(&[ptr.into(), ptr.into()], false);
        let func = module.add_function(name, ty, None);
        func.set_call_conventions(PTX_KERNEL);
        // The two buffers never overlap.
        let noalias = inkwell::attributes::Attribute::get_named_enum_kind_id("noalias");
        for p in 0..2 {
            func.add_attribute(
                inkwell::attributes::AttributeLoc::Param(p),
                context.create_enum_attribute(noalias, 0),
            );
        }
        // LLVM 19's NVPTX backend finds kernels (and their block size,
        // which bounds the registers it may use) in nvvm.annotations.
        let i32t = context.i32_type();
        let mut notes = vec![("kernel", 1), ("maxntidx", threads as u64)];
        notes.extend(min_blocks.map(|n| ("minctasm", n)));
        for (key, value) in notes {
            let node = context.metadata_node(&[
                func.as_global_value().as_pointer_value().into(),
                context.metadata_string(key).into(),
                i32t.const_int(value, false).into(),
            ]);
            module
                .add_global_metadata("nvvm.annotations", &node)
                .map_err(|e| Fail(e.to_string()))?;
        }
        Self::body(context, module, name, func, flavor)
    }

    /// The builder positioned in a new kernel's body.
    fn body(
        context: &'ctx Context,
        module: &'a Module<'ctx>,
        name: &str,
        func: FunctionValue<'ctx>,
        flavor: Flavor,
    ) -> Result<Self, Fail> {
        let allocas = context.append_basic_block(func, "allocas");
        let body = context.append_basic_block(func, "body");
        let b = context.create_builder();
        b.position_at_end(allocas);
        b.build_unconditional_branch(body)?;
        b.position_at_end(body);
        let param = |k| {
            func.get_nth_param(k)
                .map(|p| p.into_pointer_value())
                .ok_or_else(|| Fail(format!("kernel {name} has no parameter {k}")))
        };
        Ok(Self {
            context,
            module,
            b,
            name: name.to_string(),
            func,
            allocas,
            arena: param(0)?,
            weights: param(1)?,
            flavor,
        })
    }

    pub fn i32(&self, v: i64) -> IntValue<'ctx> {
        self.context.i32_type().const_int(v as u64, true)
    }

    pub fn f32(&self, v: f32) -> FloatValue<'ctx> {
        self.context.f32_type().const_float(f64::from(v))
    }

    /// Calls the intrinsic `name` instantiated at `types`.
    pub fn call(
        &self,
        name: &str,
        types: &[BasicTypeEnum<'ctx>],
        args: &[BasicMetadataValueEnum<'ctx>],
    ) -> Result<Option<BasicValueEnum<'ctx>>, Fail> {
        let declaration = Intrinsic::find(name)
            .and_then(|i| i.get_declaration(self.module, types))
            .ok_or_else(|| Fail(format!("LLVM has no intrinsic {name}")))?;
        let call = self.b.build_call(declaration, args, "")?;
        Ok(match call.try_as_basic_value() {
            inkwell::values::ValueKind::Basic(v) => Some(v),
            inkwell::values::ValueKind::Instruction(_) => None,
        })
    }

    /// A special register (`tid.x`, `ctaid.y`, …) as i32.
    pub fn sreg(&self, reg: &str) -> Result<IntValue<'ctx>, Fail> {
        #[cfg(test)]
        if self.flavor == Flavor::Host {
            let k = ["tid.x", "tid.y", "ctaid.x", "ctaid.y", "ctaid.z"]
                .iter()
                .position(|r| *r == reg)
                .ok_or_else(|| Fail(format!("no host register {reg}")))?;
            let ids = self
                .func
                .get_nth_param(2)
                .ok_or_else(|| Fail("a host kernel takes its ids as parameter 2".into()))?
                .into_pointer_value();
            let p = self.at(ids, self.context.i64_type().const_int(4 * k as u64, false))?;
            return Ok(self
                .b
                .build_load(self.context.i32_type(), p, reg)?
                .into_int_value());
        }
        let v = self.call(&format!("llvm.nvvm.read.ptx.sreg.{reg}"), &[], &[])?;
        Ok(v.ok_or_else(|| Fail(format!("sreg {reg} has no value")))?
            .into_int_value())
    }

    /// `__syncthreads()`: every thread of the block waits here.
    pub fn barrier(&self) -> Result<(), Fail> {
        #[cfg(test)]
        if self.flavor == Flavor::Host {
            let f = self.module.get_function(HOST_BARRIER).unwrap_or_else(|| {
                let ty = self.context.void_type().fn_type(&[], false);
                self.module.add_function(HOST_BARRIER, ty, None)
            });
            self.b.build_call(f, &[], "")?;
            return Ok(());
        }
        self.call("llvm.nvvm.barrier0", &[], &[])?;
        Ok(())
    }

    /// A stack slot of `ty` holding `init` (promoted to a register).
    pub fn var(&self, init: BasicValueEnum<'ctx>) -> Result<PointerValue<'ctx>, Fail> {
        let at = self.context.create_builder();
        let end = self
            .allocas
            .get_terminator()
            .ok_or_else(|| Fail(format!("{}: the alloca block has no branch", self.name)))?;
        at.position_before(&end);
        let slot = at.build_alloca(init.get_type(), "v")?;
        self.b.build_store(slot, init)?;
        Ok(slot)
    }

    /// The value of a slot made by [`Cx::var`].
    pub fn get(
        &self,
        slot: PointerValue<'ctx>,
        ty: impl BasicType<'ctx>,
    ) -> Result<BasicValueEnum<'ctx>, Fail> {
        Ok(self.b.build_load(ty, slot, "")?)
    }

    /// A new block of the function.
    pub fn block(&self, name: &str) -> BasicBlock<'ctx> {
        self.context.append_basic_block(self.func, name)
    }

    /// `if !cond { return; }` at the builder's position.
    pub fn return_unless(&self, cond: IntValue<'ctx>) -> Result<(), Fail> {
        let go = self.block("go");
        let out = self.block("out");
        self.b.build_conditional_branch(cond, go, out)?;
        self.b.position_at_end(out);
        self.b.build_return(None)?;
        self.b.position_at_end(go);
        Ok(())
    }

    /// `if cond { then() }`.
    pub fn when(
        &self,
        cond: IntValue<'ctx>,
        then: impl FnOnce(&Self) -> Result<(), Fail>,
    ) -> Result<(), Fail> {
        let yes = self.block("then");
        let join = self.block("join");
        self.b.build_conditional_branch(cond, yes, join)?;
        self.b.position_at_end(yes);
        then(self)?;
        self.b.build_unconditional_branch(join)?;
        self.b.position_at_end(join);
        Ok(())
    }

    /// `for (i = start; i < end; i += step) body(i)` on i32.
    pub fn for_loop(
        &self,
        start: IntValue<'ctx>,
        end: IntValue<'ctx>,
        step: i64,
        body: impl FnOnce(&Self, IntValue<'ctx>) -> Result<(), Fail>,
    ) -> Result<(), Fail> {
        let i32t = self.context.i32_type();
        let slot = self.var(start.into())?;
        let head = self.block("loop");
        let inside = self.block("body");
        let exit = self.block("done");
        self.b.build_unconditional_branch(head)?;
        self.b.position_at_end(head);
        let i = self.get(slot, i32t)?.into_int_value();
        let more = self
            .b
            .build_int_compare(IntPredicate::SLT, i, end, "more")?;
        self.b.build_conditional_branch(more, inside, exit)?;
        self.b.position_at_end(inside);
        body(self, i)?;
        let next = self.b.build_int_add(i, self.i32(step), "next")?;
        self.b.build_store(slot, next)?;
        self.b.build_unconditional_branch(head)?;
        self.b.position_at_end(exit);
        Ok(())
    }

    /// The buffer a tensor lives in.
    fn base(&self, space: Space) -> PointerValue<'ctx> {
        match space {
            Space::Arena => self.arena,
            Space::Weights => self.weights,
        }
    }

    /// Byte `offset` (i64) past `base`.
    pub fn at(
        &self,
        base: PointerValue<'ctx>,
        offset: IntValue<'ctx>,
    ) -> Result<PointerValue<'ctx>, Fail> {
        // SAFETY: a byte GEP on an opaque pointer builds valid IR for any
        // offset; every offset built here lies inside its buffer (loads
        // are clamped into their tensor, stores are bounded by their
        // launch) whose size `Manifest::check` verified.
        Ok(unsafe {
            self.b
                .build_in_bounds_gep(self.context.i8_type(), base, &[offset], "p")?
        })
    }

    /// The address of element `index` (i32, assumed in range) of `op`.
    fn element(&self, op: &Operand, index: IntValue<'ctx>) -> Result<PointerValue<'ctx>, Fail> {
        let i64t = self.context.i64_type();
        let size = op.dtype.storage_bytes(1) as u64;
        let wide = self.b.build_int_s_extend(index, i64t, "wide")?;
        let bytes = self
            .b
            .build_int_mul(wide, i64t.const_int(size, false), "bytes")?;
        let bytes =
            self.b
                .build_int_add(bytes, i64t.const_int(op.offset as u64, false), "bytes")?;
        self.at(self.base(op.space), bytes)
    }

    /// Element `index` (i32) of `op`, the index clamped into the tensor,
    /// in its computing kind (f32, i32, or i1 for bools).
    pub fn load(&self, op: &Operand, index: IntValue<'ctx>) -> Result<BasicValueEnum<'ctx>, Fail> {
        let i32t = self.context.i32_type();
        let last = op.len.max(1) as i64 - 1;
        let lo = self.call(
            "llvm.smax",
            &[i32t.into()],
            &[index.into(), self.i32(0).into()],
        )?;
        let clamped = self.call(
            "llvm.smin",
            &[i32t.into()],
            &[
                lo.ok_or_else(|| Fail("llvm.smax returned no value".into()))?
                    .into(),
                self.i32(last).into(),
            ],
        )?;
        let clamped = clamped.ok_or_else(|| Fail("llvm.smin returned no value".into()))?;
        let p = self.element(op, clamped.into_int_value())?;
        let value = match op.dtype {
            DType::F32 => self.b.build_load(self.context.f32_type(), p, "x")?,
            DType::I32 => self.b.build_load(i32t, p, "x")?,
            DType::I64 => {
                let wide = self.b.build_load(self.context.i64_type(), p, "x")?;
                self.b
                    .build_int_truncate(wide.into_int_value(), i32t, "x")?
                    .into()
            }
            DType::I8 => {
                let byte = self.b.build_load(self.context.i8_type(), p, "x")?;
                self.b
                    .build_int_s_extend(byte.into_int_value(), i32t, "x")?
                    .into()
            }
            DType::Bool => {
                let byte = self.b.build_load(self.context.i8_type(), p, "x")?;
                let zero = self.context.i8_type().const_zero();
                self.b
                    .build_int_compare(IntPredicate::NE, byte.into_int_value(), zero, "x")?
                    .into()
            }
            other => return Err(Fail(format!("no PTX load of {other}"))),
        };
        Ok(value)
    }

    /// Stores `value` (of the element type's computing kind) as element
    /// `index` (in range by construction) of `op`.
    pub fn store(
        &self,
        op: &Operand,
        index: IntValue<'ctx>,
        value: BasicValueEnum<'ctx>,
    ) -> Result<(), Fail> {
        let p = self.element(op, index)?;
        let stored: BasicValueEnum<'ctx> = match op.dtype {
            DType::F32 | DType::I32 => value,
            DType::I64 => self
                .b
                .build_int_s_extend(value.into_int_value(), self.context.i64_type(), "wide")?
                .into(),
            DType::I8 => self
                .b
                .build_int_truncate(value.into_int_value(), self.context.i8_type(), "byte")?
                .into(),
            DType::Bool => self
                .b
                .build_int_z_extend(value.into_int_value(), self.context.i8_type(), "byte")?
                .into(),
            other => return Err(Fail(format!("no PTX store of {other}"))),
        };
        self.b.build_store(p, stored)?;
        Ok(())
    }

    /// A block-shared f32 array of `len` elements (`__shared__`).
    pub fn shared(&self, suffix: &str, len: usize) -> GlobalValue<'ctx> {
        let ty = self.context.f32_type().array_type(len as u32);
        let space = match self.flavor {
            Flavor::Nvptx => AddressSpace::from(SHARED),
            #[cfg(test)]
            Flavor::Host => AddressSpace::default(),
        };
        let g = self
            .module
            .add_global(ty, Some(space), &format!("{}_{suffix}", self.name));
        g.set_linkage(Linkage::Internal);
        g.set_initializer(&ty.get_undef());
        g.set_alignment(16);
        g
    }

    /// The address of element `index` (i32) of a shared array.
    pub fn shared_at(
        &self,
        array: GlobalValue<'ctx>,
        index: IntValue<'ctx>,
    ) -> Result<PointerValue<'ctx>, Fail> {
        let i64t = self.context.i64_type();
        let wide = self.b.build_int_s_extend(index, i64t, "wide")?;
        let bytes = self
            .b
            .build_int_mul(wide, i64t.const_int(4, false), "bytes")?;
        self.at(array.as_pointer_value(), bytes)
    }

    /// Element `index` of a shared f32 array.
    pub fn shared_load(
        &self,
        array: GlobalValue<'ctx>,
        index: IntValue<'ctx>,
    ) -> Result<FloatValue<'ctx>, Fail> {
        let p = self.shared_at(array, index)?;
        Ok(self
            .b
            .build_load(self.context.f32_type(), p, "s")?
            .into_float_value())
    }

    /// Sets element `index` of a shared f32 array.
    pub fn shared_store(
        &self,
        array: GlobalValue<'ctx>,
        index: IntValue<'ctx>,
        value: FloatValue<'ctx>,
    ) -> Result<(), Fail> {
        let p = self.shared_at(array, index)?;
        self.b.build_store(p, value)?;
        Ok(())
    }

    /// Ends the kernel.
    pub fn finish(&self) -> Result<(), Fail> {
        self.b.build_return(None)?;
        Ok(())
    }
}
