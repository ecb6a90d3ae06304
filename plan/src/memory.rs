//! Which node results need an arena buffer, for how long, and the arena
//! they need. A [`Schedule`] says which node's kernel computes each node
//! (elementwise fusion groups; a backend may absorb more, e.g. a whole
//! attention) and which scratch buffers kernels need; results computed
//! inside another node's kernel never get a buffer, reshapes alias
//! their input ([`aliases_input`]), and a backend may compute results
//! straight into a byte range of a later result's buffer ([`Slice`]: a
//! concatenation's inputs). Lifetimes count in steps: the kernel
//! keyed by node `p` runs in two, [`kernel_step`]`(p, false)` = `2p`
//! before it writes its result (only scratch is touched that is dead by
//! then) and `2p + 1` from the write on (inputs are read, the result
//! written); graph outputs live to step `2 × nodes`.

use std::fmt;

use m4c_ir::{Graph, Op};

use crate::arena::{self, Lifetime};
use crate::fusion::fusion_roots;

/// An arena buffer a kernel needs besides the result it writes (e.g. a
/// convolution's zero-padded input), live only while the kernel keyed by
/// `node` runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Scratch {
    pub node: usize,
    pub bytes: usize,
    /// Whether it is still read once the kernel writes its result (e.g.
    /// the product a convolution's output is computed from); if not it
    /// may share bytes with the result.
    pub with_result: bool,
}

/// The step at which the kernel keyed by `node` runs: before it writes
/// its result, or from the write on.
pub fn kernel_step(node: usize, writes_result: bool) -> usize {
    2 * node + usize::from(writes_result)
}

/// A result its kernel writes straight into a byte range of a later
/// result's buffer: a concatenation's input, so that the concatenation
/// has nothing left to copy (SqueezeNet's fire modules copied 1.7 % of
/// the model's time).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Slice {
    /// The value (index) written in place.
    pub value: usize,
    /// The value (index) whose buffer holds it, itself no slice.
    pub of: usize,
    /// Where in that buffer, in bytes.
    pub offset: usize,
}

/// How a graph's nodes map onto kernels.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Schedule {
    /// Per node: the node whose kernel computes it, itself or a later node
    /// (whose kernel absorbs it: its result is never materialised).
    pub kernel_of: Vec<usize>,
    /// Arena scratch of the kernels, in the order the backend allocates it.
    pub scratch: Vec<Scratch>,
    /// Results written into a later result's buffer.
    pub slices: Vec<Slice>,
}

impl Schedule {
    /// The shared rules alone: each elementwise fusion group is one kernel
    /// (keyed by its root), every other node its own; no scratch.
    pub fn fused(g: &Graph) -> Schedule {
        Schedule {
            kernel_of: fusion_roots(g)
                .into_iter()
                .enumerate()
                .map(|(i, root)| root.unwrap_or(i))
                .collect(),
            scratch: Vec::new(),
            slices: Vec::new(),
        }
    }
}

/// What decides a graph's [`Schedule`]: the shared rules ([`SharedRules`])
/// or a code generator, which knows which kernels it will emit.
pub trait Scheduler: Send + Sync + fmt::Debug {
    /// Who plans, for reports (e.g. `cpu x86_64-avx512 kernels`).
    fn name(&self) -> String;
    /// The schedule of `g`, or why there is none (e.g. an op the backend
    /// does not compile).
    fn schedule(&self, g: &Graph) -> Result<Schedule, String>;
}

/// [`Schedule::fused`]: what every backend shares, without a backend's
/// own kernels and scratch.
#[derive(Clone, Copy, Debug, Default)]
pub struct SharedRules;

impl Scheduler for SharedRules {
    fn name(&self) -> String {
        "shared rules (elementwise fusion, reshapes alias)".into()
    }

    fn schedule(&self, g: &Graph) -> Result<Schedule, String> {
        Ok(Schedule::fused(g))
    }
}

/// Whether `op`'s result is its first input's bytes reinterpreted (no
/// buffer, no kernel): the CPU lowering aliases reshapes.
pub fn aliases_input(op: &Op) -> bool {
    matches!(op, Op::Reshape { .. })
}

/// What an arena buffer holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
pub enum Buffer {
    /// The result with this value index (and the reshapes of it).
    Value(usize),
    /// The schedule's scratch entry with this index.
    Scratch(usize),
}

/// Why a graph has no memory plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PlanError {
    /// A node result is not statically shaped.
    Symbolic { value: String, ty: String },
    /// The schedule does not fit the graph.
    Schedule(String),
}

impl fmt::Display for PlanError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PlanError::Symbolic { value, ty } => write!(
                f,
                "value `{value}` has the symbolic type {ty}; bind every dimension to plan memory"
            ),
            PlanError::Schedule(why) => write!(f, "bad schedule: {why}"),
        }
    }
}

impl std::error::Error for PlanError {}

/// The arena buffers of a graph under a schedule and their lifetimes
/// (same order: results in node order, then scratch).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Buffers {
    pub buffers: Vec<Buffer>,
    pub lifetimes: Vec<Lifetime>,
    /// Per value: the buffer holding it (`None`: input, constant, absorbed
    /// result, or a reshape of one of those).
    pub of_value: Vec<Option<usize>>,
}

/// The buffers `g` needs under `s`: one per result computed by its own
/// kernel (not a reshape, not a slice), live from that kernel's write
/// (or its first slice's) to the last kernel that reads it, a reshape
/// of it or one of its slices (graph outputs: to the end), and one per
/// scratch entry, live at its kernel (and during the write if
/// `with_result`). A slice's `of_value` is the buffer holding it (at the
/// slice's offset). Every buffer has at least one byte, so each has its
/// own address.
pub fn buffer_lifetimes(g: &Graph, s: &Schedule) -> Result<Buffers, PlanError> {
    let n = g.nodes.len();
    check(g, s)?;
    let mut buffers = Vec::new();
    let mut lifetimes: Vec<Lifetime> = Vec::new();
    let mut of_value: Vec<Option<usize>> = vec![None; g.values.len()];
    let mut holder: Vec<usize> = (0..g.values.len()).collect();
    for slice in &s.slices {
        holder[slice.value] = slice.of;
    }
    for (i, node) in g.nodes.iter().enumerate() {
        let at = kernel_step(s.kernel_of[i], true);
        for input in &node.inputs {
            if let Some(b) = of_value[input.index()] {
                lifetimes[b].last = lifetimes[b].last.max(at);
            }
        }
        let out = node.output;
        if aliases_input(&node.op) {
            of_value[out.index()] = node.inputs.first().and_then(|i| of_value[i.index()]);
        } else if s.kernel_of[i] == i {
            let whole = holder[out.index()];
            let b = match of_value[whole] {
                Some(b) => b,
                None => {
                    of_value[whole] = Some(buffers.len());
                    buffers.push(Buffer::Value(whole));
                    lifetimes.push(Lifetime {
                        bytes: value_bytes(g, whole)?.max(1),
                        first: at,
                        last: at,
                    });
                    buffers.len() - 1
                }
            };
            lifetimes[b].last = lifetimes[b].last.max(at);
            of_value[out.index()] = Some(b);
        }
    }
    for o in &g.outputs {
        if let Some(b) = of_value[o.index()] {
            lifetimes[b].last = 2 * n;
        }
    }
    for (k, scratch) in s.scratch.iter().enumerate() {
        buffers.push(Buffer::Scratch(k));
        lifetimes.push(Lifetime {
            bytes: scratch.bytes.max(1),
            first: kernel_step(scratch.node, false),
            last: kernel_step(scratch.node, scratch.with_result),
        });
    }
    Ok(Buffers {
        buffers,
        lifetimes,
        of_value,
    })
}

/// Bytes of value `index` (statically shaped).
fn value_bytes(g: &Graph, index: usize) -> Result<usize, PlanError> {
    let v = &g.values[index];
    let shape = v.ty.static_shape().ok_or_else(|| PlanError::Symbolic {
        value: v.name.clone(),
        ty: v.ty.to_string(),
    })?;
    Ok(v.ty.dtype.storage_bytes(shape.iter().product()))
}

/// Rejects a schedule that is not one of `g`: wrong length, a node
/// computed by an earlier node's kernel or by a node that is itself
/// absorbed, scratch at a node that runs no kernel, a slice of a slice,
/// a value sliced twice or past its holder's end.
fn check(g: &Graph, s: &Schedule) -> Result<(), PlanError> {
    let n = g.nodes.len();
    if s.kernel_of.len() != n {
        return Err(PlanError::Schedule(format!(
            "{} kernel entries for {n} nodes",
            s.kernel_of.len()
        )));
    }
    for (i, &k) in s.kernel_of.iter().enumerate() {
        if k < i || k >= n || s.kernel_of[k] != k {
            return Err(PlanError::Schedule(format!(
                "node {i} is computed by node {k}, which runs no kernel after it"
            )));
        }
    }
    if let Some(bad) = s
        .scratch
        .iter()
        .find(|x| x.node >= n || s.kernel_of[x.node] != x.node)
    {
        return Err(PlanError::Schedule(format!(
            "scratch at node {}, which runs no kernel",
            bad.node
        )));
    }
    let mut sliced = vec![false; g.values.len()];
    for slice in &s.slices {
        let values = g.values.len();
        if slice.value >= values || slice.of >= values || sliced[slice.value] {
            return Err(PlanError::Schedule(format!(
                "slice of value {} into value {} names no value or repeats one",
                slice.value, slice.of
            )));
        }
        sliced[slice.value] = true;
    }
    for slice in &s.slices {
        let end = slice.offset.checked_add(value_bytes(g, slice.value)?);
        let whole = value_bytes(g, slice.of)?;
        if sliced[slice.of] || end.is_none_or(|end| end > whole) {
            return Err(PlanError::Schedule(format!(
                "value {} does not fit inside value {} at byte {}",
                slice.value, slice.of, slice.offset
            )));
        }
    }
    Ok(())
}

/// One buffer of a [`MemoryPlan`].
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Placed {
    pub buffer: Buffer,
    pub offset: usize,
    pub lifetime: Lifetime,
}

/// Where each buffer lives and what the arena costs.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct MemoryPlan {
    /// Every buffer, in [`Buffers`] order.
    pub placements: Vec<Placed>,
    /// Size of the one arena the graph runs from.
    pub arena_bytes: usize,
    /// Largest sum of simultaneously live buffers (a lower bound).
    pub peak_live_bytes: usize,
    /// One buffer each, no reuse.
    pub naive_bytes: usize,
    /// Bytes of the scratch buffers (a backend's, not the graph's
    /// results), summed.
    pub scratch_bytes: usize,
}

impl MemoryPlan {
    /// The placement of `buffer`.
    pub fn get(&self, buffer: Buffer) -> Option<&Placed> {
        self.placements.iter().find(|p| p.buffer == buffer)
    }
}

/// Plans `g`'s arena under `s`: [`buffer_lifetimes`] placed by
/// [`arena::place`].
pub fn plan(g: &Graph, s: &Schedule) -> Result<MemoryPlan, PlanError> {
    let b = buffer_lifetimes(g, s)?;
    let placement = arena::place(&b.lifetimes);
    let placements = b
        .buffers
        .iter()
        .zip(&b.lifetimes)
        .zip(&placement.offsets)
        .map(|((&buffer, &lifetime), &offset)| Placed {
            buffer,
            offset,
            lifetime,
        })
        .collect();
    Ok(MemoryPlan {
        placements,
        arena_bytes: placement.arena_bytes,
        peak_live_bytes: arena::peak_live_bytes(&b.lifetimes),
        naive_bytes: arena::naive_bytes(&b.lifetimes),
        scratch_bytes: s.scratch.iter().map(|x| x.bytes.max(1)).sum(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use m4c_ir::{DType, Dim, TensorType, ValueId};

    fn f32s(n: usize) -> TensorType {
        TensorType::fixed(DType::F32, &[n])
    }

    /// x → exp → sqrt (one kernel) → softmax → reshape → log: the fused
    /// intermediate has no buffer, the reshape shares its input's.
    #[test]
    fn fused_intermediates_and_reshapes_have_no_buffer_of_their_own() {
        let mut g = Graph::new("g");
        let x = g.add_input("x", f32s(16));
        let a = g.add_node(Op::Exp, &[x], "a").unwrap();
        let b = g.add_node(Op::Sqrt, &[a], "b").unwrap();
        let c = g.add_node(Op::Softmax { axis: 0 }, &[b], "c").unwrap();
        let r = g
            .add_node(Op::Reshape { shape: vec![4, 4] }, &[c], "r")
            .unwrap();
        let d = g.add_node(Op::Exp, &[r], "d").unwrap();
        g.outputs = vec![d];
        let s = Schedule::fused(&g);
        assert_eq!(s.kernel_of, vec![1, 1, 2, 3, 4]);
        let bufs = buffer_lifetimes(&g, &s).unwrap();
        let idx = |v: ValueId| Buffer::Value(v.index());
        assert_eq!(bufs.buffers, vec![idx(b), idx(c), idx(d)]);
        let life = |first, last| Lifetime {
            bytes: 64,
            first,
            last,
        };
        // b: written by the kernel of node 1, read by softmax (node 2); c:
        // read through the reshape by d (node 4); d: an output, to the end.
        assert_eq!(bufs.lifetimes, vec![life(3, 5), life(5, 9), life(9, 10)]);
        assert_eq!(bufs.of_value[r.index()], bufs.of_value[c.index()]);
        let p = plan(&g, &s).unwrap();
        assert_eq!(
            (p.arena_bytes, p.naive_bytes, p.peak_live_bytes),
            (128, 192, 128)
        );
        assert_eq!(p.get(idx(b)).unwrap().offset, p.get(idx(d)).unwrap().offset);
    }

    /// A backend absorbing a node into a later kernel: the absorbed
    /// result has no buffer, its inputs live to the absorbing kernel, and
    /// scratch lives at its kernel only.
    #[test]
    fn absorbed_nodes_extend_their_inputs_to_the_absorbing_kernel() {
        let mut g = Graph::new("g");
        let x = g.add_input("x", f32s(32));
        let a = g.add_node(Op::Exp, &[x], "a").unwrap();
        let m = g.add_node(Op::Softmax { axis: 0 }, &[a], "m").unwrap();
        let o = g.add_node(Op::Softmax { axis: 0 }, &[m], "o").unwrap();
        g.outputs = vec![o];
        let s = Schedule {
            kernel_of: vec![0, 2, 2],
            scratch: vec![
                Scratch {
                    node: 2,
                    bytes: 1000,
                    with_result: false,
                },
                Scratch {
                    node: 2,
                    bytes: 8,
                    with_result: true,
                },
            ],
            slices: vec![],
        };
        let bufs = buffer_lifetimes(&g, &s).unwrap();
        assert_eq!(
            bufs.buffers,
            vec![
                Buffer::Value(a.index()),
                Buffer::Value(o.index()),
                Buffer::Scratch(0),
                Buffer::Scratch(1)
            ]
        );
        assert_eq!(bufs.lifetimes[0].last, kernel_step(2, true));
        assert_eq!(bufs.of_value[m.index()], None);
        let span = |l: Lifetime| (l.first, l.last);
        assert_eq!(span(bufs.lifetimes[1]), (5, 6));
        assert_eq!(span(bufs.lifetimes[2]), (4, 4));
        assert_eq!(span(bufs.lifetimes[3]), (4, 5));
        let p = plan(&g, &s).unwrap();
        assert_eq!(p.scratch_bytes, 1008);
        // The first scratch is dead when the result is written: they share.
        let at = |b| p.get(b).unwrap().offset;
        assert_eq!(at(Buffer::Scratch(0)), at(Buffer::Value(o.index())));
        assert_ne!(at(Buffer::Scratch(1)), at(Buffer::Value(o.index())));
    }

    /// Two results written into the halves of their concatenation's
    /// buffer: one buffer, live from the first write to the last read.
    #[test]
    fn slices_share_their_holders_buffer() {
        let mut g = Graph::new("g");
        let x = g.add_input("x", f32s(8));
        let a = g.add_node(Op::Softmax { axis: 0 }, &[x], "a").unwrap();
        let b = g.add_node(Op::Softmax { axis: 0 }, &[x], "b").unwrap();
        let c = g.add_node(Op::Concat { axis: 0 }, &[a, b], "c").unwrap();
        let d = g.add_node(Op::Exp, &[c], "d").unwrap();
        g.outputs = vec![d];
        let slice = |value: ValueId, offset| Slice {
            value: value.index(),
            of: c.index(),
            offset,
        };
        let s = Schedule {
            slices: vec![slice(a, 0), slice(b, 32)],
            ..Schedule::fused(&g)
        };
        let bufs = buffer_lifetimes(&g, &s).unwrap();
        let idx = |v: ValueId| Buffer::Value(v.index());
        assert_eq!(bufs.buffers, vec![idx(c), idx(d)]);
        for v in [a, b, c] {
            assert_eq!(bufs.of_value[v.index()], Some(0));
        }
        let span = |l: Lifetime| (l.bytes, l.first, l.last);
        assert_eq!(span(bufs.lifetimes[0]), (64, 1, 7));
        // Past the holder's end, a slice of a slice, a value sliced twice.
        for slices in [
            vec![slice(b, 40)],
            vec![
                slice(a, 0),
                Slice {
                    value: c.index(),
                    of: d.index(),
                    offset: 0,
                },
            ],
            vec![slice(a, 0), slice(a, 32)],
        ] {
            let s = Schedule {
                slices,
                ..Schedule::fused(&g)
            };
            assert!(matches!(plan(&g, &s), Err(PlanError::Schedule(_))));
        }
    }

    #[test]
    fn schedules_that_do_not_fit_are_errors() {
        let mut g = Graph::new("g");
        let x = g.add_input("x", f32s(4));
        let a = g.add_node(Op::Exp, &[x], "a").unwrap();
        let b = g.add_node(Op::Softmax { axis: 0 }, &[a], "b").unwrap();
        g.outputs = vec![b];
        for kernel_of in [vec![0], vec![1, 0], vec![0, 2]] {
            let s = Schedule {
                kernel_of,
                scratch: vec![],
                slices: vec![],
            };
            assert!(matches!(plan(&g, &s), Err(PlanError::Schedule(_))));
        }
        let s = Schedule {
            kernel_of: vec![1, 1],
            scratch: vec![Scratch {
                node: 0,
                bytes: 8,
                with_result: false,
            }],
            slices: vec![],
        };
        let err = plan(&g, &s).unwrap_err().to_string();
        assert_eq!(err, "bad schedule: scratch at node 0, which runs no kernel");
    }

    #[test]
    fn symbolic_shapes_have_no_plan() {
        let mut g = Graph::new("sym");
        let ty = TensorType {
            dtype: DType::F32,
            dims: vec![Dim::Sym("n".into())],
        };
        let x = g.add_input("x", ty);
        let y = g.add_node(Op::Softmax { axis: 0 }, &[x], "y").unwrap();
        g.outputs = vec![y];
        let err = plan(&g, &Schedule::fused(&g)).unwrap_err();
        assert!(
            matches!(err, PlanError::Symbolic { ref value, .. } if value == "y"),
            "{err}"
        );
    }
}
