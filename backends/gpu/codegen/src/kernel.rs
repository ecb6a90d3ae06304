//! The kernel description: what one GPU kernel computes, independent of
//! the shading language. Most kernels are a [`Map`]: one expression per
//! output element over its coordinates (fused elementwise groups, data
//! movement, casts, reductions, pooling and grouped convolution through
//! [`Fold`]); matrix products ([`Gemm`], also ungrouped convolutions as
//! implicit GEMMs through [`Gemm::b_view`]) and row statistics ([`Row`])
//! have their own cooperative shapes (workgroup tiles, shared-memory
//! reductions). An
//! emitter (`crate::wgsl`) turns a list of kernels into shader text.

use m4c_gpu_device::Space;
use m4c_ir::DType;

/// A tensor's elements in a device buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Operand {
    pub space: Space,
    /// Byte offset in its buffer (64-byte aligned).
    pub offset: usize,
    pub dtype: DType,
    /// Number of elements (loads are clamped into `0..len`).
    pub len: usize,
}

/// The scalar kinds expressions compute in: f32, i32 (i32 and i64
/// tensors; i64 is computed in 32 bits), bool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    F,
    I,
    B,
}

impl Kind {
    /// The kind a tensor element type is computed in.
    pub fn of(dtype: DType) -> Kind {
        match dtype {
            DType::F32 => Kind::F,
            DType::Bool => Kind::B,
            _ => Kind::I,
        }
    }
}

/// One-operand operations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Un {
    Neg,
    Exp,
    Log,
    Sqrt,
    Erf,
    Tanh,
    Sigmoid,
    Sin,
    Cos,
    Floor,
    Not,
    /// GELU, exact or with the tanh approximation.
    Gelu {
        tanh: bool,
    },
}

/// Two-operand operations (`Eq`, `Lt`, `Le` give bools).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bin {
    Add,
    Sub,
    Mul,
    Div,
    Rem,
    Pow,
    Max,
    Min,
    Eq,
    Lt,
    Le,
    And,
}

/// How a [`Fold`] combines its body over the loop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Combine {
    Sum,
    Max,
    /// The loop position of the maximum (first or last of ties), as i32.
    ArgMax {
        last: bool,
    },
}

/// A loop nest over `dims` (row-major) combining `body` into one value.
#[derive(Clone, Debug, PartialEq)]
pub struct Fold {
    /// Unique within the kernel: [`Expr::Loop`] names its coordinates.
    pub id: usize,
    pub dims: Vec<usize>,
    pub combine: Combine,
    pub body: Expr,
}

/// A per-element expression.
#[derive(Clone, Debug, PartialEq)]
pub enum Expr {
    F(f32),
    I(i32),
    B(bool),
    /// Coordinate `d` of the output element.
    Coord(usize),
    /// Coordinate `d` of the loop of fold `id`.
    Loop {
        fold: usize,
        d: usize,
    },
    /// The kernel's `let` number `k`.
    Var(usize),
    /// Element `index` (an i32 expression) of a tensor.
    Load(Operand, Box<Expr>),
    Un(Un, Box<Expr>),
    Bin(Bin, Box<Expr>, Box<Expr>),
    /// `cond ? then : else`.
    Select(Box<Expr>, Box<Expr>, Box<Expr>),
    Cast(Kind, Box<Expr>),
    Fold(Box<Fold>),
}

impl Expr {
    /// `a op b`.
    pub fn bin(op: Bin, a: Expr, b: Expr) -> Expr {
        Expr::Bin(op, Box::new(a), Box::new(b))
    }

    /// `op a`.
    pub fn un(op: Un, a: Expr) -> Expr {
        Expr::Un(op, Box::new(a))
    }

    /// `cond ? a : b`.
    pub fn select(cond: Expr, a: Expr, b: Expr) -> Expr {
        Expr::Select(Box::new(cond), Box::new(a), Box::new(b))
    }

    /// Element `index` of `src`.
    pub fn load(src: Operand, index: Expr) -> Expr {
        Expr::Load(src, Box::new(index))
    }

    /// The kind this expression computes in; `lets` are the kinds of the
    /// kernel's earlier lets.
    pub fn kind(&self, lets: &[Kind]) -> Kind {
        match self {
            Expr::F(_) => Kind::F,
            Expr::B(_) => Kind::B,
            Expr::I(_) | Expr::Coord(_) | Expr::Loop { .. } => Kind::I,
            Expr::Var(k) => lets[*k],
            Expr::Load(src, _) => Kind::of(src.dtype),
            Expr::Un(Un::Not, _) => Kind::B,
            Expr::Un(Un::Neg, a) => a.kind(lets),
            Expr::Un(..) => Kind::F,
            Expr::Bin(Bin::Eq | Bin::Lt | Bin::Le | Bin::And, ..) => Kind::B,
            Expr::Bin(_, a, _) => a.kind(lets),
            Expr::Select(_, a, _) => a.kind(lets),
            Expr::Cast(k, _) => *k,
            Expr::Fold(f) => match f.combine {
                Combine::ArgMax { .. } => Kind::I,
                Combine::Sum | Combine::Max => f.body.kind(lets),
            },
        }
    }
}

/// One output element per invocation: `lets` in order, then `value`,
/// stored into `out` (whose element type it is converted to).
#[derive(Clone, Debug, PartialEq)]
pub struct Map {
    pub out: Operand,
    pub shape: Vec<usize>,
    pub lets: Vec<Expr>,
    pub value: Expr,
}

/// `c[b] = a[b] · b[b]` for every batch index: `m×k` by `k×n`, f32, each
/// operand addressed by its row and column strides (transposes are
/// strides) and per-batch-axis strides (0: broadcast). With `b_view`,
/// `b` is computed per element instead (a convolution's im2col view of
/// its input: the implicit GEMM), and `bias` adds a value per row of `c`.
#[derive(Clone, Debug, PartialEq)]
pub struct Gemm {
    pub a: Operand,
    pub b: Operand,
    pub c: Operand,
    pub m: usize,
    pub n: usize,
    pub k: usize,
    /// `[row, column]` element strides of `a` (`m×k`) and `b` (`k×n`).
    pub a_strides: [usize; 2],
    pub b_strides: [usize; 2],
    /// The output's batch axes and each operand's stride along them.
    pub batch: Vec<usize>,
    pub a_batch: Vec<usize>,
    pub b_batch: Vec<usize>,
    /// When set, element `(k, j)` of `b` in batch `z` is this f32
    /// expression of `Coord(0) = z` (the flat batch index), `Coord(1) =
    /// k`, `Coord(2) = j` rather than a strided load of `b` (`b_strides`
    /// and `b_batch` are then unused): the implicit GEMM of a convolution
    /// computes its im2col addresses here, inside the shared tiling.
    pub b_view: Option<Expr>,
    /// Added to every element of row `i` of `c` (element `i` of a
    /// vector of `m`): a convolution's bias per output channel, applied
    /// in the store.
    pub bias: Option<Operand>,
}

/// What a [`Row`] kernel computes over each row.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum RowOp {
    Softmax,
    LayerNorm { eps: f32 },
    RmsNorm { eps: f32 },
}

/// A statistic per row then a pass writing the row: `x` viewed as
/// `[outer, len, inner]`, one row per `(outer, inner)` pair, one
/// workgroup per row reducing in shared memory. Norms scale (and shift)
/// by `scale[j]` (`bias[j]`), `j` along the row.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    pub op: RowOp,
    pub x: Operand,
    pub out: Operand,
    pub scale: Option<Operand>,
    pub bias: Option<Operand>,
    pub outer: usize,
    pub len: usize,
    pub inner: usize,
}

/// One kernel: a name (for profiles and entry points) and what it does.
#[derive(Clone, Debug, PartialEq)]
pub struct Kernel {
    /// The IR value it computes (its group root's), for messages.
    pub value: String,
    pub body: Body,
}

/// The kernel shapes.
#[derive(Clone, Debug, PartialEq)]
pub enum Body {
    Map(Map),
    Gemm(Gemm),
    Row(Row),
}
