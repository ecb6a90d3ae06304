//! The two plots of Fig. 14: growth of distinct op types as models are added
//! (a line per group) and op usage frequency (a bar chart per group).

use super::analysis::GroupReport;
use super::svg::{colour, integer_ticks, Anchor, Svg};

const FONT: f64 = 12.0;
const SMALL: f64 = 10.0;

/// A generous estimate of the width of `text` in a sans-serif font.
fn text_width(text: &str, size: f64) -> f64 {
    0.62 * size * text.chars().count() as f64
}

/// Fig. 14a: x = models added, y = distinct ONNX op types, one line per group.
pub fn growth_svg(groups: &[GroupReport]) -> String {
    let legend: Vec<String> = groups
        .iter()
        .map(|g| {
            let total = g.growth.last().copied().unwrap_or(0);
            format!("{} ({total} ops, {} models)", g.name, g.growth.len())
        })
        .collect();
    let legend_w = legend
        .iter()
        .map(|l| text_width(l, SMALL))
        .fold(0.0, f64::max);
    let (left, right, top, bottom) = (64.0, 56.0 + legend_w, 40.0, 56.0);
    let (width, height) = (540.0 + right, 420.0);
    let (plot_w, plot_h) = (width - left - right, height - top - bottom);
    let max_x = groups
        .iter()
        .map(|g| g.growth.len())
        .max()
        .unwrap_or(0)
        .max(1);
    let x_ticks = integer_ticks(max_x, 10);
    let y_ticks = integer_ticks(
        groups
            .iter()
            .filter_map(|g| g.growth.last().copied())
            .max()
            .unwrap_or(0),
        8,
    );
    let (x_end, y_end) = (
        *x_ticks.last().unwrap_or(&1) as f64,
        *y_ticks.last().unwrap_or(&1) as f64,
    );
    let px = |k: f64| left + plot_w * k / x_end;
    let py = |n: f64| top + plot_h * (1.0 - n / y_end);

    let mut svg = Svg::new(width, height);
    svg.text(
        (left + plot_w / 2.0, 24.0),
        "Distinct ONNX op types as models are added",
        Anchor::Middle,
        14.0,
    );
    for &t in &y_ticks {
        let y = py(t as f64);
        svg.line((left, y), (left + plot_w, y), "#e5e5e5", 1.0);
        svg.text((left - 6.0, y + 4.0), &t.to_string(), Anchor::End, SMALL);
    }
    for &t in &x_ticks {
        let x = px(t as f64);
        svg.line((x, top + plot_h), (x, top + plot_h + 5.0), "#333333", 1.0);
        svg.text(
            (x, top + plot_h + 18.0),
            &t.to_string(),
            Anchor::Middle,
            SMALL,
        );
    }
    svg.line((left, top), (left, top + plot_h), "#333333", 1.0);
    svg.line(
        (left, top + plot_h),
        (left + plot_w, top + plot_h),
        "#333333",
        1.0,
    );
    svg.text(
        (left + plot_w / 2.0, height - 14.0),
        "models added",
        Anchor::Middle,
        FONT,
    );
    svg.vertical_text((18.0, top + plot_h / 2.0), "distinct op types", FONT);

    for (i, g) in groups.iter().enumerate() {
        let points: Vec<(f64, f64)> = g
            .growth
            .iter()
            .enumerate()
            .map(|(k, &n)| (px((k + 1) as f64), py(n as f64)))
            .collect();
        svg.polyline(&points, colour(i), 2.0);
        for &p in &points {
            svg.circle(p, 3.0, colour(i));
        }
        let ly = top + 10.0 + 20.0 * i as f64;
        let lx = left + plot_w + 16.0;
        svg.line((lx, ly - 4.0), (lx + 22.0, ly - 4.0), colour(i), 2.0);
        svg.circle((lx + 11.0, ly - 4.0), 3.0, colour(i));
        svg.text((lx + 28.0, ly), &legend[i], Anchor::Start, SMALL);
    }
    svg.finish()
}

/// Fig. 14b: per group, a horizontal bar per op type giving the share of the
/// group's models that use it, most used first.
pub fn frequency_svg(groups: &[GroupReport]) -> String {
    const ROW: f64 = 15.0;
    const HEADER: f64 = 48.0;
    const GAP: f64 = 24.0;
    let longest = groups
        .iter()
        .flat_map(|g| &g.frequency)
        .map(|u| text_width(&u.op_type, SMALL))
        .fold(0.0, f64::max);
    let (label_w, bar_w) = (longest.max(120.0) + 16.0, 440.0);
    let width = label_w + bar_w + 60.0;
    let height = 16.0
        + groups
            .iter()
            .map(|g| HEADER + ROW * g.frequency.len() as f64 + GAP)
            .sum::<f64>();
    let mut svg = Svg::new(width, height);
    let mut y0 = 16.0;
    for (i, g) in groups.iter().enumerate() {
        let title = format!(
            "{}: share of the {} model(s) using each op type",
            g.name, g.models_read
        );
        svg.text((label_w, y0 + 10.0), &title, Anchor::Start, 14.0);
        let top = y0 + HEADER - 8.0;
        let bottom = top + ROW * g.frequency.len() as f64;
        for pct in (0..=100).step_by(25) {
            let x = label_w + bar_w * pct as f64 / 100.0;
            svg.line((x, top), (x, bottom), "#e5e5e5", 1.0);
            svg.text((x, top - 6.0), &format!("{pct}%"), Anchor::Middle, SMALL);
        }
        for (r, u) in g.frequency.iter().enumerate() {
            let y = top + ROW * r as f64;
            svg.text(
                (label_w - 6.0, y + ROW - 4.0),
                &u.op_type,
                Anchor::End,
                SMALL,
            );
            let w = bar_w * u.fraction;
            svg.rect(label_w, y + 2.0, w, ROW - 4.0, colour(i));
            svg.text(
                (label_w + w + 4.0, y + ROW - 4.0),
                &format!("{}/{}", u.models, g.models_read),
                Anchor::Start,
                SMALL,
            );
        }
        svg.line((label_w, top), (label_w, bottom), "#333333", 1.0);
        y0 = bottom + GAP;
    }
    svg.finish()
}

#[cfg(test)]
mod tests {
    use super::super::analysis::{frequency, growth, LoweringSummary};
    use super::*;
    use std::collections::BTreeSet;

    fn group(name: &str, sets: &[&[&str]]) -> GroupReport {
        let sets: Vec<BTreeSet<String>> = sets
            .iter()
            .map(|s| s.iter().map(|o| o.to_string()).collect())
            .collect();
        GroupReport {
            name: name.into(),
            models: (0..sets.len()).map(|i| format!("{name}{i}")).collect(),
            models_read: sets.len(),
            unreadable: vec![],
            op_types: vec![],
            growth: growth(&sets),
            frequency: frequency(&sets),
            lowering: LoweringSummary {
                full: 0,
                blocked: 0,
                failed: 0,
                blockers: vec![],
            },
            ir_ops: vec![],
            backends: vec![],
        }
    }

    #[test]
    fn growth_chart_has_a_point_per_model_and_a_legend_per_group() {
        let groups = [
            group("a", &[&["X", "Y"], &["Z"]]),
            group("b<&>", &[&["X"], &["X"], &["Q"]]),
        ];
        let svg = growth_svg(&groups);
        assert_eq!(svg.matches("<polyline").count(), 2);
        // 2 + 3 data points, plus one legend marker per group.
        assert_eq!(svg.matches("<circle").count(), 7);
        assert!(svg.contains(">a (3 ops, 2 models)</text>"), "{svg}");
        assert!(
            svg.contains(">b&lt;&amp;&gt; (2 ops, 3 models)</text>"),
            "{svg}"
        );
    }

    #[test]
    fn frequency_chart_has_a_labelled_bar_per_op_type() {
        let groups = [group("a", &[&["X", "Y"], &["X"]])];
        let svg = frequency_svg(&groups);
        // The background plus one bar per op type; X's bar is twice Y's.
        assert_eq!(svg.matches("<rect").count(), 3);
        assert!(svg.contains(r#"width="440.0" height="11.0""#), "{svg}");
        assert!(svg.contains(r#"width="220.0" height="11.0""#), "{svg}");
        assert!(svg.contains(">2/2</text>") && svg.contains(">1/2</text>"));
    }
}
