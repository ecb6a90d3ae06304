//! MatMul: with a constant right operand it is one GEMM of the packed
//! generator (batch axes of A folded into M); otherwise (attention's
//! `Q·Kᵀ`, `P·V`) a batched kernel that packs each B into scratch at run
//! time and calls the packed GEMM generated for the matrix shape, or, when
//! A is transposed, copies B as a zero-padded block and accumulates
//! target-width vectors of C.

use inkwell::values::{IntValue, PointerValue};
use m4c_cpu_device::PackedPanels;
use m4c_ir::{DType, Node};

use super::{broadcast_strides, contiguous_strides, Cx, Elem, Kernel};
use crate::gemm::{emit_gemm, GemmPlan, GemmSpec};
use crate::graph::Lowering;
use crate::CodegenError;

/// A batched `C[b] = op(A[b]) · op(B[b])` with every stride static.
#[derive(Clone, Debug)]
pub(crate) struct BatchedMatmul {
    pub batches: usize,
    /// The output's batch shape and each operand's strides over it.
    pub batch_shape: Vec<usize>,
    pub a_batch: Vec<i64>,
    pub b_batch: Vec<i64>,
    pub m: usize,
    pub k: usize,
    pub n: usize,
    /// Strides of A's rows (M) and columns (K).
    pub a_rc: (i64, i64),
    /// Strides of B's rows (K) and columns (N).
    pub b_rc: (i64, i64),
}

impl BatchedMatmul {
    fn padded_n(&self, lanes: u32) -> usize {
        self.n.next_multiple_of(lanes as usize)
    }

    /// Whether each A is a contiguous row-major `m × k` matrix, so the
    /// packed GEMM can read it.
    pub fn gemm_path(&self) -> bool {
        self.a_rc == (self.k as i64, 1)
    }

    /// Scratch bytes per call: B packed into the GEMM's panels, or one
    /// padded copy of B for the vector loop.
    pub fn scratch_bytes(&self, cx: Cx<'_, '_>) -> usize {
        if self.gemm_path() {
            let plan = GemmPlan::for_target(cx.target);
            let panels = self.n.div_ceil(plan.tile_cols());
            panels * plan.tile_cols() * self.k * 4
        } else {
            self.k * self.padded_n(cx.lanes()) * 4
        }
    }

    /// The flat batch index `batch` decomposed into A's and B's offsets.
    pub fn batch_bases<'ctx>(
        &self,
        k: &Kernel<'_, 'ctx>,
        batch: IntValue<'ctx>,
    ) -> Result<(IntValue<'ctx>, IntValue<'ctx>), CodegenError> {
        let flat_batch = contiguous_strides(&self.batch_shape);
        let mut a_base = k.int(0);
        let mut b_base = k.int(0);
        for (d, &step) in flat_batch.iter().enumerate() {
            let i =
                k.em.builder
                    .build_int_unsigned_div(batch, k.int(step), "bi")?;
            let i =
                k.em.builder
                    .build_int_unsigned_rem(i, k.int(self.batch_shape[d] as i64), "bi")?;
            a_base = k.em.mul_add(i, k.int(self.a_batch[d]), a_base)?;
            b_base = k.em.mul_add(i, k.int(self.b_batch[d]), b_base)?;
        }
        Ok((a_base, b_base))
    }

    /// Element `(row, col)` of the B at `b + b_base` (any strides), or zero
    /// for `col ≥ n`: the zero padding both B copies (panel packing and the
    /// small-matmul scratch) need. The column is clamped so the load stays
    /// in bounds.
    fn load_b_padded<'ctx>(
        &self,
        k: &Kernel<'_, 'ctx>,
        b: PointerValue<'ctx>,
        b_base: IntValue<'ctx>,
        row: IntValue<'ctx>,
        col: IntValue<'ctx>,
    ) -> Result<inkwell::values::BasicValueEnum<'ctx>, CodegenError> {
        let f32t = k.cx.context.f32_type();
        let n = k.int(self.n as i64);
        let inside =
            k.em.builder
                .build_int_compare(inkwell::IntPredicate::ULT, col, n, "inside")?;
        let clamped = k.em.umin(col, k.int(self.n as i64 - 1))?;
        let from = k.linear(0, &[row, clamped], &[self.b_rc.0, self.b_rc.1])?;
        let from = k.em.builder.build_int_add(from, b_base, "from")?;
        let v =
            k.em.builder
                .build_load(f32t, k.element(b, f32t.into(), from)?, "b")?;
        Ok(k.em
            .builder
            .build_select(inside, v, f32t.const_zero().into(), "b")?)
    }

    /// Packs the B of one batch (at `b + b_base`, any strides) into the
    /// GEMM's panel layout at `dst`, zero-padding the last panel.
    pub fn pack_b<'ctx>(
        &self,
        k: &Kernel<'_, 'ctx>,
        b: PointerValue<'ctx>,
        b_base: IntValue<'ctx>,
        layout: PackedPanels,
        dst: PointerValue<'ctx>,
    ) -> Result<(), CodegenError> {
        let f32t = k.cx.context.f32_type();
        let width = layout.panel_width;
        k.nest(
            &[self.k, layout.panels() * width],
            false,
            &mut |rc: &[IntValue<'_>]| {
                let v = self.load_b_padded(k, b, b_base, rc[0], rc[1])?;
                // (panel·k + row)·width + col mod width, see `PackedPanels`.
                let panel =
                    k.em.builder
                        .build_int_unsigned_div(rc[1], k.int(width as i64), "panel")?;
                let lane =
                    k.em.builder
                        .build_int_unsigned_rem(rc[1], k.int(width as i64), "lane")?;
                let row = k.em.mul_add(panel, k.int(self.k as i64), rc[0])?;
                let to = k.em.mul_add(row, k.int(width as i64), lane)?;
                k.em.builder
                    .build_store(k.element(dst, f32t.into(), to)?, v)?;
                Ok(())
            },
        )?;
        Ok(())
    }

    /// Emits the kernel `symbol` (buffers: C, A, B), iterating over batches:
    /// per batch, B is packed into scratch and the packed GEMM generated
    /// for `m × k × n` is called.
    fn emit_gemm_path(&self, cx: Cx<'_, '_>, symbol: &str) -> Result<(), CodegenError> {
        let gemm_symbol = format!("{symbol}_gemm");
        let spec = GemmSpec::new(&gemm_symbol, self.m, self.k, self.n);
        let manifest = emit_gemm(cx.context, cx.module, cx.target, &spec)?;
        let gemm = cx
            .module
            .get_function(&gemm_symbol)
            .ok_or(CodegenError::Internal("emit_gemm defines its symbol"))?;
        let k = Kernel::define(cx, symbol, 3)?;
        let f32t = cx.context.f32_type();
        let layout = manifest.packed_b;
        k.em.counted_loop(k.begin, k.end, |batch| {
            let (a_base, b_base) = self.batch_bases(&k, batch)?;
            self.pack_b(&k, k.buffers[2], b_base, layout, k.scratch)?;
            let a = k.element(k.buffers[1], f32t.into(), a_base)?;
            let c_base =
                k.em.builder
                    .build_int_mul(batch, k.int((self.m * self.n) as i64), "c")?;
            let c = k.element(k.buffers[0], f32t.into(), c_base)?;
            k.em.builder.build_call(
                gemm,
                &[
                    a.into(),
                    k.scratch.into(),
                    c.into(),
                    k.int(0).into(),
                    k.int(layout.panels() as i64).into(),
                    k.scratch.into(),
                ],
                "",
            )?;
            Ok(())
        })?;
        k.finish()
    }

    /// Emits the kernel `symbol` (buffers: C, A, B), iterating over batches.
    pub fn emit(&self, cx: Cx<'_, '_>, symbol: &str) -> Result<(), CodegenError> {
        if self.gemm_path() {
            return self.emit_gemm_path(cx, symbol);
        }
        let k = Kernel::define(cx, symbol, 3)?;
        let lanes = cx.lanes();
        let np = self.padded_n(lanes);
        let f32t = cx.context.f32_type();
        let vector = f32t.vec_type(lanes);
        let acc = k.slot(vector.into())?;
        k.em.counted_loop(k.begin, k.end, |batch| {
            let (a_base, b_base) = self.batch_bases(&k, batch)?;
            // Copy B into scratch as k × np, zero padded.
            k.nest(&[self.k, np], false, &mut |ij: &[IntValue<'_>]| {
                let v = self.load_b_padded(&k, k.buffers[2], b_base, ij[0], ij[1])?;
                let to = k.linear(0, ij, &[np as i64, 1])?;
                k.em.builder
                    .build_store(k.element(k.scratch, f32t.into(), to)?, v)?;
                Ok(())
            })?;
            let c_base =
                k.em.builder
                    .build_int_mul(batch, k.int((self.m * self.n) as i64), "c")?;
            k.nest(
                &[self.m, np / lanes as usize],
                false,
                &mut |ij: &[IntValue<'_>]| {
                    let col =
                        k.em.builder
                            .build_int_mul(ij[1], k.int(lanes as i64), "col")?;
                    k.em.builder.build_store(acc, vector.const_zero())?;
                    let a_row = k.em.mul_add(ij[0], k.int(self.a_rc.0), a_base)?;
                    k.em.counted_loop(k.int(0), k.int(self.k as i64), |kk| {
                        let a_at = k.em.mul_add(kk, k.int(self.a_rc.1), a_row)?;
                        let a = k.load_splat(
                            Elem::F32,
                            lanes,
                            k.element(k.buffers[1], f32t.into(), a_at)?,
                        )?;
                        let b_at = k.em.mul_add(kk, k.int(np as i64), col)?;
                        let b =
                            k.load(Elem::F32, lanes, k.element(k.scratch, f32t.into(), b_at)?)?;
                        let sum =
                            k.em.builder
                                .build_load(vector, acc, "acc")?
                                .into_vector_value();
                        let sum =
                            k.em.call_value(
                                "llvm.fma",
                                &[vector.into()],
                                &[a.into(), b.into(), sum.into()],
                            )?
                            .into_vector_value();
                        k.em.builder.build_store(acc, sum)?;
                        Ok(())
                    })?;
                    let sum =
                        k.em.builder
                            .build_load(vector, acc, "acc")?
                            .into_vector_value();
                    let row = k.em.mul_add(ij[0], k.int(self.n as i64), c_base)?;
                    let full =
                        np / lanes as usize - usize::from(!self.n.is_multiple_of(lanes as usize));
                    let is_full = k.em.builder.build_int_compare(
                        inkwell::IntPredicate::ULT,
                        ij[1],
                        k.int(full as i64),
                        "full",
                    )?;
                    let at = k.em.builder.build_int_add(row, col, "at")?;
                    let then =
                        || k.store(Elem::F32, k.element(k.buffers[0], f32t.into(), at)?, sum);
                    if full == np / lanes as usize {
                        then()?;
                    } else {
                        // The last, partial block stores its valid lanes one by one.
                        let partial = k.em.builder.build_not(is_full, "partial")?;
                        k.em.if_then(is_full, then)?;
                        k.em.if_then(partial, || {
                            for lane in 0..(self.n % lanes as usize) {
                                let v = k.em.builder.build_extract_element(
                                    sum,
                                    cx.context.i32_type().const_int(lane as u64, false),
                                    "lane",
                                )?;
                                let p = k.em.builder.build_int_add(at, k.int(lane as i64), "p")?;
                                k.em.builder
                                    .build_store(k.element(k.buffers[0], f32t.into(), p)?, v)?;
                            }
                            Ok(())
                        })?;
                    }
                    Ok(())
                },
            )
        })?;
        k.finish()
    }
}

/// The shapes of a MatMul's operands with vectors made matrices, and its
/// `(m, k, n)`.
pub(crate) struct Operands {
    pub a_shape: Vec<usize>,
    pub b_shape: Vec<usize>,
    pub mkn: (usize, usize, usize),
}

fn operands(
    l: &Lowering<'_, '_>,
    node: &Node,
    trans_a: bool,
    trans_b: bool,
) -> Result<Operands, CodegenError> {
    let (a, b) = (node.inputs[0], node.inputs[1]);
    let int32 = l.dtype(a) == DType::I32 && l.dtype(b) == DType::I32;
    if !int32 && (l.dtype(a) != DType::F32 || l.dtype(b) != DType::F32) {
        return Err(CodegenError::Unsupported(format!(
            "MatMul on {} × {} (only f32, and i32 × i32)",
            l.dtype(a),
            l.dtype(b)
        )));
    }
    let mut a_shape = l.shape(a)?;
    let mut b_shape = l.shape(b)?;
    if a_shape.len() == 1 {
        a_shape.insert(0, 1);
    }
    if b_shape.len() == 1 {
        b_shape.push(1);
    }
    let (ra, rb) = (a_shape.len(), b_shape.len());
    let (m, k) = if trans_a {
        (a_shape[ra - 1], a_shape[ra - 2])
    } else {
        (a_shape[ra - 2], a_shape[ra - 1])
    };
    let n = if trans_b {
        b_shape[rb - 2]
    } else {
        b_shape[rb - 1]
    };
    Ok(Operands {
        a_shape,
        b_shape,
        mkn: (m, k, n),
    })
}

/// The batched form of a MatMul node with run-time operands.
pub(crate) fn batched_spec(
    l: &Lowering<'_, '_>,
    node: &Node,
    trans_a: bool,
    trans_b: bool,
) -> Result<BatchedMatmul, CodegenError> {
    let Operands {
        a_shape,
        b_shape,
        mkn: (m, k, n),
    } = operands(l, node, trans_a, trans_b)?;
    let (ra, rb) = (a_shape.len(), b_shape.len());
    // The batch comes from the operands (after a 1-D operand is promoted to
    // a matrix), not from the output, which has lost the promoted axis.
    let batch_shape =
        m4c_ir::broadcast_shapes(&a_shape[..ra - 2], &b_shape[..rb - 2]).ok_or_else(|| {
            CodegenError::Graph {
                graph: l.graph.name.clone(),
                reason: format!(
                    "MatMul batch dims of {a_shape:?} and {b_shape:?} do not broadcast"
                ),
            }
        })?;
    let a_full = broadcast_strides(&a_shape[..ra - 2], &batch_shape);
    let b_full = broadcast_strides(&b_shape[..rb - 2], &batch_shape);
    let scale = |strides: Vec<i64>, matrix: usize| -> Vec<i64> {
        strides.into_iter().map(|s| s * matrix as i64).collect()
    };
    let a_cols = a_shape[ra - 1] as i64;
    let b_cols = b_shape[rb - 1] as i64;
    Ok(BatchedMatmul {
        batches: batch_shape.iter().product(),
        a_batch: scale(a_full, a_shape[ra - 2] * a_shape[ra - 1]),
        b_batch: scale(b_full, b_shape[rb - 2] * b_shape[rb - 1]),
        batch_shape,
        m,
        k,
        n,
        a_rc: if trans_a { (1, a_cols) } else { (a_cols, 1) },
        b_rc: if trans_b { (1, b_cols) } else { (b_cols, 1) },
    })
}

/// Lowers a MatMul node.
pub(crate) fn lower(
    l: &mut Lowering<'_, '_>,
    node: &Node,
    trans_a: bool,
    trans_b: bool,
) -> Result<(), CodegenError> {
    let (a, b) = (node.inputs[0], node.inputs[1]);
    let Operands {
        a_shape,
        b_shape,
        mkn: (m, k, n),
    } = operands(l, node, trans_a, trans_b)?;
    if l.dtype(a) == DType::I32 {
        let shapes = Operands {
            a_shape,
            b_shape,
            mkn: (m, k, n),
        };
        return crate::quant::lower_int_matmul(l, node, (trans_a, trans_b), &shapes);
    }
    let (ra, rb) = (a_shape.len(), b_shape.len());
    let out = l.define(node.output)?;
    let b_batch_ones = b_shape[..rb - 2].iter().all(|&d| d == 1);
    if let (Some(weights), false, true) = (l.constant(b), trans_a, b_batch_ones) {
        if m * k * n > 0 {
            let values = weights.to_f32_vec().map_err(|e| CodegenError::Graph {
                graph: l.graph.name.clone(),
                reason: format!("MatMul weights: {e}"),
            })?;
            // Packed from this copy: the model's pages can go.
            weights.release_pages();
            let b_rows: Vec<f32> = if trans_b {
                (0..k)
                    .flat_map(|r| (0..n).map(move |c| (r, c)))
                    .map(|(r, c)| values[c * k + r])
                    .collect()
            } else {
                values
            };
            let rows: usize = a_shape[..ra - 1].iter().product();
            let a_loc = l.loc(a)?;
            return l.gemm((rows, k, n), &b_rows, a_loc, out);
        }
    }
    let spec = batched_spec(l, node, trans_a, trans_b)?;
    if m * n * spec.batches == 0 {
        return Ok(());
    }
    let symbol = l.symbol("matmul");
    spec.emit(l.cx, &symbol)?;
    let (a_loc, b_loc) = (l.loc(a)?, l.loc(b)?);
    let scratch = spec.scratch_bytes(l.cx);
    l.kernel_with_scratch(symbol, vec![out, a_loc, b_loc], spec.batches, scratch, true);
    Ok(())
}
