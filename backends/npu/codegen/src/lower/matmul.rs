//! MatMul: a GEMM with per-channel symmetric int8 weights when B is a
//! constant (the bias of a following `Add` of a constant vector fused;
//! a B too large for one layer's image — an LM head — split into column
//! blocks, one GEMM each, joined by a DMA concat), one GEMM program
//! shared by every batch entry when B is a run-time operand (attention;
//! a transposed one, `Q·Kᵀ`, first transposed by a DMA pattern).

use m4c_ir::{Graph, Op, ValueId};
use m4c_npu::kernels::{gather, gemm, KernelProgram, Quant};
use m4c_npu::module::Binding;

use super::{constant, dims, floats, multiplier, only_user, requant, symmetric, Ctx};

/// The `Add` of a constant bias vector that is the only consumer of
/// `node` (a MatMul with a constant B) within `nodes`: its
/// index and the bias.
pub(super) fn bias_add(
    g: &Graph,
    nodes: &[usize],
    node: &m4c_ir::Node,
    exported: &dyn Fn(ValueId) -> bool,
) -> Option<(usize, Vec<f64>)> {
    let Op::MatMul { trans_a: false, .. } = node.op else {
        return None;
    };
    constant(g, node.inputs[1])?;
    let out = node.output;
    let add = only_user(g, nodes, out, exported)?;
    let a = &g.nodes[add];
    if a.op != Op::Add || dims(g, a.output) != dims(g, out) {
        return None;
    }
    let other = *a.inputs.iter().find(|&&v| v != out)?;
    let n = dims(g, out).last().copied()?;
    let bias = constant(g, other)?;
    let shape = bias.shape();
    let row = shape.last() == Some(&n) && shape.iter().rev().skip(1).all(|&d| d == 1);
    row.then(|| floats(&bias)).map(|b| (add, b))
}

/// The number of column blocks a constant-B GEMM of `m × k × n` needs so
/// that each block's image — A, its `k × nb` weights, its `m × nb`
/// output and per-column tables — holds at most `limit` elements; `None`
/// when A alone does not fit.
fn column_blocks(m: usize, k: usize, n: usize, limit: usize) -> Option<usize> {
    let fixed = m.checked_mul(k)?;
    let per_column = k + m + 16;
    let columns = limit.checked_sub(fixed)? / per_column;
    (columns > 0).then(|| n.div_ceil(columns))
}

impl Ctx<'_> {
    /// A MatMul computing `out` (with `bias` added when an `Add` is fused:
    /// then `out` is the Add's result).
    pub(super) fn matmul(
        &mut self,
        ins: &[ValueId],
        out: ValueId,
        trans_b: bool,
        bias: Option<Vec<f64>>,
    ) -> Result<(), String> {
        let g = self.g;
        let a_shape = dims(g, ins[0]);
        let k = a_shape[a_shape.len() - 1];
        let n = dims(g, out).last().copied().unwrap_or(1);
        let m_all = a_shape.iter().product::<usize>() / k;
        let (qa, qy) = (self.quant(ins[0])?, self.quant(out)?);
        if qa.zero_point != 0 || qy.zero_point != 0 {
            return Err("a GEMM takes and gives symmetric int8 (zero point 0)".into());
        }
        let a = self.tensor(ins[0])?;
        let err = |e: m4c_npu::kernels::KernelError| e.to_string();
        if let Some(w) = constant(g, ins[1]) {
            let w = floats(&w);
            // W[K, N] row-major, from B^T when B is stored [N, K].
            let w: Vec<f64> = if trans_b {
                (0..k * n).map(|i| w[(i % n) * k + i / n]).collect()
            } else {
                w
            };
            let absmax: Vec<f64> = (0..n)
                .map(|c| (0..k).fold(0.0, |m: f64, r| m.max(w[r * n + c].abs())))
                .collect();
            let qw: Vec<Quant> = absmax.iter().map(|&m| symmetric(m)).collect();
            let wq: Vec<i8> = (0..k * n).map(|i| qw[i % n].quantize(w[i])).collect();
            let scales = qw
                .iter()
                .map(|q| multiplier(qa.scale * q.scale / qy.scale, "GEMM output"))
                .collect::<Result<Vec<_>, _>>()?;
            let bias: Option<Vec<i32>> = bias.map(|b| {
                (0..n)
                    .map(|c| (b[c] / (qa.scale * qw[c].scale)).round().clamp(-2e9, 2e9) as i32)
                    .collect()
            });
            let blocks = column_blocks(m_all, k, n, self.layer_limit)
                .ok_or("the A operand alone exceeds one layer's image")?;
            let width = n.div_ceil(blocks);
            // A function of the result (GELU, SiLU) applied in the output
            // stage: the layer then computes that function's value.
            let epilogue = match self.part {
                Some((nodes, exported)) => self.epilogue(out, nodes, exported)?,
                None => None,
            };
            let (out, qv, table, kernel) = match &epilogue {
                Some((v, t)) => (*v, self.quant(*v)?, Some(t), "gemm+lut"),
                None => (out, qy, None, "gemm"),
            };
            let y = self.result(out, qv);
            let mut parts = vec![];
            for c0 in (0..n).step_by(width) {
                let nb = width.min(n - c0);
                let cols = c0..c0 + nb;
                let ops = gemm::GemmOperands {
                    m: m_all,
                    k,
                    n: nb,
                    a: vec![0; m_all * k],
                    w: (0..k * nb)
                        .map(|i| wq[(i / nb) * n + c0 + i % nb])
                        .collect(),
                    bias: bias.as_ref().map(|b| b[cols.clone()].to_vec()),
                    quant: requant(scales[c0]),
                    channel_scales: Some(scales[cols].to_vec()),
                };
                let p = gemm::generate_with(&ops, table, self.config, false).map_err(err)?;
                let kp = KernelProgram {
                    program: p.program,
                    out_addr: p.out_addr,
                    out_len: m_all * nb,
                    tile_rows: p.plan.m_tile,
                    inputs: vec![p.inputs[0]],
                };
                if blocks == 1 {
                    self.whole(out, kernel, kp, &[a], y);
                    return Ok(());
                }
                let name = format!("{}.cols{c0}", g.value(out).name);
                let t = self.add_tensor(&name, m_all * nb, qv);
                self.whole(out, kernel, kp, &[a], t);
                parts.push((t, nb));
            }
            // The blocks side by side: each output row is one piece of
            // every block's row.
            let shapes: Vec<Vec<usize>> = parts.iter().map(|&(_, nb)| vec![m_all, nb]).collect();
            let concat = Op::Concat { axis: 1 };
            let ops = gather::GatherOperands {
                sources: parts.iter().map(|&(_, nb)| vec![0; m_all * nb]).collect(),
                row_len: n,
                rows: crate::movement::pieces(&concat, &shapes, &[m_all, n])?,
            };
            let k = gather::generate(&ops, self.config).map_err(err)?;
            let ts: Vec<usize> = parts.iter().map(|&(t, _)| t).collect();
            self.whole(out, "dma-concat", k, &ts, y);
            return Ok(());
        }
        let m = a_shape[a_shape.len() - 2];
        let batch = m_all / m;
        let qb = self.quant(ins[1])?;
        if qb.zero_point != 0 {
            return Err("a run-time B operand must be symmetric int8".into());
        }
        let b = self.tensor(ins[1])?;
        let b = match trans_b {
            true => self.transposed(ins[1], b, out)?,
            false => b,
        };
        let ops = gemm::GemmOperands {
            m,
            k,
            n,
            a: vec![0; m * k],
            w: vec![0; k * n],
            bias: None,
            quant: requant(multiplier(qa.scale * qb.scale / qy.scale, "matmul output")?),
            channel_scales: None,
        };
        let p = gemm::generate(&ops, self.config, false).map_err(err)?;
        let y = self.result(out, qy);
        let (a_at, w_at, out_at) = (p.inputs[0], p.inputs[1], p.out_addr);
        let tile_rows = p.plan.m_tile;
        let prog = self.program(p.program);
        for i in 0..batch {
            let bind = |tensor, len: usize, addr| Binding {
                tensor,
                offset: i * len,
                len,
                addr,
            };
            let inputs = vec![bind(a, m * k, a_at), bind(b, k * n, w_at)];
            let output = bind(y, m * n, out_at);
            self.layer(out, "batched-gemm", (prog, tile_rows), inputs, output);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::run;
    use super::super::Ctx;
    use super::*;
    use m4c_ir::{DType, Tensor, TensorType};
    use m4c_npu::config::MachineConfig;
    use m4c_ops::Value;

    #[test]
    fn blocks_keep_each_image_within_the_limit() {
        // The LLaMA LM head: 128 tokens, 768 → 32 000 (24.6 M weights).
        assert_eq!(column_blocks(128, 768, 32_000, 16 << 20), Some(2));
        assert_eq!(column_blocks(2, 64, 10, 16 << 20), Some(1));
        assert_eq!(column_blocks(4, 8, 10, 4 * 8 + 2 * (8 + 4 + 16)), Some(5));
        assert_eq!(column_blocks(4, 8, 10, 4 * 8), None);
    }

    /// A GEMM whose weights exceed the layer limit is split into column
    /// blocks joined by a DMA concat, with exactly the unsplit result
    /// (per-channel weights: each column's arithmetic is the same).
    #[test]
    fn split_columns_give_the_unsplit_result_exactly() {
        let (m, k, n) = (3, 5, 7);
        let mut g = Graph::new("mm");
        let x = g.add_input("x", TensorType::fixed(DType::F32, &[m, k]));
        let w: Vec<f32> = (0..k * n)
            .map(|i| (i * 13 % 17) as f32 / 8.0 - 1.0)
            .collect();
        let w = g.add_const("w", Tensor::from_f32(&[k, n], &w));
        let op = Op::MatMul {
            trans_a: false,
            trans_b: false,
        };
        let y = g.add_node(op, &[x, w], "y").unwrap();
        g.outputs.push(y);
        let xs: Vec<f32> = (0..m * k)
            .map(|i| (i * 7 % 11) as f32 / 5.0 - 1.0)
            .collect();
        let input = Value::F32(ndarray::ArrayD::from_shape_vec(vec![m, k], xs.clone()).unwrap());
        let cal = crate::calibrate::calibrate(&g, &[vec![input]]).unwrap();
        let config = MachineConfig::edge_small();
        let lowered = |limit: usize| {
            let mut cx = Ctx::new(&g, &cal, &config);
            cx.layer_limit = limit;
            cx.matmul(&[x, w], y, false, None).unwrap();
            let t = cx.tensor_of[&y];
            run(&cx.out, &[("x", &xs)], t, &config)
        };
        let (whole, kernels) = lowered(16 << 20);
        assert_eq!(kernels, ["gemm"]);
        // Room for A and 3 columns per block: blocks of 3, 3 and 1.
        let (split, kernels) = lowered(m * k + 3 * (k + m + 16));
        assert_eq!(kernels, ["gemm", "gemm", "gemm", "dma-concat"]);
        assert_eq!(split, whole);
        assert!(whole.iter().any(|&v| v != 0));
    }

    /// A run-time `Q·Kᵀ` (B transposed) is a DMA transpose and the
    /// batched GEMM: exactly what an explicit Transpose then MatMul give.
    #[test]
    fn a_transposed_run_time_b_equals_an_explicit_transpose() {
        let (batch, m, k, n) = (2, 3, 4, 5);
        let ramp = |len: usize, step: usize| -> Vec<f32> {
            (0..len)
                .map(|i| (i * step % 13) as f32 / 6.0 - 1.0)
                .collect()
        };
        let (xa, xb) = (ramp(batch * m * k, 5), ramp(batch * n * k, 7));
        let config = MachineConfig::edge_small();
        let lowered = |explicit: bool| {
            let mut g = Graph::new("qk");
            let a = g.add_input("a", TensorType::fixed(DType::F32, &[batch, m, k]));
            let b = g.add_input("b", TensorType::fixed(DType::F32, &[batch, n, k]));
            let (b2, trans_b) = match explicit {
                true => {
                    let perm = Op::Transpose {
                        perm: vec![0, 2, 1],
                    };
                    (g.add_node(perm, &[b], "bt").unwrap(), false)
                }
                false => (b, true),
            };
            let op = Op::MatMul {
                trans_a: false,
                trans_b,
            };
            let y = g.add_node(op, &[a, b2], "y").unwrap();
            g.outputs.push(y);
            let value = |shape: &[usize], x: &[f32]| {
                Value::F32(ndarray::ArrayD::from_shape_vec(shape.to_vec(), x.to_vec()).unwrap())
            };
            let sample = vec![value(&[batch, m, k], &xa), value(&[batch, n, k], &xb)];
            let cal = crate::calibrate::calibrate(&g, &[sample]).unwrap();
            let mut cx = Ctx::new(&g, &cal, &config);
            for node in &g.nodes {
                cx.node(&node.op, &node.inputs, node.output).unwrap();
            }
            let t = cx.tensor_of[&y];
            run(&cx.out, &[("a", &xa), ("b", &xb)], t, &config)
        };
        let (fused, kernels) = lowered(false);
        assert_eq!(kernels, ["dma-transpose", "batched-gemm", "batched-gemm"]);
        let (explicit, kernels) = lowered(true);
        assert_eq!(kernels, ["dma", "batched-gemm", "batched-gemm"]);
        assert_eq!(fused, explicit);
        assert!(fused.iter().any(|&v| v != 0));
    }
}
