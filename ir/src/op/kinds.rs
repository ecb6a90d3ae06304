//! One declaration per operator: the facts about an operator that do not
//! depend on its attributes, in one table row each (`op_kinds!` below).
//!
//! A row says the operator's text form, how many inputs it takes, the NPU
//! unit it maps to, whether it is elementwise (numpy broadcasting),
//! commutative, composite (has a declared decomposition) or a view (no
//! data moves), how its arithmetic grows with its tensors ([`Flops`], which
//! [`crate::Op::cost`] evaluates) and how the simulated NPU runs it
//! ([`Npu`]). Everything that needs one of these facts asks [`OpKind::info`]
//! instead of listing operators again. Per-operator behaviour (type rules,
//! the interpreter's kernels, code generators) stays with its
//! implementation; `docs/IR.md` points from each operator to every file
//! that implements it.

use super::cost::Flops;

/// The hardware unit an operator maps to on an NPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Unit {
    Matrix,
    Vector,
    DataMovement,
}

/// How the simulated NPU of `backends/npu` runs an operator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Npu {
    /// Kernel generators emit it: these files of `backends/npu/src/kernels/`.
    Kernel(&'static [&'static str]),
    /// The NPU's instructions (named here) cover it, but no generator emits
    /// it on its own yet: the partitioner places it on the NPU, code
    /// generation for it is still to be written.
    Isa(&'static str),
    /// No NPU path: it falls back to the CPU.
    Cpu,
}

impl Npu {
    /// True when the partitioner may place the operator on the NPU
    /// (generated or covered by its instructions).
    pub fn placed(self) -> bool {
        self != Npu::Cpu
    }
}

/// The attribute-independent facts of one operator (one row of the table).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OpInfo {
    /// The name used in the textual IR and in reports.
    pub name: &'static str,
    /// The NPU unit that executes it.
    pub unit: Unit,
    /// Fewest inputs it accepts.
    pub min_inputs: usize,
    /// Most inputs it accepts (`usize::MAX`: any number).
    pub max_inputs: usize,
    /// Computes each output element from the broadcast input elements at
    /// the same index (what elementwise fusion may chain).
    pub elementwise: bool,
    /// A binary operator whose operands may be swapped.
    pub commutative: bool,
    /// Has a declared decomposition into simpler operators (`decompose`).
    pub composite: bool,
    /// Moves no data: its consumer reads its input through it (a reshape
    /// or a strided window), so it costs nothing.
    pub view: bool,
    /// How its arithmetic grows with its tensors.
    pub flops: Flops,
    /// How the NPU runs it.
    pub npu: Npu,
}

impl OpInfo {
    const fn new(name: &'static str, unit: Unit, inputs: (usize, usize), flops: Flops) -> Self {
        OpInfo {
            name,
            unit,
            min_inputs: inputs.0,
            max_inputs: inputs.1,
            elementwise: false,
            commutative: false,
            composite: false,
            view: false,
            flops,
            npu: Npu::Cpu,
        }
    }

    /// A matrix-unit operator: two operations per multiply-accumulate.
    const fn matrix(name: &'static str, inputs: (usize, usize)) -> Self {
        Self::new(name, Unit::Matrix, inputs, Flops::PerMac)
    }

    /// A vector-unit operator with its arithmetic.
    const fn vector(name: &'static str, inputs: (usize, usize), flops: Flops) -> Self {
        Self::new(name, Unit::Vector, inputs, flops)
    }

    /// An elementwise vector operator of `n` inputs: one operation per
    /// output element unless [`OpInfo::flops`] says otherwise.
    const fn elementwise(name: &'static str, n: usize) -> Self {
        let mut info = Self::new(name, Unit::Vector, (n, n), Flops::PerOutput(1));
        info.elementwise = true;
        info
    }

    /// A data-movement operator: an address pattern, no arithmetic.
    const fn movement(name: &'static str, inputs: (usize, usize)) -> Self {
        Self::new(name, Unit::DataMovement, inputs, Flops::None)
    }

    const fn commutative(mut self) -> Self {
        self.commutative = true;
        self
    }

    const fn composite(mut self) -> Self {
        self.composite = true;
        self
    }

    const fn view(mut self) -> Self {
        self.view = true;
        self
    }

    const fn flops(mut self, flops: Flops) -> Self {
        self.flops = flops;
        self
    }

    const fn npu(mut self, npu: Npu) -> Self {
        self.npu = npu;
        self
    }
}

macro_rules! op_kinds {
    ($($kind:ident => $info:expr;)*) => {
        /// The operator of an [`crate::Op`] without its attributes: the
        /// closed set.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum OpKind { $($kind),* }

        /// The declarations, in [`OpKind`] order.
        const INFO: &[OpInfo] = &[$($info),*];

        impl OpKind {
            /// Every operator of the IR. Its length is the size of the set.
            pub const ALL: &'static [OpKind] = &[$(OpKind::$kind),*];
        }
    };
}

use Npu::{Isa, Kernel};

op_kinds! {
    MatMul => OpInfo::matrix("MatMul", (2, 2)).npu(Kernel(&["gemm.rs"]));
    Conv => OpInfo::matrix("Conv", (2, 3)).npu(Kernel(&["conv.rs", "depthwise.rs"]));
    Add => OpInfo::elementwise("Add", 2).commutative().npu(Kernel(&["eltwise.rs"]));
    Sub => OpInfo::elementwise("Sub", 2).npu(Kernel(&["eltwise.rs"]));
    Mul => OpInfo::elementwise("Mul", 2).commutative().npu(Kernel(&["eltwise.rs"]));
    Div => OpInfo::elementwise("Div", 2).npu(Isa("vsfu recip + vbin mulq"));
    Pow => OpInfo::elementwise("Pow", 2);
    Max => OpInfo::elementwise("Max", 2).commutative().npu(Kernel(&["eltwise.rs"]));
    Min => OpInfo::elementwise("Min", 2).commutative().npu(Kernel(&["eltwise.rs"]));
    Equal => OpInfo::elementwise("Equal", 2);
    Less => OpInfo::elementwise("Less", 2);
    Where => OpInfo::elementwise("Where", 3);
    Exp => OpInfo::elementwise("Exp", 1).npu(Kernel(&["lut.rs"]));
    Log => OpInfo::elementwise("Log", 1);
    Sqrt => OpInfo::elementwise("Sqrt", 1).npu(Isa("vsfu rsqrt"));
    Erf => OpInfo::elementwise("Erf", 1).npu(Isa("vlut"));
    Tanh => OpInfo::elementwise("Tanh", 1).npu(Kernel(&["lut.rs"]));
    Sigmoid => OpInfo::elementwise("Sigmoid", 1).npu(Kernel(&["lut.rs"]));
    Sin => OpInfo::elementwise("Sin", 1);
    Cos => OpInfo::elementwise("Cos", 1);
    Floor => OpInfo::elementwise("Floor", 1);
    Cast => OpInfo::elementwise("Cast", 1);
    Quantize => OpInfo::elementwise("Quantize", 3).flops(Flops::PerOutput(3));
    Softmax => OpInfo::vector("Softmax", (1, 1), Flops::PerOutput(5))
        .composite()
        .npu(Kernel(&["softmax.rs"]));
    Norm => OpInfo::vector("Norm", (2, 3), Flops::PerOutput(7))
        .composite()
        .npu(Kernel(&["norm.rs"]));
    Gelu => OpInfo::elementwise("Gelu", 1)
        .composite()
        .flops(Flops::PerOutput(8))
        .npu(Kernel(&["lut.rs"]));
    ReduceSum => OpInfo::vector("ReduceSum", (1, 1), Flops::PerInput).npu(Isa("vred sum"));
    ReduceMax => OpInfo::vector("ReduceMax", (1, 1), Flops::PerInput).npu(Isa("vred max"));
    ArgMax => OpInfo::vector("ArgMax", (1, 1), Flops::PerInput);
    MaxPool => OpInfo::vector("MaxPool", (1, 1), Flops::PerWindowTap);
    AvgPool => OpInfo::vector("AvgPool", (1, 1), Flops::PerWindowTap);
    Reshape => OpInfo::movement("Reshape", (1, 1)).view().npu(Isa("no instruction (a view)"));
    Transpose => OpInfo::movement("Transpose", (1, 1)).npu(Isa("DMA ld/st strides"));
    Slice => OpInfo::movement("Slice", (1, 1)).view().npu(Isa("DMA ld strides"));
    Concat => OpInfo::movement("Concat", (1, usize::MAX)).npu(Isa("DMA st offsets"));
    Gather => OpInfo::movement("Gather", (2, 2));
    Expand => OpInfo::movement("Expand", (1, 1));
    Pad => OpInfo::movement("Pad", (1, 1)).npu(Isa("DMA ld zero rows"));
    Resize => OpInfo::movement("Resize", (1, 1));
}

impl OpKind {
    /// The operator's declaration.
    pub fn info(self) -> &'static OpInfo {
        &INFO[self as usize]
    }

    /// The name used in the textual IR and in reports.
    pub fn name(self) -> &'static str {
        self.info().name
    }

    /// The NPU unit that executes it.
    pub fn unit(self) -> Unit {
        self.info().unit
    }

    /// Accepted input counts (inclusive range).
    pub fn arity(self) -> (usize, usize) {
        (self.info().min_inputs, self.info().max_inputs)
    }

    /// Checks an input count against [`OpKind::arity`]; the error says what
    /// the operator takes.
    pub fn check_arity(self, n: usize) -> Result<(), String> {
        let (lo, hi) = self.arity();
        if (lo..=hi).contains(&n) {
            Ok(())
        } else if hi == usize::MAX {
            Err(format!("takes {lo} or more inputs, got {n}"))
        } else {
            Err(format!("takes {lo}..={hi} inputs, got {n}"))
        }
    }

    /// True for the composite operators, which have a declared
    /// decomposition into simpler IR operators (see `decompose`).
    pub fn is_composite(self) -> bool {
        self.info().composite
    }

    /// True for the elementwise operators with numpy broadcasting.
    pub fn is_elementwise(self) -> bool {
        self.info().elementwise
    }

    /// Looks an operator up by its textual name.
    pub fn from_name(name: &str) -> Option<OpKind> {
        OpKind::ALL.iter().copied().find(|k| k.name() == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    /// The paper's claim is that 39 operator types suffice for M4; the IR
    /// must stay within that budget.
    #[test]
    fn operator_set_fits_the_budget() {
        assert!(OpKind::ALL.len() <= 39, "{} ops", OpKind::ALL.len());
        assert_eq!(INFO.len(), OpKind::ALL.len());
    }

    #[test]
    fn names_are_unique_and_resolve() {
        for &k in OpKind::ALL {
            assert_eq!(OpKind::from_name(k.name()), Some(k));
            assert_eq!(format!("{k:?}"), k.name(), "declaration out of order");
        }
        let mut names: Vec<_> = OpKind::ALL.iter().map(|k| k.name()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), OpKind::ALL.len());
    }

    #[test]
    fn declared_facts_are_consistent() {
        for &k in OpKind::ALL {
            let i = k.info();
            let n = i.name;
            assert!(1 <= i.min_inputs && i.min_inputs <= i.max_inputs, "{n}");
            assert!(i.max_inputs <= 3 || i.max_inputs == usize::MAX, "{n}");
            if i.elementwise {
                assert_eq!(i.unit, Unit::Vector, "{n}: elementwise off the vector unit");
                assert_eq!(i.min_inputs, i.max_inputs, "{n}");
                assert!(matches!(i.flops, Flops::PerOutput(_)), "{n}");
            }
            if i.commutative {
                assert!(i.elementwise && i.max_inputs == 2, "{n}");
            }
            if i.composite {
                assert_eq!(i.unit, Unit::Vector, "{n}");
            }
            if i.view {
                assert!(i.unit == Unit::DataMovement && i.max_inputs == 1, "{n}");
            }
            assert_eq!(i.unit == Unit::Matrix, i.flops == Flops::PerMac, "{n}");
            assert_eq!(i.unit == Unit::DataMovement, i.flops == Flops::None, "{n}");
            if let Npu::Kernel(files) = i.npu {
                assert!(!files.is_empty(), "{n}");
                assert_ne!(
                    i.unit,
                    Unit::DataMovement,
                    "{n}: no data-movement generator"
                );
            }
        }
        assert_eq!(
            OpKind::Concat.check_arity(0).unwrap_err(),
            "takes 1 or more inputs, got 0"
        );
        assert!(OpKind::Where.check_arity(3).is_ok());
    }

    /// Every NPU generator a declaration names exists.
    #[test]
    fn npu_kernel_files_exist() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../backends/npu/src/kernels");
        for i in INFO {
            if let Npu::Kernel(files) = i.npu {
                for f in files {
                    let path = dir.join(f);
                    assert!(
                        path.is_file(),
                        "{}: {} is not a file",
                        i.name,
                        path.display()
                    );
                }
            }
        }
    }
}
