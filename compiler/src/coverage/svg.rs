//! A tiny SVG writer: just the shapes the coverage charts (and `m4c npu
//! explore`'s Pareto plot) draw, with text escaped and coordinates rounded
//! so the files stay small and diffable.

use std::fmt::Write;

/// Series colours, cycled (colour-blind-safe Okabe–Ito palette).
pub const PALETTE: &[&str] = &[
    "#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000", "#F0E442",
];

/// The colour of the `i`-th series.
pub fn colour(i: usize) -> &'static str {
    PALETTE[i % PALETTE.len()]
}

/// Horizontal anchoring of a text element.
#[derive(Clone, Copy)]
pub enum Anchor {
    Start,
    Middle,
    End,
}

/// An SVG document being drawn.
pub struct Svg {
    width: f64,
    height: f64,
    body: String,
}

impl Svg {
    /// An empty canvas of `width` × `height` user units on a white background.
    pub fn new(width: f64, height: f64) -> Svg {
        let mut svg = Svg {
            width,
            height,
            body: String::new(),
        };
        svg.rect(0.0, 0.0, width, height, "#ffffff");
        svg
    }

    /// A straight line.
    pub fn line(&mut self, (x1, y1): (f64, f64), (x2, y2): (f64, f64), stroke: &str, width: f64) {
        let _ = writeln!(
            self.body,
            r#"<line x1="{x1:.1}" y1="{y1:.1}" x2="{x2:.1}" y2="{y2:.1}" stroke="{stroke}" stroke-width="{width}"/>"#
        );
    }

    /// An open polyline through `points`.
    pub fn polyline(&mut self, points: &[(f64, f64)], stroke: &str, width: f64) {
        let pts: Vec<String> = points
            .iter()
            .map(|(x, y)| format!("{x:.1},{y:.1}"))
            .collect();
        let _ = writeln!(
            self.body,
            r#"<polyline points="{}" fill="none" stroke="{stroke}" stroke-width="{width}"/>"#,
            pts.join(" ")
        );
    }

    /// A filled circle.
    pub fn circle(&mut self, (cx, cy): (f64, f64), r: f64, fill: &str) {
        let _ = writeln!(
            self.body,
            r#"<circle cx="{cx:.1}" cy="{cy:.1}" r="{r}" fill="{fill}"/>"#
        );
    }

    /// A filled rectangle.
    pub fn rect(&mut self, x: f64, y: f64, w: f64, h: f64, fill: &str) {
        let _ = writeln!(
            self.body,
            r#"<rect x="{x:.1}" y="{y:.1}" width="{w:.1}" height="{h:.1}" fill="{fill}"/>"#
        );
    }

    /// Text whose baseline starts, centres or ends at `(x, y)`.
    pub fn text(&mut self, (x, y): (f64, f64), text: &str, anchor: Anchor, size: f64) {
        let anchor = match anchor {
            Anchor::Start => "start",
            Anchor::Middle => "middle",
            Anchor::End => "end",
        };
        let _ = writeln!(
            self.body,
            r#"<text x="{x:.1}" y="{y:.1}" font-size="{size}" text-anchor="{anchor}">{}</text>"#,
            escape(text)
        );
    }

    /// Text rotated a quarter turn anticlockwise about `(x, y)`, for a y-axis label.
    pub fn vertical_text(&mut self, (x, y): (f64, f64), text: &str, size: f64) {
        let _ = writeln!(
            self.body,
            r#"<text x="{x:.1}" y="{y:.1}" font-size="{size}" text-anchor="middle" transform="rotate(-90 {x:.1} {y:.1})">{}</text>"#,
            escape(text)
        );
    }

    /// The finished document.
    pub fn finish(self) -> String {
        format!(
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\" font-family=\"sans-serif\">\n{}</svg>\n",
            self.body,
            w = self.width,
            h = self.height
        )
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Integer tick positions `0, step, 2·step, …` covering `0..=max` with about
/// `target` intervals, the step being 1, 2 or 5 times a power of ten.
pub fn integer_ticks(max: usize, target: usize) -> Vec<usize> {
    let raw = (max.max(1) as f64 / target.max(1) as f64).max(1.0);
    let magnitude = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * magnitude)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * magnitude) as usize;
    let last = max.max(1).div_ceil(step) * step;
    (0..=last).step_by(step).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_use_round_steps_and_cover_the_maximum() {
        assert_eq!(integer_ticks(4, 5), vec![0, 1, 2, 3, 4]);
        assert_eq!(integer_ticks(14, 5), vec![0, 5, 10, 15]);
        assert_eq!(integer_ticks(40, 8), vec![0, 5, 10, 15, 20, 25, 30, 35, 40]);
        assert_eq!(
            integer_ticks(156, 8),
            vec![0, 20, 40, 60, 80, 100, 120, 140, 160]
        );
        assert_eq!(integer_ticks(0, 5), vec![0, 1]);
    }

    #[test]
    fn text_is_escaped() {
        let mut svg = Svg::new(10.0, 10.0);
        svg.text((1.0, 2.0), "a<b & \"c\"", Anchor::Start, 10.0);
        let doc = svg.finish();
        assert!(doc.contains(">a&lt;b &amp; &quot;c&quot;</text>"), "{doc}");
        assert!(
            doc.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"10\" height=\"10\"")
        );
    }
}
