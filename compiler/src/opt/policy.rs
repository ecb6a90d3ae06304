//! The LoRA policy: fold every adapter into its weight (a single-app
//! bundle), keep the factors (firmware serving many adapters over one
//! shared backbone), or let the cost model decide per site and say why.

use m4c_ir::{DType, Graph, Op, TensorType};

use super::CostModel;
use crate::adapter::LoraSite;

/// How adapters are compiled.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LoraPolicy {
    /// `W' = W + s·A·B`: no extra FLOPs, a private copy of each adapted weight.
    Fold,
    /// Factors kept: backbone bytes shared, `r·(k+n)` extra MACs per row.
    Keep,
    /// Per site, by the cost model (runtime + private-weight penalty).
    #[default]
    Auto,
}

impl std::str::FromStr for LoraPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "fold" => Ok(LoraPolicy::Fold),
            "keep" => Ok(LoraPolicy::Keep),
            "auto" => Ok(LoraPolicy::Auto),
            _ => Err(format!("unknown LoRA policy `{s}` (fold, keep or auto)")),
        }
    }
}

/// What happened to one LoRA site and why.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Decision {
    pub module: String,
    pub folded: bool,
    /// Rows (tokens) the adapted layer sees per inference.
    pub rows: usize,
    /// Time the kept branch adds per inference (ns).
    pub keep_ns: f64,
    /// Cost of a private folded weight per inference (ns).
    pub fold_ns: f64,
    pub why: String,
}

fn f32ty(shape: &[usize]) -> TensorType {
    TensorType::fixed(DType::F32, shape)
}

/// The decisions for `sites` of `before`, read off the optimised `after`
/// (a site is folded when its A factor is gone).
pub fn decide(
    before: &Graph,
    after: &Graph,
    sites: &[LoraSite],
    policy: LoraPolicy,
    model: &dyn CostModel,
) -> Vec<Decision> {
    sites
        .iter()
        .map(|s| {
            let folded = !after.values.iter().any(|v| v.name == s.a);
            let rows = before
                .nodes
                .iter()
                .find(|n| n.inputs.get(1).is_some_and(|&i| before.value(i).name == s.a))
                .and_then(|n| before.value(n.inputs[0]).ty.num_elements())
                .map_or(1, |e| e / s.in_features.max(1));
            let (k, r, n) = (s.in_features, s.rank, s.out_features);
            let mm = Op::MatMul {
                trans_a: false,
                trans_b: false,
            };
            let keep_ns = model.op_time_ns(&mm, &[&f32ty(&[rows, k]), &f32ty(&[k, r])], &f32ty(&[rows, r]))
                + model.op_time_ns(&mm, &[&f32ty(&[rows, r]), &f32ty(&[r, n])], &f32ty(&[rows, n]))
                + 2.0 * model.op_time_ns(&Op::Mul, &[&f32ty(&[rows, n]), &f32ty(&[rows, n])], &f32ty(&[rows, n]));
            let fold_ns = model.private_weight_ns(DType::F32) * (k * n) as f64;
            let why = match policy {
                LoraPolicy::Fold => "policy fold".to_string(),
                LoraPolicy::Keep => "policy keep".to_string(),
                LoraPolicy::Auto => format!(
                    "{}: kept branch {:.0} ns/inference ({rows} rows, r={r}) vs private {k}x{n} weight {:.0} ns",
                    if folded { "fold" } else { "keep" },
                    keep_ns,
                    fold_ns
                ),
            };
            Decision {
                module: s.module.clone(),
                folded,
                rows,
                keep_ns,
                fold_ns,
                why,
            }
        })
        .collect()
}
