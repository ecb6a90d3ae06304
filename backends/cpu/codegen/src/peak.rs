//! Measuring this core's FP32 FMA peak: the clock from a JIT-compiled chain
//! of dependent integer adds (one per cycle on every x86-64 core), the FMA
//! throughput from a JIT-compiled loop of independent vector FMAs.

use std::time::Instant;

use inkwell::context::Context;
use inkwell::values::BasicValue;
use inkwell::IntPredicate;
use serde::Serialize;

use crate::ir::define_function;
use crate::{Arch, CodegenError, JitModule, Machine, Target};

/// Dependent adds per clock-probe iteration.
const ADDS_PER_ITERATION: u64 = 1000;
/// Probe runs; the fastest is kept, since interference only slows a run.
const RUNS: usize = 41;

/// The measured peak and how it was obtained.
#[derive(Clone, Debug, Serialize)]
pub struct Peak {
    /// Core clock while busy, GHz (dependent-add chain).
    pub clock_ghz: f64,
    /// Vector FMAs retired per cycle by the FMA loop, as measured.
    pub measured_fmas_per_cycle: f64,
    /// The same rounded to the nearest half: the core's vector FMA issue
    /// width at this vector length.
    pub fma_units: f64,
    /// f32 lanes per vector.
    pub lanes: usize,
    /// `clock_ghz × fma_units × lanes × 2` (an FMA is two FLOPs), per core.
    pub peak_gflops: f64,
    /// What the FMA loop itself reached, GFLOP/s.
    pub fma_loop_gflops: f64,
}

/// Measures the peak of one core for `target`'s vector width.
pub fn measure_peak(target: &Target) -> Result<Peak, CodegenError> {
    if target.arch() != Arch::X86_64 {
        return Err(CodegenError::NotRunnable {
            target: target.name().to_string(),
            reason: "the clock probe is x86-64 assembly".into(),
        });
    }
    let machine = Machine::new(target)?;
    let context = Context::create();
    let module = machine.new_module(&context, "peak");
    let lanes = target.isa.f32_lanes();
    let chains = (target.isa.vector_registers() - 4).min(24);
    emit_clock_probe(&context, &module, target)?;
    emit_fma_probe(&context, &module, target, chains)?;
    let jit = JitModule::new(&machine, module)?;
    // SAFETY: both addresses are the JIT-compiled functions emitted above
    // with exactly these signatures; `jit` outlives the calls.
    let (clock_probe, fma_probe) = unsafe {
        (
            std::mem::transmute::<usize, extern "C" fn(u64) -> u64>(jit.address("clock_probe")?),
            std::mem::transmute::<usize, extern "C" fn(u64, *mut f32)>(jit.address("fma_probe")?),
        )
    };
    let clock_iterations = 2_000;
    let clock_seconds = fastest(|| {
        std::hint::black_box(clock_probe(clock_iterations));
    });
    let clock_hz = (clock_iterations * ADDS_PER_ITERATION) as f64 / clock_seconds;

    let fma_iterations = 100_000u64;
    let mut operands = vec![0.999_f32; lanes];
    operands.extend(std::iter::repeat_n(1e-3, lanes));
    let fma_seconds = fastest(|| fma_probe(fma_iterations, operands.as_mut_ptr()));
    let fmas = (fma_iterations * chains as u64) as f64;
    let measured = fmas / (fma_seconds * clock_hz);
    let fma_units = ((measured * 2.0).round() / 2.0).max(0.5);
    Ok(Peak {
        clock_ghz: clock_hz / 1e9,
        measured_fmas_per_cycle: measured,
        fma_units,
        lanes,
        peak_gflops: clock_hz * fma_units * lanes as f64 * 2.0 / 1e9,
        fma_loop_gflops: fmas * lanes as f64 * 2.0 / fma_seconds / 1e9,
    })
}

fn fastest(mut run: impl FnMut()) -> f64 {
    run();
    (0..RUNS)
        .map(|_| {
            let start = Instant::now();
            run();
            start.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}

/// `u64 clock_probe(u64 n)`: `n × 1000` dependent `add`s in inline assembly
/// (the optimiser cannot fold them), one cycle each.
fn emit_clock_probe<'ctx>(
    context: &'ctx Context,
    module: &inkwell::module::Module<'ctx>,
    target: &Target,
) -> Result<(), CodegenError> {
    let i64t = context.i64_type();
    let em = define_function(
        context,
        module,
        target,
        "clock_probe",
        i64t.fn_type(&[i64t.into()], false),
        true,
    );
    let asm_type = i64t.fn_type(&[i64t.into()], false);
    let asm = context.create_inline_asm(
        asm_type,
        format!(".rept {ADDS_PER_ITERATION}\n\taddq $$1, $0\n\t.endr"),
        "=r,0,~{flags}".to_string(),
        true,
        false,
        None,
        false,
    );
    let entry = em.current_block();
    let body = context.append_basic_block(em.function, "body");
    let exit = context.append_basic_block(em.function, "exit");
    em.builder.build_unconditional_branch(body)?;
    em.builder.position_at_end(body);
    let i = em.builder.build_phi(i64t, "i")?;
    let x = em.builder.build_phi(i64t, "x")?;
    i.add_incoming(&[(&em.i64(0), entry)]);
    x.add_incoming(&[(&em.i64(0), entry)]);
    let added =
        em.builder
            .build_indirect_call(asm_type, asm, &[x.as_basic_value().into()], "adds")?;
    let added = match added.try_as_basic_value() {
        inkwell::values::ValueKind::Basic(value) => value.into_int_value(),
        inkwell::values::ValueKind::Instruction(_) => {
            return Err(CodegenError::Llvm("asm returned nothing".into()))
        }
    };
    let next = em
        .builder
        .build_int_add(i.as_basic_value().into_int_value(), em.i64(1), "next")?;
    i.add_incoming(&[(&next, body)]);
    x.add_incoming(&[(&added, body)]);
    let more = em
        .builder
        .build_int_compare(IntPredicate::ULT, next, em.int_param(0), "more")?;
    em.builder.build_conditional_branch(more, body, exit)?;
    em.builder.position_at_end(exit);
    em.builder
        .build_return(Some(&added.as_basic_value_enum()))?;
    Ok(())
}

/// `void fma_probe(u64 n, float *io)`: `n` rounds of `chains` independent
/// `acc = fma(acc, x, y)` on full vectors (`x`, `y` read from `io`), enough
/// chains to hide the FMA latency; the sum is written back so nothing is
/// dead.
fn emit_fma_probe<'ctx>(
    context: &'ctx Context,
    module: &inkwell::module::Module<'ctx>,
    target: &Target,
    chains: usize,
) -> Result<(), CodegenError> {
    let i64t = context.i64_type();
    let ptr = context.ptr_type(Default::default());
    let ty = context
        .void_type()
        .fn_type(&[i64t.into(), ptr.into()], false);
    let em = define_function(context, module, target, "fma_probe", ty, true);
    let lanes = target.isa.f32_lanes();
    let vector = context.f32_type().vec_type(lanes as u32);
    let io = em.ptr_param(1);
    let x = em.load_vector(vector, io)?;
    let y_ptr = em.float_offset(io, em.i64(lanes))?;
    let y = em.load_vector(vector, y_ptr)?;
    let entry = em.current_block();
    let body = context.append_basic_block(em.function, "body");
    let exit = context.append_basic_block(em.function, "exit");
    em.builder.build_unconditional_branch(body)?;
    em.builder.position_at_end(body);
    let i = em.builder.build_phi(i64t, "i")?;
    i.add_incoming(&[(&em.i64(0), entry)]);
    let phis = (0..chains)
        .map(|_| em.builder.build_phi(vector, "acc"))
        .collect::<Result<Vec<_>, _>>()?;
    let mut accumulators = Vec::with_capacity(chains);
    for acc in phis {
        acc.add_incoming(&[(&y, entry)]);
        let acc_value = acc.as_basic_value().into_vector_value();
        let next = em
            .call_value(
                "llvm.fma",
                &[vector.into()],
                &[acc_value.into(), x.into(), y.into()],
            )?
            .into_vector_value();
        acc.add_incoming(&[(&next, body)]);
        accumulators.push(next);
    }
    let next = em
        .builder
        .build_int_add(i.as_basic_value().into_int_value(), em.i64(1), "next")?;
    i.add_incoming(&[(&next, body)]);
    let more = em
        .builder
        .build_int_compare(IntPredicate::ULT, next, em.int_param(0), "more")?;
    em.builder.build_conditional_branch(more, body, exit)?;
    em.builder.position_at_end(exit);
    let mut sum = accumulators[0];
    for acc in &accumulators[1..] {
        sum = em.builder.build_float_add(sum, *acc, "sum")?;
    }
    em.store_vector(io, sum)?;
    em.builder.build_return(None)?;
    Ok(())
}
