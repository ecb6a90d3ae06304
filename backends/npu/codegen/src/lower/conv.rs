//! Conv: a patchify conv as an im2col DMA pattern, a GEMM and a DMA
//! transpose back to NCHW.

use m4c_ir::ValueId;
use m4c_npu::kernels::{gather, gemm, KernelProgram, Quant};

use super::{constant, dims, floats, multiplier, requant, symmetric, Ctx};

impl Ctx<'_> {
    /// A patchify conv: im2col by DMA, a GEMM with per-channel weights and
    /// the bias folded in, the result transposed to NCHW by DMA.
    pub(super) fn patchify(&mut self, ins: &[ValueId], out: ValueId) -> Result<(), String> {
        let g = self.g;
        let err = |e: m4c_npu::kernels::KernelError| e.to_string();
        let (xs, ws, ys) = (dims(g, ins[0]), dims(g, ins[1]), dims(g, out));
        let (m, kh, kw) = (ws[0], ws[2], ws[3]);
        let k = ws[1] * kh * kw;
        let pixels = ys[0] * ys[2] * ys[3];
        let (x, qx, qy) = (self.tensor(ins[0])?, self.quant(ins[0])?, self.quant(out)?);
        let name = g.value(out).name.clone();
        let ops = gather::GatherOperands {
            sources: vec![vec![0; xs.iter().product()]],
            row_len: k,
            rows: crate::conv::im2col(&xs, (kh, kw)),
        };
        let kp = gather::generate(&ops, self.config).map_err(err)?;
        let cols = self.add_tensor(&format!("{name}/im2col"), pixels * k, qx);
        self.whole(out, "dma-im2col", kp, &[x], cols);
        let w = floats(&constant(g, ins[1]).ok_or("run-time weights")?);
        let bias = ins.get(2).and_then(|&b| constant(g, b)).map(|b| floats(&b));
        let qw: Vec<Quant> = (0..m)
            .map(|c| {
                symmetric(
                    w[c * k..(c + 1) * k]
                        .iter()
                        .fold(0.0, |a: f64, x| a.max(x.abs())),
                )
            })
            .collect();
        let wq = (0..k * m)
            .map(|i| qw[i % m].quantize(w[(i % m) * k + i / m]))
            .collect();
        let scales = qw
            .iter()
            .map(|q| multiplier(qx.scale * q.scale / qy.scale, "conv output"))
            .collect::<Result<Vec<_>, _>>()?;
        let bias = bias.map(|b| {
            (0..m)
                .map(|c| (b[c] / (qx.scale * qw[c].scale)).round().clamp(-2e9, 2e9) as i32)
                .collect()
        });
        let ops = gemm::GemmOperands {
            m: pixels,
            k,
            n: m,
            a: vec![0; pixels * k],
            w: wq,
            bias,
            quant: requant(scales[0]),
            channel_scales: Some(scales),
        };
        let p = gemm::generate(&ops, self.config, false).map_err(err)?;
        let prod = self.add_tensor(&format!("{name}/gemm"), pixels * m, qy);
        let kp = KernelProgram {
            program: p.program,
            out_addr: p.out_addr,
            out_len: pixels * m,
            tile_rows: p.plan.m_tile,
            inputs: vec![p.inputs[0]],
        };
        self.whole(out, "gemm", kp, &[cols], prod);
        let ops = gather::GatherOperands {
            sources: vec![vec![0; pixels * m]],
            row_len: ys[3],
            rows: crate::conv::to_nchw(ys[0], m, (ys[2], ys[3])),
        };
        let kp = gather::generate(&ops, self.config).map_err(err)?;
        let y = self.result(out, qy);
        self.whole(out, "dma-nchw", kp, &[prod], y);
        Ok(())
    }
}
