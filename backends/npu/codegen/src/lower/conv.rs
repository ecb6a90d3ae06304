//! Conv on NCHW tensors with constant per-channel int8 weights, bias and
//! a following Relu fused into the requantisation:
//!
//! - one group: the cheaper, by simulated cycles, of an explicit im2col
//!   (`dma-im2col`, padding read from a zero source) + `gemm`, and a
//!   layout change to NHWC (`dma-nhwc`) + the direct implicit-im2col
//!   `conv` kernel (one image, equal strides, uniform padding, no
//!   dilation); the layer names show the choice;
//! - depthwise (group = channels): `dma-nhwc` + the vector-unit `dwconv`;
//!
//! the `[pixels, channels]` result is the value's NHWC twin (`layout`):
//! back to NCHW (`dma-nchw`) only when a layer or the part's exit needs
//! it. An input that has a twin is read as it is: the direct kernels
//! without their `dma-nhwc`, a 1×1 conv as the GEMM alone.

use m4c_ir::op::ConvAttrs;
use m4c_ir::ValueId;
use m4c_npu::kernels::{conv, depthwise, gather, gemm, KernelError, KernelProgram, Quant};
use m4c_npu::module::Layout;
use m4c_npu::program::Program;
use m4c_npu::sim::{simulate, SimOptions};

use super::{constant, dims, floats, multiplier, requant, symmetric, Ctx};
use crate::conv::{to_nhwc, Geometry};

/// Simulated cycles of `p` on placeholder data (the timing does not
/// depend on the data).
pub(super) fn cycles(p: &Program, config: &m4c_npu::config::MachineConfig) -> Result<u64, String> {
    simulate(p, config, SimOptions::default())
        .map(|r| r.stats.cycles)
        .map_err(|e| e.to_string())
}

fn err(e: KernelError) -> String {
    e.to_string()
}

/// The layers of one way to compute a conv, in order (each reads the
/// previous one's result), before the change back to NCHW.
pub(super) type Form = Vec<(&'static str, KernelProgram)>;

/// Simulated cycles of all layers of `form`.
pub(super) fn form_cycles(
    form: &Form,
    config: &m4c_npu::config::MachineConfig,
) -> Result<u64, String> {
    form.iter().map(|(_, k)| cycles(&k.program, config)).sum()
}

impl Ctx<'_> {
    /// Conv `ins` → `out`; with `relu`, `out` is the result of a fused
    /// Relu (the requantisation clamps at zero). Of several forms, the
    /// one with the fewest simulated cycles is taken.
    pub(super) fn conv(
        &mut self,
        attrs: &ConvAttrs,
        ins: &[ValueId],
        out: ValueId,
        relu: bool,
    ) -> Result<(), String> {
        let g = self.g;
        let (xs, ws) = (dims(g, ins[0]), dims(g, ins[1]));
        let m = ws.first().copied().ok_or("scalar weights")?;
        let twin = self.nhwc_of.get(&ins[0]).copied();
        let geo = Geometry::new(attrs, &xs, ws.get(2..).unwrap_or_default())?;
        let pending = self.pending_nchw_cycles(ins[0])?;
        let qx = self.quant(ins[0])?;
        // A function of the result (HardSwish, SiLU) applied in the
        // output stage of a dense or depthwise conv: the layer then
        // computes its value.
        let epilogue = match self.part {
            Some((nodes, exported)) if !relu => self.epilogue(out, nodes, exported)?,
            _ => None,
        };
        let table = epilogue.as_ref().map(|(_, t)| t);
        // (cycles, how a part input enters, form)
        let mut best: Option<(u64, Layout, Form)> = None;
        let mut consider = |c: u64, entry: Layout, form: Form| {
            if best.as_ref().is_none_or(|(b, _, _)| c < *b) {
                best = Some((c, entry, form));
            }
        };
        let from = if twin.is_some() {
            Source::Nhwc
        } else {
            Source::Nchw
        };
        for form in self.conv_forms(attrs, ins, out, (relu, table), from)? {
            let extra = if reads_nchw(&form) { pending } else { 0 };
            consider(form_cycles(&form, self.config)? + extra, Layout::AsIs, form);
        }
        // A part input can come in NHWC or as the patch matrix instead.
        let fresh = twin.is_none() && !self.tensor_of.contains_key(&ins[0]);
        if fresh {
            let entry_nchw = self.nchw_cycles(geo.x)?;
            for form in self.conv_forms(attrs, ins, out, (relu, table), Source::Nhwc)? {
                let extra = if reads_nchw(&form) { entry_nchw } else { 0 };
                consider(form_cycles(&form, self.config)? + extra, Layout::Nhwc, form);
            }
            if geo.is_patchify() {
                let [kh, kw] = geo.kernel;
                for form in self.conv_forms(attrs, ins, out, (relu, table), Source::Patches)? {
                    consider(
                        form_cycles(&form, self.config)?,
                        Layout::Patches { kh, kw },
                        form,
                    );
                }
            }
        }
        let (_, entry, steps) = best.ok_or("no conv form")?;
        let mut t = match entry {
            Layout::AsIs => match (reads_nchw(&steps), twin) {
                (false, Some(twin)) => twin.tensor,
                _ => self.tensor(ins[0])?,
            },
            Layout::Nhwc => {
                let t = self.entry(ins[0], entry, geo.x)?;
                match reads_nchw(&steps) {
                    true => self.tensor(ins[0])?,
                    false => t,
                }
            }
            Layout::Patches { .. } => self.entry(ins[0], entry, geo.x)?,
        };
        let out = epilogue.map_or(out, |(v, _)| v);
        let qy = self.quant(out)?;
        let name = g.value(out).name.clone();
        let last = steps.len() - 1;
        for (i, (kernel, k)) in steps.into_iter().enumerate() {
            let q = if i == last { qy } else { qx };
            let next = self.add_tensor(&format!("{name}/{kernel}"), k.out_len, q);
            self.whole(out, kernel, k, &[t], next);
            t = next;
        }
        let [oh, ow] = geo.out();
        self.defer_nchw(out, t, [xs[0], m, oh, ow]);
        Ok(())
    }

    /// The ways this machine can compute the conv: depthwise, the vector
    /// unit's kernel; otherwise im2col + GEMM and, where it applies, the
    /// direct kernel. From NHWC (`from`: the input's twin or entry) the
    /// direct kernels read it without their `dma-nhwc`, and a 1×1 conv
    /// is the GEMM alone (NHWC is its im2col matrix); from the patch
    /// matrix, the GEMM alone.
    fn conv_forms(
        &self,
        attrs: &ConvAttrs,
        ins: &[ValueId],
        out: ValueId,
        (relu, table): (bool, Option<&[i8; 256]>),
        from: Source,
    ) -> Result<Vec<Form>, String> {
        let from_nhwc = from == Source::Nhwc;
        let g = self.g;
        let (xs, ws) = (dims(g, ins[0]), dims(g, ins[1]));
        let geo = Geometry::new(attrs, &xs, ws.get(2..).unwrap_or_default())?;
        let (m, per_out) = (ws[0], ws[1..].iter().product::<usize>());
        let [oh, ow] = geo.out();
        let pixels = xs[0] * oh * ow;
        let (qx, qy) = (self.quant(ins[0])?, self.quant(out)?);
        if qx.zero_point != 0 || qy.zero_point != 0 {
            return Err("a conv takes and gives symmetric int8 (zero point 0)".into());
        }
        let w = floats(&constant(g, ins[1]).ok_or("run-time weights")?);
        let qw: Vec<Quant> = (0..m)
            .map(|c| {
                let absmax = w[c * per_out..(c + 1) * per_out]
                    .iter()
                    .fold(0.0, |a: f64, x| a.max(x.abs()));
                symmetric(absmax)
            })
            .collect();
        let scales = qw
            .iter()
            .map(|q| multiplier(qx.scale * q.scale / qy.scale, "conv output"))
            .collect::<Result<Vec<_>, _>>()?;
        let bias = ins.get(2).and_then(|&b| constant(g, b)).map(|b| floats(&b));
        let bias: Vec<i32> = (0..m)
            .map(|c| {
                let b = bias.as_ref().and_then(|b| b.get(c)).copied().unwrap_or(0.0);
                (b / (qx.scale * qw[c].scale)).round().clamp(-2e9, 2e9) as i32
            })
            .collect();
        let clamp_min: i8 = if relu { 0 } else { -128 };
        let mut quant = requant(scales[0]);
        quant.clamp_min = clamp_min;
        // W[k][o] of the im2col GEMM: k = (channel, ky, kx), as ONNX stores it.
        let weight = |o: usize, k: usize| qw[o].quantize(w[o * per_out + k]);
        if attrs.group > 1 {
            let shape = geo
                .direct(m)
                .ok_or("depthwise conv needs one image, equal strides, uniform pads")?;
            let taps = shape.kh * shape.kw;
            let ops = depthwise::DepthwiseOperands {
                shape,
                input: vec![0; xs.iter().product()],
                weights: (0..taps * m).map(|i| weight(i % m, i / m)).collect(),
                bias,
                scales,
                zero_point: 0,
                clamp_min,
                table: table.copied(),
            };
            let dw = depthwise::generate(&ops, self.config).map_err(err)?;
            let kernel = match table {
                Some(_) => "dwconv+lut",
                None => "dwconv",
            };
            return Ok(vec![self.after_nhwc(&geo, from_nhwc, (kernel, dw))?]);
        }
        let gemm = self
            .gemm(
                pixels,
                (m, per_out),
                &weight,
                (&bias, &scales),
                (quant, table),
            )
            .and_then(|gemm| match from_nhwc && geo.is_pointwise() {
                true => Ok(vec![gemm]),
                false => Ok(vec![self.im2col(&geo, per_out)?, gemm]),
            });
        if from == Source::Patches {
            return Ok(vec![vec![gemm?.pop().ok_or("no GEMM")?]]);
        }
        let direct = geo.direct(m).map(|shape| -> Result<Form, String> {
            let taps = shape.kh * shape.kw;
            let c = shape.c_in;
            let ops = conv::ConvOperands {
                shape,
                input: vec![0; xs.iter().product()],
                // [tap][channel][o] from [o][channel][tap].
                weights: (0..taps * c * m)
                    .map(|i| weight(i % m, (i / m % c) * taps + i / m / c))
                    .collect(),
                bias: Some(bias.clone()),
                quant,
                channel_scales: Some(scales.clone()),
            };
            let p = conv::generate_with(&ops, table, self.config, false).map_err(err)?;
            let k = KernelProgram {
                program: p.program,
                out_addr: p.out_addr,
                out_len: pixels * m,
                tile_rows: p.plan.m_tile,
                inputs: vec![p.input_addr],
            };
            let kernel = if table.is_some() { "conv+lut" } else { "conv" };
            self.after_nhwc(&geo, from_nhwc, (kernel, k))
        });
        // A form that does not fit this machine is left out.
        let mut first_error = None;
        let mut forms = vec![];
        for form in [Some(gemm), direct].into_iter().flatten() {
            match form {
                Ok(f) => forms.push(f),
                Err(e) => first_error = first_error.or(Some(e)),
            }
        }
        match (forms.is_empty(), first_error) {
            (true, Some(e)) => Err(e),
            _ => Ok(forms),
        }
    }

    /// A direct kernel's form: the kernel `step`, after the NCHW → NHWC
    /// layer unless the input is already NHWC (`geo.x` is NCHW).
    pub(super) fn after_nhwc(
        &self,
        geo: &Geometry,
        from_nhwc: bool,
        step: (&'static str, KernelProgram),
    ) -> Result<Form, String> {
        if from_nhwc {
            return Ok(vec![step]);
        }
        let ops = gather::GatherOperands {
            sources: vec![vec![0; geo.x.iter().product()]],
            row_len: geo.x[1],
            rows: to_nhwc(geo.x),
        };
        let nhwc = gather::generate(&ops, self.config).map_err(err)?;
        Ok(vec![("dma-nhwc", nhwc), step])
    }

    /// The explicit im2col from NCHW (zeros for the padding): `k` bytes
    /// per output pixel.
    fn im2col(&self, geo: &Geometry, k: usize) -> Result<(&'static str, KernelProgram), String> {
        let ops = gather::GatherOperands {
            sources: vec![vec![0; geo.x.iter().product()], vec![0; geo.zeros()]],
            row_len: k,
            rows: geo.im2col(),
        };
        Ok((
            "dma-im2col",
            gather::generate(&ops, self.config).map_err(err)?,
        ))
    }

    /// The GEMM of `pixels` im2col rows by the `[k, m]` weights
    /// `weight(o, k)`.
    fn gemm(
        &self,
        pixels: usize,
        (m, k): (usize, usize),
        weight: &dyn Fn(usize, usize) -> i8,
        (bias, scales): (&[i32], &[(i32, i32)]),
        (quant, table): (m4c_npu::quant::Requant, Option<&[i8; 256]>),
    ) -> Result<(&'static str, KernelProgram), String> {
        let ops = gemm::GemmOperands {
            m: pixels,
            k,
            n: m,
            a: vec![0; pixels * k],
            w: (0..k * m).map(|i| weight(i % m, i / m)).collect(),
            bias: Some(bias.to_vec()),
            quant,
            channel_scales: Some(scales.to_vec()),
        };
        let p = gemm::generate_with(&ops, table, self.config, false).map_err(err)?;
        let gemm = KernelProgram {
            program: p.program,
            out_addr: p.out_addr,
            out_len: pixels * m,
            tile_rows: p.plan.m_tile,
            inputs: vec![p.inputs[0]],
        };
        Ok((if table.is_some() { "gemm+lut" } else { "gemm" }, gemm))
    }
}

/// What a conv's input is read as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Source {
    /// The value's NCHW tensor.
    Nchw,
    /// Its NHWC twin, or a part input brought in NHWC.
    Nhwc,
    /// A part input brought in as the patch matrix (kernel = stride).
    Patches,
}

/// Whether `form` starts from the input's NCHW bytes (an im2col or a
/// change to NHWC) rather than from its NHWC twin.
fn reads_nchw(form: &Form) -> bool {
    matches!(form.first(), Some(("dma-nhwc" | "dma-im2col", _)))
}

#[cfg(test)]
mod tests {
    use super::super::{lower_part, Ctx};
    use super::*;
    use m4c_ir::{DType, Graph, Op, Tensor, TensorType};
    use m4c_npu::config::MachineConfig;
    use m4c_ops::Value;

    /// Each conv takes the form with the fewest simulated cycles, and each
    /// form wins somewhere: the direct kernel for a 3x3 conv (the explicit
    /// im2col pays a descriptor per window row), im2col + GEMM for a 1x1
    /// conv (its im2col is one descriptor per channel and tile).
    #[test]
    fn each_conv_takes_its_fastest_form() {
        let config = MachineConfig::edge_small();
        let mut chosen = vec![];
        for (x_shape, w_shape, pad) in [
            ([1, 16, 16, 16], [16, 16, 3, 3], 1),
            ([1, 24, 8, 8], [32, 24, 1, 1], 0),
        ] {
            let mut g = Graph::new("conv");
            let x = g.add_input("x", TensorType::fixed(DType::F32, &x_shape));
            let n: usize = w_shape.iter().product();
            let w: Vec<f32> = (0..n).map(|i| (i * 37 % 19) as f32 / 19.0 - 0.5).collect();
            let w = g.add_const("w", Tensor::from_f32(&w_shape, &w));
            let attrs = ConvAttrs {
                strides: vec![1, 1],
                pads: vec![pad; 4],
                dilations: vec![1, 1],
                group: 1,
            };
            let y = g.add_node(Op::Conv(attrs.clone()), &[x, w], "y").unwrap();
            g.outputs.push(y);
            let len: usize = x_shape.iter().product();
            let input = ndarray::ArrayD::from_shape_fn(x_shape.to_vec(), |i| {
                ((i[1] * 7 + i[2] * 3 + i[3]) % 11) as f32 / 5.0 - 1.0
            });
            assert_eq!(input.len(), len);
            let cal = crate::calibrate::calibrate(&g, &[vec![Value::F32(input)]]).unwrap();
            let lowered = lower_part(&g, &[0], &|v| v == y, &cal, &config).unwrap();
            let kernels: Vec<&str> = lowered
                .plan
                .layers
                .iter()
                .map(|l| l.kernel.as_str())
                .collect();
            let cx = Ctx::new(&g, &cal, &config);
            let forms = cx
                .conv_forms(&attrs, &[x, w], y, (false, None), Source::Nchw)
                .unwrap();
            assert_eq!(forms.len(), 2, "im2col + GEMM and direct");
            let costs: Vec<u64> = forms
                .iter()
                .map(|f| form_cycles(f, &config).unwrap())
                .collect();
            let best = if costs[1] < costs[0] { 1 } else { 0 };
            chosen.push(forms[best][1].0);
            // The part input comes in NHWC from the boundary, which takes
            // the best form's `dma-nhwc` or im2col away (a 1×1 conv's
            // im2col matrix is NHWC itself).
            assert_eq!(lowered.inputs[0].layout, Layout::Nhwc);
            assert_eq!(kernels, [forms[best][1].0, "dma-nchw"], "cycles {costs:?}");
        }
        assert_eq!(chosen, ["conv", "gemm"]);
    }

    /// A patchify conv (kernel = stride, clip_vision's patch embedding):
    /// its input comes in as the patch matrix, so the conv is the GEMM
    /// alone, with the cycles of `m4c npu gemm` for that shape.
    #[test]
    fn a_patchify_conv_is_the_gemm_alone() {
        let config = MachineConfig::phone_flagship();
        let mut g = Graph::new("patchify");
        let x = g.add_input("x", TensorType::fixed(DType::F32, &[1, 3, 32, 32]));
        let w: Vec<f32> = (0..32 * 3 * 64)
            .map(|i| (i * 37 % 19) as f32 / 19.0 - 0.5)
            .collect();
        let w = g.add_const("w", Tensor::from_f32(&[32, 3, 8, 8], &w));
        let attrs = ConvAttrs {
            strides: vec![8, 8],
            pads: vec![0; 4],
            dilations: vec![1, 1],
            group: 1,
        };
        let y = g.add_node(Op::Conv(attrs), &[x, w], "y").unwrap();
        g.outputs.push(y);
        let xs: Vec<f32> = (0..3 * 32 * 32)
            .map(|i| (i * 7 % 23) as f32 / 11.0 - 1.0)
            .collect();
        let input =
            Value::F32(ndarray::ArrayD::from_shape_vec(vec![1, 3, 32, 32], xs.clone()).unwrap());
        let cal = crate::calibrate::calibrate(&g, &[vec![input]]).unwrap();
        let part = lower_part(&g, &[0], &|v| v == y, &cal, &config).unwrap();
        assert_eq!(part.inputs[0].layout, Layout::Patches { kh: 8, kw: 8 });
        let kernels: Vec<&str> = part.plan.layers.iter().map(|l| l.kernel.as_str()).collect();
        assert_eq!(kernels, ["gemm", "dma-nchw"]);
        let ops = gemm::GemmOperands {
            m: 16,
            k: 192,
            n: 32,
            a: vec![0; 16 * 192],
            w: vec![1; 192 * 32],
            bias: Some(vec![0; 32]),
            quant: requant((1 << 30, 1)),
            channel_scales: Some(vec![(1 << 30, 1); 32]),
        };
        let reference = gemm::generate(&ops, &config, false).unwrap().program;
        let conv_gemm = &part.programs[part.plan.layers[0].program];
        assert_eq!(cycles(conv_gemm, &config), cycles(&reference, &config));
        // And it computes the conv: within cosine 0.999 of the interpreter.
        let out = part.outputs.iter().find(|b| b.value == "y").unwrap();
        let (codes, _) = super::super::testing::run(&part, &[("x", &xs)], out.tensor, &config);
        let q = super::super::testing::quant_of(&part, out.tensor);
        let args: Vec<Value> = [x, w]
            .iter()
            .map(|&v| match &g.value(v).def {
                m4c_ir::ValueDef::Const(t) => Value::from_tensor(t).unwrap(),
                _ => Value::F32(
                    ndarray::ArrayD::from_shape_vec(vec![1, 3, 32, 32], xs.clone()).unwrap(),
                ),
            })
            .collect();
        let want = m4c_ops::as_f64(
            &m4c_ops::eval_op(&g.nodes[0].op, &args.iter().collect::<Vec<_>>()).unwrap(),
        );
        let got: Vec<f64> = codes.iter().map(|&c| q.dequantize(c)).collect();
        let dot: f64 = want.iter().zip(&got).map(|(a, b)| a * b).sum();
        let norm = |v: &[f64]| v.iter().map(|a| a * a).sum::<f64>().sqrt();
        assert!(dot / (norm(&want) * norm(&got)) > 0.999);
    }
}
