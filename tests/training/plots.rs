//! The SVG plots open in a browser: they parse as XML (an SVG root with a view box) and hold
//! their series: one polyline per run and panel with one point per record, the legend's names,
//! one bar per tensor of `tch-prune report --svg` with its label. And the CSV beside them.
#![cfg(feature = "plot")]

use crate::common;
use common::Cli;

use tch::{Device, Kind, Tensor};
use tch_prune::checkpoint::write_safetensors;
use tch_prune::train::Recorder;

fn check_svg_root(doc: &roxmltree::Document) {
    let root = doc.root_element();
    assert_eq!(root.tag_name().name(), "svg");
    assert_eq!(
        root.tag_name().namespace(),
        Some("http://www.w3.org/2000/svg")
    );
    assert!(root.attribute("viewBox").is_some());
}

fn texts(doc: &roxmltree::Document) -> Vec<String> {
    doc.descendants()
        .filter(|n| n.has_tag_name("text"))
        .map(|n| n.text().unwrap_or("").trim().to_string())
        .collect()
}

#[test]
fn recorder_svg_has_a_line_per_run_and_panel_and_the_csv_reads_back() {
    let mut rec = Recorder::new("two runs & <escapes>");
    for step in 0..10 {
        rec.record(
            "dense",
            step * 10,
            0.0,
            1.0 / (step + 1) as f64,
            0.5 + 0.04 * step as f64,
        );
        // The sparse run records its pruning steps without loss or accuracy in between.
        rec.record("gradual, 90%", step * 10, 0.09 * step as f64, None, None);
        rec.record(
            "gradual, 90%",
            step * 10 + 5,
            0.09 * step as f64,
            1.2 / (step + 1) as f64,
            0.45 + 0.04 * step as f64,
        );
    }
    rec.record("gradual, 90%", 100, 0.9, f64::NAN, None);
    let dir = common::tempdir();
    let (svg_path, csv_path) = (dir.path().join("c.svg"), dir.path().join("c.csv"));
    rec.write_svg(&svg_path).unwrap();
    rec.write_csv(&csv_path).unwrap();

    let text = std::fs::read_to_string(&svg_path).unwrap();
    let doc = roxmltree::Document::parse(&text).expect("the SVG is well-formed XML");
    check_svg_root(&doc);
    let lines: Vec<usize> = doc
        .descendants()
        // Axes and ticks are black polylines; the series have their colours.
        .filter(|n| n.has_tag_name("polyline") && n.attribute("stroke") != Some("#000000"))
        .map(|n| n.attribute("points").unwrap().split_whitespace().count())
        .collect();
    // Three panels (sparsity, loss, accuracy) of two runs, in that order: dense has 10 points
    // everywhere; gradual 21 sparsities, 10 losses (NaN left out) and 10 accuracies.
    assert_eq!(lines, [10, 21, 10, 10, 10, 10], "{lines:?}");
    let texts = texts(&doc);
    for expected in [
        "dense",
        "gradual, 90%",
        "sparsity (%)",
        "loss",
        "accuracy (%)",
        "step",
    ] {
        assert_eq!(
            texts.iter().filter(|t| *t == expected).count(),
            if ["dense", "gradual, 90%", "step"].contains(&expected) {
                3
            } else {
                1
            },
            "{expected}: {texts:?}"
        );
    }
    assert!(texts.contains(&"two runs & <escapes>".to_string()));

    let csv = std::fs::read_to_string(&csv_path).unwrap();
    let rows: Vec<&str> = csv.lines().collect();
    assert_eq!(rows[0], "run,step,sparsity,loss,accuracy");
    assert_eq!(rows.len(), 1 + rec.records().len());
    assert_eq!(rows[1], "dense,0,0,1,0.5");
    assert_eq!(rows[2], "\"gradual, 90%\",0,0,,");
    assert_eq!(*rows.last().unwrap(), "\"gradual, 90%\",100,0.9,NaN,");
    // Numbers read back exactly.
    let sparsity: f64 = rows[rows.len() - 3]
        .rsplit(',')
        .nth(2)
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(sparsity, 0.09 * 9.0);
}

#[test]
fn report_svg_has_a_bar_per_tensor() {
    let dir = common::tempdir();
    let (input, svg) = (dir.path().join("m.safetensors"), dir.path().join("r.svg"));
    let tensors = [
        (
            "features.0.weight",
            Tensor::from_slice(&[0f32, 0., 0., 1.]).view([2, 2]),
        ),
        ("features.0.bias", Tensor::from_slice(&[1f32, 2.])),
        (
            "classifier.weight",
            Tensor::zeros([3, 4], (Kind::Float, Device::Cpu)),
        ),
    ];
    write_safetensors(&input, &tensors).unwrap();
    let out = Cli::new("report").arg(&input).arg("--svg").arg(&svg).run();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The table is still printed.
    assert!(String::from_utf8_lossy(&out.stdout).contains("classifier.weight"));

    let text = std::fs::read_to_string(&svg).unwrap();
    let doc = roxmltree::Document::parse(&text).expect("the SVG is well-formed XML");
    check_svg_root(&doc);
    let texts = texts(&doc);
    for name in ["features.0.weight", "features.0.bias", "classifier.weight"] {
        assert!(texts.iter().any(|t| t == name), "{name}: {texts:?}");
    }
    for value in ["75.00%", "0.00%", "100.00%"] {
        assert!(texts.iter().any(|t| t == value), "{value}: {texts:?}");
    }
    assert!(
        texts
            .iter()
            .any(|t| t.contains("83.33% of 18 entries are zero")),
        "{texts:?}"
    );
    // One filled bar per tensor (the background is white), widths in proportion: 75 %, 0 %
    // and 100 % of the same axis.
    let bars: Vec<f64> = doc
        .descendants()
        .filter(|n| n.has_tag_name("rect") && n.attribute("fill") == Some("#1F77B4"))
        .map(|n| n.attribute("width").unwrap().parse().unwrap())
        .collect();
    // (The file's order: safetensors lists tensors by name.)
    assert_eq!(bars.len(), 3, "{bars:?}");
    assert_eq!(bars[1], 0.0, "features.0.bias has no zero");
    assert!((bars[2] / bars[0] - 0.75).abs() < 0.01, "{bars:?}");

    // An output folder that does not exist: one line, non-zero status.
    let out = Cli::new("report")
        .arg(&input)
        .arg("--svg")
        .arg(dir.path().join("no/such/folder/r.svg"))
        .run();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
}
