//! Pooling and reductions on the vector unit (`kernels::reduce`).
//!
//! - MaxPool and AveragePool (the padding counted) take the cheaper, by
//!   simulated cycles, of two forms: on NCHW, a DMA window pattern
//!   (`dma-window`: one row per output pixel of each plane, one byte per
//!   tap) and a row max or sum, whose rows are already NCHW; or on NHWC
//!   (`dma-nhwc`, then windows of whole channel vectors, one descriptor
//!   per kernel row for a run of pixels), a per-channel max or sum over
//!   the taps and `dma-nchw`. The padding reads a source of -128 for max,
//!   0 for average.
//! - ReduceSum/ReduceMax over trailing axes (GlobalAveragePool is a
//!   ReduceSum and a Mul): the row reduction of the tensor itself.

use m4c_ir::op::{ConvAttrs, PoolAttrs};
use m4c_ir::ValueId;
use m4c_npu::kernels::reduce::{self, ReduceOperands, RowReduce};
use m4c_npu::kernels::{gather, KernelError, KernelProgram};

use super::conv::{form_cycles, Form};
use super::{dims, multiplier, requant, Ctx};
use crate::conv::Geometry;

fn err(e: KernelError) -> String {
    e.to_string()
}

fn kernel_name(op: RowReduce) -> &'static str {
    match op {
        RowReduce::Sum => "reduce-sum",
        RowReduce::Max => "reduce-max",
    }
}

impl Ctx<'_> {
    /// The program reducing `rows x cols` bytes of `x`'s quantisation
    /// (`channels` outputs per row) to `out`'s, the int32 result scaled by
    /// `scale` (real units per step of the input sum or maximum).
    fn reduce_program(
        &self,
        op: RowReduce,
        (rows, cols, channels): (usize, usize, usize),
        (x, out): (ValueId, ValueId),
        scale: f64,
    ) -> Result<KernelProgram, String> {
        let (qx, qy) = (self.quant(x)?, self.quant(out)?);
        if qx.zero_point != 0 || qy.zero_point != 0 {
            return Err("a reduction takes and gives symmetric int8 (zero point 0)".into());
        }
        let ops = ReduceOperands {
            op,
            rows,
            cols,
            channels,
            x: vec![0; rows * cols],
            quant: requant(multiplier(qx.scale * scale / qy.scale, "reduction output")?),
        };
        reduce::generate(&ops, self.config).map_err(err)
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
        let op = if sum { RowReduce::Sum } else { RowReduce::Max };
        let k = self.reduce_program(op, (rows, n / rows.max(1), 1), (ins[0], out), 1.0)?;
        let t = self.tensor(ins[0])?;
        let y = self.result(out, self.quant(out)?);
        self.whole(out, kernel_name(op), k, &[t], y);
        Ok(())
    }

    /// MaxPool (`max`) or AveragePool (the padding counted) of an NCHW
    /// input, in the cheaper of its two forms.
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
        let geo = Geometry::new(&conv, &xs, &attrs.kernel)?;
        let [n, c, h, w] = geo.x;
        let planes = Geometry::new(&conv, &[n * c, 1, h, w], &attrs.kernel)?;
        let [oh, ow] = geo.out();
        let taps = attrs.kernel.iter().product::<usize>();
        let (op, scale) = match max {
            true => (RowReduce::Max, 1.0),
            false => (RowReduce::Sum, 1.0 / taps as f64),
        };
        let pad: i8 = if max { -128 } else { 0 };
        let size = xs.iter().product::<usize>();
        let pixels = n * oh * ow;
        let window = |rows: Vec<Vec<gather::Piece>>, pad_len| gather::GatherOperands {
            sources: vec![vec![0; size], vec![pad; pad_len]],
            row_len: rows_len(&rows),
            rows,
        };
        let io = (ins[0], out);
        let nchw = vec![
            (
                "dma-window",
                gather::generate(&window(planes.im2col(), planes.zeros()), self.config)
                    .map_err(err)?,
            ),
            (
                kernel_name(op),
                self.reduce_program(op, (pixels * c, taps, 1), io, scale)?,
            ),
        ];
        // An input with an NHWC twin is read as it is (`layout`); the
        // NCHW form then pays for writing its NCHW bytes.
        let twin = self.nhwc_of.get(&ins[0]).copied();
        let nchw_cost = self.pending_nchw_cycles(ins[0])?;
        let nhwc = || -> Result<Form, String> {
            let win = gather::generate(&window(geo.nhwc_windows(), geo.nhwc_pad()), self.config);
            let mut form =
                self.after_nhwc(&geo, twin.is_some(), ("dma-window", win.map_err(err)?))?;
            form.push((
                kernel_name(op),
                self.reduce_program(op, (pixels, taps * c, c), io, scale)?,
            ));
            Ok(form)
        };
        let nhwc = nhwc().ok();
        let on_nhwc = match &nhwc {
            Some(f) => form_cycles(f, self.config)? < form_cycles(&nchw, self.config)? + nchw_cost,
            None => false,
        };
        let steps = match (on_nhwc, nhwc) {
            (true, Some(f)) => f,
            _ => nchw,
        };
        let (qx, qy) = (self.quant(ins[0])?, self.quant(out)?);
        let name = self.g.value(out).name.clone();
        let mut t = match (on_nhwc, twin) {
            (true, Some(twin)) => twin.tensor,
            _ => self.tensor(ins[0])?,
        };
        let last = steps.len() - 1;
        for (i, (kernel, k)) in steps.into_iter().enumerate() {
            let next = match (i == last, on_nhwc) {
                (true, false) => self.result(out, qy),
                (true, true) => self.add_tensor(&format!("{name}/{kernel}"), k.out_len, qy),
                _ => self.add_tensor(&format!("{name}/{kernel}"), k.out_len, qx),
            };
            self.whole(out, kernel, k, &[t], next);
            t = next;
        }
        if on_nhwc {
            self.defer_nchw(out, t, [n, c, oh, ow]);
        }
        Ok(())
    }
}

/// Bytes per row of gather rows (those of the first row; every row of a
/// window pattern has the same).
fn rows_len(rows: &[Vec<gather::Piece>]) -> usize {
    rows.first().map_or(0, |r| r.iter().map(|p| p.len).sum())
}
