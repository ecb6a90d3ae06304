//! What one execution of an operator costs: arithmetic operations,
//! multiply-accumulates and bytes moved, from the formula its declaration
//! states ([`super::OpInfo::flops`]). Cost models turn these counts into
//! time; the optimiser's and the partitioner's reports print them.

use super::Op;
use crate::{Dim, TensorType};

/// How an operator's arithmetic grows with its tensors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flops {
    /// None: data movement.
    None,
    /// This many operations per output element.
    PerOutput(u64),
    /// One operation per input element (reductions).
    PerInput,
    /// One operation per window tap of every output element (pooling).
    PerWindowTap,
    /// Two operations (multiply, add) per multiply-accumulate.
    PerMac,
}

/// The counts of one execution.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Cost {
    /// Arithmetic operations (floating point or integer).
    pub flops: u64,
    /// Multiply-accumulates of the matrix unit (0 off it).
    pub macs: u64,
    /// Bytes read and written (0 for a view, which its consumer reads
    /// through).
    pub bytes: u64,
}

/// Number of elements of a type, symbolic dimensions counted as 1 (costs
/// are estimates for the shapes the graph was specialised to).
pub fn elements(ty: &TensorType) -> u64 {
    ty.dims
        .iter()
        .map(|d| match d {
            Dim::Fixed(n) => *n as u64,
            Dim::Sym(_) => 1,
        })
        .product()
}

/// Bytes a tensor of this type occupies (sub-byte types packed).
pub fn bytes(ty: &TensorType) -> u64 {
    (elements(ty) * ty.dtype.size_bits() as u64).div_ceil(8)
}

/// Quantised constants with at least this many elements are weights: the
/// compiler keeps them in their integer form (zero points and other small
/// constants may fold).
pub const QUANTISED_WEIGHT_MIN: u64 = 64;

/// True when evaluating a node at compile time would store a quantised
/// weight wider than it is: one of `inputs` is int8/uint8/int4/uint4 with
/// at least [`QUANTISED_WEIGHT_MIN`] elements and `output` takes more bytes.
/// Constant folding (the frontend's and the optimiser's) refuses such
/// nodes, so a quantised model stays as small in IR and bundles as it is.
///
/// ```
/// use m4c_ir::{op::expands_quantised, DType, TensorType};
/// let w = TensorType::fixed(DType::I8, &[64, 64]);
/// let f = TensorType::fixed(DType::F32, &[64, 64]);
/// assert!(expands_quantised(&[&w], &f));
/// assert!(!expands_quantised(&[&w], &w));
/// let zp = TensorType::fixed(DType::U8, &[4]);
/// assert!(!expands_quantised(&[&zp], &TensorType::fixed(DType::F32, &[4])));
/// ```
pub fn expands_quantised(inputs: &[&TensorType], output: &TensorType) -> bool {
    inputs.iter().any(|t| {
        t.dtype.is_quantised() && elements(t) >= QUANTISED_WEIGHT_MIN && bytes(output) > bytes(t)
    })
}

/// Results of at least this many bytes are not folded when they are also
/// much larger than the node's inputs (see [`expands_large`]).
pub const FOLD_LARGE_BYTES: u64 = 64 << 20;

/// True when evaluating a node at compile time would turn small inputs
/// into a large constant: `output` takes at least [`FOLD_LARGE_BYTES`] and
/// more than twice the bytes of all `inputs` together (a `ConstantOfShape`,
/// `Expand`, `Tile` or `Range` of a large shape). Such a result is cheap to
/// compute at run time and costly to hold: folding it would make the IR,
/// every copy the compiler takes of it and the bundle that large (a
/// 120-byte model could ask for gigabytes), so it stays a node.
///
/// ```
/// use m4c_ir::{op::expands_large, DType, TensorType};
/// let scalar = TensorType::fixed(DType::F32, &[]);
/// let big = TensorType::fixed(DType::F32, &[4096, 4096]);
/// assert!(expands_large(&[&scalar], &big));
/// assert!(!expands_large(&[&big], &big));
/// assert!(!expands_large(&[&scalar], &TensorType::fixed(DType::F32, &[1024])));
/// ```
pub fn expands_large(inputs: &[&TensorType], output: &TensorType) -> bool {
    let ins: u64 = inputs.iter().map(|t| bytes(t)).sum();
    let out = bytes(output);
    out >= FOLD_LARGE_BYTES && out > ins.saturating_mul(2)
}

/// True when a node whose inputs are all constant may be evaluated at
/// compile time by its types alone: neither [`expands_quantised`] nor
/// [`expands_large`]. [`FoldBudget::take`] asks it first.
pub fn foldable(inputs: &[&TensorType], output: &TensorType) -> bool {
    !expands_quantised(inputs, output) && !expands_large(inputs, output)
}

/// The arithmetic (operations, by [`Op::cost`]) constant folding may spend
/// on one graph: a few seconds of the interpreter.
pub const FOLD_BUDGET_FLOPS: u64 = 100_000_000_000;

/// Nodes of at most this many operations fold whatever the budget has
/// left: shape arithmetic, small tables. Lowering needs shapes folded.
pub const FOLD_ALWAYS_FLOPS: u64 = 100_000;

/// What constant folding has left to spend on one graph. Folding evaluates
/// every node it folds, so without a bound a small file (a chain of
/// `MatMul`s over a constant it expands, each under the memory budget)
/// could keep `m4c inspect` busy for minutes; once the budget is spent,
/// larger foldable nodes stay nodes and are computed when the model runs.
///
/// ```
/// use m4c_ir::{op::FoldBudget, DType, Op, TensorType};
/// let m = TensorType::fixed(DType::F32, &[64, 64]);
/// let mut budget = FoldBudget::new(600_000);
/// let mm = Op::MatMul { trans_a: false, trans_b: false };
/// assert!(budget.take(&mm, &[&m, &m], &m)); // 524,288 operations
/// assert!(!budget.take(&mm, &[&m, &m], &m));
/// let v = TensorType::fixed(DType::F32, &[64]);
/// assert!(budget.take(&Op::Exp, &[&v], &v)); // small: always
/// ```
#[derive(Clone, Copy, Debug)]
pub struct FoldBudget {
    left: u64,
}

impl Default for FoldBudget {
    fn default() -> Self {
        FoldBudget::new(FOLD_BUDGET_FLOPS)
    }
}

impl FoldBudget {
    /// A budget of `flops` operations.
    pub fn new(flops: u64) -> Self {
        FoldBudget { left: flops }
    }

    /// Says whether a node whose inputs are all constant may be folded:
    /// [`foldable`] by its types, and its cost (taken from the budget) paid
    /// for. Every constant folder (the frontend's and the optimiser's) asks
    /// this; a node refused takes nothing.
    pub fn take(&mut self, op: &Op, inputs: &[&TensorType], output: &TensorType) -> bool {
        if !foldable(inputs, output) {
            return false;
        }
        let flops = op.cost(inputs, output).flops;
        if flops <= FOLD_ALWAYS_FLOPS {
            return true;
        }
        match self.left.checked_sub(flops) {
            Some(left) => {
                self.left = left;
                true
            }
            None => false,
        }
    }
}

impl Op {
    /// The cost of applying this operator to inputs of the given types,
    /// producing `output`, by its declared [`Flops`] formula.
    ///
    /// ```
    /// use m4c_ir::{DType, Op, TensorType};
    /// let x = TensorType::fixed(DType::F32, &[2, 8]);
    /// let c = Op::Softmax { axis: 1 }.cost(&[&x], &x);
    /// assert_eq!((c.flops, c.macs, c.bytes), (5 * 16, 0, 2 * 16 * 4));
    /// ```
    pub fn cost(&self, inputs: &[&TensorType], output: &TensorType) -> Cost {
        let info = self.kind().info();
        let out = elements(output);
        let macs = match info.flops {
            Flops::PerMac => out * self.reduction_len(inputs),
            _ => 0,
        };
        let flops = match info.flops {
            Flops::None => 0,
            Flops::PerOutput(n) => n * out,
            Flops::PerInput => inputs.first().map_or(0, |t| elements(t)),
            Flops::PerWindowTap => out * self.window_taps(),
            Flops::PerMac => 2 * macs,
        };
        let bytes = if info.view {
            0
        } else {
            inputs.iter().map(|t| bytes(t)).sum::<u64>() + bytes(output)
        };
        Cost { flops, macs, bytes }
    }

    /// Multiply-accumulates per output element of a matrix-unit operator:
    /// the inner dimension of a MatMul, `C/group · kernel` of a Conv.
    fn reduction_len(&self, inputs: &[&TensorType]) -> u64 {
        let fixed = |d: Option<&Dim>| match d {
            Some(Dim::Fixed(n)) => *n as u64,
            _ => 1,
        };
        match (self, inputs) {
            (Op::MatMul { trans_a, .. }, [a, ..]) => {
                let axis = a.rank().saturating_sub(if *trans_a { 2 } else { 1 });
                fixed(a.dims.get(axis))
            }
            (Op::Conv(_), [_, w, ..]) => elements(w) / fixed(w.dims.first()).max(1),
            _ => 0,
        }
    }

    /// Taps of a pooling window (1 for other operators).
    fn window_taps(&self) -> u64 {
        match self {
            Op::MaxPool(p) | Op::AvgPool { pool: p, .. } => {
                p.kernel.iter().product::<usize>() as u64
            }
            _ => 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::op::ConvAttrs;
    use crate::DType;

    fn f32t(s: &[usize]) -> TensorType {
        TensorType::fixed(DType::F32, s)
    }

    #[test]
    fn matrix_costs_count_macs() {
        let (a, w, y) = (f32t(&[1, 16, 64]), f32t(&[64, 32]), f32t(&[1, 16, 32]));
        let mm = Op::MatMul {
            trans_a: false,
            trans_b: false,
        };
        let c = mm.cost(&[&a, &w], &y);
        assert_eq!(c.macs, 16 * 32 * 64);
        assert_eq!(c.flops, 2 * c.macs);
        assert_eq!(c.bytes, (16 * 64 + 64 * 32 + 16 * 32) * 4);
        let at = f32t(&[1, 64, 16]);
        let mt = Op::MatMul {
            trans_a: true,
            trans_b: false,
        };
        assert_eq!(mt.cost(&[&at, &w], &y).macs, 16 * 32 * 64);
        let conv = Op::Conv(ConvAttrs {
            strides: vec![1, 1],
            pads: vec![0; 4],
            dilations: vec![1, 1],
            group: 1,
        });
        let (x, k, o) = (
            f32t(&[1, 3, 8, 8]),
            f32t(&[4, 3, 3, 3]),
            f32t(&[1, 4, 6, 6]),
        );
        assert_eq!(conv.cost(&[&x, &k], &o).macs, 4 * 36 * 27);
    }

    #[test]
    fn views_move_nothing_and_data_movement_computes_nothing() {
        let x = f32t(&[2, 3]);
        let r = Op::Reshape { shape: vec![3, 2] }.cost(&[&x], &f32t(&[3, 2]));
        assert_eq!(r, Cost::default());
        let t = Op::Transpose { perm: vec![1, 0] }.cost(&[&x], &f32t(&[3, 2]));
        assert_eq!((t.flops, t.bytes), (0, 48));
        let s = Op::ReduceSum {
            axes: vec![1],
            keep_dims: false,
        };
        assert_eq!(s.cost(&[&x], &f32t(&[2])).flops, 6);
    }
}
