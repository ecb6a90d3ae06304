//! The accuracy report (`m4c quantize --report DIR`): the quantised model
//! against fp32 over the calibration samples, both run in the reference
//! interpreter. Per output: max abs error, cosine, SQNR; for logits, top-1
//! agreement (next-token for rank ≥ 3) and the KL divergence of the
//! softmaxes. Per quantised layer (its output tensor, same ONNX name in
//! both models): SQNR accumulated through the quantised network, and in
//! isolation (a model with only that layer quantised). Rendered as
//! Markdown, JSON and an SVG bar chart.

use std::collections::HashMap;
use std::fmt::Write;

use m4c_ops::Value;
use serde::Serialize;

use super::model::{concat_f32, FloatModel, Runner, Sample};
use super::rewrite::{quantize_graph, Layer, Plan};
use super::{Encodings, Observer, Options, Quantized, Result};

/// How many layers the report names as the worst.
const WORST: usize = 10;

/// One model output against fp32.
#[derive(Clone, Debug, Serialize)]
pub struct OutputMetrics {
    /// The output's ONNX name.
    pub name: String,
    /// Largest |quantised − fp32|.
    pub max_abs: f64,
    /// Cosine similarity with fp32.
    pub cosine: f64,
    /// Signal-to-quantisation-noise ratio (dB).
    pub sqnr_db: f64,
    /// `classifier` (rank 2) or `next-token` (rank ≥ 3) for logits.
    pub kind: Option<String>,
    /// Fraction of rows whose arg-max agrees with fp32 (logits).
    pub top1_agreement: Option<f64>,
    /// Mean KL(softmax(fp32) ‖ softmax(quantised)) over rows (logits).
    pub kl_divergence: Option<f64>,
}

/// One quantised layer's output against fp32.
#[derive(Clone, Debug, Serialize)]
pub struct LayerMetrics {
    /// The ONNX node.
    pub node: String,
    /// Its operator type.
    pub op: String,
    /// Its output tensor.
    pub tensor: String,
    /// SQNR (dB) with every layer quantised.
    pub sqnr_accumulated_db: f64,
    /// SQNR (dB) with only this layer quantised.
    pub sqnr_isolated_db: f64,
}

/// The whole report.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// The fp32 model's path.
    pub model: String,
    /// The scheme measured.
    pub scheme: String,
    /// Samples measured over.
    pub samples: usize,
    /// Every model output.
    pub outputs: Vec<OutputMetrics>,
    /// Every quantised layer, in graph order.
    pub layers: Vec<LayerMetrics>,
    /// Up to ten nodes with the lowest isolated SQNR, worst first.
    pub worst_layers: Vec<String>,
}

/// Every output and observed tensor of every sample.
type Runs = Vec<HashMap<String, Value>>;

fn run_all(runner: &mut Runner, samples: &[Sample], observer: &dyn Observer) -> Result<Runs> {
    samples
        .iter()
        .map(|s| {
            let r = runner.run(s);
            observer.step();
            r
        })
        .collect()
}

/// `tensor` of every run, concatenated.
fn gather(runs: &Runs, tensor: &str) -> Value {
    concat_f32(&runs.iter().map(|r| &r[tensor]).collect::<Vec<_>>())
}

/// Measures `q` against `fp32` over `samples`.
pub fn measure(
    fp32: &FloatModel,
    q: &Quantized,
    opts: &Options,
    samples: &[Sample],
    observer: &dyn Observer,
) -> Result<Report> {
    let layers = &q.plan.layers;
    let tensors: Vec<String> = layers.iter().map(|l| l.output.clone()).collect();
    observer.begin(samples.len() * (2 + layers.len()), "report runs");
    let what = fp32.path.display().to_string();
    let reference = run_all(
        &mut Runner::new(&fp32.proto, &tensors, &what)?,
        samples,
        observer,
    )?;
    let quantised = run_all(
        &mut Runner::new(&q.proto, &tensors, &format!("{what} (quantised)"))?,
        samples,
        observer,
    )?;
    let outputs = super::model::graph(&fp32.proto)
        .output
        .iter()
        .map(|o| output_metrics(&o.name, &reference, &quantised))
        .collect();
    let mut metrics = vec![];
    for l in layers {
        let alone = isolated(q, l, opts, &q.encodings)?;
        let mut r = Runner::new(
            &alone,
            std::slice::from_ref(&l.output),
            &format!("{what} ({} alone)", l.name),
        )?;
        let runs = run_all(&mut r, samples, observer)?;
        let want = gather(&reference, &l.output);
        let sqnr =
            |runs: &Runs| m4c_ops::compare(&gather(runs, &l.output), &want, 0.0, 0.0).sqnr_db;
        metrics.push(LayerMetrics {
            node: l.name.clone(),
            op: l.op.clone(),
            tensor: l.output.clone(),
            sqnr_accumulated_db: sqnr(&quantised),
            sqnr_isolated_db: sqnr(&runs),
        });
    }
    let mut order: Vec<&LayerMetrics> = metrics.iter().collect();
    order.sort_by(|a, b| a.sqnr_isolated_db.total_cmp(&b.sqnr_isolated_db));
    Ok(Report {
        model: what,
        scheme: opts.scheme.to_string(),
        samples: samples.len(),
        outputs,
        worst_layers: order.iter().take(WORST).map(|l| l.node.clone()).collect(),
        layers: metrics,
    })
}

/// The model with only `layer` quantised (same source, same encodings).
fn isolated(
    q: &Quantized,
    layer: &Layer,
    opts: &Options,
    enc: &Encodings,
) -> Result<tract_onnx::pb::ModelProto> {
    let mut plan = Plan {
        layers: vec![layer.clone()],
        activations: q.plan.activations.clone(),
        weights: Default::default(),
    };
    quantize_graph(&q.source, &mut plan, opts, enc)
}

fn output_metrics(name: &str, reference: &Runs, quantised: &Runs) -> OutputMetrics {
    let c = m4c_ops::compare(&gather(quantised, name), &gather(reference, name), 0.0, 0.0);
    let shape = reference
        .first()
        .map(|r| r[name].shape().to_vec())
        .unwrap_or_default();
    let logits = name.to_lowercase().contains("logits")
        && shape.len() >= 2
        && shape.last().is_some_and(|&n| n >= 2);
    let (mut top1, mut kl) = (None, None);
    if logits {
        let classes = shape.last().copied().unwrap_or(1); // logits: rank ≥ 2, checked above
        let (mut agree, mut rows, mut kl_sum) = (0usize, 0usize, 0f64);
        for (r, q) in reference.iter().zip(quantised) {
            let (a, b) = (m4c_ops::as_f64(&r[name]), m4c_ops::as_f64(&q[name]));
            for (x, y) in a.chunks(classes).zip(b.chunks(classes)) {
                agree += usize::from(argmax(x) == argmax(y));
                kl_sum += softmax_kl(x, y);
                rows += 1;
            }
        }
        top1 = Some(agree as f64 / rows.max(1) as f64);
        kl = Some(kl_sum / rows.max(1) as f64);
    }
    OutputMetrics {
        name: name.to_string(),
        max_abs: c.max_abs,
        cosine: c.cosine,
        sqnr_db: c.sqnr_db,
        kind: logits.then(|| {
            if shape.len() == 2 {
                "classifier"
            } else {
                "next-token"
            }
            .to_string()
        }),
        top1_agreement: top1,
        kl_divergence: kl,
    }
}

/// Index of the largest element (the first on ties).
pub fn argmax(x: &[f64]) -> usize {
    x.iter()
        .enumerate()
        .fold((0, f64::NEG_INFINITY), |best, (i, &v)| {
            if v > best.1 {
                (i, v)
            } else {
                best
            }
        })
        .0
}

/// KL(softmax(p) ‖ softmax(q)) of two logit rows.
pub fn softmax_kl(p: &[f64], q: &[f64]) -> f64 {
    let log_softmax = |x: &[f64]| {
        let m = x.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let lse = m + x.iter().map(|v| (v - m).exp()).sum::<f64>().ln();
        x.iter().map(|v| v - lse).collect::<Vec<_>>()
    };
    let (lp, lq) = (log_softmax(p), log_softmax(q));
    lp.iter().zip(&lq).map(|(a, b)| a.exp() * (a - b)).sum()
}

/// A number for tables: `inf` and `nan` spelled out.
fn db(x: f64) -> String {
    if x.is_finite() {
        format!("{x:.1}")
    } else {
        format!("{x}")
    }
}

impl Report {
    /// The JSON form (`report.json`).
    #[allow(
        clippy::expect_used,
        reason = "plain data with string keys always serialises"
    )]
    pub fn to_json(&self) -> String {
        // serde_json writes non-finite numbers as null.
        serde_json::to_string_pretty(self).expect("report serialises") + "\n"
    }

    /// The Markdown form (`report.md`).
    pub fn to_markdown(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "# Quantisation report: {}\n", self.model);
        let _ = writeln!(
            s,
            "Scheme `{}`, {} sample(s), quantised model vs fp32 in the reference interpreter.\n",
            self.scheme, self.samples
        );
        let _ = writeln!(s, "## Outputs\n");
        let _ = writeln!(
            s,
            "| output | max abs | cosine | SQNR (dB) | top-1 agreement | KL |"
        );
        let _ = writeln!(s, "|---|---|---|---|---|---|");
        for o in &self.outputs {
            let top1 = o.top1_agreement.map_or("-".into(), |t| {
                format!("{:.1} % ({})", t * 100.0, o.kind.as_deref().unwrap_or(""))
            });
            let kl = o.kl_divergence.map_or("-".into(), |k| format!("{k:.2e}"));
            let _ = writeln!(
                s,
                "| {} | {:.3e} | {:.6} | {} | {top1} | {kl} |",
                o.name,
                o.max_abs,
                o.cosine,
                db(o.sqnr_db)
            );
        }
        let _ = writeln!(s, "\n## Worst layers (lowest SQNR in isolation)\n");
        for (i, w) in self.worst_layers.iter().enumerate() {
            let _ = writeln!(s, "{}. `{w}`", i + 1);
        }
        let _ = writeln!(s, "\n## Layers\n");
        let _ = writeln!(
            s,
            "| node | op | SQNR accumulated (dB) | SQNR isolated (dB) |"
        );
        let _ = writeln!(s, "|---|---|---|---|");
        for l in &self.layers {
            let _ = writeln!(
                s,
                "| `{}` | {} | {} | {} |",
                l.node,
                l.op,
                db(l.sqnr_accumulated_db),
                db(l.sqnr_isolated_db)
            );
        }
        let _ = writeln!(s, "\n![per-layer SQNR](sqnr.svg)");
        s
    }

    /// Per-layer SQNR as horizontal bars (`sqnr.svg`): accumulated and
    /// isolated, infinite values drawn at the scale's end.
    pub fn to_svg(&self) -> String {
        let (label_w, bar_w, row_h) = (360.0, 400.0, 22.0);
        let top = 40.0;
        let finite = self
            .layers
            .iter()
            .flat_map(|l| [l.sqnr_accumulated_db, l.sqnr_isolated_db])
            .filter(|x| x.is_finite());
        let max = finite.fold(10.0f64, f64::max).ceil();
        let width = |x: f64| {
            let x = if x.is_nan() { 0.0 } else { x.clamp(0.0, max) };
            x / max * bar_w
        };
        let height = top + row_h * self.layers.len() as f64 + 30.0;
        let mut s = String::new();
        let _ = writeln!(
            s,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{}" height="{height}" font-family="sans-serif" font-size="11">"#,
            label_w + bar_w + 80.0
        );
        let _ = writeln!(
            s,
            r##"<text x="4" y="16" font-size="13">Per-layer SQNR (dB), {}: <tspan fill="#3b6fb6">accumulated</tspan> / <tspan fill="#e08a2c">isolated</tspan></text>"##,
            escape(&self.scheme)
        );
        for (i, l) in self.layers.iter().enumerate() {
            let y = top + row_h * i as f64;
            let name: String = if l.node.chars().count() > 56 {
                let tail: String = l
                    .node
                    .chars()
                    .rev()
                    .take(55)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect();
                format!("…{tail}")
            } else {
                l.node.clone()
            };
            let _ = writeln!(
                s,
                r#"<text x="{}" y="{}" text-anchor="end">{}</text>"#,
                label_w - 6.0,
                y + 13.0,
                escape(&name)
            );
            for (k, (v, colour)) in [
                (l.sqnr_accumulated_db, "#3b6fb6"),
                (l.sqnr_isolated_db, "#e08a2c"),
            ]
            .into_iter()
            .enumerate()
            {
                let _ = writeln!(
                    s,
                    r#"<rect x="{label_w}" y="{}" width="{:.1}" height="9" fill="{colour}"><title>{}</title></rect>"#,
                    y + 1.0 + 10.0 * k as f64,
                    width(v),
                    db(v)
                );
            }
        }
        let axis_y = top + row_h * self.layers.len() as f64 + 14.0;
        let _ = writeln!(
            s,
            r#"<text x="{label_w}" y="{axis_y}">0</text><text x="{}" y="{axis_y}" text-anchor="end">{max} dB</text>"#,
            label_w + bar_w
        );
        s + "</svg>\n"
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argmax_and_kl_by_hand() {
        assert_eq!(argmax(&[0.1, 3.0, 3.0, -1.0]), 1);
        assert_eq!(softmax_kl(&[1.0, 2.0], &[1.0, 2.0]), 0.0);
        // softmax(0, 0) = (½, ½) against softmax(0, ln 3) = (¼, ¾).
        let kl = softmax_kl(&[0.0, 0.0], &[0.0, 3f64.ln()]);
        let want = 0.5 * (0.5f64 / 0.25).ln() + 0.5 * (0.5f64 / 0.75).ln();
        assert!((kl - want).abs() < 1e-12);
    }

    #[test]
    fn renders_every_layer_and_escapes_names() {
        let r = Report {
            model: "m.onnx".into(),
            scheme: "int8".into(),
            samples: 1,
            outputs: vec![],
            layers: vec![LayerMetrics {
                node: "a<b>".into(),
                op: "MatMul".into(),
                tensor: "t".into(),
                sqnr_accumulated_db: 30.0,
                sqnr_isolated_db: f64::INFINITY,
            }],
            worst_layers: vec!["a<b>".into()],
        };
        let svg = r.to_svg();
        assert!(svg.contains("a&lt;b&gt;") && svg.ends_with("</svg>\n"));
        assert!(svg.contains(r#"width="400.0""#), "{svg}"); // inf drawn full
        let md = r.to_markdown();
        assert!(md.contains("| `a<b>` | MatMul | 30.0 | inf |"), "{md}");
        assert!(r.to_json().contains("\"sqnr_isolated_db\": null"));
    }
}
