//! Data movement: Transpose, Slice, Concat and Expand as DMA address
//! patterns (`kernels::gather`); the bytes keep their quantisation.

use m4c_ir::{Op, ValueId};
use m4c_npu::kernels::gather;

use super::{dims, Ctx};

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
        let ops = gather::GatherOperands {
            sources: in_shapes
                .iter()
                .map(|s| vec![0; s.iter().product()])
                .collect(),
            row_len: cols,
            rows: crate::movement::pieces(op, &in_shapes, &shape)?,
        };
        let k = gather::generate(&ops, self.config).map_err(err)?;
        let y = self.result(out, q);
        self.whole(out, "dma", k, &ts, y);
        Ok(())
    }
}
