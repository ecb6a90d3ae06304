//! The PTX emitter's kernels run on this host: the same IR built with
//! the host flavor (thread and block indices passed in, barriers a
//! `std::sync::Barrier` across the OS threads of one block, memory in the
//! default address space), JIT-compiled, every block of every kernel
//! executed over the arena, and the outputs compared with the reference
//! interpreter (rtol 1e-3, atol 1e-4, as on the GPU). This checks
//! everything the PTX kernels compute except the NVVM plumbing the two
//! flavors do not share (special registers, `bar.sync`, address spaces),
//! which ptxas checks syntactically and only a CUDA device checks
//! semantically.

use std::cell::RefCell;
use std::collections::HashSet;
use std::path::Path;
use std::sync::{Arc, Barrier};

use inkwell::context::Context;
use inkwell::targets::{InitializationConfig, Target};
use inkwell::OptimizationLevel;
use m4c_compiler::{lower as lower_model, LowerOptions, OnnxModel};
use m4c_gpu_device::Space;
use m4c_ir::{Graph, Tensor};
use m4c_ops::Value;
use m4c_runtime::{read_npz, sanitized_key};

use super::cx::{Flavor, HOST_BARRIER};
use crate::kernel::Body;
use crate::lower::lower;
use crate::tests::{conv_gemm, convs, elementwise_and_gemm, inputs, rows, the_rest};

thread_local! {
    /// The barrier of the block this OS thread runs a thread of.
    static BLOCK: RefCell<Option<Arc<Barrier>>> = const { RefCell::new(None) };
}

extern "C" fn host_barrier() {
    BLOCK.with(|b| b.borrow().as_ref().expect("a block barrier").wait());
}

type KernelFn = unsafe extern "C" fn(*mut u8, *const u8, *const i32);

/// The arena's base address, shared by the threads of a block.
#[derive(Clone, Copy)]
struct Arena(*mut u8);
// SAFETY: the threads of a block write disjoint elements (each kernel's
// stores are indexed by its thread) and synchronise through the barrier,
// as on a GPU.
unsafe impl Send for Arena {}
unsafe impl Sync for Arena {}

impl Arena {
    /// The base address (a method, so closures capture the `Send` whole).
    fn ptr(self) -> *mut u8 {
        self.0
    }
}

/// Runs the host flavor of `g`'s kernels on `feeds`; its outputs.
fn run_on_host(g: &Graph, feeds: &[Value]) -> Vec<Value> {
    let program = lower(g, None).unwrap();
    let context = Context::create();
    let module = context.create_module("host");
    let table = super::build(&context, &module, &program.kernels, Flavor::Host).unwrap();
    module.verify().unwrap();
    Target::initialize_native(&InitializationConfig::default()).unwrap();
    let engine = module
        .create_jit_execution_engine(OptimizationLevel::Default)
        .unwrap();
    if let Some(f) = module.get_function(HOST_BARRIER) {
        engine.add_global_mapping(&f, host_barrier as *const () as usize);
    }
    let mut arena = vec![0u64; program.arena_bytes.div_ceil(8) + 1];
    for (b, v) in program.inputs.iter().zip(feeds) {
        let tensor = v.to_tensor();
        let bytes = tensor.bytes().unwrap();
        // SAFETY: the binding lies inside the arena (lower's plan).
        let dst = unsafe { (arena.as_mut_ptr() as *mut u8).add(b.offset as usize) };
        // SAFETY: `bytes` holds exactly `b.bytes` bytes, `dst` that many.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), dst, bytes.len()) };
    }
    let base = Arena(arena.as_mut_ptr() as *mut u8);
    let weights = program.weights.as_ptr() as usize;
    for (entry, kernel) in table.iter().zip(&program.kernels) {
        // SAFETY: built above with exactly this signature.
        let f: KernelFn = unsafe {
            engine
                .get_function::<KernelFn>(&entry.entry)
                .unwrap()
                .into_raw()
        };
        let [gx, gy, gz] = entry.workgroups;
        let [tx, ty, _] = entry.threads;
        let blocks = move || {
            (0..gz).flat_map(move |z| (0..gy).flat_map(move |y| (0..gx).map(move |x| [x, y, z])))
        };
        // Thread `t` of block `[x, y, z]`.
        let launch = move |t: u32, [x, y, z]: [u32; 3]| {
            let ids = [
                (t % tx) as i32,
                (t / tx) as i32,
                x as i32,
                y as i32,
                z as i32,
            ];
            // SAFETY: the kernel reads its ids, the weights and the arena,
            // all alive for the call; its loads are clamped into their
            // tensors and its stores bounded by its launch.
            unsafe { f(base.ptr(), weights as *const u8, ids.as_ptr()) }
        };
        if matches!(kernel.body, Body::Map(_)) {
            for block in blocks() {
                (0..tx * ty).for_each(|t| launch(t, block));
            }
            continue;
        }
        // Cooperative kernels: one OS thread per GPU thread, every block
        // in turn, a barrier between blocks (shared memory is reused).
        let barrier = Arc::new(Barrier::new((tx * ty) as usize));
        std::thread::scope(|s| {
            for t in 0..tx * ty {
                let barrier = barrier.clone();
                s.spawn(move || {
                    BLOCK.with(|b| *b.borrow_mut() = Some(barrier.clone()));
                    for block in blocks() {
                        launch(t, block);
                        barrier.wait();
                    }
                });
            }
        });
    }
    program
        .outputs
        .iter()
        .zip(&g.outputs)
        .map(|(b, &v)| {
            let ty = &g.value(v).ty;
            let shape = ty.static_shape().unwrap();
            let buffer = match b.space {
                Space::Arena => arena.as_ptr() as *const u8,
                Space::Weights => program.weights.as_ptr(),
            };
            // SAFETY: the binding's bytes lie inside its buffer.
            let bytes = unsafe {
                std::slice::from_raw_parts(buffer.add(b.offset as usize), b.bytes as usize)
            };
            Value::from_tensor(&Tensor::from_bytes(ty.dtype, &shape, bytes.to_vec())).unwrap()
        })
        .collect()
}

#[test]
fn ptx_kernels_match_the_interpreter_when_run_on_the_host() {
    for g in [
        elementwise_and_gemm(),
        rows(),
        the_rest(),
        convs(),
        conv_gemm(),
    ] {
        let feeds = inputs(&g);
        let got = run_on_host(&g, &feeds);
        let want = m4c_ops::run_graph(&g, &feeds).unwrap();
        for (k, (got, want)) in got.iter().zip(&want).enumerate() {
            let c = m4c_ops::compare(got, want, 1e-3, 1e-4);
            assert!(c.passed(), "{} output {k}: {}", g.name, c.summary());
        }
    }
}

/// Every committed fixture (`tests/fixtures`, lowered as `m4c run` does
/// without optimisation) through the host flavor of its PTX kernels
/// matches onnxruntime's outputs at rtol 1e-3, atol 1e-4.
#[test]
fn every_fixture_matches_onnxruntime_through_the_ptx_kernels_on_the_host() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../tests/fixtures");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            e.file_name()
                .to_str()?
                .strip_suffix(".onnx")
                .map(str::to_string)
        })
        .collect();
    names.sort();
    assert!(names.len() >= 20, "{} fixtures", names.len());
    for name in &names {
        let model = OnnxModel::load(&dir.join(format!("{name}.onnx"))).unwrap();
        let inputs = read_npz(&dir.join(format!("{name}.inputs.npz"))).unwrap();
        let expected = read_npz(&dir.join(format!("{name}.expected.npz"))).unwrap();
        let proto = model.graph();
        let inits: HashSet<&str> = proto.initializer.iter().map(|t| t.name.as_str()).collect();
        let mut opts = LowerOptions::default();
        let mut feeds = Vec::new();
        for input in proto
            .input
            .iter()
            .filter(|i| !inits.contains(i.name.as_str()))
        {
            let v = inputs
                .get(&input.name)
                .or_else(|| inputs.get(&sanitized_key(&input.name)))
                .unwrap_or_else(|| panic!("{name}: no input {}", input.name));
            opts.input_shapes
                .insert(input.name.clone(), v.shape().to_vec());
            feeds.push(v.clone());
        }
        let graph = lower_model(&model, &opts).unwrap();
        let got = run_on_host(&graph, &feeds);
        for (o, got) in proto.output.iter().zip(&got) {
            let want = expected
                .get(&o.name)
                .or_else(|| expected.get(&sanitized_key(&o.name)))
                .unwrap_or_else(|| panic!("{name}: no reference for {}", o.name));
            let c = m4c_ops::compare(got, want, 1e-3, 1e-4);
            assert!(c.passed(), "{name} {}: {}", o.name, c.summary());
        }
        println!("{name}: {} outputs match", got.len());
    }
}
