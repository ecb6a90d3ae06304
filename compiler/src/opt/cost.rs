//! The cost model: per-operator FLOPs and bytes moved (each operator's
//! declared cost, [`Op::cost`]), turned into time by a roofline
//! `launch + max(flops/peak, bytes/bandwidth)` with per-target parameters. Backends describe themselves through [`CostModel`]; the
//! compiler never depends on a backend crate (the CLI builds the model).

use m4c_ir::{Op, TensorType, Unit};

/// What one operator costs on a target.
pub trait CostModel {
    /// Target name for reports.
    fn name(&self) -> &str;
    /// Estimated time of one execution of `op`, in nanoseconds.
    fn op_time_ns(&self, op: &Op, inputs: &[&TensorType], output: &TensorType) -> f64;
    /// Time-equivalent cost of one newly materialised weight element that
    /// cannot be shared with the backbone (a private copy for one adapter):
    /// reading it once per inference, in nanoseconds.
    fn private_weight_ns(&self, dtype: m4c_ir::DType) -> f64;
    /// The target with the parameters its estimates use, for reports.
    fn describe(&self) -> String {
        self.name().to_string()
    }
}

/// A roofline target: peak compute of the matrix unit (MatMul, Conv) and
/// of the vector unit (everything else), memory bandwidth and a fixed cost
/// per kernel launch, all chosen by the operator's declared unit.
/// Data-movement ops are address patterns of the consumer's DMA and pay no
/// launch; views (`Reshape`, `Slice`) move no bytes, so they are free.
///
/// The compiler does not measure machines: the CLI builds a `Roofline` from
/// the CPU backend's measured peak or from an NPU machine config.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Roofline {
    pub name: String,
    /// FLOP/s of MatMul and Conv.
    pub peak_flops: f64,
    /// Element operations per second of the other compute ops.
    pub vector_flops: f64,
    /// Bytes/s.
    pub bandwidth: f64,
    /// Nanoseconds per compute kernel.
    pub launch_ns: f64,
    /// Where the figures come from (measured, config, nominal).
    pub source: String,
}

impl Roofline {
    /// A nominal desktop CPU core (AVX2 f32 FMA ~50 GFLOP/s, 8-lane vector
    /// ops ~25 G/s, ~10 GB/s streaming, ~1 µs per kernel dispatch): nominal
    /// figures, not measured, for tests and `--target cpu-nominal`.
    pub fn cpu() -> Roofline {
        Roofline {
            name: "cpu-nominal".into(),
            peak_flops: 50e9,
            vector_flops: 25e9,
            bandwidth: 10e9,
            launch_ns: 1000.0,
            source: "nominal".into(),
        }
    }
}

/// Multiply-accumulates of one execution (the declared cost's
/// [`m4c_ir::Cost::macs`]; 0 off the matrix unit).
pub fn op_macs(op: &Op, inputs: &[&TensorType], output: &TensorType) -> u64 {
    op.cost(inputs, output).macs
}

/// Arithmetic operations of one execution (the declared cost's
/// [`m4c_ir::Cost::flops`]).
pub fn op_flops(op: &Op, inputs: &[&TensorType], output: &TensorType) -> u64 {
    op.cost(inputs, output).flops
}

impl CostModel for Roofline {
    fn name(&self) -> &str {
        &self.name
    }

    fn op_time_ns(&self, op: &Op, inputs: &[&TensorType], output: &TensorType) -> f64 {
        let cost = op.cost(inputs, output);
        let (peak, launch) = match op.kind().unit() {
            Unit::Matrix => (self.peak_flops, self.launch_ns),
            Unit::Vector => (self.vector_flops, self.launch_ns),
            Unit::DataMovement => (self.vector_flops, 0.0),
        };
        let compute = cost.flops as f64 / peak * 1e9;
        let memory = cost.bytes as f64 / self.bandwidth * 1e9;
        launch + compute.max(memory)
    }

    fn private_weight_ns(&self, dtype: m4c_ir::DType) -> f64 {
        dtype.size_bits() as f64 / 8.0 / self.bandwidth * 1e9
    }

    fn describe(&self) -> String {
        format!(
            "{} ({}) matrix {:.1} GFLOP/s, vector {:.1} Gop/s, {:.1} GB/s, {:.0} ns/kernel)",
            self.name,
            self.source,
            self.peak_flops / 1e9,
            self.vector_flops / 1e9,
            self.bandwidth / 1e9,
            self.launch_ns
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use m4c_ir::DType;

    #[test]
    fn matmul_flops_and_roofline() {
        let a = TensorType::fixed(DType::F32, &[1, 16, 64]);
        let w = TensorType::fixed(DType::F32, &[64, 32]);
        let y = TensorType::fixed(DType::F32, &[1, 16, 32]);
        let mm = Op::MatMul {
            trans_a: false,
            trans_b: false,
        };
        assert_eq!(op_flops(&mm, &[&a, &w], &y), 2 * 16 * 32 * 64);
        let t = Roofline::cpu().op_time_ns(&mm, &[&a, &w], &y);
        let bytes = ((16 * 64 + 64 * 32 + 16 * 32) * 4) as f64;
        assert!((t - (1000.0 + bytes / 10.0)).abs() < 1e-6, "{t}");
    }
}
