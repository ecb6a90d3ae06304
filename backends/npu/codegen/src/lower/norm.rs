//! Softmax (the softmax kernel, writing the calibrated output
//! quantisation) and LayerNorm/RMSNorm (the norm kernel), both over the
//! last axis.

use m4c_ir::op::NormKind as IrNorm;
use m4c_ir::ValueId;
use m4c_npu::kernels::{norm, softmax};

use super::{constant, floats, symmetric, Ctx};

impl Ctx<'_> {
    /// Softmax over the last axis of a `rows x cols` value.
    pub(super) fn softmax(
        &mut self,
        ins: &[ValueId],
        out: ValueId,
        rows: usize,
        cols: usize,
    ) -> Result<(), String> {
        let err = |e: m4c_npu::kernels::KernelError| e.to_string();
        let x = self.tensor(ins[0])?;
        let input = self.quant(ins[0])?;
        let q = self.quant(out)?;
        let ops = softmax::SoftmaxOperands {
            rows,
            cols,
            x: vec![0; rows * cols],
            input,
            output: q,
        };
        let k = softmax::generate(&ops, self.config).map_err(err)?;
        let y = self.result(out, q);
        self.whole(out, "softmax", k, &[x], y);
        Ok(())
    }

    /// LayerNorm or RMSNorm over the last axis of a `rows x cols` value.
    pub(super) fn norm(
        &mut self,
        kind: IrNorm,
        epsilon: f32,
        ins: &[ValueId],
        out: ValueId,
        (rows, cols): (usize, usize),
    ) -> Result<(), String> {
        let g = self.g;
        let err = |e: m4c_npu::kernels::KernelError| e.to_string();
        let x = self.tensor(ins[0])?;
        let param = |i: usize| -> (Vec<i8>, f64) {
            let v = ins.get(i).and_then(|&p| constant(g, p)).map(|v| floats(&v));
            let v = v.unwrap_or_else(|| vec![0.0; cols]);
            let q = symmetric(v.iter().fold(0.0, |m: f64, x| m.max(x.abs())));
            (v.iter().map(|&x| q.quantize(x)).collect(), q.scale)
        };
        let ((gamma, gamma_scale), (beta, beta_scale)) = (param(1), param(2));
        let layer = kind == IrNorm::Layer;
        let ops = norm::NormOperands {
            kind: if layer {
                norm::NormKind::LayerNorm
            } else {
                norm::NormKind::RmsNorm
            },
            rows,
            cols,
            x: vec![0; rows * cols],
            input: self.quant(ins[0])?,
            gamma,
            gamma_scale,
            beta: if layer { beta } else { vec![] },
            beta_scale,
            eps: f64::from(epsilon),
            output: self.quant(out)?,
        };
        let k = norm::generate(&ops, self.config).map_err(err)?;
        let y = self.result(out, ops.output);
        self.whole(out, if layer { "layernorm" } else { "rmsnorm" }, k, &[x], y);
        Ok(())
    }
}
