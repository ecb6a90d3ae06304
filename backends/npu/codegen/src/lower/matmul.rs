//! MatMul: a GEMM with per-channel symmetric int8 weights when B is a
//! constant (the bias of a following `Add` of a constant vector fused),
//! one GEMM program shared by every batch entry when B is a run-time
//! operand (attention).

use m4c_ir::{Graph, Op, ValueId};
use m4c_npu::kernels::{gemm, KernelProgram, Quant};
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
            let wq = (0..k * n).map(|i| qw[i % n].quantize(w[i])).collect();
            let scales = qw
                .iter()
                .map(|q| multiplier(qa.scale * q.scale / qy.scale, "GEMM output"))
                .collect::<Result<Vec<_>, _>>()?;
            let ops = gemm::GemmOperands {
                m: m_all,
                k,
                n,
                a: vec![0; m_all * k],
                w: wq,
                bias: bias.map(|b| {
                    (0..n)
                        .map(|c| (b[c] / (qa.scale * qw[c].scale)).round().clamp(-2e9, 2e9) as i32)
                        .collect()
                }),
                quant: requant(scales[0]),
                channel_scales: Some(scales),
            };
            let p = gemm::generate(&ops, self.config, false).map_err(err)?;
            let y = self.result(out, qy);
            let kp = KernelProgram {
                program: p.program,
                out_addr: p.out_addr,
                out_len: m_all * n,
                tile_rows: p.plan.m_tile,
                inputs: vec![p.inputs[0]],
            };
            self.whole(out, "gemm", kp, &[a], y);
            return Ok(());
        }
        let m = a_shape[a_shape.len() - 2];
        let batch = m_all / m;
        let qb = self.quant(ins[1])?;
        if qb.zero_point != 0 {
            return Err("a run-time B operand must be symmetric int8".into());
        }
        let b = self.tensor(ins[1])?;
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
        let prog = self.program(p.program);
        for i in 0..batch {
            let bind = |tensor, len: usize, addr| Binding {
                tensor,
                offset: i * len,
                len,
                addr,
            };
            let inputs = vec![bind(a, m * k, a_at), bind(b, k * n, w_at)];
            self.layer(out, "batched-gemm", prog, inputs, bind(y, m * n, out_at));
        }
        Ok(())
    }
}
