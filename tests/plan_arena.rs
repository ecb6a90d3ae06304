//! The arena `m4c opt` reports is the arena the CPU executor allocates:
//! each fixture is optimised with the CPU backend's scheduler for this host
//! (what `m4c opt --target cpu` does), and the optimised graph is compiled
//! by the CPU backend; the report's arena must equal the compiled plan's
//! (which the executor allocates) and `CompileStats::arena_bytes`.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;

use m4c_compiler::opt::{optimise, LoraPolicy, OptOptions, Roofline};
use m4c_compiler::{lower, LowerOptions, OnnxModel};
use m4c_cpu_codegen::{compile_graph, CompileOptions, CpuScheduler, Target};
use m4c_ir::Graph;
use m4c_runtime::{read_npz, sanitized_key};

/// The fixture lowered with the shapes of its committed inputs.
fn lowered(name: &str) -> Graph {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let model = OnnxModel::load(&dir.join(format!("{name}.onnx"))).unwrap();
    let inputs = read_npz(&dir.join(format!("{name}.inputs.npz"))).unwrap();
    let proto = model.graph();
    let inits: HashSet<&str> = proto.initializer.iter().map(|t| t.name.as_str()).collect();
    let mut opts = LowerOptions::default();
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
    }
    lower(&model, &opts).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// (reported arena, scratch among it, compiled plan's arena, stats'
/// arena) of one fixture.
fn arenas(name: &str, target: &Target) -> (usize, usize, usize, usize) {
    let graph = lowered(name);
    let opts = OptOptions {
        lora: LoraPolicy::Fold,
        scheduler: Some(Arc::new(CpuScheduler {
            target: target.clone(),
        })),
        ..Default::default()
    };
    let (optimised, report) = optimise(&graph, &opts, &Roofline::cpu()).unwrap();
    assert_eq!(
        report.memory_planned_by,
        format!("cpu {} kernels", target.name())
    );
    let memory = report
        .memory
        .as_ref()
        .unwrap_or_else(|| panic!("{name}: no memory plan: {:?}", report.memory_error));
    assert!(
        report
            .to_string()
            .contains(&format!("arena {} B", memory.arena_bytes)),
        "{name}: {report}"
    );
    let compiled = compile_graph(
        &optimised,
        &CompileOptions {
            target: target.clone(),
            threads: 1,
        },
    )
    .unwrap_or_else(|e| panic!("{name}: {e}"));
    (
        memory.arena_bytes,
        memory.scratch_bytes,
        compiled.plan().arena_bytes,
        compiled.stats().arena_bytes,
    )
}

#[test]
fn the_reported_arena_is_the_compiled_arena() {
    let target = Target::parse(None, None).unwrap();
    let mut scratch_seen = 0;
    for name in [
        "distilbert",
        "clip_text",
        "llama_prefill",
        "whisper_encoder",
        "resnet_small",
        "deeplab_head",
        "mobilenet_v3_small",
        "batchnorm_net",
        "clip_vision",
    ] {
        let (reported, scratch, planned, stats) = arenas(name, &target);
        eprintln!("{name}: reported {reported} B (scratch {scratch} B), compiled {planned} B");
        assert_eq!(reported, planned, "{name}: report vs executor plan");
        assert_eq!(reported, stats, "{name}: report vs CompileStats");
        assert!(reported > 0, "{name}");
        scratch_seen += scratch;
    }
    // The conv fixtures' GEMM convolutions need scratch (packed panels): the
    // backend's own buffers are part of what the report plans.
    assert!(scratch_seen > 0, "no fixture exercised backend scratch");
}
