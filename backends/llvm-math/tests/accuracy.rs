//! Accuracy of the shared math on this host: each function built on
//! one-lane vectors (as the PTX emitter uses it), JIT-compiled, swept over
//! a dense grid of its working range and compared with the f64 function
//! rounded to f32. The bounds are the CPU backend's documented maxima
//! (`docs/CPU_BACKEND.md`) rounded up: the same algorithms must be as
//! accurate in scalar form.

use inkwell::context::Context;
use inkwell::execution_engine::JitFunction;
use inkwell::targets::{InitializationConfig, Target};
use inkwell::OptimizationLevel;
use m4c_llvm_math::{Math, MathError};

type Unary = unsafe extern "C" fn(f32) -> f32;
type Build = for<'b, 'c> fn(
    &Math<'b, 'c>,
    inkwell::values::VectorValue<'c>,
) -> Result<inkwell::values::VectorValue<'c>, MathError>;

/// Name, builder, range, exact function, bound in ulps.
type Sweep = (&'static str, Build, f64, f64, fn(f64) -> f64, f64);

/// Max error in ulps of the exact result rounded to f32 (below the
/// smallest normal, that ulp) of `build` over `count` points in `lo..hi`.
fn sweep(build: Build, lo: f64, hi: f64, count: usize, exact: fn(f64) -> f64) -> f64 {
    let context = Context::create();
    let module = context.create_module("sweep");
    let builder = context.create_builder();
    let f32t = context.f32_type();
    let f = module.add_function("f", f32t.fn_type(&[f32t.into()], false), None);
    builder.position_at_end(context.append_basic_block(f, "entry"));
    let zero = context.i32_type().const_zero();
    let x = f.get_nth_param(0).unwrap().into_float_value();
    let v = builder
        .build_insert_element(f32t.vec_type(1).get_poison(), x, zero, "v")
        .unwrap();
    let math = Math::new(&context, &builder, &module, 1);
    let y = build(&math, v).unwrap();
    let y = builder.build_extract_element(y, zero, "y").unwrap();
    builder.build_return(Some(&y)).unwrap();
    module.verify().unwrap();
    Target::initialize_native(&InitializationConfig::default()).unwrap();
    let engine = module
        .create_jit_execution_engine(OptimizationLevel::Default)
        .unwrap();
    // SAFETY: `f` was built above with exactly this signature.
    let f: JitFunction<Unary> = unsafe { engine.get_function("f").unwrap() };
    let mut worst = 0.0f64;
    for i in 0..count {
        let x = (lo + (hi - lo) * i as f64 / (count - 1) as f64) as f32;
        // SAFETY: a pure function of one float, JIT-compiled above.
        let y = unsafe { f.call(x) };
        let want = exact(f64::from(x));
        let rounded = want as f32;
        let ulp = f64::from(f32::from_bits(rounded.abs().to_bits() + 1) - rounded.abs())
            .max(f64::from(f32::MIN_POSITIVE));
        worst = worst.max((f64::from(y) - want).abs() / ulp);
    }
    worst
}

#[test]
fn scalar_math_is_as_accurate_as_documented() {
    let cases: [Sweep; 7] = [
        ("exp", |m, v| m.exp(v), -87.0, 88.0, f64::exp, 1.5),
        ("log", |m, v| m.log(v), 1e-30, 1e30, f64::ln, 1.0),
        ("erf", |m, v| m.erf(v), -5.0, 5.0, libm::erf, 7.0),
        ("tanh", |m, v| m.tanh(v), -10.0, 10.0, f64::tanh, 5.5),
        (
            "sigmoid",
            |m, v| m.sigmoid(v),
            -30.0,
            30.0,
            |x| 1.0 / (1.0 + (-x).exp()),
            3.5,
        ),
        (
            "sin",
            |m, v| m.sin_cos(v, false),
            -100.0,
            100.0,
            f64::sin,
            2.0,
        ),
        (
            "cos",
            |m, v| m.sin_cos(v, true),
            -100.0,
            100.0,
            f64::cos,
            2.0,
        ),
    ];
    for (name, build, lo, hi, exact, bound) in cases {
        let ulps = sweep(build, lo, hi, 20_001, exact);
        assert!(ulps <= bound, "{name}: {ulps:.2} ulp > {bound}");
        println!("{name}: {ulps:.2} ulp");
    }
}

#[test]
fn pow_follows_onnx() {
    let cases = [
        (2.0f32, 10.0f32, 1024.0f32),
        (-2.0, 3.0, -8.0),
        (-2.0, 2.0, 4.0),
        (5.0, 0.0, 1.0),
        (0.0, 0.0, 1.0),
    ];
    for (x, y, want) in cases {
        let got = pow_of(x, y);
        assert!((got - want).abs() <= want.abs() * 1e-6, "{x}^{y} = {got}");
    }
    assert!(pow_of(-2.0, 0.5).is_nan());
}

/// `x^y` through `Math::pow`, JIT-compiled.
fn pow_of(x: f32, y: f32) -> f32 {
    let context = Context::create();
    let module = context.create_module("pow");
    let builder = context.create_builder();
    let f32t = context.f32_type();
    let ty = f32t.fn_type(&[f32t.into(), f32t.into()], false);
    let f = module.add_function("pow", ty, None);
    builder.position_at_end(context.append_basic_block(f, "entry"));
    let zero = context.i32_type().const_zero();
    let lane = |k| {
        let p = f.get_nth_param(k).unwrap().into_float_value();
        builder
            .build_insert_element(f32t.vec_type(1).get_poison(), p, zero, "v")
            .unwrap()
    };
    let (a, b) = (lane(0), lane(1));
    let math = Math::new(&context, &builder, &module, 1);
    let r = math.pow(a, b).unwrap();
    let r = builder.build_extract_element(r, zero, "r").unwrap();
    builder.build_return(Some(&r)).unwrap();
    Target::initialize_native(&InitializationConfig::default()).unwrap();
    let engine = module
        .create_jit_execution_engine(OptimizationLevel::Default)
        .unwrap();
    // SAFETY: `pow` was built above with exactly this signature.
    let f: JitFunction<unsafe extern "C" fn(f32, f32) -> f32> =
        unsafe { engine.get_function("pow").unwrap() };
    // SAFETY: a pure function of two floats.
    unsafe { f.call(x, y) }
}
