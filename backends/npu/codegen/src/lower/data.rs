//! Data movement: Transpose, Slice, Concat, Expand, Gather with constant
//! indices, nearest-neighbour Resize and Pad as DMA address patterns
//! (`kernels::gather`); the bytes keep their quantisation (a constant
//! fill is quantised with the input's and read from a source of its own),
//! except a Concat of inputs quantised differently, which are first
//! requantised by a table each; and embedding lookups (a Gather of a
//! constant table by run-time indices) as one row load per index.

use m4c_ir::op::{PadMode, ResizeMode};
use m4c_ir::{Op, ValueId};
use m4c_npu::kernels::{gather, lut, Quant};
use m4c_npu::module::{IndexInput, RowIndex};

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
        if matches!(op, Op::Gather { .. }) && constant(g, ins[1]).is_none() {
            return self.embedding(ins, out);
        }
        let err = |e: m4c_npu::kernels::KernelError| e.to_string();
        let shape = dims(g, out);
        // Gather's indices and Resize's parameters are not moved data.
        let all = ins;
        let ins = match op {
            Op::Gather { .. } | Op::Resize { .. } | Op::Pad { .. } => &ins[..1],
            _ => ins,
        };
        // Constant operands (a CLS token) are quantised into the program;
        // run-time ones are bound.
        let consts: Vec<Option<Vec<f64>>> = ins
            .iter()
            .map(|&v| constant(g, v).map(|c| floats(&c)))
            .collect();
        if consts.iter().all(Option::is_some) {
            return Err("no run-time operand".into());
        }
        let mut ts = ins
            .iter()
            .zip(&consts)
            .map(|(&v, c)| match c {
                Some(_) => Ok(None),
                None => self.tensor(v).map(Some),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let in_shapes: Vec<Vec<usize>> = ins.iter().map(|&v| dims(g, v)).collect();
        let quants = ins
            .iter()
            .zip(&consts)
            .map(|(&v, c)| {
                c.as_ref()
                    .map_or_else(|| self.quant(v).map(Some), |_| Ok(None))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let runtime: Vec<Quant> = quants.iter().flatten().copied().collect();
        // Inputs quantised differently (a Concat of branches, a KV cache
        // and its new entry) or constants are brought to the result's own
        // calibrated quantisation: a table each for the run-time ones.
        let q = match consts.iter().all(Option::is_none) && runtime.iter().all(|&q| q == runtime[0])
        {
            true => runtime[0],
            false => self.quant(out)?,
        };
        for ((t, qi), shape) in ts.iter_mut().zip(&quants).zip(&in_shapes) {
            if let (Some(t), Some(qi)) = (t.as_mut(), qi) {
                if *qi != q {
                    *t = self.requantised(*t, shape, (*qi, q), out)?;
                }
            }
        }
        let mut sources: Vec<Vec<i8>> = in_shapes
            .iter()
            .zip(&consts)
            .map(|(s, c)| match c {
                Some(c) => c.iter().map(|&x| q.quantize(x)).collect(),
                None => vec![0; s.iter().product()],
            })
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
        // Only the run-time sources are bound (constants are in the program).
        let inputs = ts
            .iter()
            .zip(&k.inputs)
            .filter_map(|(t, &a)| Some(self.bind((*t)?, a)))
            .collect();
        let output = self.bind(y, k.out_addr);
        let tile_rows = k.tile_rows;
        let p = self.program(k.program);
        self.layer(out, "dma", (p, tile_rows), inputs, output);
        Ok(())
    }

    /// An embedding lookup `out = table[indices]`: the table quantised
    /// with the result's calibrated quantisation (which calibration makes
    /// cover the whole table) in the program, one row load per index,
    /// each moved at run time to the row its index names ([`RowIndex`]).
    fn embedding(&mut self, ins: &[ValueId], out: ValueId) -> Result<(), String> {
        let g = self.g;
        let table = constant(g, ins[0]).ok_or("the table is not a constant")?;
        let &[table_rows, cols] = dims(g, ins[0]).as_slice() else {
            return Err("the table is not 2-D".into());
        };
        let n = dims(g, ins[1]).iter().product::<usize>();
        let q = self.quant(out)?;
        let piece = gather::Piece {
            source: 0,
            start: 0,
            stride: 1,
            len: cols,
        };
        let ops = gather::GatherOperands {
            sources: vec![floats(&table).iter().map(|&x| q.quantize(x)).collect()],
            row_len: cols,
            rows: vec![vec![piece]; n],
        };
        let (k, lds) = gather::generate_rows(&ops, self.config).map_err(|e| e.to_string())?;
        let name = &g.value(ins[1]).name;
        let input = match self.out.indices.iter().position(|i| &i.value == name) {
            Some(at) => at,
            None => {
                self.out.indices.push(IndexInput {
                    value: name.clone(),
                    elements: n,
                });
                self.out.indices.len() - 1
            }
        };
        let y = self.result(out, q);
        let output = self.bind(y, k.out_addr);
        let tile_rows = k.tile_rows;
        let p = self.program(k.program);
        self.layer(out, "dma-rows", (p, tile_rows), vec![], output);
        if let Some(layer) = self.out.plan.layers.last_mut() {
            layer.rows_by_index = Some(RowIndex {
                input,
                lds,
                row_bytes: cols,
                table_rows,
            });
        }
        Ok(())
    }

    /// Tensor `t` of `shape`, quantised as `from`, copied into a new
    /// tensor quantised as `to` by a 256-entry table (a layer of `out`).
    fn requantised(
        &mut self,
        t: usize,
        shape: &[usize],
        (from, to): (Quant, Quant),
        out: ValueId,
    ) -> Result<usize, String> {
        let cols = shape.last().copied().unwrap_or(1).max(1);
        let rows = shape.iter().product::<usize>() / cols;
        let table: [i8; 256] =
            std::array::from_fn(|i| to.quantize(from.dequantize((i as i32 - 128) as i8)));
        let k = lut::generate_table(&table, rows, cols, &vec![0; rows * cols], self.config)
            .map_err(|e| e.to_string())?;
        let name = format!("{}/requantised{}", self.g.value(out).name, t);
        let y = self.add_tensor(&name, rows * cols, to);
        self.whole(out, "lut-requant", k, &[t], y);
        Ok(y)
    }

    /// Run-time tensor `t` (value `v`, at least 2-D) with its last two
    /// axes swapped by a DMA pattern, into a new tensor (a layer of
    /// `out`): the transposed B of an attention `Q·Kᵀ`.
    pub(super) fn transposed(
        &mut self,
        v: ValueId,
        t: usize,
        out: ValueId,
    ) -> Result<usize, String> {
        let shape = dims(self.g, v);
        let r = shape.len();
        if r < 2 {
            return Err(format!("cannot transpose a value of rank {r}"));
        }
        let mut perm: Vec<usize> = (0..r).collect();
        perm.swap(r - 2, r - 1);
        let mut to = shape.clone();
        to.swap(r - 2, r - 1);
        let n = shape.iter().product();
        let op = Op::Transpose { perm };
        let ops = gather::GatherOperands {
            sources: vec![vec![0; n]],
            row_len: to[r - 1],
            rows: crate::movement::pieces(&op, &[shape], &to)?,
        };
        let k = gather::generate(&ops, self.config).map_err(|e| e.to_string())?;
        let name = format!("{}/transposed", self.g.value(v).name);
        let q = self.quant(v)?;
        let y = self.add_tensor(&name, n, q);
        self.whole(out, "dma-transpose", k, &[t], y);
        Ok(y)
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

#[cfg(test)]
mod tests {
    use super::super::testing::{quant_of, run};
    use super::super::Ctx;
    use m4c_ir::{DType, Graph, Op, TensorType};
    use m4c_npu::config::MachineConfig;
    use m4c_ops::Value;

    /// A Concat of inputs with different ranges requantises them to the
    /// result's calibrated quantisation: within one step of it.
    #[test]
    fn a_concat_of_differently_quantised_inputs_is_requantised() {
        let mut g = Graph::new("cat");
        let a = g.add_input("a", TensorType::fixed(DType::F32, &[2, 3]));
        let b = g.add_input("b", TensorType::fixed(DType::F32, &[2, 3]));
        let y = g.add_node(Op::Concat { axis: 1 }, &[a, b], "y").unwrap();
        g.outputs.push(y);
        let xa = [0.1f32, -0.2, 0.3, 0.05, -0.15, 0.25];
        let xb = [4.0f32, -3.5, 1.25, -0.5, 2.0, 3.0];
        let value = |x: &[f32]| {
            Value::F32(ndarray::ArrayD::from_shape_vec(vec![2, 3], x.to_vec()).unwrap())
        };
        let cal = crate::calibrate::calibrate(&g, &[vec![value(&xa), value(&xb)]]).unwrap();
        let config = MachineConfig::edge_small();
        let mut cx = Ctx::new(&g, &cal, &config);
        cx.node(&g.nodes[0].op, &[a, b], y).unwrap();
        let t = cx.tensor_of[&y];
        let (codes, kernels) = run(&cx.out, &[("a", &xa), ("b", &xb)], t, &config);
        assert_eq!(kernels, ["lut-requant", "dma"]);
        let q = quant_of(&cx.out, t);
        let want = [
            xa[0..3].to_vec(),
            xb[0..3].to_vec(),
            xa[3..6].to_vec(),
            xb[3..6].to_vec(),
        ]
        .concat();
        for (c, w) in codes.iter().zip(want) {
            let err = (q.dequantize(*c) - f64::from(w)).abs();
            assert!(
                err <= q.scale * 1.0001,
                "{c} -> {} for {w}",
                q.dequantize(*c)
            );
        }
    }

    /// A Concat with a constant operand (a CLS token before the patch
    /// tokens): the constant is quantised into the program at the
    /// result's calibrated quantisation, the run-time operand bound.
    #[test]
    fn a_concat_with_a_constant_operand_is_generated() {
        let mut g = Graph::new("cls");
        let cls = g.add_const("cls", m4c_ir::Tensor::from_f32(&[1, 3], &[2.0, -1.5, 0.25]));
        let x = g.add_input("x", TensorType::fixed(DType::F32, &[2, 3]));
        let y = g.add_node(Op::Concat { axis: 0 }, &[cls, x], "y").unwrap();
        g.outputs.push(y);
        let xs = [0.1f32, -0.2, 0.3, 0.05, -0.15, 0.25];
        let value = Value::F32(ndarray::ArrayD::from_shape_vec(vec![2, 3], xs.to_vec()).unwrap());
        let cal = crate::calibrate::calibrate(&g, &[vec![value]]).unwrap();
        let config = MachineConfig::edge_small();
        let mut cx = Ctx::new(&g, &cal, &config);
        cx.node(&g.nodes[0].op, &[cls, x], y).unwrap();
        let t = cx.tensor_of[&y];
        let (codes, kernels) = run(&cx.out, &[("x", &xs)], t, &config);
        assert_eq!(kernels, ["lut-requant", "dma"]);
        assert_eq!(cx.out.inputs.len(), 1, "only x enters the part");
        let q = quant_of(&cx.out, t);
        let want = [[2.0f32, -1.5, 0.25].as_slice(), &xs].concat();
        for (c, w) in codes.iter().zip(want) {
            let err = (q.dequantize(*c) - f64::from(w)).abs();
            assert!(
                err <= q.scale * 1.0001,
                "{c} -> {} for {w}",
                q.dequantize(*c)
            );
        }
    }
}
