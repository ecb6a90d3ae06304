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
