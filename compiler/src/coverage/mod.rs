//! Operator coverage of a set of ONNX models (the paper's Fig. 14): which
//! op types each group of models needs, how that set grows as models are
//! added, how often each op type is used, and how many models lower fully
//! onto the IR. [`census_model`] reads one model, [`analyze`] computes the
//! statistics, and the report renders as Markdown, JSON (serde) and SVG.

mod analysis;
mod census;
mod charts;
mod markdown;
pub mod svg;

pub use analysis::{
    analyze, frequency, growth, overlap, union, BlockerCount, CoverageReport, GroupOps,
    GroupReport, GroupSpec, LoweringSummary, OpUsage, Overlap,
};
pub use census::{
    census_model, op_type_counts, qualified, BackendSupport, Blocker, Lowering, ModelCensus,
    ModelOps, Outcome,
};
pub use charts::{frequency_svg, growth_svg};
pub use markdown::render_markdown;
