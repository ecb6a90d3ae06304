//! Graph artifacts for other targets: the aarch64 artifact is an object
//! and a plan without a library; the AVX2 one runs here and matches the
//! interpreter; bad inputs are errors, not crashes.

use m4c_cpu_codegen::{compile_graph, write_graph_artifact, CompileOptions, Target};
use m4c_ir::{DType, Graph, Op, Tensor, TensorType};
use m4c_ops::{run_graph, Value};

fn graph() -> Graph {
    let mut g = Graph::new("small");
    let x = g.add_input("x", TensorType::fixed(DType::F32, &[3, 5]));
    let w = g.add_const("w", Tensor::from_f32(&[5, 4], &[0.25; 20]));
    let y = g
        .add_node(
            Op::MatMul {
                trans_a: false,
                trans_b: false,
            },
            &[x, w],
            "y",
        )
        .unwrap();
    let z = g.add_node(Op::Tanh, &[y], "z").unwrap();
    let s = g.add_node(Op::Softmax { axis: 1 }, &[z], "s").unwrap();
    g.outputs.push(s);
    g
}

fn input() -> Tensor {
    Tensor::from_f32(
        &[3, 5],
        &(0..15).map(|i| i as f32 * 0.1 - 0.7).collect::<Vec<_>>(),
    )
}

#[test]
fn aarch64_graph_artifact_is_an_object_and_a_plan() {
    let dir = tempfile::tempdir().unwrap();
    let target = Target::parse(Some("aarch64"), None).unwrap();
    let manifest = write_graph_artifact(&graph(), &target, dir.path()).unwrap();
    assert!(manifest.library.is_none());
    let plan = manifest.graph.unwrap();
    assert_eq!(plan.inputs[0].shape, vec![3, 5]);
    assert_eq!(plan.steps.len(), 3);
    let object = std::fs::read(dir.path().join(&manifest.object)).unwrap();
    assert_eq!(&object[..4], b"\x7fELF");
    assert_eq!(
        u16::from_le_bytes([object[18], object[19]]),
        183,
        "EM_AARCH64"
    );
}

#[test]
fn avx2_graph_matches_the_interpreter() {
    let options = CompileOptions {
        target: Target::parse(Some("x86_64-avx2"), None).unwrap(),
        threads: 1,
    };
    let g = graph();
    let mut compiled = compile_graph(&g, &options).unwrap();
    let got = Value::from_tensor(&compiled.run(&[input()]).unwrap()[0]).unwrap();
    let want = run_graph(&g, &[Value::from_tensor(&input()).unwrap()])
        .unwrap()
        .remove(0);
    let (abs, _) = m4c_ops::max_abs_rel_error(&got, &want).unwrap();
    assert!(abs < 1e-6, "{abs}");
}

#[test]
fn wrong_inputs_and_symbolic_shapes_are_errors() {
    let options = CompileOptions {
        target: Target::parse(None, None).unwrap(),
        threads: 1,
    };
    let mut compiled = compile_graph(&graph(), &options).unwrap();
    let err = compiled
        .run(&[Tensor::from_f32(&[5, 3], &[0.0; 15])])
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "input `x` is f32[5, 3], the graph was compiled for f32[3, 5]"
    );
    assert!(compiled.run(&[]).is_err());
    let mut g = Graph::new("symbolic");
    let ty = TensorType {
        dtype: DType::F32,
        dims: vec![m4c_ir::Dim::Sym("n".into())],
    };
    let x = g.add_input("x", ty);
    let y = g.add_node(Op::Exp, &[x], "y").unwrap();
    g.outputs.push(y);
    let err = compile_graph(&g, &options).err().unwrap().to_string();
    assert!(
        err.contains("symbolic type") && err.contains("`x`"),
        "{err}"
    );
}

/// Three identical "layers" (MatMul with its own weights, Tanh, Softmax):
/// the GEMMs share one function, the Tanh and Softmax kernels one each, and
/// the result still matches the interpreter (each layer used its own
/// weights).
#[test]
fn repeated_layers_share_their_kernels() {
    let mut g = Graph::new("layers");
    let mut x = g.add_input("x", TensorType::fixed(DType::F32, &[3, 5]));
    for layer in 0..3 {
        let weights: Vec<f32> = (0..25)
            .map(|i| ((i * 7 + layer * 3) % 11) as f32 * 0.1 - 0.5)
            .collect();
        let w = g.add_const(format!("w{layer}"), Tensor::from_f32(&[5, 5], &weights));
        let mm = Op::MatMul {
            trans_a: false,
            trans_b: false,
        };
        let y = g.add_node(mm, &[x, w], format!("y{layer}")).unwrap();
        let z = g.add_node(Op::Tanh, &[y], format!("z{layer}")).unwrap();
        x = g
            .add_node(Op::Softmax { axis: 1 }, &[z], format!("s{layer}"))
            .unwrap();
    }
    g.outputs.push(x);

    let dir = tempfile::tempdir().unwrap();
    let manifest =
        write_graph_artifact(&g, &Target::parse(None, None).unwrap(), dir.path()).unwrap();
    let functions: std::collections::BTreeSet<&str> =
        manifest.gemms.iter().map(|m| m.function()).collect();
    assert_eq!((manifest.gemms.len(), functions.len()), (3, 1));
    let kernels: std::collections::BTreeSet<String> = manifest
        .graph
        .unwrap()
        .steps
        .iter()
        .filter_map(|s| match s {
            m4c_cpu_device::Step::Kernel { symbol, .. } => Some(symbol.clone()),
            m4c_cpu_device::Step::Gemm { .. } => None,
        })
        .collect();
    assert_eq!(kernels.len(), 2, "{kernels:?}");

    let options = CompileOptions {
        target: Target::parse(None, None).unwrap(),
        threads: 1,
    };
    let mut compiled = compile_graph(&g, &options).unwrap();
    let got = Value::from_tensor(&compiled.run(&[input()]).unwrap()[0]).unwrap();
    let want = run_graph(&g, &[Value::from_tensor(&input()).unwrap()])
        .unwrap()
        .remove(0);
    let (abs, _) = m4c_ops::max_abs_rel_error(&got, &want).unwrap();
    assert!(abs < 1e-6, "{abs}");
}

/// Two identical attention layers (MatMul → scale → Softmax → MatMul) share
/// one attention kernel, and the result matches the interpreter.
#[test]
fn repeated_attention_layers_share_one_kernel() {
    let mut g = Graph::new("attention_layers");
    let mut x = g.add_input("x", TensorType::fixed(DType::F32, &[2, 5, 4]));
    let scale = g.add_const("scale", Tensor::from_f32(&[], &[0.5]));
    for layer in 0..2 {
        let mm = |trans_b| Op::MatMul {
            trans_a: false,
            trans_b,
        };
        let s = g.add_node(mm(true), &[x, x], format!("s{layer}")).unwrap();
        let s = g
            .add_node(Op::Mul, &[s, scale], format!("t{layer}"))
            .unwrap();
        let p = g
            .add_node(Op::Softmax { axis: 2 }, &[s], format!("p{layer}"))
            .unwrap();
        x = g.add_node(mm(false), &[p, x], format!("o{layer}")).unwrap();
    }
    g.outputs.push(x);

    let dir = tempfile::tempdir().unwrap();
    let manifest =
        write_graph_artifact(&g, &Target::parse(None, None).unwrap(), dir.path()).unwrap();
    let steps = manifest.graph.unwrap().steps;
    let symbols: std::collections::BTreeSet<String> = steps
        .iter()
        .map(|s| match s {
            m4c_cpu_device::Step::Kernel { symbol, .. }
            | m4c_cpu_device::Step::Gemm { symbol, .. } => symbol.clone(),
        })
        .collect();
    assert_eq!((steps.len(), symbols.len()), (2, 1), "{symbols:?}");

    let options = CompileOptions {
        target: Target::parse(None, None).unwrap(),
        threads: 1,
    };
    let input = Tensor::from_f32(
        &[2, 5, 4],
        &(0..40)
            .map(|i| (i % 7) as f32 * 0.2 - 0.6)
            .collect::<Vec<_>>(),
    );
    let mut compiled = compile_graph(&g, &options).unwrap();
    let got = Value::from_tensor(&compiled.run(std::slice::from_ref(&input)).unwrap()[0]).unwrap();
    let want = run_graph(&g, &[Value::from_tensor(&input).unwrap()])
        .unwrap()
        .remove(0);
    let (abs, _) = m4c_ops::max_abs_rel_error(&got, &want).unwrap();
    assert!(abs < 1e-5, "{abs}");
}
