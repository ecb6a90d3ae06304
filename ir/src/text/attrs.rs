//! Operator attributes in the textual IR: `{key=value, key=[a, b]}`.
//!
//! Values are kept as their source tokens until an operator asks for them
//! with a type, so that `f32` attributes parse exactly as `f32`.

use std::collections::BTreeMap;
use std::fmt::Display;
use std::str::FromStr;

use crate::op::{
    ConvAttrs, CoordMode, NearestRounding, NormKind, PadMode, PoolAttrs, ResizeMode, SliceAxis,
};
use crate::{DType, Op, OpKind};

/// One attribute value as written.
#[derive(Clone, Debug, PartialEq)]
pub enum AttrValue {
    Scalar(String),
    List(Vec<String>),
}

/// Attributes of one node, ordered for printing.
pub type Attrs = Vec<(&'static str, AttrValue)>;

fn s(v: impl Display) -> AttrValue {
    AttrValue::Scalar(v.to_string())
}

fn l<T: Display>(v: &[T]) -> AttrValue {
    AttrValue::List(v.iter().map(|x| x.to_string()).collect())
}

fn f(v: f32) -> AttrValue {
    AttrValue::Scalar(format!("{v:?}"))
}

/// The attributes of an operator, in printing order (defaults left out
/// where noted in the parser).
pub fn to_attrs(op: &Op) -> Attrs {
    match op {
        Op::MatMul { trans_a, trans_b } => {
            let mut a = vec![];
            if *trans_a {
                a.push(("trans_a", s(true)));
            }
            if *trans_b {
                a.push(("trans_b", s(true)));
            }
            a
        }
        Op::Conv(c) => vec![
            ("strides", l(&c.strides)),
            ("pads", l(&c.pads)),
            ("dilations", l(&c.dilations)),
            ("group", s(c.group)),
        ],
        Op::Cast { to } | Op::Quantize { to } => vec![("to", s(to))],
        Op::Softmax { axis } => vec![("axis", s(axis))],
        Op::Norm {
            kind,
            axis,
            epsilon,
        } => vec![
            (
                "kind",
                s(if *kind == NormKind::Layer {
                    "layer"
                } else {
                    "rms"
                }),
            ),
            ("axis", s(axis)),
            ("epsilon", f(*epsilon)),
        ],
        Op::Gelu { tanh_approx } if *tanh_approx => vec![("tanh_approx", s(true))],
        Op::ReduceSum { axes, keep_dims } | Op::ReduceMax { axes, keep_dims } => {
            vec![("axes", l(axes)), ("keep_dims", s(keep_dims))]
        }
        Op::ArgMax {
            axis,
            keep_dims,
            select_last,
        } => vec![
            ("axis", s(axis)),
            ("keep_dims", s(keep_dims)),
            ("select_last", s(select_last)),
        ],
        Op::MaxPool(p) => pool_attrs(p),
        Op::AvgPool {
            pool,
            count_include_pad,
        } => {
            let mut a = pool_attrs(pool);
            a.push(("count_include_pad", s(count_include_pad)));
            a
        }
        Op::Reshape { shape } | Op::Expand { shape } => vec![("shape", l(shape))],
        Op::Transpose { perm } => vec![("perm", l(perm))],
        Op::Slice { axes } => vec![
            (
                "start",
                l(&axes.iter().map(|a| a.start).collect::<Vec<_>>()),
            ),
            ("step", l(&axes.iter().map(|a| a.step).collect::<Vec<_>>())),
            ("len", l(&axes.iter().map(|a| a.len).collect::<Vec<_>>())),
        ],
        Op::Concat { axis } | Op::Gather { axis } => vec![("axis", s(axis))],
        Op::Pad { pads, mode } => {
            let mut a = vec![("pads", l(pads))];
            match mode {
                PadMode::Constant(v) => {
                    a.push(("mode", s("constant")));
                    a.push(("value", s(format!("{v:?}"))));
                }
                PadMode::Reflect => a.push(("mode", s("reflect"))),
                PadMode::Edge => a.push(("mode", s("edge"))),
            }
            a
        }
        Op::Resize {
            mode,
            coord,
            scales,
            sizes,
        } => {
            let mut a = vec![];
            match mode {
                ResizeMode::Linear => a.push(("mode", s("linear"))),
                ResizeMode::Nearest(r) => {
                    a.push(("mode", s("nearest")));
                    a.push(("rounding", s(rounding_name(*r))));
                }
            }
            a.push(("coord", s(coord_name(*coord))));
            a.push((
                "scales",
                AttrValue::List(scales.iter().map(|v| format!("{v:?}")).collect()),
            ));
            a.push(("sizes", l(sizes)));
            a
        }
        _ => vec![],
    }
}

fn pool_attrs(p: &PoolAttrs) -> Attrs {
    vec![
        ("kernel", l(&p.kernel)),
        ("strides", l(&p.strides)),
        ("pads", l(&p.pads)),
        ("dilations", l(&p.dilations)),
    ]
}

const ROUNDINGS: [(NearestRounding, &str); 4] = [
    (NearestRounding::RoundPreferFloor, "round_prefer_floor"),
    (NearestRounding::RoundPreferCeil, "round_prefer_ceil"),
    (NearestRounding::Floor, "floor"),
    (NearestRounding::Ceil, "ceil"),
];

const COORDS: [(CoordMode, &str); 4] = [
    (CoordMode::HalfPixel, "half_pixel"),
    (CoordMode::PytorchHalfPixel, "pytorch_half_pixel"),
    (CoordMode::AlignCorners, "align_corners"),
    (CoordMode::Asymmetric, "asymmetric"),
];

#[allow(clippy::expect_used, reason = "ROUNDINGS lists every variant")]
fn rounding_name(r: NearestRounding) -> &'static str {
    ROUNDINGS
        .iter()
        .find(|(k, _)| *k == r)
        .map(|(_, n)| *n)
        .expect("listed")
}

#[allow(clippy::expect_used, reason = "COORDS lists every variant")]
fn coord_name(c: CoordMode) -> &'static str {
    COORDS
        .iter()
        .find(|(k, _)| *k == c)
        .map(|(_, n)| *n)
        .expect("listed")
}

/// Typed access to parsed attributes, with errors naming the key.
struct Reader(BTreeMap<String, AttrValue>);

impl Reader {
    fn scalar<T: FromStr>(&mut self, key: &str, default: Option<T>) -> Result<T, String> {
        match self.0.remove(key) {
            Some(AttrValue::Scalar(v)) => v
                .parse()
                .map_err(|_| format!("attribute `{key}`: bad value `{v}`")),
            Some(AttrValue::List(_)) => Err(format!("attribute `{key}` must be a scalar")),
            None => default.ok_or_else(|| format!("missing attribute `{key}`")),
        }
    }

    fn list<T: FromStr>(&mut self, key: &str) -> Result<Vec<T>, String> {
        match self.0.remove(key) {
            Some(AttrValue::List(v)) => v
                .iter()
                .map(|x| {
                    x.parse()
                        .map_err(|_| format!("attribute `{key}`: bad element `{x}`"))
                })
                .collect(),
            Some(AttrValue::Scalar(_)) => Err(format!("attribute `{key}` must be a list")),
            None => Err(format!("missing attribute `{key}`")),
        }
    }

    fn word<T: Copy>(&mut self, key: &str, table: &[(T, &str)]) -> Result<T, String> {
        let w: String = self.scalar(key, None)?;
        table
            .iter()
            .find(|(_, n)| *n == w)
            .map(|(v, _)| *v)
            .ok_or_else(|| format!("attribute `{key}`: unknown value `{w}`"))
    }

    fn pool(&mut self) -> Result<PoolAttrs, String> {
        Ok(PoolAttrs {
            kernel: self.list("kernel")?,
            strides: self.list("strides")?,
            pads: self.list("pads")?,
            dilations: self.list("dilations")?,
        })
    }

    fn finish(self, op: Op) -> Result<Op, String> {
        match self.0.keys().next() {
            Some(k) => Err(format!("{}: unexpected attribute `{k}`", op.name())),
            None => Ok(op),
        }
    }
}

/// Rebuilds an operator from its kind and parsed attributes.
pub fn from_attrs(kind: OpKind, attrs: BTreeMap<String, AttrValue>) -> Result<Op, String> {
    let mut r = Reader(attrs);
    let op = match kind {
        OpKind::MatMul => Op::MatMul {
            trans_a: r.scalar("trans_a", Some(false))?,
            trans_b: r.scalar("trans_b", Some(false))?,
        },
        OpKind::Conv => Op::Conv(ConvAttrs {
            strides: r.list("strides")?,
            pads: r.list("pads")?,
            dilations: r.list("dilations")?,
            group: r.scalar("group", None)?,
        }),
        OpKind::Add => Op::Add,
        OpKind::Sub => Op::Sub,
        OpKind::Mul => Op::Mul,
        OpKind::Div => Op::Div,
        OpKind::Pow => Op::Pow,
        OpKind::Max => Op::Max,
        OpKind::Min => Op::Min,
        OpKind::Equal => Op::Equal,
        OpKind::Less => Op::Less,
        OpKind::Where => Op::Where,
        OpKind::Exp => Op::Exp,
        OpKind::Log => Op::Log,
        OpKind::Sqrt => Op::Sqrt,
        OpKind::Erf => Op::Erf,
        OpKind::Tanh => Op::Tanh,
        OpKind::Sigmoid => Op::Sigmoid,
        OpKind::Sin => Op::Sin,
        OpKind::Cos => Op::Cos,
        OpKind::Floor => Op::Floor,
        OpKind::Cast => Op::Cast {
            to: r.scalar::<DType>("to", None)?,
        },
        OpKind::Quantize => Op::Quantize {
            to: r.scalar::<DType>("to", None)?,
        },
        OpKind::Softmax => Op::Softmax {
            axis: r.scalar("axis", None)?,
        },
        OpKind::Norm => Op::Norm {
            kind: r.word(
                "kind",
                &[(NormKind::Layer, "layer"), (NormKind::Rms, "rms")],
            )?,
            axis: r.scalar("axis", None)?,
            epsilon: r.scalar("epsilon", None)?,
        },
        OpKind::Gelu => Op::Gelu {
            tanh_approx: r.scalar("tanh_approx", Some(false))?,
        },
        OpKind::ReduceSum => Op::ReduceSum {
            axes: r.list("axes")?,
            keep_dims: r.scalar("keep_dims", None)?,
        },
        OpKind::ReduceMax => Op::ReduceMax {
            axes: r.list("axes")?,
            keep_dims: r.scalar("keep_dims", None)?,
        },
        OpKind::ArgMax => Op::ArgMax {
            axis: r.scalar("axis", None)?,
            keep_dims: r.scalar("keep_dims", None)?,
            select_last: r.scalar("select_last", None)?,
        },
        OpKind::MaxPool => Op::MaxPool(r.pool()?),
        OpKind::AvgPool => Op::AvgPool {
            pool: r.pool()?,
            count_include_pad: r.scalar("count_include_pad", None)?,
        },
        OpKind::Reshape => Op::Reshape {
            shape: r.list("shape")?,
        },
        OpKind::Expand => Op::Expand {
            shape: r.list("shape")?,
        },
        OpKind::Transpose => Op::Transpose {
            perm: r.list("perm")?,
        },
        OpKind::Slice => {
            let (start, step, len): (Vec<usize>, Vec<i64>, Vec<usize>) =
                (r.list("start")?, r.list("step")?, r.list("len")?);
            if start.len() != step.len() || start.len() != len.len() {
                return Err("Slice: start, step and len differ in length".into());
            }
            let axes = (0..start.len())
                .map(|i| SliceAxis {
                    start: start[i],
                    step: step[i],
                    len: len[i],
                })
                .collect();
            Op::Slice { axes }
        }
        OpKind::Concat => Op::Concat {
            axis: r.scalar("axis", None)?,
        },
        OpKind::Gather => Op::Gather {
            axis: r.scalar("axis", None)?,
        },
        OpKind::Pad => {
            let pads = r.list("pads")?;
            let mode = match r.scalar::<String>("mode", None)?.as_str() {
                "constant" => PadMode::Constant(r.scalar("value", None)?),
                "reflect" => PadMode::Reflect,
                "edge" => PadMode::Edge,
                other => return Err(format!("Pad: unknown mode `{other}`")),
            };
            Op::Pad { pads, mode }
        }
        OpKind::Resize => {
            let mode = match r.scalar::<String>("mode", None)?.as_str() {
                "linear" => ResizeMode::Linear,
                "nearest" => ResizeMode::Nearest(r.word("rounding", &ROUNDINGS)?),
                other => return Err(format!("Resize: unknown mode `{other}`")),
            };
            Op::Resize {
                mode,
                coord: r.word("coord", &COORDS)?,
                scales: r.list("scales")?,
                sizes: r.list("sizes")?,
            }
        }
    };
    r.finish(op)
}
