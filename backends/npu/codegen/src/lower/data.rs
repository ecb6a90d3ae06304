//! Data movement: Transpose, Slice, Concat, Expand, Gather with constant
//! indices, nearest-neighbour Resize and Pad as DMA address patterns
//! (`kernels::gather`); the bytes keep their quantisation (a constant
//! fill is quantised with the input's and read from a source of its own).

use m4c_ir::op::{PadMode, ResizeMode};
use m4c_ir::{Op, ValueId};
use m4c_npu::kernels::gather;

use super::{constant, dims, floats, Ctx};

impl Ctx<'_> {
    /// A data-movement `op` from `ins` to `out` (rows of `cols` bytes).
    pub(super) fn movement(
        &mut self,
        op: &Op,
        ins: &[ValueId],
        out: ValueId,
        cols: usize,
    ) -> Result<(), String> {
        let g = self.g;
        let err = |e: m4c_npu::kernels::KernelError| e.to_string();
        let shape = dims(g, out);
        // Gather's indices and Resize's parameters are not moved data.
        let all = ins;
        let ins = match op {
            Op::Gather { .. } | Op::Resize { .. } | Op::Pad { .. } => &ins[..1],
            _ => ins,
        };
        let ts = ins
            .iter()
            .map(|&v| self.tensor(v))
            .collect::<Result<Vec<_>, _>>()?;
        let q = self.quant(ins[0])?;
        for &v in &ins[1..] {
            if self.quant(v)? != q {
                return Err("inputs quantised differently (no requantising concat yet)".into());
            }
        }
        let in_shapes: Vec<Vec<usize>> = ins.iter().map(|&v| dims(g, v)).collect();
        let mut sources: Vec<Vec<i8>> = in_shapes
            .iter()
            .map(|s| vec![0; s.iter().product()])
            .collect();
        if let Op::Pad {
            mode: PadMode::Constant(fill),
            ..
        } = op
        {
            if fill.abs() > 127.5 * q.scale {
                return Err(format!(
                    "pad value {fill} outside the input's int8 range (±{:e})",
                    127.0 * q.scale
                ));
            }
            sources.push(vec![q.quantize(*fill); cols]);
        }
        let ops = gather::GatherOperands {
            sources,
            row_len: cols,
            rows: self.pattern(op, all, &in_shapes, &shape)?,
        };
        let k = gather::generate(&ops, self.config).map_err(err)?;
        let y = self.result(out, q);
        self.whole(out, "dma", k, &ts, y);
        Ok(())
    }

    /// The DMA pieces of `op` (operands `all`) from sources of shapes
    /// `ins` to `shape`.
    fn pattern(
        &self,
        op: &Op,
        all: &[ValueId],
        ins: &[Vec<usize>],
        shape: &[usize],
    ) -> Result<Vec<Vec<gather::Piece>>, String> {
        use crate::movement;
        match op {
            Op::Gather { axis } => {
                let idx = all.get(1).ok_or("Gather without indices")?;
                let values = constant(self.g, *idx).ok_or("run-time Gather indices")?;
                let indices: Vec<i64> = floats(&values).iter().map(|&i| i as i64).collect();
                movement::gather(&ins[0], *axis, (&indices, values.shape()), shape)
            }
            Op::Resize {
                mode: ResizeMode::Nearest(rounding),
                coord,
                scales,
                sizes,
            } => movement::resize_nearest(&ins[0], (*rounding, *coord), scales, sizes),
            Op::Pad { pads, mode } => movement::pad(&ins[0], pads, *mode, shape),
            _ => movement::pieces(op, ins, shape),
        }
    }
}
