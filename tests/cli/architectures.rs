//! The CLI on real architectures nobody here wrote (torchvision's ResNet, MobileNetV3 and ViT,
//! Hugging Face's GPT-2 and BERT with tied embeddings), each in TorchScript, `torch.save` and
//! safetensors form: every output must equal `torch.nn.utils.prune` applied to the model loaded
//! from the same file, bit for bit, but for L1 entries tied at the selection threshold (the
//! documented tie rule; tests/py/architectures.py checks that each difference is such a tie).
//!
//! The models are generated once, by tests/py/architectures.py, into a folder keyed by the
//! script's hash, and reused by later runs.

use crate::common;
use common::Cli;

use serde_json::{json, Value};
use std::path::{Path, PathBuf};

const SCRIPT: &str = include_str!("../py/architectures.py");
const FORMATS: [(&str, &str); 3] = [("ts", "ts.pt"), ("sd", "sd.pt"), ("st", "safetensors")];

/// The generated models' folder, or None (said on stderr) without a Python that has torch.
fn models() -> Option<&'static Path> {
    static DIR: std::sync::OnceLock<Option<PathBuf>> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        // FNV-1a of the script: a changed generator writes a new folder.
        let hash = SCRIPT.bytes().fold(0xcbf29ce484222325u64, |h, b| {
            (h ^ b as u64).wrapping_mul(0x100000001b3)
        });
        let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
        let dir = tmp.join(format!("architectures-{hash:016x}"));
        if dir.join("done").exists() {
            return Some(dir);
        }
        // Written aside and renamed into place, so that an interrupted run leaves no half folder.
        let partial = tempfile::tempdir_in(tmp).expect("temporary folder");
        common::run_python(SCRIPT, &[Path::new("generate"), partial.path()])?;
        std::fs::write(partial.path().join("done"), "").unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::rename(partial.path(), &dir).expect("cannot move the generated models into place");
        Some(dir)
    })
    .as_deref()
}

/// The file's tensors in order, as the CLI reports them.
fn order(path: &Path) -> Vec<String> {
    let report: Value =
        serde_json::from_str(&Cli::new("report").arg(path).arg("--json").ok()).unwrap();
    report["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_string())
        .collect()
}

/// One CLI run: a name, the plan (what PyTorch is to do), and the seed.
struct Case {
    name: &'static str,
    steps: Value,
    seed: Option<i64>,
}

/// The method set of the CLI tests: per-tensor L1, global L1 over a glob, Ln structured, and
/// seeded random methods in a two-step plan.
fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "l1",
            steps: json!([{"method": "l1-unstructured", "amount": 0.3}]),
            seed: None,
        },
        Case {
            name: "global-l1",
            steps: json!([{"method": "l1-unstructured", "amount": 0.5, "global": true, "params": "*.weight"}]),
            seed: None,
        },
        Case {
            name: "ln-structured",
            steps: json!([{"method": "ln-structured", "amount": 0.25, "n": 2, "dim": 0}]),
            seed: None,
        },
        Case {
            name: "random-plan",
            steps: json!([
                {"method": "random-unstructured", "amount": 0.2, "params": "*.weight"},
                {"method": "random-structured", "amount": 0.25, "dim": 0},
                {"method": "random-unstructured", "amount": 0.1, "global": true}
            ]),
            seed: Some(7),
        },
    ]
}

/// Runs every case on every format of `model` and has PyTorch check all the outputs in one
/// process; each case must answer OK.
fn check_model(model: &str) {
    let Some(dir) = models() else { return };
    let work = common::tempdir();
    let mut specs = Vec::new();
    for (format, ext) in FORMATS {
        let input = dir.join(format!("{model}.{ext}"));
        let order = order(&input);
        for case in cases() {
            let output = work.path().join(format!("{}-{format}.{ext}", case.name));
            let plan = work.path().join(format!("{}.json", case.name));
            std::fs::write(&plan, case.steps.to_string()).unwrap();
            Cli::prune(&input, &output)
                .arg("--plan")
                .arg(&plan)
                .option("--seed", case.seed)
                .ok();
            specs.push(json!({
                "case": format!("{model}.{ext} {}", case.name),
                "model": model, "format": format, "input": input, "output": output,
                "steps": case.steps, "seed": case.seed, "order": order,
            }));
        }
    }
    let specs_path = work.path().join("cases.json");
    std::fs::write(&specs_path, Value::from(specs.clone()).to_string()).unwrap();
    let out = common::run_python(SCRIPT, &[Path::new("check"), &specs_path])
        .expect("the models were generated, so Python is there");
    let ok = out.lines().filter(|l| l.starts_with("OK ")).count();
    assert_eq!(
        ok,
        specs.len(),
        "PyTorch checked {ok} of {} cases:\n{out}",
        specs.len()
    );
}

#[test]
fn resnet_equals_pytorch_in_every_format() {
    check_model("resnet");
}

#[test]
fn mobilenet_v3_equals_pytorch_in_every_format() {
    check_model("mobilenet");
}

#[test]
fn vision_transformer_equals_pytorch_in_every_format() {
    check_model("vit");
}

#[test]
fn gpt2_with_tied_embeddings_equals_pytorch_in_every_format() {
    check_model("gpt2");
}

#[test]
fn bert_with_tied_embeddings_equals_pytorch_in_every_format() {
    check_model("bert");
}
