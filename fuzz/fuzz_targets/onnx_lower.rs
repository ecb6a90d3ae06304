//! Arbitrary bytes as an ONNX model: loading, lowering (with constant
//! folding under the memory budget) and, for graphs small enough to run in
//! a fuzzing iteration, the reference interpreter on zero inputs. Every
//! step returns an error or a value, never panics or aborts.
#![no_main]

#[path = "scratch.rs"]
mod scratch;

use libfuzzer_sys::fuzz_target;
use m4c_compiler::{lower_report, LowerOptions, OnnxModel};
use m4c_ir::Tensor;
use m4c_ops::Value;

/// Graphs with more input elements than this are not interpreted.
const MAX_INPUT_ELEMENTS: usize = 1 << 16;

/// Nor graphs whose nodes cost more arithmetic than this (`Op::cost`:
/// operations plus multiply-accumulates): a 200-byte ConvTranspose of
/// 6.6·10^8 multiply-accumulates, legitimate work that takes the release
/// interpreter 1.3 s, outlasted the 10 s timeout under AddressSanitizer.
const MAX_WORK: u64 = 50_000_000;

/// The arithmetic `graph` asks of the interpreter, by the operators' cost
/// formulas.
fn work(graph: &m4c_ir::Graph) -> u64 {
    graph
        .nodes
        .iter()
        .map(|n| {
            let inputs: Vec<&m4c_ir::TensorType> =
                n.inputs.iter().map(|&v| &graph.value(v).ty).collect();
            let cost = n.op.cost(&inputs, &graph.value(n.output).ty);
            cost.flops.saturating_add(cost.macs)
        })
        .fold(0u64, u64::saturating_add)
}

fuzz_target!(|data: &[u8]| {
    let path = scratch::file("model.onnx", data);
    let Ok(model) = OnnxModel::load(&path) else {
        return;
    };
    let opts = LowerOptions {
        default_dim: Some(2),
        ..Default::default()
    };
    let Ok(report) = lower_report(&model, &opts) else {
        return;
    };
    let Some(graph) = report.graph else {
        return;
    };
    if work(&graph) > MAX_WORK {
        return;
    }
    let mut inputs = vec![];
    let mut elements = 0usize;
    for &id in &graph.inputs {
        let ty = &graph.value(id).ty;
        let Some(shape) = ty.static_shape() else {
            return;
        };
        let n: usize = shape.iter().product();
        elements = elements.saturating_add(n);
        if elements > MAX_INPUT_ELEMENTS {
            return;
        }
        let bytes = vec![0; ty.dtype.storage_bytes(n)];
        let Ok(v) = Value::from_tensor(&Tensor::from_bytes(ty.dtype, &shape, bytes)) else {
            return;
        };
        inputs.push(v);
    }
    let _ = m4c_ops::run_graph(&graph, &inputs);
});
