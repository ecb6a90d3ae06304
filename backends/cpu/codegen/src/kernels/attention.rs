//! Attention `softmax(A₁·B₁)·B₂` (a MatMul with run-time operands, a
//! Softmax over its last axis, a second MatMul reading the probabilities
//! as its left operand) as one kernel: per batch (head) both right operands
//! are packed once, then blocks of rows go through the first GEMM into a
//! block of scores in scratch, the softmax and the second GEMM while the
//! block is still in L2. The scores matrix (1500 × 1500 per head for
//! Whisper's encoder) never goes to memory.

use inkwell::values::{BasicMetadataValueEnum, FunctionValue, IntValue};
use m4c_cpu_device::PackedPanels;
use m4c_ir::{Graph, Node, Op, ValueId};

use super::matmul::{batched_spec, BatchedMatmul};
use super::softmax_norm::emit_softmax;
use super::{Cx, Kernel};
use crate::gemm::{emit_gemm, GemmPlan, GemmSpec};
use crate::graph::Lowering;
use crate::CodegenError;

/// L2 bytes a block of scores may take (a quarter of the 1 MiB the GEMM
/// plan assumes, leaving room for the packed right operands).
const SCORES_BYTES: usize = 256 * 1024;

/// The two GEMM functions of a row block and their packed-B layouts.
type Gemms<'ctx> = (
    FunctionValue<'ctx>,
    FunctionValue<'ctx>,
    (PackedPanels, PackedPanels),
);

/// The three nodes of a fusable attention, by node index.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Chain {
    pub scores: usize,
    pub softmax: usize,
    pub output: usize,
}

/// Finds every fusable chain: MatMul → Softmax (last axis) → MatMul whose
/// intermediate results have that one consumer and are not graph outputs,
/// both products on run-time operands with A read in place, the same batch
/// shape, and f32 throughout. Keyed by the last node of the chain.
pub(crate) fn find_chains(l: &Lowering<'_, '_>) -> Vec<Option<Chain>> {
    let g = l.graph;
    let mut consumers: Vec<Vec<usize>> = vec![Vec::new(); g.values.len()];
    let mut producer: Vec<Option<usize>> = vec![None; g.values.len()];
    for (i, node) in g.nodes.iter().enumerate() {
        producer[node.output.index()] = Some(i);
        for &input in &node.inputs {
            consumers[input.index()].push(i);
        }
    }
    let only_user = |value: ValueId| match consumers[value.index()].as_slice() {
        [user] if !g.outputs.contains(&value) => Some(*user),
        _ => None,
    };
    let mut chains = vec![None; g.nodes.len()];
    for (softmax, node) in g.nodes.iter().enumerate() {
        let Op::Softmax { axis } = node.op else {
            continue;
        };
        let chain = (|| {
            let scores = producer[node.inputs[0].index()]?;
            let output = only_user(node.output)?;
            if only_user(node.inputs[0])? != softmax || g.nodes[output].inputs[0] != node.output {
                return None;
            }
            let first = spec(l, &g.nodes[scores], false)?;
            let second = spec(l, &g.nodes[output], true)?;
            let rank = l.shape(node.output).ok()?.len();
            let fits = axis + 1 == rank
                && first.gemm_path()
                && second.gemm_path()
                && first.batch_shape == second.batch_shape
                && second.k == first.n
                && first.m == second.m
                && l.constant(g.nodes[scores].inputs[1]).is_none();
            fits.then_some(Chain {
                scores,
                softmax,
                output,
            })
        })();
        if let Some(chain) = chain {
            chains[chain.output] = Some(chain);
        }
    }
    chains
}

/// The batched form of a MatMul node, if it is one with plain A.
fn spec(l: &Lowering<'_, '_>, node: &Node, second: bool) -> Option<BatchedMatmul> {
    let Op::MatMul { trans_a, trans_b } = node.op else {
        return None;
    };
    if trans_a || (second && graph_rank(l.graph, node) < 2) {
        return None;
    }
    let spec = batched_spec(l, node, trans_a, trans_b).ok()?;
    (spec.m * spec.k * spec.n * spec.batches > 0).then_some(spec)
}

fn graph_rank(g: &Graph, node: &Node) -> usize {
    g.value(node.output).ty.dims.len()
}

/// Lowers a chain into one kernel (buffers: output, A₁, B₁, B₂), parallel
/// over batches.
pub(crate) fn lower(l: &mut Lowering<'_, '_>, chain: Chain) -> Result<(), CodegenError> {
    let g = l.graph;
    let (first_node, second_node) = (&g.nodes[chain.scores], &g.nodes[chain.output]);
    let first = spec(l, first_node, false).expect("checked by find_chains");
    let second = spec(l, second_node, true).expect("checked by find_chains");
    let out = l.define(second_node.output)?;
    let symbol = l.symbol("attention");
    let scratch = emit(l.cx, &symbol, &first, &second)?;
    let buffers = vec![
        out,
        l.loc(first_node.inputs[0])?,
        l.loc(first_node.inputs[1])?,
        l.loc(second_node.inputs[1])?,
    ];
    l.kernel_with_scratch(symbol, buffers, first.batches, scratch, true);
    Ok(())
}

/// Emits the kernel and returns its scratch bytes.
fn emit<'ctx>(
    cx: Cx<'_, 'ctx>,
    symbol: &str,
    first: &BatchedMatmul,
    second: &BatchedMatmul,
) -> Result<usize, CodegenError> {
    let plan = GemmPlan::for_target(cx.target);
    let (m, n1, n2) = (first.m, first.n, second.n);
    let rows = (SCORES_BYTES / (n1 * 4) / plan.tile_rows * plan.tile_rows)
        .max(plan.tile_rows)
        .min(m);
    let gemms = |block: usize| -> Result<Gemms<'ctx>, CodegenError> {
        let one = GemmSpec::new(&format!("{symbol}_scores{block}"), block, first.k, n1);
        let two = GemmSpec::new(&format!("{symbol}_output{block}"), block, n1, n2);
        let layouts = (
            emit_gemm(cx.context, cx.module, cx.target, &one)?.packed_b,
            emit_gemm(cx.context, cx.module, cx.target, &two)?.packed_b,
        );
        let function = |name: &str| cx.module.get_function(name).expect("emitted above");
        Ok((function(&one.symbol), function(&two.symbol), layouts))
    };
    let full = gemms(rows)?;
    let last = match m % rows {
        0 => None,
        remainder => Some(gemms(remainder)?),
    };
    let (layout1, layout2) = full.2;
    let softmax_symbol = format!("{symbol}_softmax");
    emit_softmax(cx, &softmax_symbol, (rows, n1, 1))?;
    let softmax = cx
        .module
        .get_function(&softmax_symbol)
        .expect("emitted above");

    let k = Kernel::define(cx, symbol, 4)?;
    let f32t = cx.context.f32_type();
    let ptr = cx.context.ptr_type(Default::default());
    let packed2_at = layout1.len();
    let scores_at = packed2_at + layout2.len();
    let packed1 = k.scratch;
    let packed2 = k.element(k.scratch, f32t.into(), k.int(packed2_at as i64))?;
    let scores = k.element(k.scratch, f32t.into(), k.int(scores_at as i64))?;
    let table = k.slot(ptr.array_type(2).into())?;
    for slot in 0..2 {
        // SAFETY: builds a GEP into the two-entry table allocated above.
        let at = unsafe {
            k.em.builder
                .build_in_bounds_gep(ptr, table, &[k.int(slot)], "entry")?
        };
        k.em.builder.build_store(at, scores)?;
    }
    k.em.counted_loop(k.begin, k.end, |batch| {
        let (a_base, b1_base) = first.batch_bases(&k, batch)?;
        let (_, b2_base) = second.batch_bases(&k, batch)?;
        first.pack_b(&k, k.buffers[2], b1_base, layout1, packed1)?;
        second.pack_b(&k, k.buffers[3], b2_base, layout2, packed2)?;
        let c_base =
            k.em.builder
                .build_int_mul(batch, k.int((m * n2) as i64), "c")?;
        let block = |row0: IntValue<'ctx>, count: usize, (g1, g2, _): Gemms<'ctx>| {
            let a_at = k.em.mul_add(row0, k.int(first.k as i64), a_base)?;
            let a = k.element(k.buffers[1], f32t.into(), a_at)?;
            let call = |f, args: &[BasicMetadataValueEnum<'ctx>]| {
                k.em.builder.build_call(f, args, "").map(|_| ())
            };
            call(
                g1,
                &[
                    a.into(),
                    packed1.into(),
                    scores.into(),
                    k.int(0).into(),
                    k.int(layout1.panels() as i64).into(),
                    k.scratch.into(),
                ],
            )?;
            call(
                softmax,
                &[
                    table.into(),
                    k.int(0).into(),
                    k.int(count as i64).into(),
                    k.scratch.into(),
                ],
            )?;
            let c_at = k.em.mul_add(row0, k.int(n2 as i64), c_base)?;
            let c = k.element(k.buffers[0], f32t.into(), c_at)?;
            call(
                g2,
                &[
                    scores.into(),
                    packed2.into(),
                    c.into(),
                    k.int(0).into(),
                    k.int(layout2.panels() as i64).into(),
                    k.scratch.into(),
                ],
            )?;
            Ok::<_, CodegenError>(())
        };
        k.em.counted_loop(k.int(0), k.int((m / rows) as i64), |b| {
            let row0 = k.em.builder.build_int_mul(b, k.int(rows as i64), "row0")?;
            block(row0, rows, full)
        })?;
        if let Some(last) = last {
            block(k.int((m - m % rows) as i64), m % rows, last)?;
        }
        Ok(())
    })?;
    k.finish()?;
    Ok((layout1.len() + layout2.len() + rows * n1) * 4)
}
