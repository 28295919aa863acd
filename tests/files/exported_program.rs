//! `torch.export` programs run from Rust (`tch_prune::model::run_program`, node by node through
//! libtorch's dispatcher) against `torch.export.load(archive).module()` on the same input, for
//! programs exported by PyTorch (tests/py/exported_program.py): ResNet, MobileNetV3,
//! EfficientNet, a ViT, and a module of assorted operators. What cannot be run is refused
//! before anything runs, naming the node or input.

use crate::common::{self, run_python};
use std::io::Read;
use std::path::Path;
use tch::Tensor;
use tch_prune::checkpoint::Pt2Archive;
use tch_prune::model::run_program;

const SCRIPT: &str = include_str!("../py/exported_program.py");

/// The archive's program (`<root>/models/model.json`), as JSON.
fn program(path: &Path) -> serde_json::Value {
    let mut zip = zip::ZipArchive::new(std::fs::File::open(path).expect("archive")).expect("zip");
    let name = zip
        .file_names()
        .find(|n| n.ends_with("/models/model.json"))
        .expect("a program")
        .to_string();
    let mut text = String::new();
    zip.by_name(&name)
        .expect("entry")
        .read_to_string(&mut text)
        .expect("read");
    serde_json::from_str(&text).expect("JSON")
}

/// Runs `name`'s archive on its example input: the outputs, and the one PyTorch computed.
fn run(dir: &Path, name: &str) -> (tch_prune::Result<Vec<Tensor>>, Tensor, Tensor) {
    let archive = dir.join(format!("{name}.pt2"));
    let (_, weights) = Pt2Archive::read(&archive).expect("read");
    let io = Tensor::read_safetensors(dir.join(format!("{name}.io.safetensors"))).expect("io");
    let get = |k: &str| {
        io.iter()
            .find(|(n, _)| n == k)
            .map(|(_, t)| t.shallow_clone())
            .expect("tensor")
    };
    let (x, y) = (get("x"), get("y"));
    (
        run_program(&program(&archive), &weights, &[x.shallow_clone()]),
        x,
        y,
    )
}

#[test]
fn exported_programs_compute_what_pytorch_computes() {
    let dir = common::tempdir();
    if run_python(SCRIPT, &[dir.path()]).is_none() {
        return;
    }
    for name in [
        "resnet18",
        "mobilenet_v3_small",
        "efficientnet_b0",
        "vit",
        "mixed",
    ] {
        let (out, _, expected) = run(dir.path(), name);
        let out = out.unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(out.len(), 1, "{name}");
        assert_eq!(out[0].size(), expected.size(), "{name}");
        // The same kernels; threads may sum in another order.
        let scale = expected.abs().max().double_value(&[]).max(1.0);
        let error = (&out[0] - &expected).abs().max().double_value(&[]);
        assert!(
            error <= 1e-4 * scale,
            "{name}: off by {error} (scale {scale})"
        );
    }

    // A tensor lifted into the archive's constants is refused, named, before anything runs.
    let (out, x, _) = run(dir.path(), "constant");
    let e = out.expect_err("a constant").to_string();
    assert!(e.contains("takes a tensor_constant input"), "{e}");
    let (_, weights) = Pt2Archive::read(dir.path().join("resnet18.pt2")).expect("read");
    let program = program(&dir.path().join("resnet18.pt2"));

    // Inputs: too many, too few; a weight missing.
    let e = run_program(&program, &weights, &[x.shallow_clone(), x.shallow_clone()]);
    assert!(e
        .unwrap_err()
        .to_string()
        .contains("fewer inputs than were given"));
    let e = run_program(&program, &weights, &[]);
    assert!(e
        .unwrap_err()
        .to_string()
        .contains("more inputs than were given"));
    let e = run_program(&program, &weights[1..], &[x.shallow_clone()]);
    assert!(e
        .unwrap_err()
        .to_string()
        .contains("its weights have no conv1.weight"));

    // A program naming an operator outside aten, one the policy denies, a value read before it
    // is computed, and an argument the operator does not have: each named, nothing run.
    let edit = |f: &dyn Fn(&mut serde_json::Value)| {
        let mut p = program.clone();
        f(&mut p["graph_module"]["graph"]["nodes"][0]);
        run_program(&p, &weights, &[x.shallow_clone()])
            .expect_err("refused")
            .to_string()
    };
    let e = edit(&|n| n["target"] = "builtins.exec".into());
    assert!(
        e.contains("node conv2d (builtins.exec) is not an operator of libtorch's aten namespace"),
        "{e}"
    );
    let e = edit(&|n| n["target"] = "torch.ops.aten.save.default".into());
    assert!(
        e.contains("calls an operator the code policy does not allow"),
        "{e}"
    );
    let e = edit(&|n| n["inputs"][0]["arg"]["as_tensor"]["name"] = "later".into());
    assert!(
        e.contains("reads later, which no node before it computes"),
        "{e}"
    );
    let e = edit(&|n| n["inputs"][2]["name"] = "biass".into());
    assert!(e.contains("aten::conv2d has no argument biass"), "{e}");
    let e = edit(&|n| {
        n["inputs"].as_array_mut().expect("list").remove(1);
    });
    assert!(e.contains("argument weight is required"), "{e}");
}
