//! Concatenations without copies. When a concatenation's inputs lie end
//! to end in its result (every axis before the concatenated one has
//! extent 1, as a batch-1 channel concatenation in NCHW), a producer
//! whose result only the concatenation reads writes it straight into
//! its byte range (a [`Slice`]), and the concatenation copies only the
//! other inputs: SqueezeNet's fire modules ran 16 copy kernels, 2 % of
//! the model at 1 thread.

use m4c_ir::{Graph, Op, ValueDef};
use m4c_plan::memory::{aliases_input, Slice};

/// Slices start on cache lines, as the arena places whole buffers.
const SLICE_ALIGN: usize = 64;

/// The results of `graph` written as slices of their concatenation,
/// with `kernel_of` (per node, the node whose kernel computes it): each
/// read once, by the concatenation alone, and computed by its own
/// kernel (not a reshape's alias, not itself a concatenation, not a
/// graph output or input).
pub(crate) fn concat_slices(graph: &Graph, kernel_of: &[usize]) -> Vec<Slice> {
    let mut reads = vec![0usize; graph.values.len()];
    for input in graph.nodes.iter().flat_map(|n| &n.inputs) {
        reads[input.index()] += 1;
    }
    for output in &graph.outputs {
        reads[output.index()] += 1;
    }
    let mut slices = Vec::new();
    for (c, node) in graph.nodes.iter().enumerate() {
        let Op::Concat { axis } = node.op else {
            continue;
        };
        let Some(shape) = graph.value(node.output).ty.static_shape() else {
            continue;
        };
        if kernel_of[c] != c || shape.iter().take(axis).product::<usize>() != 1 {
            continue;
        }
        let mut offset = 0;
        for &input in &node.inputs {
            let value = graph.value(input);
            let (Some(shape), 0) = (value.ty.static_shape(), value.ty.dtype.size_bits() % 8) else {
                break;
            };
            let bytes = value.ty.dtype.storage_bytes(shape.iter().product());
            if let ValueDef::Node(p) = value.def {
                let op = &graph.nodes[p].op;
                if reads[input.index()] == 1
                    && kernel_of[p] == p
                    && !aliases_input(op)
                    && !matches!(op, Op::Concat { .. })
                    && bytes > 0
                    && offset % SLICE_ALIGN == 0
                {
                    slices.push(Slice {
                        value: input.index(),
                        of: node.output.index(),
                        offset,
                    });
                }
            }
            offset += bytes;
        }
    }
    slices
}
