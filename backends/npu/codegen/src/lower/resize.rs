//! Linear Resize, one resized axis after another (as the interpreter
//! does): the lower and upper neighbour of every output position gathered
//! by DMA (`dma-lo`, `dma-hi`; the interpreter's clamped source
//! coordinate), then `lerp` weighting them by the position's fraction in
//! Q7 (`kernels::lerp`). Intermediate results keep the input's scale (an
//! interpolation stays within its inputs' range); the last axis gives the
//! calibrated output.

use m4c_ir::op::CoordMode;
use m4c_ir::ValueId;
use m4c_npu::kernels::{gather, lerp};

use super::{dims, multiplier, requant, Ctx};
use crate::movement::take_along;

impl Ctx<'_> {
    /// A linear Resize of `ins[0]` to `sizes`.
    pub(super) fn resize_linear(
        &mut self,
        coord: CoordMode,
        (scales, sizes): (&[f32], &[usize]),
        ins: &[ValueId],
        out: ValueId,
    ) -> Result<(), String> {
        let err = |e: m4c_npu::kernels::KernelError| e.to_string();
        let mut shape = dims(self.g, ins[0]);
        if scales.len() != shape.len() || sizes.len() != shape.len() {
            return Err(format!("resize of {shape:?} to {sizes:?}"));
        }
        let axes: Vec<usize> = (0..shape.len())
            .filter(|&d| sizes[d] != shape[d] || scales[d] != 1.0)
            .collect();
        let mut t = self.tensor(ins[0])?;
        let (mut q, qy) = (self.quant(ins[0])?, self.quant(out)?);
        if q.zero_point != 0 || qy.zero_point != 0 {
            return Err("a resize takes and gives symmetric int8 (zero point 0)".into());
        }
        if axes.is_empty() {
            self.tensor_of.insert(out, t);
            return Ok(());
        }
        let name = self.g.value(out).name.clone();
        for (k, &d) in axes.iter().enumerate() {
            let (len_in, len_out) = (shape[d], sizes[d]);
            let outer: usize = shape[..d].iter().product();
            let inner: usize = shape[d + 1..].iter().product();
            let last = (len_in as f64 - 1.0).max(0.0);
            let (mut lo, mut hi, mut w) = (vec![], vec![], vec![]);
            for o in 0..len_out {
                let x = coord.source(o, scales[d], len_in, len_out).clamp(0.0, last);
                let i0 = x.floor();
                lo.push(i0 as usize);
                hi.push((i0 + 1.0).min(last) as usize);
                w.push(((x - i0) * f64::from(lerp::WEIGHT_ONE)).round() as i8);
            }
            let (rows, cols) = match inner {
                1 => (outer, len_out),
                _ => (outer * len_out, inner),
            };
            let mut ends = vec![];
            for (kernel, idx) in [("dma-lo", &lo), ("dma-hi", &hi)] {
                let ops = gather::GatherOperands {
                    sources: vec![vec![0; outer * len_in * inner]],
                    row_len: cols,
                    rows: take_along((outer, len_in, inner), idx),
                };
                let kp = gather::generate(&ops, self.config).map_err(err)?;
                let e = self.add_tensor(&format!("{name}/axis{d}/{kernel}"), rows * cols, q);
                self.whole(out, kernel, kp, &[t], e);
                ends.push(e);
            }
            let q_out = if k + 1 == axes.len() { qy } else { q };
            let scale = q.scale / (f64::from(lerp::WEIGHT_ONE) * q_out.scale);
            let ops = lerp::LerpOperands {
                rows,
                cols,
                a: vec![0; rows * cols],
                b: vec![0; rows * cols],
                w: match inner {
                    1 => w,
                    _ => (0..rows).map(|r| w[r % len_out]).collect(),
                },
                per_row: inner != 1,
                quant: requant(multiplier(scale, "resize output")?),
            };
            let kp = lerp::generate(&ops, self.config).map_err(err)?;
            shape[d] = len_out;
            let next = match k + 1 == axes.len() {
                true => self.result(out, qy),
                false => self.add_tensor(&format!("{name}/axis{d}"), rows * cols, q_out),
            };
            self.whole(out, "lerp", kp, &ends, next);
            (t, q) = (next, q_out);
        }
        Ok(())
    }
}
