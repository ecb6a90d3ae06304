//! Running lowered layers in unit tests: the layers of a lowered part are
//! simulated in order on quantised inputs.

use m4c_npu::config::MachineConfig;
use m4c_npu::kernels::Quant;
use m4c_npu::sim::SimOptions;

use super::Lowered;

/// The quantisation of plan tensor `t`.
pub(super) fn quant_of(part: &Lowered, t: usize) -> Quant {
    let t = &part.plan.tensors[t];
    Quant {
        scale: t.scale,
        zero_point: t.zero_point,
    }
}

/// Runs the layers of `part` on `xs` (the part's inputs by value
/// name, each quantised with its tensor's quantisation): tensor `y`'s
/// int8 values and the layers' kernel names.
pub(super) fn run(
    part: &Lowered,
    xs: &[(&str, &[f32])],
    y: usize,
    config: &MachineConfig,
) -> (Vec<i8>, Vec<String>) {
    let plan = &part.plan;
    let mut tensors: Vec<Vec<i8>> = plan.tensors.iter().map(|t| vec![0; t.bytes]).collect();
    for input in &part.inputs {
        let (_, x) = xs.iter().find(|(name, _)| *name == input.value).unwrap();
        let q = quant_of(part, input.tensor);
        let codes: Vec<i8> = x.iter().map(|&v| q.quantize(f64::from(v))).collect();
        tensors[input.tensor] = input.layout.arrange(codes, &input.shape).unwrap();
    }
    for l in 0..plan.layers.len() {
        plan.run_layer(
            l,
            &part.programs,
            (&mut tensors, &[]),
            config,
            SimOptions::default(),
        )
        .unwrap();
    }
    let kernels = plan.layers.iter().map(|l| l.kernel.clone()).collect();
    (tensors[y].clone(), kernels)
}
