//! Channel removal (`ScriptModel::shrink`) on real architectures: torchvision 0.28 models with
//! random init, scripted and saved by the PyTorch of the venv at test time (once per run, all
//! models in one Python process), on 1x3x64x64 inputs. For each at 0.5 per group: the output
//! loads and runs in PyTorch with the new parameter count, parameters and MACs fall, the output
//! equals the original with the removed channels zeroed (relative error <= 1e-4), and the
//! exact route (removing only all-zero groups) leaves the outputs unchanged (up to float
//! summation order: relative error <= 1e-5; tests/shrink/exact.rs shows that summation order is
//! the only difference, bit for bit).
//!
//! These tests need Python's torch and torchvision (`make test` provides them): without them
//! they fail rather than pass having compared nothing.

use crate::common;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use tch::{Device, Kind, Tensor};
use tch_prune::model::ScriptModel;
use tch_prune::shrink::{ShrinkOptions, ShrinkReport};

const GENERATE: &str = r#"
import sys, torch, torchvision
from torchvision.models.vision_transformer import VisionTransformer
out = sys.argv[1]
torch.manual_seed(0)
models = {name: getattr(torchvision.models, name)(weights=None)
          for name in ["resnet18", "resnet50", "mobilenet_v2", "mobilenet_v3_small", "vgg11_bn", "efficientnet_b0"]}
# vgg11_bn's classifier (25088x4096, 4096x4096: 120M of its 133M parameters, a 530 MB file)
# made narrower: the same 7x7 adaptive pool flattened into a linear layer (channel x spatial
# columns), the same three linear layers, a 64 MB file.
models["vgg11_bn"].classifier = torch.nn.Sequential(
    torch.nn.Linear(512 * 7 * 7, 256), torch.nn.ReLU(True), torch.nn.Dropout(),
    torch.nn.Linear(256, 256), torch.nn.ReLU(True), torch.nn.Dropout(), torch.nn.Linear(256, 1000))
# A small ViT: its MLP blocks are what can shrink (the embedding width is layer-normalised).
models["vit"] = VisionTransformer(image_size=64, patch_size=16, num_layers=2, num_heads=2,
                                  hidden_dim=64, mlp_dim=128, num_classes=10)
# torchvision zero-initialises the ViT head: its output would not depend on anything.
torch.nn.init.normal_(models["vit"].heads.head.weight, std=0.2)
for name, m in models.items():
    m.eval()
    # Non-trivial batch-norm statistics, so that zeroed and removed channels are really tested.
    for mod in m.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.5, 0.5)
            mod.running_var.uniform_(0.5, 1.5)
            mod.bias.data.uniform_(-0.2, 0.2)
    torch.jit.save(torch.jit.script(m), f"{out}/{name}.pt")
print("ok")
"#;

const CHECK: &str = r#"
import sys, torch
m = torch.jit.load(sys.argv[1])
y = m(torch.randn(2, 3, 64, 64))
print(sum(p.numel() for p in m.parameters()), tuple(y.shape))
"#;

/// The generated models' folder (made once per test run).
fn models() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        // Under target/tmp: regenerated (overwritten) by each run, never piling up.
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("shrink-models");
        std::fs::create_dir_all(&dir).expect("models folder");
        let out = common::run_python(GENERATE, &[&dir])
            .expect("these tests need TCH_PRUNE_PYTHON with torch and torchvision (make test provides them)");
        assert_eq!(out.trim(), "ok");
        dir
    })
}

fn input() -> Tensor {
    let _generator = common::generator();
    tch::manual_seed(1);
    Tensor::randn([1, 3, 64, 64], (Kind::Float, Device::Cpu))
}

fn forward(m: &ScriptModel, x: &Tensor) -> Tensor {
    tch::no_grad(|| m.forward(x)).expect("forward")
}

fn rel_err(a: &Tensor, b: &Tensor) -> f64 {
    let scale = f64::try_from(b.abs().max()).unwrap().max(f64::MIN_POSITIVE);
    f64::try_from((a - b).abs().max()).unwrap() / scale
}

fn load(path: &Path) -> ScriptModel {
    let mut m = ScriptModel::load(path, Device::Cpu).expect("load");
    m.set_train(false).unwrap();
    m
}

/// Shrinks `name` at 0.5 per group and checks everything the issue asks; returns the report.
fn check(name: &str) -> ShrinkReport {
    let dir = common::tempdir();
    let original = models().join(format!("{name}.pt"));
    let x = input();
    let mut model = load(&original);
    let unzeroed = forward(&model, &x);
    let opts = ShrinkOptions {
        amount: Some(0.5.into()),
        ..Default::default()
    };
    let report = model
        .shrink(&x, &opts)
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    let shrunk = dir.path().join(format!("{name}-shrunk.pt"));
    model.save(&shrunk).unwrap();

    // Something shrank, by about half where it could.
    let shrunk_groups: Vec<_> = report
        .groups
        .iter()
        .filter(|g| g.after < g.before)
        .collect();
    assert!(
        !shrunk_groups.is_empty(),
        "{name}: no group shrank: {:#?}",
        report.groups
    );
    for g in &shrunk_groups {
        assert!(
            g.blocked.is_empty(),
            "{name}: blocked group {} shrank",
            g.producer
        );
        let expected = (g.before - (0.5 * g.before as f64).round_ties_even() as i64).max(1);
        assert_eq!(g.after, expected, "{name}: {g:?}");
    }
    for g in report.groups.iter().filter(|g| !g.blocked.is_empty()) {
        assert_eq!(
            g.after, g.before,
            "{name}: blocked group {} changed",
            g.producer
        );
    }
    assert!(
        report.parameters_after < report.parameters_before,
        "{name}: parameters did not fall"
    );
    assert!(
        report.macs_after < report.macs_before,
        "{name}: MACs did not fall"
    );

    // PyTorch loads and runs the output, with the parameter count we report.
    let out = common::run_python(CHECK, &[&shrunk])
        .expect("these tests need TCH_PRUNE_PYTHON with torch (make test provides it)");
    let count: i64 = out.split_whitespace().next().unwrap().parse().unwrap();
    assert_eq!(
        count, report.parameters_after,
        "{name}: PyTorch counts other parameters"
    );

    // The output equals the original with the removed channels zeroed.
    let reference = load(&original);
    reference.zero_channels(&report.removed).unwrap();
    let expected = forward(&reference, &x);
    let reloaded = load(&shrunk);
    let got = forward(&reloaded, &x);
    let err = rel_err(&got, &expected);
    assert!(
        err <= 1e-4,
        "{name}: relative error {err:e} against the group-zeroed original"
    );
    // ... and that comparison can fail: the unzeroed original differs.
    assert!(
        rel_err(&got, &unzeroed) > 1e-4,
        "{name}: shrinking changed nothing measurable"
    );

    // The exact route: the zeroed model loses exactly the zeroed channels, outputs unchanged.
    let zeroed_path = dir.path().join(format!("{name}-zeroed.pt"));
    reference.save(&zeroed_path).unwrap();
    let mut exact = load(&zeroed_path);
    let exact_report = exact
        .shrink(
            &x,
            &ShrinkOptions {
                exact: true,
                ..Default::default()
            },
        )
        .unwrap_or_else(|e| panic!("{name} (exact): {e}"));
    let afters: Vec<i64> = exact_report.groups.iter().map(|g| g.after).collect();
    let expected_afters: Vec<i64> = report.groups.iter().map(|g| g.after).collect();
    assert_eq!(
        afters, expected_afters,
        "{name}: the exact route removed other channels"
    );
    assert_eq!(exact_report.parameters_after, report.parameters_after);
    let exact_out = forward(&exact, &x);
    // Not bit for bit: convolutions over fewer channels sum in another order (see
    // tests/shrink/exact.rs).
    let err = rel_err(&exact_out, &expected);
    assert!(
        err <= 1e-5,
        "{name}: the exact route changed the outputs (relative error {err:e})"
    );
    eprintln!(
        "{name}: parameters {} -> {}, MACs {} -> {}, zeroed-reference error {:e}, exact route error {:e}",
        report.parameters_before,
        report.parameters_after,
        report.macs_before,
        report.macs_after,
        rel_err(&got, &expected),
        err
    );
    report
}

#[test]
fn resnet18() {
    let r = check("resnet18");
    // Every residual stage and every block's inner width shrinks; only the classifier stays.
    let blocked: Vec<_> = r.groups.iter().filter(|g| !g.blocked.is_empty()).collect();
    assert_eq!(blocked.len(), 1, "{blocked:#?}");
    assert_eq!(blocked[0].producer, "fc (linear output features)");
}

#[test]
fn resnet50() {
    check("resnet50");
}

#[test]
fn mobilenet_v2() {
    let r = check("mobilenet_v2");
    // The expansion channels go through depthwise convolutions: those shrink too.
    assert!(r
        .groups
        .iter()
        .any(|g| g.producer.starts_with("features.2.conv.0.0") && g.after == g.before / 2));
}

#[test]
fn mobilenet_v3_small() {
    // Squeeze-and-excitation: the SE's scale multiplies the block's channels.
    check("mobilenet_v3_small");
}

#[test]
fn vgg11_bn() {
    // flatten(7x7 pooled map) into a linear layer: channel x spatial columns.
    let r = check("vgg11_bn");
    // The last conv's 512 channels shrink through the flatten (25088 -> 12544 columns), and so
    // do the classifier's hidden widths.
    for (producer, width) in [
        ("features.25 ", 512),
        ("classifier.0 ", 256),
        ("classifier.3 ", 256),
    ] {
        assert!(
            r.groups.iter().any(|g| g.producer.starts_with(producer)
                && g.before == width
                && g.after == width / 2),
            "{producer}: {:#?}",
            r.groups
        );
    }
}

#[test]
fn efficientnet_b0() {
    check("efficientnet_b0");
}

#[test]
fn vit_mlp_blocks() {
    let r = check("vit");
    let mlp: Vec<_> = r
        .groups
        .iter()
        .filter(|g| g.producer.contains(".mlp.0 "))
        .collect();
    assert_eq!(mlp.len(), 2, "{:#?}", r.groups);
    assert!(mlp.iter().all(|g| g.before == 128 && g.after == 64));
    // The embedding width is normalised by layer_norm: it stays, and says why.
    assert!(r
        .groups
        .iter()
        .any(|g| g.blocked.iter().any(|b| b.contains("layer_norm")) && g.after == g.before));
}
