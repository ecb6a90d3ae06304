//! Tensor shapes: static dimensions plus named symbolic ones.

use std::fmt;

/// One dimension of a tensor type.
///
/// Symbolic dimensions (`batch`, `seq`) survive in the IR so that a graph can
/// be printed and inspected before its sizes are known; every pass that needs
/// numbers asks for [`TensorType::static_shape`].
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Dim {
    Fixed(usize),
    Sym(String),
}

impl fmt::Display for Dim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Dim::Fixed(n) => write!(f, "{n}"),
            Dim::Sym(s) => f.write_str(s),
        }
    }
}

/// Element type plus shape of a value.
///
/// ```
/// use m4c_ir::{DType, TensorType};
/// let t = TensorType::fixed(DType::F32, &[2, 3]);
/// assert_eq!(t.to_string(), "f32[2,3]");
/// assert_eq!(t.num_elements(), Some(6));
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TensorType {
    pub dtype: crate::DType,
    pub dims: Vec<Dim>,
}

impl TensorType {
    /// A type whose dimensions are all known.
    pub fn fixed(dtype: crate::DType, shape: &[usize]) -> Self {
        TensorType {
            dtype,
            dims: shape.iter().map(|&n| Dim::Fixed(n)).collect(),
        }
    }

    /// Number of dimensions.
    pub fn rank(&self) -> usize {
        self.dims.len()
    }

    /// The shape as numbers, or `None` while a dimension is symbolic.
    pub fn static_shape(&self) -> Option<Vec<usize>> {
        self.dims
            .iter()
            .map(|d| match d {
                Dim::Fixed(n) => Some(*n),
                Dim::Sym(_) => None,
            })
            .collect()
    }

    /// Element count when the shape is static.
    pub fn num_elements(&self) -> Option<usize> {
        self.static_shape().map(|s| s.iter().product())
    }
}

impl fmt::Display for TensorType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}[", self.dtype)?;
        for (i, d) in self.dims.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{d}")?;
        }
        f.write_str("]")
    }
}

/// Numpy/ONNX multidirectional broadcasting of two static shapes.
///
/// ```
/// assert_eq!(m4c_ir::broadcast_shapes(&[2, 1, 4], &[3, 1]), Some(vec![2, 3, 4]));
/// assert_eq!(m4c_ir::broadcast_shapes(&[2], &[3]), None);
/// ```
pub fn broadcast_shapes(a: &[usize], b: &[usize]) -> Option<Vec<usize>> {
    let rank = a.len().max(b.len());
    let at = |s: &[usize], i: usize| {
        let pad = rank - s.len();
        if i < pad {
            1
        } else {
            s[i - pad]
        }
    };
    (0..rank)
        .map(|i| match (at(a, i), at(b, i)) {
            (x, y) if x == y => Some(x),
            (1, y) => Some(y),
            (x, 1) => Some(x),
            _ => None,
        })
        .collect()
}
