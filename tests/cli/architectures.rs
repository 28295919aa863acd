//! The CLI on real architectures nobody here wrote (torchvision's ResNet, MobileNetV3 and ViT,
//! Hugging Face's GPT-2 and BERT with tied embeddings), each in TorchScript, `torch.save`,
//! safetensors and `torch.export` (`.pt2`) form: every output must equal `torch.nn.utils.prune`
//! applied to the model loaded from the same file (for `.pt2`, also: every entry but the weight
//! storages unchanged, `torch.export.load(out).module()` running, the report of the output
//! right), bit for bit, but for L1 entries tied at the selection threshold (the
//! documented tie rule; tests/py/architectures.py checks that each difference is such a tie).
//!
//! The models are generated once, by tests/py/architectures.py, into a folder keyed by the
//! script's hash, and reused by later runs.

use crate::common;
use common::Cli;

use serde_json::{json, Value};
use std::path::{Path, PathBuf};

const SCRIPT: &str = include_str!("../py/architectures.py");
const CORPUS_SCRIPT: &str = include_str!("../py/code_corpus.py");
const SHRINK_SCRIPT: &str = include_str!("../py/shrink_architectures.py");
const FORMATS: [(&str, &str); 4] = [
    ("ts", "ts.pt"),
    ("sd", "sd.pt"),
    ("st", "safetensors"),
    ("ep", "pt2"),
];

/// The generated models' folder, or None (said on stderr) without a Python that has torch.
fn models() -> Option<&'static Path> {
    static DIR: std::sync::OnceLock<Option<PathBuf>> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        generated("architectures", &[SCRIPT], |out| {
            common::run_python(SCRIPT, &[Path::new("generate"), out]).map(drop)
        })
    })
    .as_deref()
}

/// A folder of generated files under the target folder, keyed by the generating scripts' text
/// (FNV-1a: a changed generator writes a new folder), made by `make` once; None without Python.
pub(crate) fn generated(
    prefix: &str,
    scripts: &[&str],
    make: impl FnOnce(&Path) -> Option<()>,
) -> Option<PathBuf> {
    let hash = scripts
        .iter()
        .flat_map(|s| s.bytes())
        .fold(0xcbf29ce484222325u64, |h, b| {
            (h ^ b as u64).wrapping_mul(0x100000001b3)
        });
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let dir = tmp.join(format!("{prefix}-{hash:016x}"));
    if dir.join("done").exists() {
        return Some(dir);
    }
    // Written aside and renamed into place, so that an interrupted run leaves no half folder.
    let partial = tempfile::tempdir_in(tmp).expect("temporary folder");
    make(partial.path())?;
    std::fs::write(partial.path().join("done"), "").unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::rename(partial.path(), &dir).expect("cannot move the generated files into place");
    Some(dir)
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
        let order = common::tensor_order(&input);
        for case in cases() {
            let output = work.path().join(format!("{}-{format}.{ext}", case.name));
            let plan = work.path().join(format!("{}.json", case.name));
            std::fs::write(&plan, case.steps.to_string()).unwrap();
            Cli::prune(&input, &output)
                .arg("--plan")
                .arg(&plan)
                .option("--seed", case.seed)
                .ok();
            let report = work
                .path()
                .join(format!("{}-{format}.report.json", case.name));
            std::fs::write(&report, Cli::new("report").arg(&output).arg("--json").ok()).unwrap();
            specs.push(json!({
                "case": format!("{model}.{ext} {}", case.name),
                "model": model, "format": format, "input": input, "output": output,
                "steps": case.steps, "seed": case.seed, "order": order, "report": report,
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

/// The TorchScript code policy (the default, `CodePolicy::Checked`) refuses no real model: the
/// code of every model the test suites build (every torchvision classification model, as
/// scripts/shrink_sweep.py makes them, its detection, segmentation, video, optical-flow and
/// quantized models, some traced; this file's models and tests/py/shrink_architectures.py's;
/// Hugging Face models traced; tests/py/formats' TorchScript fixtures), written by
/// tests/py/code_corpus.py, and the committed TorchScript fixtures.
#[test]
fn the_code_policy_refuses_no_real_model() {
    let py = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/py");
    let corpus = generated(
        "code-corpus",
        &[CORPUS_SCRIPT, SCRIPT, SHRINK_SCRIPT],
        |out| {
            let log = common::run_python(CORPUS_SCRIPT, &[&py, out])?;
            assert!(log.ends_with("done\n"), "{log}");
            Some(())
        },
    )
    .expect("this test needs TCH_PRUNE_PYTHON with torch, torchvision and transformers");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files: Vec<PathBuf> = [
        "tests/fixtures/formats/script.pt",
        "tests/fixtures/formats/tiny_script.pt",
        "data/digits_cnn.pt",
    ]
    .iter()
    .map(|f| root.join(f))
    .collect();
    for dir in [corpus.clone(), corpus.join("formats")] {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "pt") {
                files.push(path);
            }
        }
    }
    let mut refused: Vec<String> = files
        .iter()
        .filter_map(|f| tch_prune::checkpoint::check_torchscript_code(f).err())
        .map(|e| e.to_string())
        .collect();
    // torchvision's detection models call torchvision's own operators, which libtorch alone
    // does not have (it could not load them either): refused for that, and only that.
    let detection: Vec<PathBuf> = std::fs::read_dir(corpus.join("torchvision_ops"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    for f in &detection {
        match tch_prune::checkpoint::check_torchscript_code(f) {
            Err(e) if e.to_string().contains("namespace 'torchvision'") => {}
            other => refused.push(format!(
                "{}: {other:?}, not refused for ops.torchvision",
                f.display()
            )),
        }
    }
    assert!(
        detection.len() >= 8,
        "only {} detection models",
        detection.len()
    );
    assert!(
        refused.is_empty(),
        "{} of {} real models refused:\n{}",
        refused.len(),
        files.len(),
        refused.join("\n")
    );
    // Not vacuous: the corpus holds what the generator says it writes.
    assert!(files.len() > 150, "only {} models checked", files.len());
}
