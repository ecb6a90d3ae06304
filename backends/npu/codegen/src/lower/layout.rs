//! Layout between layers: a conv computes `[pixels, channels]` (NHWC),
//! and the graph's values are NCHW. Rather than converting back after
//! every conv, the NHWC result is kept as the value's *twin* and the
//! change to NCHW (`dma-nchw`) is deferred until a layer needs the NCHW
//! bytes or the value leaves the part. Convs read the twin directly (the
//! direct and depthwise kernels without their `dma-nhwc`, a 1×1 conv as
//! a plain GEMM), and elementwise layers whose operands all have twins
//! compute on them, byte for byte, giving a twin in turn — so a chain of
//! convs, activations and residual adds stays NHWC on the NPU. A part
//! input a conv reads can come in NHWC, or as the patch matrix of a
//! conv whose kernel equals its stride, from the boundary's quantiser
//! (`m4c_npu::layout`), when that makes the conv cheaper.

use m4c_ir::{Op, ValueId};
use m4c_npu::kernels::{gather, KernelProgram};
use m4c_npu::module::{Boundary, Layout};

use super::{constant, dims, Ctx};
use crate::conv::to_nchw;

/// A value also held as `[n*h*w, c]` in `tensor`.
#[derive(Clone, Copy, Debug)]
pub(super) struct Nhwc {
    /// The tensor holding the NHWC bytes.
    pub tensor: usize,
    /// The value's NCHW tensor.
    pub nchw: usize,
    /// The value's NCHW shape.
    pub dims: [usize; 4],
    /// Whether the NCHW tensor is still to be written (a deferred
    /// `dma-nchw`).
    pub pending: bool,
}

impl Ctx<'_> {
    /// The `dma-nchw` kernel from `[n*h*w, c]` to NCHW `[n, c, h, w]`:
    /// one descriptor per channel plane, or per output row where a plane
    /// does not fit the SRAM.
    pub(super) fn nchw_kernel(&self, [n, c, h, w]: [usize; 4]) -> Result<KernelProgram, String> {
        let ops = |per_row| gather::GatherOperands {
            sources: vec![vec![0; n * c * h * w]],
            row_len: if per_row { w } else { h * w },
            rows: to_nchw(n, c, (h, w), per_row),
        };
        gather::generate(&ops(false), self.config)
            .or_else(|_| gather::generate(&ops(true), self.config))
            .map_err(|e| e.to_string())
    }

    /// Simulated cycles of the `dma-nchw` layer for NCHW `dims`.
    pub(super) fn nchw_cycles(&self, dims: [usize; 4]) -> Result<u64, String> {
        super::conv::cycles(&self.nchw_kernel(dims)?.program, self.config)
    }

    /// What a form reading `v`'s NCHW bytes pays on top when only its
    /// NHWC twin exists yet (the deferred `dma-nchw`): 0 otherwise.
    pub(super) fn pending_nchw_cycles(&self, v: ValueId) -> Result<u64, String> {
        match self.nhwc_of.get(&v).filter(|t| t.pending) {
            Some(t) => self.nchw_cycles(t.dims),
            None => Ok(0),
        }
    }

    /// Records `t` as `v`'s NHWC twin (`v` of NCHW shape `dims`) and
    /// allocates `v`'s NCHW tensor, written when first needed.
    pub(super) fn defer_nchw(&mut self, v: ValueId, t: usize, dims: [usize; 4]) {
        let q = self.quant_of_tensor(t);
        let nchw = self.result(v, q);
        let name = format!("{}/nhwc", self.g.value(v).name);
        self.out.plan.tensors[t].name = name;
        let twin = Nhwc {
            tensor: t,
            nchw,
            dims,
            pending: true,
        };
        self.nhwc_of.insert(v, twin);
    }

    /// Part input `v` (of NCHW shape `dims`), brought in by the boundary
    /// in `layout`: its tensor. With [`Layout::Nhwc`] it is `v`'s twin
    /// (its NCHW bytes written from it when needed).
    pub(super) fn entry(
        &mut self,
        v: ValueId,
        layout: Layout,
        dims: [usize; 4],
    ) -> Result<usize, String> {
        let q = self.quant(v)?;
        let name = self.g.value(v).name.clone();
        let t = self.add_tensor(&format!("{name}/{layout:?}"), dims.iter().product(), q);
        self.out.inputs.push(Boundary {
            value: name,
            tensor: t,
            shape: dims.to_vec(),
            layout,
        });
        if layout == Layout::Nhwc {
            self.defer_nchw(v, t, dims);
        }
        Ok(t)
    }

    /// Writes `v`'s NCHW tensor from its twin if that is still deferred.
    pub(super) fn materialise(&mut self, v: ValueId) -> Result<(), String> {
        let Some(twin) = self.nhwc_of.get_mut(&v).filter(|t| t.pending) else {
            return Ok(());
        };
        twin.pending = false;
        let twin = *twin;
        let k = self.nchw_kernel(twin.dims)?;
        self.whole(v, "dma-nchw", k, &[twin.tensor], twin.nchw);
        Ok(())
    }

    /// Lowers elementwise `op` on the NHWC twins of its run-time operands
    /// when they all have one and the shapes agree (constant operands
    /// scalars): the result is a twin in turn. `false` when it does not
    /// apply.
    pub(super) fn elementwise_nhwc(
        &mut self,
        op: &Op,
        ins: &[ValueId],
        out: ValueId,
    ) -> Result<bool, String> {
        let g = self.g;
        let shape = dims(g, out);
        let [n, c, h, w] = shape[..] else {
            return Ok(false);
        };
        let applies = ins.iter().all(|&v| match constant(g, v) {
            Some(k) => k.len() == 1,
            None => self.nhwc_of.contains_key(&v) && dims(g, v) == shape,
        });
        if !applies || ins.iter().all(|&v| constant(g, v).is_some()) {
            return Ok(false);
        }
        // Lower on the twins: the bytes of same-shape operands meet the
        // same way in either layout.
        let saved: Vec<(ValueId, usize)> = ins
            .iter()
            .filter_map(|v| Some((*v, self.nhwc_of.get(v)?.tensor)))
            .map(|(v, t)| (v, self.tensor_of.insert(v, t).unwrap_or(t)))
            .collect();
        let result = self.elementwise(op, ins, out, h * w * n, c);
        // In reverse, so that an operand used twice gets its own back.
        for (v, t) in saved.into_iter().rev() {
            self.tensor_of.insert(v, t);
        }
        result?;
        let t = *self
            .tensor_of
            .get(&out)
            .ok_or("elementwise gave no result")?;
        self.defer_nchw(out, t, [n, c, h, w]);
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::super::lower_part;
    use super::super::testing::{quant_of, run};
    use m4c_ir::op::ConvAttrs;
    use m4c_ir::{DType, Graph, Op, Tensor, TensorType};
    use m4c_npu::config::MachineConfig;
    use m4c_ops::{eval_op, Value};

    fn conv(
        g: &mut Graph,
        x: m4c_ir::ValueId,
        c: [usize; 2],
        k: usize,
        name: &str,
    ) -> m4c_ir::ValueId {
        let n = c[0] * c[1] * k * k;
        let w: Vec<f32> = (0..n).map(|i| (i * 37 % 19) as f32 / 19.0 - 0.5).collect();
        let w = g.add_const(
            format!("{name}.w"),
            Tensor::from_f32(&[c[1], c[0], k, k], &w),
        );
        let attrs = ConvAttrs {
            strides: vec![1, 1],
            pads: vec![k / 2; 4],
            dilations: vec![1, 1],
            group: 1,
        };
        g.add_node(Op::Conv(attrs), &[x, w], name).unwrap()
    }

    /// conv 3×3 → Sigmoid → + residual → conv 1×1: the values between
    /// stay NHWC (one `dma-nchw`, at the exit; the 1×1 conv is the GEMM
    /// alone), an exported value in between is written NCHW too, and the
    /// result matches the interpreter.
    #[test]
    fn a_conv_chain_stays_nhwc_until_it_leaves_the_part() {
        for export_middle in [false, true] {
            let mut g = Graph::new("chain");
            let x = g.add_input("x", TensorType::fixed(DType::F32, &[1, 8, 6, 6]));
            let a = conv(&mut g, x, [8, 8], 3, "a");
            let s = g.add_node(Op::Sigmoid, &[a], "s").unwrap();
            let r = g.add_node(Op::Add, &[s, a], "r").unwrap();
            let y = conv(&mut g, r, [8, 4], 1, "y");
            g.outputs.push(y);
            let xs: Vec<f32> = (0..8 * 36)
                .map(|i| (i * 7 % 23) as f32 / 11.0 - 1.0)
                .collect();
            let input =
                Value::F32(ndarray::ArrayD::from_shape_vec(vec![1, 8, 6, 6], xs.clone()).unwrap());
            let cal = crate::calibrate::calibrate(&g, &[vec![input.clone()]]).unwrap();
            let config = MachineConfig::edge_small();
            let nodes: Vec<usize> = (0..g.nodes.len()).collect();
            let part = lower_part(
                &g,
                &nodes,
                &|v| v == y || (export_middle && v == s),
                &cal,
                &config,
            )
            .unwrap();
            let kernels: Vec<&str> = part.plan.layers.iter().map(|l| l.kernel.as_str()).collect();
            let nchw = kernels.iter().filter(|&&k| k == "dma-nchw").count();
            assert_eq!(nchw, 1 + usize::from(export_middle), "{kernels:?}");
            // The exits' changes to NCHW come last; the 1×1 conv is the
            // GEMM alone; `sigmoid(a) + a` is one table (`lower::unary`),
            // applied in the first conv's output stage unless `s` is
            // needed as well.
            let (body, exits) = kernels.split_at(kernels.len() - nchw);
            assert!(exits.iter().all(|&k| k == "dma-nchw"), "{kernels:?}");
            let want: &[&str] = match export_middle {
                false => &["conv+lut", "gemm"],
                true => &["conv", "lut-2ops", "gemm", "lut-sigmoid"],
            };
            assert_eq!(body, want, "{kernels:?}");
            assert!(!kernels.contains(&"dma-im2col"), "{kernels:?}");
            let out = part.outputs.iter().find(|b| b.value == "y").unwrap();
            let (codes, _) = run(&part, &[("x", &xs)], out.tensor, &config);
            let q = quant_of(&part, out.tensor);
            // The float reference, node by node.
            let mut env = vec![None; g.values.len()];
            env[x.index()] = Some(input);
            for (id, v) in g.values.iter().enumerate() {
                if let m4c_ir::ValueDef::Const(t) = &v.def {
                    env[id] = Some(Value::from_tensor(t).unwrap());
                }
            }
            for n in &g.nodes {
                let args: Vec<&Value> = n
                    .inputs
                    .iter()
                    .map(|i| env[i.index()].as_ref().unwrap())
                    .collect();
                env[n.output.index()] = Some(eval_op(&n.op, &args).unwrap());
            }
            let want = m4c_ops::as_f64(env[y.index()].as_ref().unwrap());
            let got: Vec<f64> = codes.iter().map(|&c| q.dequantize(c)).collect();
            let dot: f64 = want.iter().zip(&got).map(|(a, b)| a * b).sum();
            let norm = |v: &[f64]| v.iter().map(|a| a * a).sum::<f64>().sqrt();
            let cosine = dot / (norm(&want) * norm(&got));
            assert!(cosine > 0.999, "cosine {cosine}");
        }
    }
}
