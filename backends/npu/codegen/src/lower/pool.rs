//! Pooling and reductions on the vector unit (`kernels::reduce`):
//! MaxPool and AveragePool as a DMA window pattern (`dma-window`: one row
//! per output pixel of each NCHW plane, one byte per window tap; the
//! padding read from a source of -128 for max, 0 for average) and a row
//! max or sum; ReduceSum/ReduceMax over trailing axes (GlobalAveragePool
//! is a ReduceSum and a Mul) as the row reduction of the tensor itself.
//! The NCHW order of the output is the rows' order: no layout change.

use m4c_ir::op::{ConvAttrs, PoolAttrs};
use m4c_ir::ValueId;
use m4c_npu::kernels::reduce::{self, ReduceOperands, RowReduce};
use m4c_npu::kernels::{gather, KernelError};

use super::{dims, multiplier, requant, Ctx};
use crate::conv::Geometry;

fn err(e: KernelError) -> String {
    e.to_string()
}

impl Ctx<'_> {
    /// A row reduction of `x` (tensor `t`, rows of `cols`) to `out`, the
    /// int32 result scaled by `scale` (real units per step of the input
    /// sum or maximum) into `out`'s quantisation.
    fn row_reduce(
        &mut self,
        op: RowReduce,
        (x, t, cols): (ValueId, usize, usize),
        out: ValueId,
        scale: f64,
    ) -> Result<(), String> {
        let (qx, qy) = (self.quant(x)?, self.quant(out)?);
        if qx.zero_point != 0 || qy.zero_point != 0 {
            return Err("a reduction takes and gives symmetric int8 (zero point 0)".into());
        }
        let rows = dims(self.g, out).iter().product();
        let ops = ReduceOperands {
            op,
            rows,
            cols,
            x: vec![0; rows * cols],
            quant: requant(multiplier(qx.scale * scale / qy.scale, "reduction output")?),
        };
        let k = reduce::generate(&ops, self.config).map_err(err)?;
        let y = self.result(out, qy);
        let kernel = match op {
            RowReduce::Sum => "reduce-sum",
            RowReduce::Max => "reduce-max",
        };
        self.whole(out, kernel, k, &[t], y);
        Ok(())
    }

    /// ReduceSum (`sum`) or ReduceMax over the trailing axes of `ins[0]`.
    pub(super) fn reduce(
        &mut self,
        sum: bool,
        ins: &[ValueId],
        out: ValueId,
    ) -> Result<(), String> {
        let n: usize = dims(self.g, ins[0]).iter().product();
        let rows: usize = dims(self.g, out).iter().product();
        let t = self.tensor(ins[0])?;
        let op = if sum { RowReduce::Sum } else { RowReduce::Max };
        self.row_reduce(op, (ins[0], t, n / rows.max(1)), out, 1.0)
    }

    /// MaxPool (`max`) or AveragePool (the padding counted) of an NCHW
    /// input.
    pub(super) fn pool(
        &mut self,
        max: bool,
        attrs: &PoolAttrs,
        ins: &[ValueId],
        out: ValueId,
    ) -> Result<(), String> {
        let xs = dims(self.g, ins[0]);
        let conv = ConvAttrs {
            strides: attrs.strides.clone(),
            pads: attrs.pads.clone(),
            dilations: attrs.dilations.clone(),
            group: 1,
        };
        let planes = xs.first().copied().unwrap_or(1) * xs.get(1).copied().unwrap_or(1);
        let plane = [
            planes,
            1,
            xs.get(2).copied().unwrap_or(1),
            xs.get(3).copied().unwrap_or(1),
        ];
        let geo = Geometry::new(&conv, &plane, &attrs.kernel)?;
        let taps = attrs.kernel.iter().product::<usize>();
        let x = self.tensor(ins[0])?;
        let ops = gather::GatherOperands {
            sources: vec![
                vec![0; xs.iter().product()],
                vec![if max { -128 } else { 0 }; geo.zeros()],
            ],
            row_len: taps,
            rows: geo.im2col(),
        };
        let k = gather::generate(&ops, self.config).map_err(err)?;
        let name = format!("{}/window", self.g.value(out).name);
        let q = self.quant(ins[0])?;
        let win = self.add_tensor(&name, k.out_len, q);
        self.whole(out, "dma-window", k, &[x], win);
        let (op, scale) = if max {
            (RowReduce::Max, 1.0)
        } else {
            (RowReduce::Sum, 1.0 / taps as f64)
        };
        self.row_reduce(op, (ins[0], win, taps), out, scale)
    }
}
