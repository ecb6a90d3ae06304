//! Lowering of an IR graph to kernels and plan steps: buffers for every
//! value, constants in the weight blob, one kernel per fusion group or
//! non-elementwise node (or per attention chain). It records the
//! [`Schedule`] it follows, from which the shared planner (`m4c-plan`)
//! derives the arena.

use std::collections::HashMap;

use inkwell::context::Context;
use inkwell::module::Module;
use m4c_cpu_device::GemmManifest;
use m4c_ir::{DType, Graph, Node, Op, ValueDef, ValueId};
use m4c_plan::fusion::{fusion_roots, group_members};
use m4c_plan::memory::{aliases_input, Buffer, Schedule, Scratch, Slice};

use crate::gemm::{emit_gemm, gemm_manifest, GemmSpec};
use crate::kernels::Cx;
use crate::{CodegenError, Target};

/// A buffer of the plan.
#[derive(Clone, Copy, Debug)]
pub(crate) enum BufKind {
    /// The caller's `i`-th input.
    Input(usize),
    /// Bytes at this offset of the weight blob.
    Weights(usize),
    /// An arena buffer of at least `bytes` (placed by the shared planner).
    Arena { buffer: Buffer, bytes: usize },
}

/// A byte position inside a buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Loc {
    pub buf: usize,
    pub offset: usize,
}

/// A step before arena planning.
#[derive(Clone, Debug)]
pub(crate) enum PlanStep {
    Kernel {
        symbol: String,
        buffers: Vec<Loc>,
        extent: usize,
        scratch_bytes: usize,
        parallel: bool,
    },
    Gemm {
        symbol: String,
        a: Loc,
        c: Loc,
    },
}

impl PlanStep {
    /// The buffers the step touches.
    pub fn locs(&self) -> Vec<Loc> {
        match self {
            PlanStep::Kernel { buffers, .. } => buffers.clone(),
            PlanStep::Gemm { a, c, .. } => vec![*a, *c],
        }
    }
}

/// Weight blob entries start on cache lines.
const WEIGHT_ALIGN: usize = 64;

/// The state of lowering one graph into one LLVM module.
pub(crate) struct Lowering<'a, 'ctx> {
    pub cx: Cx<'a, 'ctx>,
    pub graph: &'a Graph,
    pub bufs: Vec<BufKind>,
    value_loc: Vec<Option<Loc>>,
    pub weights: Vec<u8>,
    pub gemms: Vec<GemmManifest>,
    pub steps: Vec<PlanStep>,
    /// Per step: the node whose kernel position it runs at.
    pub step_at: Vec<usize>,
    /// Per node: the node whose kernel computes it.
    kernel_of: Vec<usize>,
    /// Arena scratch allocated so far, at the node being lowered.
    scratch: Vec<Scratch>,
    /// The node being lowered.
    at: usize,
    next_symbol: usize,
    /// The function already generated for each GEMM shape `(m, k, n)`:
    /// GEMMs of one shape share their code (a transformer's layers repeat
    /// the same few shapes).
    gemm_functions: HashMap<(usize, usize, usize), String>,
    /// Kernels already generated, by a key naming everything their code
    /// depends on ([`Lowering::shared_kernel`]).
    shared_kernels: HashMap<String, String>,
    /// Results their kernels write straight into their concatenation
    /// ([`super::slices::concat_slices`]).
    slices: Vec<Slice>,
    /// Per value: the slice it is written as.
    slice_of: Vec<Option<Slice>>,
    /// Per value: whether slices are written into its buffer.
    holds_slices: Vec<bool>,
}

impl<'a, 'ctx> Lowering<'a, 'ctx> {
    /// Lowers every node of `graph` into `module`.
    pub fn run(
        context: &'ctx Context,
        module: &'a Module<'ctx>,
        target: &'a Target,
        graph: &'a Graph,
    ) -> Result<Self, CodegenError> {
        let mut lowering = Self {
            cx: Cx {
                context,
                module,
                target,
            },
            graph,
            bufs: Vec::new(),
            value_loc: vec![None; graph.values.len()],
            weights: Vec::new(),
            gemms: Vec::new(),
            steps: Vec::new(),
            step_at: Vec::new(),
            kernel_of: (0..graph.nodes.len()).collect(),
            scratch: Vec::new(),
            at: 0,
            next_symbol: 0,
            gemm_functions: HashMap::new(),
            shared_kernels: HashMap::new(),
            slices: Vec::new(),
            slice_of: vec![None; graph.values.len()],
            holds_slices: vec![false; graph.values.len()],
        };
        for (i, &input) in graph.inputs.iter().enumerate() {
            lowering.shape(input)?;
            lowering.bufs.push(BufKind::Input(i));
            lowering.value_loc[input.index()] = Some(Loc {
                buf: lowering.bufs.len() - 1,
                offset: 0,
            });
        }
        let mut quant = crate::quant::lower::find(graph);
        let fusion = fusion_roots(graph);
        let mut roots = crate::quant::lower::split_groups(graph, &fusion, &quant);
        let mut members = group_members(&roots);
        let mut chains = crate::kernels::attention::find_chains(&lowering, &roots, &members);
        // Attention chains whose products are int8 become quantised
        // kernels; the dequantisations they read through leave the groups.
        if quant.add_attention8(graph, &chains, &members) {
            roots = crate::quant::lower::split_groups(graph, &fusion, &quant);
            members = group_members(&roots);
            chains = crate::kernels::attention::find_chains(&lowering, &roots, &members);
            for chain in &mut chains {
                if chain.is_some_and(|c| quant.absorbed_by[c.softmax].is_some()) {
                    *chain = None;
                }
            }
        }
        let mut in_chain = vec![false; graph.nodes.len()];
        for (i, root) in roots.iter().enumerate() {
            lowering.kernel_of[i] = root.unwrap_or(i);
        }
        for (i, by) in quant.absorbed_by.iter().enumerate() {
            if let Some(kernel) = *by {
                lowering.kernel_of[i] = kernel;
                in_chain[i] = i != kernel;
            }
        }
        for chain in chains.iter().flatten() {
            let mut absorbed = vec![chain.scores, chain.softmax];
            for root in [chain.group, chain.after].into_iter().flatten() {
                absorbed.extend(&members[root]);
            }
            for node in absorbed {
                in_chain[node] = true;
                lowering.kernel_of[node] = chain.output;
            }
        }
        // Convolutions whose result only an elementwise group reads compute
        // that group in their epilogue, at the group root's position.
        let taken: Vec<bool> = (0..graph.nodes.len())
            .map(|i| in_chain[i] || quant.at[i].is_some())
            .collect();
        let epilogues =
            crate::kernels::conv_epilogue::find(&lowering, &roots, &members, &taken, &|node| {
                crate::kernels::conv::takes_epilogue(&lowering, node)
            });
        for (root, conv) in epilogues.iter().enumerate() {
            if let Some(conv) = *conv {
                in_chain[conv] = true;
                lowering.kernel_of[conv] = root;
            }
        }
        lowering.slices = super::slices::concat_slices(graph, &lowering.kernel_of);
        for slice in &lowering.slices {
            lowering.slice_of[slice.value] = Some(*slice);
            lowering.holds_slices[slice.of] = true;
        }
        for (i, node) in graph.nodes.iter().enumerate() {
            lowering.at = i;
            let fail = |e: CodegenError| match e {
                CodegenError::Unsupported(what) => CodegenError::Unsupported(format!(
                    "node `{}` ({}): {what}",
                    graph.value(node.output).name,
                    node.op.name()
                )),
                other => other,
            };
            if let Some(matched) = &quant.at[i] {
                crate::quant::lower::lower(&mut lowering, matched).map_err(fail)?;
                continue;
            }
            if let Some(chain) = chains[i] {
                crate::kernels::attention::lower(&mut lowering, chain, &members).map_err(fail)?;
                continue;
            }
            if in_chain[i] {
                continue;
            }
            if let Some(conv) = epilogues[i] {
                let conv = &graph.nodes[conv];
                let Op::Conv(attrs) = &conv.op else {
                    unreachable!("epilogues belong to convolutions")
                };
                crate::kernels::conv::lower(&mut lowering, conv, attrs, Some(&members[i]))
                    .map_err(fail)?;
                continue;
            }
            match roots[i] {
                Some(root) if root == i => lowering.fused(&members[i]).map_err(fail)?,
                Some(_) => {}
                None => lowering.node(node).map_err(fail)?,
            }
        }
        for &output in &graph.outputs {
            lowering.loc(output)?;
        }
        Ok(lowering)
    }

    /// The schedule lowering followed: which node's kernel computes each
    /// node (fusion groups, attention chains) and the arena scratch
    /// kernels asked for.
    pub fn schedule(&self) -> Schedule {
        let writes = self.steps_writing_result();
        let mut scratch = self.scratch.clone();
        for (b, kind) in self.bufs.iter().enumerate() {
            if let BufKind::Arena {
                buffer: Buffer::Scratch(k),
                ..
            } = *kind
            {
                scratch[k].with_result = self
                    .steps
                    .iter()
                    .zip(&writes)
                    .any(|(step, &w)| w && step.locs().iter().any(|l| l.buf == b));
            }
        }
        Schedule {
            kernel_of: self.kernel_of.clone(),
            scratch,
            slices: self.slices.clone(),
        }
    }

    /// Per step: whether it runs once its kernel has begun writing its
    /// result (the step touching the result buffer and every later step
    /// of the same kernel), the step [`m4c_plan::memory::kernel_step`]
    /// distinguishes.
    pub fn steps_writing_result(&self) -> Vec<bool> {
        let mut writing = vec![false; self.graph.nodes.len()];
        self.steps
            .iter()
            .zip(&self.step_at)
            .map(|(step, &at)| {
                let result = self.value_loc[self.graph.nodes[at].output.index()];
                if step
                    .locs()
                    .iter()
                    .any(|l| Some(l.buf) == result.map(|r| r.buf))
                {
                    writing[at] = true;
                }
                writing[at]
            })
            .collect()
    }

    /// The static shape of `value`.
    pub fn shape(&self, value: ValueId) -> Result<Vec<usize>, CodegenError> {
        let v = self.graph.value(value);
        v.ty.static_shape().ok_or_else(|| CodegenError::Graph {
            graph: self.graph.name.clone(),
            reason: format!(
                "value `{}` has the symbolic type {}; bind every dimension before compiling",
                v.name, v.ty
            ),
        })
    }

    /// The element type of `value`.
    pub fn dtype(&self, value: ValueId) -> DType {
        self.graph.value(value).ty.dtype
    }

    /// Bytes of `value`.
    pub fn bytes(&self, value: ValueId) -> Result<usize, CodegenError> {
        let n: usize = self.shape(value)?.iter().product();
        Ok(self.dtype(value).storage_bytes(n))
    }

    /// The constant tensor of `value`, if it is one.
    pub fn constant(&self, value: ValueId) -> Option<&'a m4c_ir::Tensor> {
        match &self.graph.value(value).def {
            ValueDef::Const(t) => Some(t),
            _ => None,
        }
    }

    /// Where `value` lives; constants are copied into the weight blob on
    /// first use.
    pub fn loc(&mut self, value: ValueId) -> Result<Loc, CodegenError> {
        if let Some(loc) = self.value_loc[value.index()] {
            return Ok(loc);
        }
        let tensor = self.constant(value).ok_or_else(|| CodegenError::Graph {
            graph: self.graph.name.clone(),
            reason: format!(
                "value `{}` is used before it is computed",
                self.graph.value(value).name
            ),
        })?;
        let bytes = tensor.bytes().map_err(|e| CodegenError::Graph {
            graph: self.graph.name.clone(),
            reason: format!("constant `{}`: {e}", self.graph.value(value).name),
        })?;
        let offset = self.add_weight_bytes(bytes);
        // The code's weights hold a copy now: the model's pages can go.
        tensor.release_pages();
        self.bufs.push(BufKind::Weights(offset));
        let loc = Loc {
            buf: self.bufs.len() - 1,
            offset: 0,
        };
        self.value_loc[value.index()] = Some(loc);
        Ok(loc)
    }

    /// Where an already placed `value` lives (inputs, computed values,
    /// constants already copied).
    pub fn loc_of(&self, value: ValueId) -> Result<Loc, CodegenError> {
        self.value_loc[value.index()].ok_or_else(|| CodegenError::Graph {
            graph: self.graph.name.clone(),
            reason: format!("value `{}` is never computed", self.graph.value(value).name),
        })
    }

    /// Appends `bytes` to the weight blob (cache-line aligned) and returns
    /// their offset.
    pub fn add_weight_bytes(&mut self, bytes: &[u8]) -> usize {
        let offset = self.weights.len().next_multiple_of(WEIGHT_ALIGN);
        self.weights.resize(offset, 0);
        self.weights.extend_from_slice(bytes);
        offset
    }

    /// A new weight-blob buffer holding `bytes` (cache-line aligned).
    pub fn weights_loc(&mut self, bytes: &[u8]) -> Loc {
        let offset = self.add_weight_bytes(bytes);
        self.bufs.push(BufKind::Weights(offset));
        Loc {
            buf: self.bufs.len() - 1,
            offset: 0,
        }
    }

    /// A fresh arena scratch buffer of `bytes` for the kernel of the node
    /// being lowered.
    pub fn temp(&mut self, bytes: usize) -> Loc {
        self.scratch.push(Scratch {
            node: self.at,
            bytes,
            with_result: true,
        });
        self.arena(Buffer::Scratch(self.scratch.len() - 1), bytes)
    }

    /// Allocates the arena buffer that holds `value`: its own, or, for a
    /// slice, its bytes of the buffer of the concatenation holding it
    /// (allocated by the first slice; the concatenation finds it).
    pub fn define(&mut self, value: ValueId) -> Result<Loc, CodegenError> {
        let loc = match self.slice_of[value.index()] {
            Some(slice) => {
                let whole = self.holder(ValueId(slice.of as u32))?;
                Loc {
                    buf: whole.buf,
                    offset: whole.offset + slice.offset,
                }
            }
            None => self.holder(value)?,
        };
        self.value_loc[value.index()] = Some(loc);
        Ok(loc)
    }

    /// The buffer of `value`: the one its slices have already allocated,
    /// else a new one.
    fn holder(&mut self, value: ValueId) -> Result<Loc, CodegenError> {
        let index = value.index();
        if let (true, Some(loc)) = (self.holds_slices[index], self.value_loc[index]) {
            return Ok(loc);
        }
        let loc = self.arena(Buffer::Value(index), self.bytes(value)?);
        self.value_loc[index] = Some(loc);
        Ok(loc)
    }

    fn arena(&mut self, buffer: Buffer, bytes: usize) -> Loc {
        self.bufs.push(BufKind::Arena { buffer, bytes });
        Loc {
            buf: self.bufs.len() - 1,
            offset: 0,
        }
    }

    /// Makes `value` share `loc` (reshapes).
    pub fn alias(&mut self, value: ValueId, loc: Loc) {
        self.value_loc[value.index()] = Some(loc);
    }

    /// A new unique kernel symbol.
    pub fn symbol(&mut self, what: &str) -> String {
        self.next_symbol += 1;
        format!("m4c_k{}_{what}", self.next_symbol)
    }

    /// The symbol of a kernel whose code is determined by `key` (all its
    /// constants in its buffers): the one generated for an earlier equal
    /// key, or a new `what` symbol that `emit` generates now. The layers of
    /// a quantised transformer repeat a few GEMM shapes with different
    /// weights and scales; sharing their code keeps compiles short.
    pub fn shared_kernel(
        &mut self,
        what: &str,
        key: String,
        emit: impl FnOnce(Cx<'a, 'ctx>, &str) -> Result<(), CodegenError>,
    ) -> Result<String, CodegenError> {
        if let Some(symbol) = self.shared_kernels.get(&key) {
            return Ok(symbol.clone());
        }
        let symbol = self.symbol(what);
        emit(self.cx, &symbol)?;
        self.shared_kernels.insert(key, symbol.clone());
        Ok(symbol)
    }

    /// Appends a kernel step.
    pub fn kernel(&mut self, symbol: String, buffers: Vec<Loc>, extent: usize, parallel: bool) {
        self.kernel_with_scratch(symbol, buffers, extent, 0, parallel);
    }

    /// Appends a kernel step that needs scratch space.
    pub fn kernel_with_scratch(
        &mut self,
        symbol: String,
        buffers: Vec<Loc>,
        extent: usize,
        scratch_bytes: usize,
        parallel: bool,
    ) {
        self.step_at.push(self.at);
        self.steps.push(PlanStep::Kernel {
            symbol,
            buffers,
            extent,
            scratch_bytes,
            parallel,
        });
    }

    /// Emits a GEMM with constant B (row-major `k × n`) and appends the
    /// step computing `C = A·B`.
    pub fn gemm(
        &mut self,
        (m, k, n): (usize, usize, usize),
        b: &[f32],
        a: Loc,
        c: Loc,
    ) -> Result<(), CodegenError> {
        let symbol = self.symbol("gemm");
        let spec = GemmSpec::new(&symbol, m, k, n);
        let mut manifest = match self.gemm_functions.get(&(m, k, n)) {
            Some(function) => {
                let mut shared = gemm_manifest(self.cx.target, &spec);
                shared.function = Some(function.clone());
                shared
            }
            None => {
                self.gemm_functions.insert((m, k, n), symbol.clone());
                emit_gemm(self.cx.context, self.cx.module, self.cx.target, &spec)?
            }
        };
        let packed = manifest.packed_b.pack(b)?;
        let bytes: Vec<u8> = packed
            .as_slice()
            .iter()
            .flat_map(|f| f.to_le_bytes())
            .collect();
        manifest.weights_offset = self.add_weight_bytes(&bytes) / 4;
        self.gemms.push(manifest);
        self.step_at.push(self.at);
        self.steps.push(PlanStep::Gemm { symbol, a, c });
        Ok(())
    }

    /// Lowers a fusion group.
    fn fused(&mut self, members: &[usize]) -> Result<(), CodegenError> {
        crate::kernels::elementwise::lower(self, members)
    }

    /// Lowers one non-elementwise node.
    fn node(&mut self, node: &Node) -> Result<(), CodegenError> {
        if aliases_input(&node.op) {
            let loc = self.loc(node.inputs[0])?;
            self.alias(node.output, loc);
            return Ok(());
        }
        match &node.op {
            Op::MatMul { trans_a, trans_b } => {
                crate::kernels::matmul::lower(self, node, *trans_a, *trans_b)
            }
            Op::Conv(attrs) => crate::kernels::conv::lower(self, node, attrs, None),
            Op::Softmax { axis } => crate::kernels::softmax_norm::lower_softmax(self, node, *axis),
            Op::Norm {
                kind,
                axis,
                epsilon,
            } => crate::kernels::softmax_norm::lower_norm(self, node, *kind, *axis, *epsilon),
            Op::ReduceSum { axes, keep_dims: _ } | Op::ReduceMax { axes, keep_dims: _ } => {
                crate::kernels::reduce::lower(self, node, axes)
            }
            Op::ArgMax {
                axis, select_last, ..
            } => crate::kernels::reduce::lower_argmax(self, node, *axis, *select_last),
            Op::MaxPool(pool) => crate::kernels::pool::lower(self, node, pool, None),
            Op::AvgPool {
                pool,
                count_include_pad,
            } => crate::kernels::pool::lower(self, node, pool, Some(*count_include_pad)),
            Op::Transpose { .. }
            | Op::Slice { .. }
            | Op::Expand { .. }
            | Op::Pad { .. }
            | Op::Concat { .. } => crate::kernels::movement::lower(self, node),
            Op::Gather { axis } => crate::kernels::gather::lower(self, node, *axis),
            Op::Resize {
                mode,
                coord,
                scales,
                ..
            } => crate::kernels::resize::lower(self, node, *mode, *coord, scales),
            other => Err(CodegenError::Unsupported(format!(
                "{} outside an elementwise group",
                other.name()
            ))),
        }
    }
}
