//! A training-curve recorder: the loop feeds it (step, sparsity, loss, accuracy) per run, and
//! it writes them as CSV and as an SVG line plot.

use crate::error::Result;
use crate::model::text_file::write_text;
use std::fmt::Write as _;
use std::path::Path;

/// One row: where run `run` stood at step `step`.
#[derive(Clone, Debug, PartialEq)]
pub struct Record {
    /// The run's name (one curve per run).
    pub run: String,
    /// The training step.
    pub step: i64,
    /// A fraction in `[0, 1]`.
    pub sparsity: f64,
    /// The training loss at that step, if recorded.
    pub loss: Option<f64>,
    /// A fraction in `[0, 1]`.
    pub accuracy: Option<f64>,
}

/// Collects the curves of one or more training runs (a dense baseline, a gradually pruned
/// run, a 2:4 run, ...) and writes them for a spreadsheet ([`write_csv`](Self::write_csv)) or
/// a browser (`write_svg`, with the `plot` feature, on by default): one
/// panel each for sparsity, loss and accuracy (those that were recorded), one line per run.
///
/// ```
/// use tch_prune::train::Recorder;
/// let mut rec = Recorder::new("digits CNN");
/// rec.record("dense", 0, 0.0, 2.30, None);
/// rec.record("dense", 100, 0.0, 0.12, 0.975);
/// rec.record("gradual", 100, 0.9, 0.20, 0.969);
/// assert!(rec.to_csv().starts_with("run,step,sparsity,loss,accuracy\ndense,0,0,2.3,\n"));
/// # #[cfg(feature = "plot")]
/// assert!(rec.to_svg()?.contains("gradual"));
/// # Ok::<(), tch_prune::PruneError>(())
/// ```
#[derive(Clone, Debug, Default)]
pub struct Recorder {
    title: String,
    records: Vec<Record>,
}

impl Recorder {
    /// An empty recorder; `title` heads the plot.
    pub fn new(title: &str) -> Self {
        Self {
            title: title.to_string(),
            records: Vec::new(),
        }
    }

    /// Records run `run` at `step`: its sparsity, and its loss and accuracy if known (`f64` or
    /// `None`). Non-finite values (a diverged loss) are kept in the CSV and left out of the plot.
    pub fn record(
        &mut self,
        run: &str,
        step: i64,
        sparsity: f64,
        loss: impl Into<Option<f64>>,
        accuracy: impl Into<Option<f64>>,
    ) {
        self.records.push(Record {
            run: run.to_string(),
            step,
            sparsity,
            loss: loss.into(),
            accuracy: accuracy.into(),
        });
    }

    /// The plot's title.
    pub fn title(&self) -> &str {
        &self.title
    }

    /// Every record, in the order recorded.
    pub fn records(&self) -> &[Record] {
        &self.records
    }

    /// The runs' names, in the order they first appear.
    pub fn runs(&self) -> Vec<&str> {
        let mut runs: Vec<&str> = Vec::new();
        for r in &self.records {
            if !runs.contains(&r.run.as_str()) {
                runs.push(&r.run);
            }
        }
        runs
    }

    /// `run,step,sparsity,loss,accuracy`, one line per record; unknown values are empty, run
    /// names quoted when they need it (RFC 4180), numbers written so they read back exactly.
    pub fn to_csv(&self) -> String {
        let mut csv = String::from("run,step,sparsity,loss,accuracy\n");
        let opt = |v: Option<f64>| v.map(|v| v.to_string()).unwrap_or_default();
        for r in &self.records {
            let _ = writeln!(
                csv,
                "{},{},{},{},{}",
                csv_field(&r.run),
                r.step,
                r.sparsity,
                opt(r.loss),
                opt(r.accuracy)
            );
        }
        csv
    }

    /// Writes [`to_csv`](Self::to_csv) to `path`, atomically.
    pub fn write_csv(&self, path: impl AsRef<Path>) -> Result<()> {
        write_text(path.as_ref(), &self.to_csv())
    }

    /// The curves as one SVG document: sparsity (%), then loss and accuracy (%) if any run
    /// recorded them, against the step; one line per run, with a legend.
    #[cfg(feature = "plot")]
    pub fn to_svg(&self) -> Result<String> {
        use crate::model::plot::{stacked_lines, Line, Panel};
        use plotters::chart::SeriesLabelPosition;
        let runs = self.runs();
        let series = |value: &dyn Fn(&Record) -> Option<f64>| -> Vec<Line> {
            runs.iter()
                .map(|run| Line {
                    label: run,
                    points: self
                        .records
                        .iter()
                        .filter(|r| r.run == *run)
                        .filter_map(|r| {
                            value(r)
                                .filter(|v| v.is_finite())
                                .map(|v| (r.step as f64, v))
                        })
                        .collect(),
                })
                .collect()
        };
        let mut panels = vec![Panel {
            y_desc: "sparsity (%)",
            y_range: Some(0.0..100.0),
            legend: SeriesLabelPosition::LowerRight,
            lines: series(&|r| Some(100.0 * r.sparsity)),
        }];
        if self.records.iter().any(|r| r.loss.is_some()) {
            panels.push(Panel {
                y_desc: "loss",
                y_range: None,
                legend: SeriesLabelPosition::UpperRight,
                lines: series(&|r| r.loss),
            });
        }
        if self.records.iter().any(|r| r.accuracy.is_some()) {
            panels.push(Panel {
                y_desc: "accuracy (%)",
                y_range: None,
                legend: SeriesLabelPosition::LowerRight,
                lines: series(&|r| r.accuracy.map(|a| 100.0 * a)),
            });
        }
        stacked_lines(&self.title, "step", &panels)
    }

    /// Writes [`to_svg`](Self::to_svg) to `path`, atomically.
    #[cfg(feature = "plot")]
    pub fn write_svg(&self, path: impl AsRef<Path>) -> Result<()> {
        write_text(path.as_ref(), &self.to_svg()?)
    }
}

/// A CSV field, quoted if it holds a comma, a quote or a line break.
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_quotes_names_that_need_it() {
        let mut rec = Recorder::new("t");
        rec.record("a,\"b\"", 1, 0.5, None, 0.25);
        assert_eq!(
            rec.to_csv(),
            "run,step,sparsity,loss,accuracy\n\"a,\"\"b\"\"\",1,0.5,,0.25\n"
        );
    }
}
