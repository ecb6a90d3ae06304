//! Functions of one value as one table. An elementwise node whose
//! run-time operands all derive, through such nodes, from one value `x`
//! of its own shape (its constants scalars) computes a function of `x`
//! alone: SiLU `x·σ(x)`, quick-GELU, a decomposed GELU, HardSwish,
//! `1 − mask` scaled. Such nodes are not lowered one by one: when a value
//! of the region is first needed (read by a node outside it, or leaving
//! the part) it gets one lookup-table layer from `x`, its 256 entries
//! computed by evaluating the region's IR ops on the 256 dequantised codes
//! of `x` — one rounding instead of one per op, and one layer instead of
//! several. A single unary op is the one-op case.

use std::collections::HashMap;

use m4c_ir::{DType, Node, Op, ValueId};
use m4c_ops::{eval_op, Value};

use super::{constant, dims, floats, Ctx};
use crate::constraints::LUT_OPS;

/// Values computed by region nodes: each one's source `x` and producer.
#[derive(Default)]
pub(super) struct Regions {
    source: HashMap<ValueId, (ValueId, usize)>,
}

impl Ctx<'_> {
    /// The value `node` is a function of, when it is one: an elementwise
    /// op whose constants are scalars and whose run-time operands have its
    /// shape and all derive from one value (`source_of` gives the source
    /// of a value already in a region).
    fn unary_source(
        &self,
        node: &Node,
        source_of: &dyn Fn(ValueId) -> Option<ValueId>,
    ) -> Option<ValueId> {
        let g = self.g;
        let binary = matches!(
            node.op,
            Op::Add | Op::Sub | Op::Mul | Op::Div | Op::Max | Op::Min | Op::Pow
        );
        if !(binary || LUT_OPS.contains(&node.op.kind()))
            || g.value(node.output).ty.dtype != DType::F32
        {
            return None;
        }
        let shape = dims(g, node.output);
        let mut source = None;
        for &v in &node.inputs {
            if let Some(c) = constant(g, v) {
                if c.len() != 1 {
                    return None;
                }
                continue;
            }
            let s = source_of(v).unwrap_or(v);
            if dims(g, v) != shape || source.is_some_and(|x| x != s) {
                return None;
            }
            source = Some(s);
        }
        let x = source?;
        let calibrated = |v: ValueId| self.cal.quant(&g.value(v).name).is_some();
        (calibrated(x) && calibrated(node.output)).then_some(x)
    }

    /// Takes node `i` into a region instead of lowering it, when it is a
    /// function of one value. `true` when taken.
    pub(super) fn defer_unary(&mut self, i: usize) -> bool {
        let node = &self.g.nodes[i];
        let regions = &self.regions.source;
        let Some(x) = self.unary_source(node, &|v| regions.get(&v).map(|&(s, _)| s)) else {
            return false;
        };
        self.regions.source.insert(node.output, (x, i));
        true
    }

    /// A function of `x` the layer computing `x` can apply in its output
    /// stage: when every node of `nodes` reading `x` is in a region of
    /// `x`, `x` does not leave the part, and exactly one value of the
    /// region is needed (read outside it or leaving the part): that value
    /// and its table from `x`'s codes to its own. Its region is taken in
    /// (its nodes are then deferred as usual and the value is not given a
    /// layer of its own: the caller's layer computes it).
    pub(super) fn epilogue(
        &mut self,
        x: ValueId,
        nodes: &[usize],
        exported: &dyn Fn(ValueId) -> bool,
    ) -> Result<Option<(ValueId, [i8; 256])>, String> {
        let g = self.g;
        let mut members: HashMap<ValueId, usize> = HashMap::new();
        for &i in nodes {
            let node = &g.nodes[i];
            let reads = |v: &ValueId| *v == x || members.contains_key(v);
            if !node.inputs.iter().any(reads) {
                continue;
            }
            let inside = |v| members.contains_key(&v).then_some(x);
            if self.unary_source(node, &inside) == Some(x) {
                members.insert(node.output, i);
            }
        }
        let needed = |v: ValueId| {
            exported(v)
                || nodes.iter().any(|&i| {
                    let n = &g.nodes[i];
                    n.inputs.contains(&v) && !members.contains_key(&n.output)
                })
        };
        if members.is_empty() || needed(x) {
            return Ok(None);
        }
        let mut wanted = members.keys().copied().filter(|&v| needed(v));
        let (Some(v), None) = (wanted.next(), wanted.next()) else {
            return Ok(None);
        };
        for (&m, &i) in &members {
            self.regions.source.insert(m, (x, i));
        }
        Ok(Some((v, self.table(x, v)?.0)))
    }

    /// Gives region value `v` its layer (nothing for other values or
    /// when it has one): a table from its source, on the source's NHWC
    /// twin where it has one (the result is then a twin in turn).
    pub(super) fn realise(&mut self, v: ValueId) -> Result<(), String> {
        let Some(&(x, _)) = self.regions.source.get(&v) else {
            return Ok(());
        };
        if self.tensor_of.contains_key(&v) || self.nhwc_of.contains_key(&v) {
            return Ok(());
        }
        let (table, ops) = self.table(x, v)?;
        let kernel = match ops {
            1 => format!("lut-{}", self.producer(v)?.op.kind().name().to_lowercase()),
            _ => format!("lut-{ops}ops"),
        };
        let shape = dims(self.g, v);
        match (self.nhwc_of.get(&x).map(|t| t.tensor), &shape[..]) {
            (Some(twin), &[n, c, h, w]) => {
                let t = self.table_layer(v, twin, &table, (n * h * w, c), &kernel)?;
                self.defer_nchw(v, t, [n, c, h, w]);
            }
            _ => {
                let cols = shape.last().copied().unwrap_or(1).max(1);
                let rows = shape.iter().product::<usize>() / cols;
                let t = self.tensor(x)?;
                let y = self.table_layer(v, t, &table, (rows, cols), &kernel)?;
                self.tensor_of.insert(v, y);
            }
        }
        Ok(())
    }

    /// The table from the codes of `x` to those of region value `v`, and
    /// the number of region ops it evaluates.
    fn table(&self, x: ValueId, v: ValueId) -> Result<([i8; 256], usize), String> {
        let (qx, qy) = (self.quant(x)?, self.quant(v)?);
        let grid = Value::F32(ndarray::ArrayD::from_shape_fn(vec![256], |i| {
            qx.dequantize((i[0] as i32 - 128) as i8) as f32
        }));
        let mut memo = HashMap::new();
        let f = floats(&self.evaluate(v, x, &grid, &mut memo)?);
        if f.len() != 256 {
            return Err(format!("lookup table of {} entries", f.len()));
        }
        Ok((std::array::from_fn(|i| qy.quantize(f[i])), memo.len()))
    }

    fn producer(&self, v: ValueId) -> Result<&Node, String> {
        let &(_, i) = self
            .regions
            .source
            .get(&v)
            .ok_or("a region reads a value outside it")?;
        self.g.nodes.get(i).ok_or_else(|| "no such node".into())
    }

    /// Region value `v` on `grid` (the dequantised codes of `x`); `memo`
    /// holds each region node's result once.
    fn evaluate(
        &self,
        v: ValueId,
        x: ValueId,
        grid: &Value,
        memo: &mut HashMap<ValueId, Value>,
    ) -> Result<Value, String> {
        if v == x {
            return Ok(grid.clone());
        }
        if let Some(c) = constant(self.g, v) {
            return Ok(c);
        }
        if let Some(done) = memo.get(&v) {
            return Ok(done.clone());
        }
        let node = self.producer(v)?;
        let args = node
            .inputs
            .iter()
            .map(|&u| self.evaluate(u, x, grid, memo))
            .collect::<Result<Vec<_>, _>>()?;
        let refs: Vec<&Value> = args.iter().collect();
        let y = eval_op(&node.op, &refs).map_err(|e| e.to_string())?;
        memo.insert(v, y.clone());
        Ok(y)
    }
}

#[cfg(test)]
mod tests {
    use super::super::lower_part;
    use super::super::testing::{quant_of, run};
    use m4c_ir::{DType, Graph, Op, Tensor, TensorType};
    use m4c_npu::config::MachineConfig;

    /// SiLU written as `x · σ(x)` and HardSwish as `x · min(max(x + 3,
    /// 0), 6) / 6` are one table layer each, and match the float
    /// functions within one int8 step of the result.
    #[test]
    fn functions_of_one_value_are_one_table() {
        let mut g = Graph::new("act");
        let x = g.add_input("x", TensorType::fixed(DType::F32, &[4, 64]));
        let scalar =
            |g: &mut Graph, name: &str, v: f32| g.add_const(name, Tensor::from_f32(&[], &[v]));
        let s = g.add_node(Op::Sigmoid, &[x], "s").unwrap();
        let silu = g.add_node(Op::Mul, &[x, s], "silu").unwrap();
        let three = scalar(&mut g, "three", 3.0);
        let zero = scalar(&mut g, "zero", 0.0);
        let six = scalar(&mut g, "six", 6.0);
        let a = g.add_node(Op::Add, &[silu, three], "a").unwrap();
        let b = g.add_node(Op::Max, &[a, zero], "b").unwrap();
        let c = g.add_node(Op::Min, &[b, six], "c").unwrap();
        let d = g.add_node(Op::Mul, &[silu, c], "d").unwrap();
        let y = g.add_node(Op::Div, &[d, six], "y").unwrap();
        g.outputs.extend([silu, y]);
        let xs: Vec<f32> = (0..256).map(|i| (i as f32 - 128.0) / 16.0).collect();
        let input =
            m4c_ops::Value::F32(ndarray::ArrayD::from_shape_vec(vec![4, 64], xs.clone()).unwrap());
        let cal = crate::calibrate::calibrate(&g, &[vec![input]]).unwrap();
        let config = MachineConfig::edge_small();
        let nodes: Vec<usize> = (0..g.nodes.len()).collect();
        let part = lower_part(&g, &nodes, &|v| v == silu || v == y, &cal, &config).unwrap();
        let kernels: Vec<&str> = part.plan.layers.iter().map(|l| l.kernel.as_str()).collect();
        // silu from x (2 ops); y from x through silu (7 ops): one table each.
        assert_eq!(kernels, ["lut-2ops", "lut-7ops"], "{kernels:?}");
        for (value, f) in [
            (
                "silu",
                &(|x: f64| x / (1.0 + (-x).exp())) as &dyn Fn(f64) -> f64,
            ),
            ("y", &|x: f64| {
                let s = x / (1.0 + (-x).exp());
                s * (s + 3.0).clamp(0.0, 6.0) / 6.0
            }),
        ] {
            let out = part.outputs.iter().find(|b| b.value == value).unwrap();
            let (codes, _) = run(&part, &[("x", &xs)], out.tensor, &config);
            let (qo, qx) = (
                quant_of(&part, out.tensor),
                quant_of(&part, part.inputs[0].tensor),
            );
            for (&x, &c) in xs.iter().zip(&codes) {
                let want = f(qx.dequantize(qx.quantize(f64::from(x))));
                assert!(
                    (qo.dequantize(c) - want).abs() <= qo.scale * 0.5 + 1e-9,
                    "{value}({x})"
                );
            }
        }
    }
}
