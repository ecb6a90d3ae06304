//! The execution plan of a compiled graph: where every tensor lives and the
//! sequence of kernel calls that computes the outputs from the inputs.

use serde::{Deserialize, Serialize};

/// The memory a tensor lives in at run time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Region {
    /// The activation arena, planned at compile time.
    Arena,
    /// The artifact's weight file (constants and packed GEMM operands).
    Weights,
    /// The caller's `i`-th input.
    Input(usize),
}

/// A byte address inside a [`Region`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BufRef {
    /// Which memory.
    pub region: Region,
    /// Byte offset from the region's start.
    pub offset: usize,
}

/// A graph input or output: its name, element type, shape and location.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TensorSpec {
    /// The graph value's name.
    pub name: String,
    /// Element type as the IR names it (`f32`, `i64`, `bool`, …).
    pub dtype: String,
    /// Bytes per element.
    pub elem_bytes: usize,
    /// Static shape.
    pub shape: Vec<usize>,
    /// Where the tensor is read from (outputs) or expected (inputs).
    pub buf: BufRef,
}

impl TensorSpec {
    /// Size in bytes.
    pub fn bytes(&self) -> usize {
        self.shape.iter().product::<usize>() * self.elem_bytes
    }
}

/// One call of the plan.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Step {
    /// A generated kernel with the uniform signature
    /// `void f(void *const *buffers, int64_t begin, int64_t end, void *scratch)`
    /// computing iterations `begin..end` of its outermost loop.
    Kernel {
        /// The exported symbol.
        symbol: String,
        /// The buffers it reads and writes, in the kernel's parameter order.
        buffers: Vec<BufRef>,
        /// Iterations of the outermost loop.
        extent: usize,
        /// Scratch bytes one call needs (each thread gets its own).
        scratch_bytes: usize,
        /// Whether disjoint iteration ranges may run on different threads.
        parallel: bool,
    },
    /// A GEMM of the artifact's [`crate::GemmManifest`]s, its B packed in the
    /// weight file; its column panels are split over the threads.
    Gemm {
        /// The GEMM's symbol.
        symbol: String,
        /// A (row-major `m × k` f32).
        a: BufRef,
        /// C (row-major `m × n` f32).
        c: BufRef,
    },
}

/// Everything the executor needs to run a compiled graph.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GraphPlan {
    /// Bytes of the activation arena (the liveness-planned peak).
    pub arena_bytes: usize,
    /// Bytes the activations would take without reuse (the sum of all).
    pub naive_arena_bytes: usize,
    /// The graph inputs, in order.
    pub inputs: Vec<TensorSpec>,
    /// The graph outputs, in order.
    pub outputs: Vec<TensorSpec>,
    /// The calls, in execution order.
    pub steps: Vec<Step>,
}
