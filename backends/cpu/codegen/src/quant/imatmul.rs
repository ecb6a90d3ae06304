//! The generic integer MatMul: i32 × i32 with wrapping arithmetic, any
//! batch broadcast and transposes, one scalar dot product per output
//! element. It runs the integer products no faster pattern takes (an
//! attention's `QLinearMatMul` of two run-time operands), correct and
//! slow; the int8 GEMM handles constant weights.

use m4c_ir::Node;

use crate::graph::Lowering;
use crate::kernels::matmul::Operands;
use crate::kernels::{broadcast_strides, contiguous_strides, Elem, Kernel};
use crate::CodegenError;

/// Lowers `node` (an i32 MatMul of the shapes `operands`).
pub(crate) fn lower(
    l: &mut Lowering<'_, '_>,
    node: &Node,
    (trans_a, trans_b): (bool, bool),
    operands: &Operands,
) -> Result<(), CodegenError> {
    let (m, k, n) = operands.mkn;
    let out_shape = l.shape(node.output)?;
    let batch = out_shape.len().saturating_sub(2);
    let out_batch = &out_shape[..batch];
    let (ra, rb) = (operands.a_shape.len(), operands.b_shape.len());
    // Strides of each operand's matrices over the output's batch axes.
    let batch_strides = |shape: &[usize], rank: usize| -> Vec<i64> {
        let matrix = (shape[rank - 2] * shape[rank - 1]) as i64;
        broadcast_strides(&shape[..rank - 2], out_batch)
            .into_iter()
            .map(|s| s * matrix)
            .collect()
    };
    let a_batch = batch_strides(&operands.a_shape, ra);
    let b_batch = batch_strides(&operands.b_shape, rb);
    // Element strides of (row, k) in A and of (k, column) in B.
    let (a_row, a_k) = if trans_a {
        (1, m as i64)
    } else {
        (k as i64, 1)
    };
    let (b_k, b_col) = if trans_b {
        (1, k as i64)
    } else {
        (n as i64, 1)
    };
    let (a, b) = (l.loc(node.inputs[0])?, l.loc(node.inputs[1])?);
    let out = l.define(node.output)?;
    let symbol = l.symbol("imatmul");
    let mut dims = out_batch.to_vec();
    dims.extend([m, n]);
    let out_strides = contiguous_strides(&dims);
    let kernel = Kernel::define(l.cx, &symbol, 3)?;
    let i32t = l.cx.context.i32_type();
    kernel.nest(&dims, true, &mut |index| {
        let em = &kernel.em;
        let (batch_index, (i, j)) = (&index[..batch], (index[batch], index[batch + 1]));
        let a_base = kernel.linear(0, batch_index, &a_batch)?;
        let a_base = em.mul_add(i, kernel.int(a_row), a_base)?;
        let b_base = kernel.linear(0, batch_index, &b_batch)?;
        let b_base = em.mul_add(j, kernel.int(b_col), b_base)?;
        let lane = i32t.vec_type(1);
        let sum = kernel.slot(lane.into())?;
        em.builder.build_store(sum, lane.const_zero())?;
        em.counted_loop(em.i64(0), em.i64(k), |p| {
            let load = |base, stride, buffer| -> Result<_, CodegenError> {
                let at = em.mul_add(p, kernel.int(stride), base)?;
                let ptr = kernel.element(kernel.buffers[buffer], i32t.into(), at)?;
                kernel.load(Elem::I32, 1, ptr)
            };
            let product = em.builder.build_int_mul(
                load(a_base, a_k, 0)?,
                load(b_base, b_k, 1)?,
                "product",
            )?;
            let old = em.builder.build_load(lane, sum, "sum")?;
            let new = em
                .builder
                .build_int_add(old.into_vector_value(), product, "sum")?;
            em.builder.build_store(sum, new)?;
            Ok(())
        })?;
        let total = em
            .builder
            .build_load(lane, sum, "total")?
            .into_vector_value();
        let at = kernel.linear(0, index, &out_strides)?;
        let ptr = kernel.element(kernel.buffers[2], i32t.into(), at)?;
        kernel.store(Elem::I32, ptr, total)
    })?;
    kernel.finish()?;
    l.kernel(symbol, vec![a, b, out], dims[0], true);
    Ok(())
}
