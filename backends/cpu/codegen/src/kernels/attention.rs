//! Attention `softmax(f(A₁·B₁))·B₂` (a MatMul with run-time operands, an
//! optional elementwise group `f` such as a scale and a mask add, a Softmax
//! over the last axis, a second MatMul reading the probabilities as its
//! left operand) as one kernel: per batch (head) both right operands are
//! packed once, then blocks of rows go through the first GEMM into a block
//! of scores in scratch, `f`, the softmax and the second GEMM while the
//! block is still in L2. The scores matrix (1500 × 1500 per head for
//! Whisper's encoder) never goes to memory.

use std::hash::{Hash, Hasher};

use inkwell::types::BasicTypeEnum;
use inkwell::values::{BasicMetadataValueEnum, FunctionValue, IntValue};
use m4c_cpu_device::PackedPanels;
use m4c_ir::{DType, Graph, Node, Op, ValueId};

use super::elementwise::{describe, ExprNode, Fused, Operand};
use super::matmul::{batched_spec, BatchedMatmul};
use super::softmax_norm::emit_softmax;
use super::{contiguous_strides, Cx, Elem, Kernel};
use crate::gemm::{emit_gemm, gemm_manifest, GemmPlan, GemmSpec};
use crate::graph::Lowering;
use crate::quant::attention8::{
    emit_pack_b, emit_quantize_rows, emit_row_sums, emit_tables, Int8Attention, PerTensor, Product,
};
use crate::CodegenError;

/// The nodes of a fusable attention, by node index.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Chain {
    pub scores: usize,
    /// The root of the elementwise group between the scores and the
    /// softmax, if there is one.
    pub group: Option<usize>,
    pub softmax: usize,
    /// The root of the elementwise group between the softmax and the
    /// output product (e.g. an exporter's NaN guard `Where(x ≠ x, 0, x)`),
    /// if there is one; it reads only the probabilities and scalars.
    pub after: Option<usize>,
    pub output: usize,
}

/// Finds every fusable chain: MatMul → (elementwise group) → Softmax (last
/// axis) → MatMul whose intermediate results are read only inside the chain
/// and are not graph outputs, both products on run-time operands with A
/// read in place, the same batch shape, f32 scores and softmax input, and
/// the group's other operands f32 or one-element constants. `groups` are the fusion planner's roots and
/// members. Keyed by the last node of the chain.
pub(crate) fn find_chains(
    l: &Lowering<'_, '_>,
    roots: &[Option<usize>],
    members: &[Vec<usize>],
) -> Vec<Option<Chain>> {
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
            let before = producer[node.inputs[0].index()]?;
            let probabilities = node.output;
            let users = &consumers[probabilities.index()];
            let after = match roots[*users.first()?] {
                Some(root)
                    if !g.outputs.contains(&probabilities)
                        && users.iter().all(|&u| roots[u] == Some(root))
                        && only_scalars_besides(l, &members[root], probabilities) =>
                {
                    Some(root)
                }
                _ => None,
            };
            let weights = after.map_or(probabilities, |root| g.nodes[root].output);
            let output = only_user(weights)?;
            if only_user(node.inputs[0])? != softmax || g.nodes[output].inputs[0] != weights {
                return None;
            }
            let (scores, group) = if roots[before] == Some(before) {
                let inside = &members[before];
                let from_matmul: Vec<ValueId> = inside
                    .iter()
                    .flat_map(|&i| g.nodes[i].inputs.iter().copied())
                    .filter(|v| {
                        producer[v.index()].is_some_and(|p| {
                            !inside.contains(&p) && matches!(g.nodes[p].op, Op::MatMul { .. })
                        })
                    })
                    .collect();
                let scores_value = *from_matmul.first()?;
                let leaves_ok = from_matmul.iter().all(|&v| v == scores_value)
                    && !g.outputs.contains(&scores_value)
                    && consumers[scores_value.index()]
                        .iter()
                        .all(|c| inside.contains(c))
                    && l.shape(scores_value).ok()? == l.shape(node.inputs[0]).ok()?
                    && l.dtype(scores_value) == DType::F32
                    && l.dtype(node.inputs[0]) == DType::F32
                    && inside.iter().all(|&i| {
                        // Values from outside are f32 or one-element
                        // constants (a zero point); inside, any type (the
                        // Q/DQ pair onnxruntime's QDQ files put around the
                        // scale computes through int8).
                        g.nodes[i].inputs.iter().all(|&v| {
                            l.dtype(v) == DType::F32
                                || producer[v.index()].is_some_and(|p| inside.contains(&p))
                                || l.constant(v).is_some_and(|t| t.len() == 1)
                        })
                    });
                if !leaves_ok {
                    return None;
                }
                (producer[scores_value.index()]?, Some(before))
            } else {
                (before, None)
            };
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
                group,
                softmax,
                after,
                output,
            })
        })();
        if let Some(chain) = chain {
            chains[chain.output] = Some(chain);
        }
    }
    chains
}

/// Whether the group `members` reads nothing from outside but `value` and
/// one-element constants, and produces f32 (so the block it rewrites in
/// place stays f32).
fn only_scalars_besides(l: &Lowering<'_, '_>, members: &[usize], value: ValueId) -> bool {
    let g = l.graph;
    let Some(&last) = members.last() else {
        return false;
    };
    let root = &g.nodes[last];
    let inside: Vec<ValueId> = members.iter().map(|&i| g.nodes[i].output).collect();
    l.dtype(root.output) == DType::F32
        && members.iter().all(|&i| {
            g.nodes[i].inputs.iter().all(|v| {
                *v == value || inside.contains(v) || l.constant(*v).is_some_and(|t| t.len() == 1)
            })
        })
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

/// How the group reads one of its operands (other than the scores): its
/// element type, its strides over the batch axes and its (row, column)
/// strides.
type BlockOperand = (Elem, Vec<i64>, (i64, i64));

/// The elementwise group between scores and softmax, recast for one block
/// of rows of one batch.
struct BlockGroup {
    nodes: Vec<ExprNode>,
    /// Per operand: `None` for the scores themselves.
    operands: Vec<Option<BlockOperand>>,
}

impl BlockGroup {
    fn fused(&self, rows: usize, cols: usize) -> Fused {
        Fused {
            shape: vec![rows, cols],
            operands: self
                .operands
                .iter()
                .map(|o| match o {
                    None => Operand {
                        elem: Elem::F32,
                        strides: vec![cols as i64, 1],
                    },
                    Some((elem, _, (r, c))) => Operand {
                        elem: *elem,
                        strides: vec![*r, *c],
                    },
                })
                .collect(),
            nodes: self.nodes.clone(),
        }
    }
}

/// The batched forms of the chain's scores and output products.
fn products(
    l: &Lowering<'_, '_>,
    chain: Chain,
) -> Result<(BatchedMatmul, BatchedMatmul), CodegenError> {
    let g = l.graph;
    let checked = || CodegenError::Internal("checked by find_chains");
    let first = spec(l, &g.nodes[chain.scores], false).ok_or_else(checked)?;
    let second = spec(l, &g.nodes[chain.output], true).ok_or_else(checked)?;
    Ok((first, second))
}

/// Lowers a chain into one kernel (buffers: output, A₁, B₁, B₂, then the
/// group's other operands), parallel over batches. `members` are the
/// fusion groups' members by root.
pub(crate) fn lower(
    l: &mut Lowering<'_, '_>,
    chain: Chain,
    members: &[Vec<usize>],
) -> Result<(), CodegenError> {
    let g = l.graph;
    let (first_node, second_node) = (&g.nodes[chain.scores], &g.nodes[chain.output]);
    let (first, second) = products(l, chain)?;
    let mut extra = Vec::new();
    let group = match chain.group {
        None => None,
        Some(root) => Some(block_group(
            l,
            &members[root],
            first_node.output,
            &mut extra,
        )?),
    };
    let softmax_output = g.nodes[chain.softmax].output;
    let after = match chain.after {
        None => None,
        Some(root) => Some(block_group(l, &members[root], softmax_output, &mut extra)?),
    };
    let out = l.define(second_node.output)?;
    let symbol = l.symbol("attention");
    let scratch = emit(
        l.cx,
        &symbol,
        (&first, &second),
        [group.as_ref(), after.as_ref()],
        None,
    )?;
    let mut buffers = vec![
        out,
        l.loc(first_node.inputs[0])?,
        l.loc(first_node.inputs[1])?,
        l.loc(second_node.inputs[1])?,
    ];
    buffers.extend(extra);
    l.kernel_with_scratch(symbol, buffers, first.batches, scratch, true);
    Ok(())
}

/// Lowers an attention chain with int8 products (`quant::attention8`)
/// into one kernel: buffers output, q, k, v (the quantised values), then
/// the group's other operands.
pub(crate) fn lower_int8(
    l: &mut Lowering<'_, '_>,
    attention: &Int8Attention,
) -> Result<(), CodegenError> {
    let g = l.graph;
    let chain = attention.chain;
    let (first_node, second_node) = (&g.nodes[chain.scores], &g.nodes[chain.output]);
    let (first, second) = products(l, chain)?;
    let mut extra = Vec::new();
    let group = match &attention.group {
        None => None,
        Some(members) => Some(block_group(l, members, first_node.output, &mut extra)?),
    };
    let products = Int8Products {
        scores: Product {
            k: first.k,
            n: first.n,
            a: attention.q,
            b: attention.k,
        },
        output: Product {
            k: second.k,
            n: second.n,
            a: attention.probabilities,
            b: attention.v,
        },
        quantize: attention.quantize,
    };
    let out = l.define(second_node.output)?;
    let symbol = l.symbol("attention8");
    let scratch = emit(
        l.cx,
        &symbol,
        (&first, &second),
        [group.as_ref(), None],
        Some(&products),
    )?;
    let mut buffers = vec![
        out,
        l.loc(attention.q.value)?,
        l.loc(attention.k.value)?,
        l.loc(attention.v.value)?,
    ];
    buffers.extend(extra);
    l.kernel_with_scratch(symbol, buffers, first.batches, scratch, true);
    Ok(())
}

/// The int8 products of an attention kernel: scores `q·k`, output
/// `probabilities·v`, and how the probabilities are quantised in between.
struct Int8Products {
    scores: Product,
    output: Product,
    quantize: PerTensor,
}

/// The group `members` recast for row blocks: `scores` (the value the block
/// in scratch holds) becomes the block, every other operand a buffer
/// appended to `extra`.
fn block_group(
    l: &mut Lowering<'_, '_>,
    members: &[usize],
    scores: ValueId,
    extra: &mut Vec<crate::graph::Loc>,
) -> Result<BlockGroup, CodegenError> {
    let (fused, values) = describe(l, members)?;
    let rank = fused.shape.len();
    let mut operands = Vec::with_capacity(values.len());
    for (operand, &value) in fused.operands.iter().zip(&values) {
        if value == scores {
            operands.push(None);
            continue;
        }
        let st = &operand.strides;
        operands.push(Some((
            operand.elem,
            st[..rank - 2].to_vec(),
            (st[rank - 2], st[rank - 1]),
        )));
        extra.push(l.loc(value)?);
    }
    Ok(BlockGroup {
        nodes: fused.nodes,
        operands,
    })
}

/// The GEMM function for `m × k × n` with run-time packed B, shared by every
/// attention kernel of the module that needs that shape, and its B layout.
fn shared_gemm<'ctx>(
    cx: Cx<'_, 'ctx>,
    m: usize,
    k: usize,
    n: usize,
) -> Result<(FunctionValue<'ctx>, PackedPanels), CodegenError> {
    let spec = GemmSpec::new(&format!("m4c_attention_gemm_{m}x{k}x{n}"), m, k, n);
    let manifest = match cx.module.get_function(&spec.symbol) {
        Some(_) => gemm_manifest(cx.target, &spec),
        None => emit_gemm(cx.context, cx.module, cx.target, &spec)?,
    };
    let function = cx
        .module
        .get_function(&spec.symbol)
        .ok_or(CodegenError::Internal("emitted by now"))?;
    Ok((function, manifest.packed_b))
}

/// The functions one block of `rows` rows calls: scores GEMM, output GEMM
/// (f32 ones, or int8 kernels with the uniform kernel signature), and the
/// groups' elementwise kernels with their extents.
#[derive(Clone, Copy)]
struct BlockFns<'ctx> {
    rows: usize,
    scores: FunctionValue<'ctx>,
    output: FunctionValue<'ctx>,
    /// Before and after the softmax.
    groups: [Option<(FunctionValue<'ctx>, usize)>; 2],
}

/// The int8 GEMM kernel of `product` for blocks of `rows` rows, shared by
/// every attention kernel of the module with the same code.
fn shared_int8_gemm<'ctx>(
    cx: Cx<'_, 'ctx>,
    product: &Product,
    rows: usize,
) -> Result<FunctionValue<'ctx>, CodegenError> {
    let spec = product.spec("", rows);
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    spec.code_key().hash(&mut hasher);
    let name = format!("m4c_attention_q8gemm_{:016x}", hasher.finish());
    if cx.module.get_function(&name).is_none() {
        crate::quant::emit_int8_gemm(cx, &product.spec(&name, rows))?;
    }
    cx.module
        .get_function(&name)
        .ok_or(CodegenError::Internal("emitted above"))
}

/// How the kernel's two products are computed: f32 GEMMs on B packed
/// into these panels, or int8 ones.
#[derive(Clone, Copy)]
enum Products<'a> {
    F32([PackedPanels; 2]),
    Int8(&'a Int8Products),
}

/// Where the kernel's scratch holds what, in bytes: both packed right
/// operands, the block of scores, and for int8 products the quantised
/// probabilities, A's row sums and the GEMMs' own scratch.
struct ScratchPlan {
    packed: [usize; 2],
    scores: usize,
    probabilities: usize,
    row_sums: usize,
    gemm: usize,
    total: usize,
}

impl ScratchPlan {
    fn new(sizes: [usize; 6]) -> Self {
        let mut at = [0; 6];
        let mut next = 0;
        for (slot, size) in at.iter_mut().zip(sizes) {
            *slot = next;
            next = (next + size).next_multiple_of(64);
        }
        Self {
            packed: [at[0], at[1]],
            scores: at[2],
            probabilities: at[3],
            row_sums: at[4],
            gemm: at[5],
            total: next,
        }
    }
}

/// Emits the kernel and returns its scratch bytes. `int8`: the products
/// are int8 (buffers 1–3 hold quantised values; the second group is
/// replaced by the probabilities' quantisation).
fn emit<'ctx>(
    cx: Cx<'_, 'ctx>,
    symbol: &str,
    (first, second): (&BatchedMatmul, &BatchedMatmul),
    groups: [Option<&BlockGroup>; 2],
    int8: Option<&Int8Products>,
) -> Result<usize, CodegenError> {
    let plan = GemmPlan::for_target(cx.target);
    let (m, n1, n2) = (first.m, first.n, second.n);
    // A block of scores takes a quarter of L2, leaving room for the
    // packed right operands.
    let scores_bytes = plan.l2_bytes / 4;
    let rows = (scores_bytes / (n1 * 4) / plan.tile_rows * plan.tile_rows)
        .max(plan.tile_rows)
        .min(m);
    let mut layouts = None;
    let mut block_fns = |block: usize| -> Result<BlockFns<'ctx>, CodegenError> {
        let (scores, output) = match int8 {
            Some(p) => (
                shared_int8_gemm(cx, &p.scores, block)?,
                shared_int8_gemm(cx, &p.output, block)?,
            ),
            None => {
                let one = shared_gemm(cx, block, first.k, n1)?;
                let two = shared_gemm(cx, block, n1, n2)?;
                layouts = Some((one.1, two.1));
                (one.0, two.0)
            }
        };
        let function = |name: &str| {
            cx.module
                .get_function(name)
                .ok_or(CodegenError::Internal("a group emitted above"))
        };
        let mut fns = [None; 2];
        for (i, group) in groups.iter().enumerate() {
            if let Some(group) = group {
                let fused = group.fused(block, n1);
                // Named by content, so identical layers call the same
                // function and their attention kernels are deduplicated.
                let mut hasher = std::collections::hash_map::DefaultHasher::new();
                format!("{fused:?}").hash(&mut hasher);
                let name = format!("m4c_attention_group{i}_{:016x}", hasher.finish());
                if cx.module.get_function(&name).is_none() {
                    fused.emit(cx, &name)?;
                }
                fns[i] = Some((function(&name)?, fused.extent(cx.lanes())));
            }
        }
        Ok(BlockFns {
            rows: block,
            scores,
            output,
            groups: fns,
        })
    };
    let full = block_fns(rows)?;
    let last = match m % rows {
        0 => None,
        remainder => Some(block_fns(remainder)?),
    };
    let products = match (int8, layouts) {
        (Some(p), _) => Products::Int8(p),
        (None, Some((layout1, layout2))) => Products::F32([layout1, layout2]),
        (None, None) => return Err(CodegenError::Internal("at least one block")),
    };
    let scratch = match products {
        Products::Int8(p) => {
            let gemm = [&p.scores, &p.output]
                .iter()
                .map(|product| product.spec("", rows).scratch_bytes(cx.target))
                .max()
                .unwrap_or(0);
            ScratchPlan::new([
                p.scores.packed_bytes(cx.target),
                p.output.packed_bytes(cx.target),
                rows * n1 * 4,
                rows * n1,
                rows * 4,
                gemm,
            ])
        }
        Products::F32([layout1, layout2]) => {
            ScratchPlan::new([layout1.len() * 4, layout2.len() * 4, rows * n1 * 4, 0, 0, 0])
        }
    };
    let softmax_symbol = format!("m4c_attention_softmax_{rows}x{n1}");
    if cx.module.get_function(&softmax_symbol).is_none() {
        emit_softmax(cx, &softmax_symbol, (rows, n1, 1))?;
    }
    let softmax = cx
        .module
        .get_function(&softmax_symbol)
        .ok_or(CodegenError::Internal("emitted above"))?;

    let operands = groups.map(|g| g.map_or(&[][..], |g| &g.operands[..]));
    let extra: usize = operands.iter().map(|o| o.iter().flatten().count()).sum();
    let k = Kernel::define(cx, symbol, 4 + extra)?;
    let (f32t, i8t) = (cx.context.f32_type(), cx.context.i8_type());
    let ptr = cx.context.ptr_type(Default::default());
    let in_scratch = |at: usize| k.element(k.scratch, i8t.into(), k.int(at as i64));
    let packed = [
        in_scratch(scratch.packed[0])?,
        in_scratch(scratch.packed[1])?,
    ];
    let scores = in_scratch(scratch.scores)?;
    let probabilities = in_scratch(scratch.probabilities)?;
    let row_sums = in_scratch(scratch.row_sums)?;
    let gemm_scratch = in_scratch(scratch.gemm)?;
    let table_entry = |table, slot: usize| {
        // SAFETY: builds a GEP into a pointer table allocated with at
        // least `slot + 1` entries.
        unsafe {
            k.em.builder
                .build_in_bounds_gep(ptr, table, &[k.int(slot as i64)], "entry")
        }
    };
    let softmax_table = k.slot(ptr.array_type(2).into())?;
    for slot in 0..2 {
        k.em.builder
            .build_store(table_entry(softmax_table, slot)?, scores)?;
    }
    let group_tables = operands
        .iter()
        .map(|o| k.slot(ptr.array_type(o.len() as u32 + 1).into()))
        .collect::<Result<Vec<_>, _>>()?;
    // The int8 GEMMs' buffers: A, packed B, output, A's row sums.
    let gemm_table = k.slot(ptr.array_type(4).into())?;
    if let Some(p) = int8 {
        emit_tables(&k, &p.scores, packed[0])?;
        emit_tables(&k, &p.output, packed[1])?;
    }
    // The elements A and the right operands are made of, and each
    // product's panels of packed B.
    let elem: BasicTypeEnum<'ctx> = if int8.is_some() {
        i8t.into()
    } else {
        f32t.into()
    };
    let panels = match products {
        Products::Int8(p) => [p.scores.panels(cx.target), p.output.panels(cx.target)],
        Products::F32(layouts) => layouts.map(|l| l.panels()),
    };
    k.em.counted_loop(k.begin, k.end, |batch| {
        let (a_base, b1_base) = first.batch_bases(&k, batch)?;
        let (_, b2_base) = second.batch_bases(&k, batch)?;
        match products {
            Products::Int8(p) => {
                let b1 = k.element(k.buffers[2], i8t.into(), b1_base)?;
                emit_pack_b(&k, &p.scores, b1, first.b_rc, packed[0])?;
                let b2 = k.element(k.buffers[3], i8t.into(), b2_base)?;
                emit_pack_b(&k, &p.output, b2, second.b_rc, packed[1])?;
            }
            Products::F32([layout1, layout2]) => {
                first.pack_b(&k, k.buffers[2], b1_base, layout1, packed[0])?;
                second.pack_b(&k, k.buffers[3], b2_base, layout2, packed[1])?;
            }
        }
        let c_base =
            k.em.builder
                .build_int_mul(batch, k.int((m * n2) as i64), "c")?;
        let flat_batch = contiguous_strides(&first.batch_shape);
        let batch_index = flat_batch
            .iter()
            .enumerate()
            .map(|(d, &step)| {
                let i =
                    k.em.builder
                        .build_int_unsigned_div(batch, k.int(step), "bi")?;
                let size = k.int(first.batch_shape[d] as i64);
                Ok(k.em.builder.build_int_unsigned_rem(i, size, "bi")?)
            })
            .collect::<Result<Vec<_>, CodegenError>>()?;
        let block = |row0: IntValue<'ctx>, fns: BlockFns<'ctx>| -> Result<(), CodegenError> {
            let call = |f, args: &[BasicMetadataValueEnum<'ctx>]| {
                k.em.builder.build_call(f, args, "").map(|_| ())
            };
            // `a · packed → c` by `f` over the `panels` of packed B: an f32
            // GEMM, or an int8 one (after A's row sums, unless `summed`).
            let product = |f, a, packed, c, panels: usize, int8: Option<(&Product, bool)>| {
                let Some((product, summed)) = int8 else {
                    return call(
                        f,
                        &[
                            a,
                            packed,
                            c,
                            k.int(0).into(),
                            k.int(panels as i64).into(),
                            k.scratch.into(),
                        ],
                    )
                    .map_err(CodegenError::from);
                };
                if !summed {
                    let rows = (k.int(fns.rows as i64), product.k);
                    let a = a.into_pointer_value();
                    emit_row_sums(&k, a, product.a.signed, rows, row_sums)?;
                }
                for (slot, value) in [a, packed, c, row_sums.into()].into_iter().enumerate() {
                    k.em.builder
                        .build_store(table_entry(gemm_table, slot)?, value.into_pointer_value())?;
                }
                call(
                    f,
                    &[
                        gemm_table.into(),
                        k.int(0).into(),
                        k.int(panels as i64).into(),
                        gemm_scratch.into(),
                    ],
                )?;
                Ok(())
            };
            let a_at = k.em.mul_add(row0, k.int(first.k as i64), a_base)?;
            let a = k.element(k.buffers[1], elem, a_at)?;
            product(
                fns.scores,
                a.into(),
                packed[0].into(),
                scores.into(),
                panels[0],
                int8.map(|p| (&p.scores, false)),
            )?;
            // Applies group `i` to the scores block in place.
            let apply = |i: usize| -> Result<(), CodegenError> {
                let Some((function, extent)) = fns.groups[i] else {
                    return Ok(());
                };
                let table = group_tables[i];
                k.em.builder.build_store(table_entry(table, 0)?, scores)?;
                // Buffers 4.. hold the other operands, the first group's first.
                let mut buffer = 4 + operands[..i]
                    .iter()
                    .map(|o| o.iter().flatten().count())
                    .sum::<usize>();
                for (slot, operand) in operands[i].iter().enumerate() {
                    let at = match operand {
                        None => scores,
                        Some((elem, batch_strides, (row_stride, _))) => {
                            let mut base =
                                k.em.builder.build_int_mul(row0, k.int(*row_stride), "r")?;
                            for (i, &stride) in batch_index.iter().zip(batch_strides) {
                                base = k.em.mul_add(*i, k.int(stride), base)?;
                            }
                            buffer += 1;
                            let ty = elem.memory_type(cx.context);
                            k.element(k.buffers[buffer - 1], ty, base)?
                        }
                    };
                    k.em.builder
                        .build_store(table_entry(table, slot + 1)?, at)?;
                }
                call(
                    function,
                    &[
                        table.into(),
                        k.int(0).into(),
                        k.int(extent as i64).into(),
                        k.scratch.into(),
                    ],
                )?;
                Ok(())
            };
            apply(0)?;
            call(
                softmax,
                &[
                    softmax_table.into(),
                    k.int(0).into(),
                    k.int(fns.rows as i64).into(),
                    k.scratch.into(),
                ],
            )?;
            apply(1)?;
            let c_at = k.em.mul_add(row0, k.int(n2 as i64), c_base)?;
            let c = k.element(k.buffers[0], f32t.into(), c_at)?;
            let weights = match int8 {
                Some(p) => {
                    let block = (fns.rows, n1);
                    emit_quantize_rows(&k, scores, probabilities, block, &p.quantize, row_sums)?;
                    probabilities
                }
                None => scores,
            };
            product(
                fns.output,
                weights.into(),
                packed[1].into(),
                c.into(),
                panels[1],
                int8.map(|p| (&p.output, true)),
            )?;
            Ok(())
        };
        k.em.counted_loop(k.int(0), k.int((m / rows) as i64), |b| {
            let row0 = k.em.builder.build_int_mul(b, k.int(rows as i64), "row0")?;
            block(row0, full)
        })?;
        if let Some(last) = last {
            block(k.int((m - m % rows) as i64), last)?;
        }
        Ok(())
    })?;
    k.finish()?;
    Ok(scratch.total)
}
