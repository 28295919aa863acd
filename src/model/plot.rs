//! SVG charts, drawn with `plotters`' SVG backend (text as `<text>` elements: no font files,
//! no system libraries): the training recorder's line plots and the per-tensor sparsity bars
//! of `tch-prune report --svg`.

use crate::error::{PruneError, Result};
use crate::model::report::Report;
use crate::model::text_file::write_text;
use plotters::coord::ranged1d::SegmentValue;
use plotters::prelude::*;
use std::ops::Range;
use std::path::Path;

/// matplotlib's first colours, in order: one per series.
const COLOURS: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
];

const FONT: &str = "sans-serif";

/// The colour of series `i`.
pub(crate) fn colour(i: usize) -> RGBColor {
    COLOURS[i % COLOURS.len()]
}

/// One line of a panel.
pub(crate) struct Line<'a> {
    pub label: &'a str,
    pub points: Vec<(f64, f64)>,
}

/// One chart of a stacked figure; all panels share the x axis.
pub(crate) struct Panel<'a> {
    pub y_desc: &'a str,
    /// A fixed y range (e.g. 0..100 for percentages); `None` fits the data.
    pub y_range: Option<Range<f64>>,
    /// Where the legend goes: where the curves are not (rising curves leave the lower
    /// right free, falling ones the upper right).
    pub legend: SeriesLabelPosition,
    pub lines: Vec<Line<'a>>,
}

/// Panels stacked vertically, each with its lines and a legend, as one SVG document.
pub(crate) fn stacked_lines(title: &str, x_desc: &str, panels: &[Panel]) -> Result<String> {
    let what = || format!("the line plot '{title}'");
    let err = |e: &dyn std::fmt::Display| PruneError::Plot {
        what: what(),
        reason: e.to_string(),
    };
    let xs = panels
        .iter()
        .flat_map(|p| &p.lines)
        .flat_map(|l| l.points.iter().map(|p| p.0));
    let x_range = padded(xs, 0.0);
    let mut svg = String::new();
    {
        let height = 40 + 260 * panels.len().max(1) as u32;
        let root = SVGBackend::with_string(&mut svg, (900, height)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(&e))?;
        let root = root.titled(title, (FONT, 22)).map_err(|e| err(&e))?;
        let areas = root.split_evenly((panels.len().max(1), 1));
        for (panel, area) in panels.iter().zip(&areas) {
            let ys = panel
                .lines
                .iter()
                .flat_map(|l| l.points.iter().map(|p| p.1));
            let y_range = panel.y_range.clone().unwrap_or_else(|| padded(ys, 0.05));
            let mut chart = ChartBuilder::on(area)
                .margin(12)
                .x_label_area_size(36)
                .y_label_area_size(64)
                .build_cartesian_2d(x_range.clone(), y_range)
                .map_err(|e| err(&e))?;
            chart
                .configure_mesh()
                .x_desc(x_desc)
                .y_desc(panel.y_desc)
                .x_label_formatter(&|x| format!("{x:.0}"))
                .light_line_style(WHITE.mix(0.0))
                .draw()
                .map_err(|e| err(&e))?;
            for (i, line) in panel.lines.iter().enumerate() {
                let c = colour(i);
                chart
                    .draw_series(LineSeries::new(
                        line.points.iter().copied(),
                        c.stroke_width(2),
                    ))
                    .map_err(|e| err(&e))?
                    .label(line.label)
                    // A filled swatch: the only polylines are the series themselves.
                    .legend(move |(x, y)| {
                        Rectangle::new([(x, y - 4), (x + 16, y + 4)], c.filled())
                    });
            }
            if !panel.lines.is_empty() {
                chart
                    .configure_series_labels()
                    .position(panel.legend.clone())
                    .background_style(WHITE.mix(0.85))
                    .border_style(BLACK)
                    .label_font((FONT, 14))
                    .draw()
                    .map_err(|e| err(&e))?;
            }
        }
        root.present().map_err(|e| err(&e))?;
    }
    Ok(svg)
}

/// A range over `values` with a relative margin, never empty.
fn padded(values: impl Iterator<Item = f64>, margin: f64) -> Range<f64> {
    let (lo, hi) = values
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        });
    if lo > hi {
        return 0.0..1.0;
    }
    let pad = if hi > lo { (hi - lo) * margin } else { 0.5 };
    (lo - pad)..(hi + pad)
}

impl Report {
    /// The report as an SVG bar chart: one horizontal bar per tensor, its sparsity in percent
    /// (labelled), in the report's order from the top, and the total in the title.
    pub fn to_svg(&self, title: &str) -> Result<String> {
        let what = || format!("the sparsity chart '{title}'");
        let err = |e: &dyn std::fmt::Display| PruneError::Plot {
            what: what(),
            reason: e.to_string(),
        };
        let n = self.tensors.len();
        let longest = self.tensors.iter().map(|t| t.name.len()).max().unwrap_or(0);
        // Room for the names at 7 px a character (the naive font metrics), within reason.
        let label_width = (longest as u32 * 7 + 16).clamp(60, 420);
        let mut svg = String::new();
        {
            let height = 110 + 26 * n.max(1) as u32;
            let root =
                SVGBackend::with_string(&mut svg, (700 + label_width, height)).into_drawing_area();
            root.fill(&WHITE).map_err(|e| err(&e))?;
            let caption = format!(
                "{title}: {:.2}% of {} entries are zero",
                100.0 * self.sparsity,
                self.numel
            );
            let mut chart = ChartBuilder::on(&root)
                .caption(caption, (FONT, 18))
                .margin(14)
                .x_label_area_size(40)
                .y_label_area_size(label_width)
                .build_cartesian_2d(0f64..100f64, (0..n.max(1) - 1).into_segmented())
                .map_err(|e| err(&e))?;
            // Rows 0..=n-1 (a segmented range includes its end). Bar i is drawn in row
            // n - 1 - i, so the first tensor is at the top.
            let name_of = |v: &SegmentValue<usize>| match v {
                SegmentValue::CenterOf(row) if *row < n => self.tensors[n - 1 - row].name.clone(),
                _ => String::new(),
            };
            chart
                .configure_mesh()
                .disable_y_mesh()
                .y_labels(n.max(1))
                .y_label_formatter(&name_of)
                .x_desc("sparsity (% of entries that are zero)")
                .draw()
                .map_err(|e| err(&e))?;
            let bars = self.tensors.iter().enumerate().map(|(i, t)| {
                let row = n - 1 - i;
                let mut bar = Rectangle::new(
                    [
                        (0.0, SegmentValue::Exact(row)),
                        (100.0 * t.sparsity, SegmentValue::Exact(row + 1)),
                    ],
                    colour(0).filled(),
                );
                bar.set_margin(3, 3, 0, 0);
                bar
            });
            chart.draw_series(bars).map_err(|e| err(&e))?;
            let labels = self.tensors.iter().enumerate().map(|(i, t)| {
                Text::new(
                    format!("{:.2}%", 100.0 * t.sparsity),
                    (
                        (100.0 * t.sparsity).min(88.0) + 1.0,
                        SegmentValue::CenterOf(n - 1 - i),
                    ),
                    (FONT, 13).into_font(),
                )
            });
            chart.draw_series(labels).map_err(|e| err(&e))?;
            root.present().map_err(|e| err(&e))?;
        }
        Ok(svg)
    }

    /// Writes [`to_svg`](Self::to_svg) to `path`, atomically (all or nothing).
    pub fn write_svg(&self, path: impl AsRef<Path>, title: &str) -> Result<()> {
        write_text(path.as_ref(), &self.to_svg(title)?)
    }
}
