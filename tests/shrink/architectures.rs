//! Channel removal on architectures whose coupling goes beyond conv / batch-norm / residual
//! chains: channel shuffles (`chunk` + `view`/`transpose`), grouped convolutions (RegNet,
//! ResNeXt), concatenating modules (SqueezeNet, GoogLeNet, DenseNet), channels-last layer norm
//! and layer scale (ConvNeXt), a GLU (`chunk` into a product), and `split` with sizes fixed in
//! the code, which must keep its channels; GPT-2's MLP with Hugging Face's `Conv1D` (`addmm`
//! with a weight laid out `[in, out]`), and the traced models whose widths tracing wrote into
//! the code as constants, which must keep theirs. The models are made at test time by
//! tests/py/shrink_architectures.py (random init, reduced configurations of the heavy
//! families); `scripts/shrink_sweep.py` runs the same check over every torchvision model.
//!
//! For each, at 0.5 per group: the shrunk model loads and runs in PyTorch with the parameter
//! count reported, its output equals the original with the removed channels zeroed (relative
//! error <= 1e-4), the groups the test names shrink and the blocked ones say why. Needs
//! Python's torch and torchvision: without them these tests fail.

use crate::common;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use tch::{Device, Kind, Tensor};
use tch_prune::model::ScriptModel;
use tch_prune::shrink::{ShrinkOptions, ShrinkReport};
use tch_prune::Amount;

const PYTORCH_RUNS: &str = r#"
import sys, torch
m = torch.jit.load(sys.argv[1])
shape = [int(d) for d in sys.argv[2].split(",")]
m(torch.randint(0, 100, shape) if sys.argv[3] == "ids" else torch.randn(shape))
print(sum(p.numel() for p in m.parameters()))
"#;

fn models() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("shrink-architectures");
        std::fs::create_dir_all(&dir).expect("models folder");
        let script = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/py/shrink_architectures.py"),
        )
        .expect("tests/py/shrink_architectures.py");
        let out = common::run_python(&script, &[&dir]).expect(
            "these tests need TCH_PRUNE_PYTHON with torch and torchvision (make test provides them)",
        );
        assert_eq!(out.trim(), "ok");
        dir
    })
}

fn relative_error(got: &Tensor, want: &Tensor) -> f64 {
    let diff = f64::try_from((got - want).abs().max()).unwrap();
    diff / f64::try_from(want.abs().max())
        .unwrap()
        .max(f64::MIN_POSITIVE)
}

/// The output of `m` on `x`: GoogLeNet returns a named tuple, whose first tensor is its logits.
fn run(m: &ScriptModel, x: &Tensor) -> Tensor {
    let y = tch::no_grad(|| {
        m.module()
            .forward_is(&[tch::IValue::Tensor(x.shallow_clone())])
    })
    .expect("forward");
    match y {
        tch::IValue::Tensor(t) => t,
        tch::IValue::Tuple(mut vs) => match vs.swap_remove(0) {
            tch::IValue::Tensor(t) => t,
            other => panic!("the model returned {other:?}"),
        },
        other => panic!("the model returned {other:?}"),
    }
}

fn eval_model(path: &Path) -> ScriptModel {
    let mut m = ScriptModel::load(path, Device::Cpu).expect("load the model");
    m.set_train(false).unwrap();
    m
}

/// Shrinks the model `name` at 0.5 per group and checks the result against PyTorch and the
/// group-zeroed original; returns the report.
fn shrink(name: &str) -> ShrinkReport {
    shrink_on(name, &[1, 3, 64, 64], false)
}

/// [`shrink`] on a random input of `shape`: floats, or token ids below 100 when `ids`.
fn shrink_on(name: &str, shape: &[i64], ids: bool) -> ShrinkReport {
    let original = models().join(format!("{name}.pt"));
    let x = {
        let _generator = common::generator();
        tch::manual_seed(7);
        if ids {
            Tensor::randint(100, shape, (Kind::Int64, Device::Cpu))
        } else {
            Tensor::randn(shape, (Kind::Float, Device::Cpu))
        }
    };
    let half = ShrinkOptions {
        amount: Some(Amount::Fraction(0.5)),
        ..Default::default()
    };
    let mut model = eval_model(&original);
    let before = run(&model, &x);
    let report = match model.shrink(&x, &half) {
        Ok(report) => report,
        Err(e) => panic!("{name}: {e}"),
    };
    let dir = common::tempdir();
    let out = dir.path().join("shrunk.pt");
    model.save(&out).unwrap();

    assert!(
        report.parameters_after < report.parameters_before,
        "{name}: nothing shrank: {:#?}",
        report.groups
    );
    for g in &report.groups {
        if !g.blocked.is_empty() {
            assert_eq!(g.after, g.before, "{name}: blocked group changed: {g:?}");
        }
    }
    let dims = shape
        .iter()
        .map(i64::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let input = Path::new(if ids { "ids" } else { "floats" });
    let counted = common::run_python(PYTORCH_RUNS, &[out.as_path(), Path::new(&dims), input])
        .expect("these tests need TCH_PRUNE_PYTHON with torch (make test provides it)");
    assert_eq!(
        counted.trim().parse::<i64>().unwrap(),
        report.parameters_after,
        "{name}: PyTorch counts other parameters"
    );

    let reference = eval_model(&original);
    reference.zero_channels(&report.removed).unwrap();
    let want = run(&reference, &x);
    let got = run(&eval_model(&out), &x);
    let err = relative_error(&got, &want);
    assert!(
        err <= 1e-4,
        "{name}: relative error {err:e} against the group-zeroed original"
    );
    assert!(
        relative_error(&got, &before) > 1e-4,
        "{name}: the output did not change: the comparison above tested nothing"
    );
    eprintln!(
        "{name}: parameters {} -> {}, {} of {} groups shrunk, error {err:e}",
        report.parameters_before,
        report.parameters_after,
        report.groups.iter().filter(|g| g.after < g.before).count(),
        report.groups.len()
    );
    report
}

/// The group produced by `producer` (a prefix of its description).
fn group<'a>(r: &'a ShrinkReport, producer: &str) -> &'a tch_prune::shrink::GroupChange {
    r.groups
        .iter()
        .find(|g| g.producer.starts_with(producer))
        .unwrap_or_else(|| panic!("no group from {producer}: {:#?}", r.groups))
}

fn halved(r: &ShrinkReport, producer: &str) {
    let g = group(r, producer);
    assert!(
        g.blocked.is_empty() && g.after * 2 <= g.before + 1 && g.after < g.before,
        "{producer} did not shrink by half: {g:?}"
    );
}

#[test]
fn shufflenet_v2_channel_shuffle() {
    let r = shrink("shufflenet_v2_x0_5");
    // A branch's inner width (1x1 conv -> depthwise -> 1x1 conv) is its own group.
    halved(&r, "stage2.1.branch2.0 ");
}

#[test]
fn regnet_grouped_convs_and_se() {
    let r = shrink("regnet_y_400mf");
    // The bottleneck width feeds a grouped 3x3 conv (groups of 8): it shrinks per group.
    halved(&r, "trunk_output.block1.block1-0.f.a.0 ");
}

#[test]
fn resnext_grouped_convs() {
    let r = shrink("resnext");
    halved(&r, "layer1.0.conv1 ");
    halved(&r, "layer1.0.conv2 ");
}

#[test]
fn squeezenet_fire_modules() {
    let r = shrink("squeezenet1_1");
    halved(&r, "features.3.squeeze ");
}

#[test]
fn mnasnet() {
    shrink("mnasnet0_5");
}

#[test]
fn googlenet_inception_branches() {
    let r = shrink("googlenet");
    halved(&r, "inception3a.branch2.0.conv ");
}

#[test]
fn densenet_concatenations() {
    shrink("densenet");
}

#[test]
fn convnext_channels_last() {
    let r = shrink("convnext");
    // The MLP's hidden width (linear in channels-last) shrinks; the block width is
    // layer-normalised and stays, saying why.
    halved(&r, "features.1.0.block.3 ");
    assert!(r
        .groups
        .iter()
        .any(|g| g.blocked.iter().any(|b| b.contains("layer_norm"))));
}

#[test]
fn glu_chunk() {
    let r = shrink("glu");
    // Both halves of the chunk lose the same channels, and the grouped conv after the product
    // (4 groups of 6) the same in each group: the gate's 48 outputs are 8 repeats of 6
    // channels, of which 3 stay.
    let gate = group(&r, "gate ");
    assert!(gate.blocked.is_empty(), "{gate:?}");
    assert_eq!((gate.before, gate.after), (6, 3), "{gate:?}");
}

#[test]
fn split_with_fixed_sizes_keeps_its_channels() {
    let r = shrink("channel_split");
    // chunk(2) then cat back: the stem's channels shrink in matching halves.
    let stem = group(&r, "stem ");
    assert!(
        stem.blocked.is_empty() && stem.after < stem.before,
        "{stem:?}"
    );
    // split([16, 8]): the sizes are code, so the channels it cuts keep their width.
    let fixed = group(&r, "fixed ");
    assert_eq!(fixed.after, fixed.before);
    assert!(
        fixed
            .blocked
            .iter()
            .any(|b| b.contains("sizes fixed in the code")),
        "{fixed:?}"
    );
}

#[test]
fn gpt2_mlp_conv1d_addmm() {
    let r = shrink_on("gpt2_mlp", &[2, 5, 16], false);
    // c_fc's output features (its weight's dim 1, its bias) and c_proj's input features (its
    // weight's dim 0) go together; c_proj's outputs are the block's output and stay.
    halved(&r, "c_fc (addmm output features)");
    let proj = group(&r, "c_proj ");
    assert_eq!(proj.after, proj.before, "{proj:?}");
    // The two products' multiply-accumulates: 10 rows of 16 -> 64 -> 16, then of 16 -> 32 -> 16.
    assert_eq!((r.macs_before, r.macs_after), (20480, 10240));
}

#[test]
fn gpt2_scripted_mlp_neurons() {
    let r = shrink_on("gpt2_scripted", &[1, 8], true);
    // Every layer's MLP neurons shrink; the heads (one c_attn split three ways by the width
    // read at run time) stay, saying why, and so does the residual stream (layer-normalised).
    halved(&r, "h.0.c_fc (addmm output features)");
    halved(&r, "h.1.c_fc (addmm output features)");
    let attn = group(&r, "h.0.c_attn ");
    assert_eq!(attn.after, attn.before, "{attn:?}");
    assert!(
        attn.blocked.iter().any(|b| b.contains("aten::split")),
        "{attn:?}"
    );
}

/// Tracing writes `x.size()[:-1] + (self.nf,)` as the constant width: the traced code would ask
/// for the old width after a shrink, so the analysis keeps those channels and says why (the CLI
/// then refuses the run as shrinking nothing).
fn kept_as_traced(name: &str, x: &Tensor, producer: &str) {
    let mut model = eval_model(&models().join(format!("{name}.pt")));
    let half = ShrinkOptions {
        amount: Some(Amount::Fraction(0.5)),
        ..Default::default()
    };
    let r = model.shrink(x, &half).expect("the analysis runs");
    assert_eq!(r.parameters_after, r.parameters_before, "{name}: {r:#?}");
    let g = group(&r, producer);
    assert!(
        g.blocked
            .iter()
            .any(|b| b.contains("a traced model; script it")),
        "{name}: {g:?}"
    );
}

#[test]
fn gpt2_mlp_traced_keeps_its_constant_widths() {
    let x = {
        let _generator = common::generator();
        tch::manual_seed(7);
        Tensor::randn([2, 5, 16], (Kind::Float, Device::Cpu))
    };
    kept_as_traced("gpt2_mlp_traced", &x, "c_fc (addmm output features)");
}

#[test]
fn gpt2_traced_from_transformers_keeps_its_constant_widths() {
    let ids = {
        let _generator = common::generator();
        tch::manual_seed(7);
        Tensor::randint(100, [1, 8], (Kind::Int64, Device::Cpu))
    };
    kept_as_traced(
        "gpt2_traced",
        &ids,
        "model.transformer.h.0.mlp.c_fc (addmm output features)",
    );
}
