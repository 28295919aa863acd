//! `tch-prune shrink` on `torch.export` archives (`.pt2`): torchvision resnet18, resnet50,
//! mobilenet_v2 and efficientnet_b0 (random init, 1x3x32x32 inputs to keep the run short),
//! each exported and scripted with the same weights by tests/py/shrink_pt2.py. At 0.5 per
//! group the archive must shrink exactly as the TorchScript file does (the same groups and
//! widths, removed indices, parameter counts and MACs; the same weights bit for bit, which the
//! Python side checks), `torch.export.load(out).module()` must run and equal the original with
//! the removed channels zeroed, and every other entry of the archive must be carried over
//! unchanged. Then the hostile rows of the new front end (programs that lie about sizes, ops it
//! does not know, a node that spells a TorchScript kind, a read of an undefined tensor, a
//! program that is not JSON) and the flags a `.pt2` refuses.
//!
//! These tests need Python's torch and torchvision (`make test` provides them): without them
//! they fail rather than pass having compared nothing.

use crate::common;
use crate::shrink::{afters, json, shrink};

use serde_json::Value;
use std::path::{Path, PathBuf};

const SCRIPT: &str = include_str!("../py/shrink_pt2.py");

/// The generated archives and TorchScript files (made once, reused by later runs).
fn models() -> &'static Path {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        crate::architectures::generated("shrink-pt2", &[SCRIPT], |out| {
            let printed = common::run_python(SCRIPT, &[Path::new("models"), out])?;
            assert_eq!(printed.trim(), "ok");
            Some(())
        })
        .expect("these tests need TCH_PRUNE_PYTHON with torch and torchvision (make test provides them)")
    })
}

fn removed(v: &Value) -> Vec<String> {
    let mut r: Vec<String> = v["removed"]
        .as_array()
        .unwrap()
        .iter()
        .map(Value::to_string)
        .collect();
    r.sort();
    r
}

/// `tch-prune shrink INPUT -o OUT --amount 0.5` and `extra` flags.
fn shrink_half(input: &Path, out: &Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec![
        input.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--amount",
        "0.5",
    ];
    args.extend_from_slice(extra);
    shrink(&args)
}

/// A run refused on one line saying `message`, nothing written to `out`.
fn refused(r: &std::process::Output, what: &str, message: &str, out: &Path) {
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(!r.status.success(), "{what}");
    assert!(err.contains(message), "{what}: {err}");
    assert_eq!(err.trim().lines().count(), 1, "{what}: {err}");
    assert!(!out.exists(), "{what}: an output was written");
}

/// Shrinks `name`'s archive and its TorchScript twin at 0.5 and checks everything the issue
/// asks of the archive.
fn check(name: &str) {
    check_as(name, name);
}

/// [`check`] of the archive `exported` against the TorchScript file `scripted`.
fn check_as(exported: &str, scripted: &str) {
    let name = exported;
    let dir = common::tempdir();
    let models = models();
    let (pt2, pt) = (
        models.join(format!("{exported}.pt2")),
        models.join(format!("{scripted}.pt")),
    );
    let (out_pt2, out_pt) = (dir.path().join("out.pt2"), dir.path().join("out.pt"));
    // --verify: tch-prune runs both programs itself (its interpreter).
    let exported = json(&shrink_half(&pt2, &out_pt2, &["--json", "--verify"]));
    let verified = exported["verify_relative_error"].as_f64();
    assert!(
        verified.is_some_and(|e| e <= 1e-4),
        "{name}: verify {verified:?}"
    );
    let scripted = json(&shrink_half(
        &pt,
        &out_pt,
        &["--json", "--input-shape", "1,3,32,32", "--runs", "1"],
    ));
    // The same analysis and the same selection as the TorchScript path.
    assert_eq!(
        afters(&exported),
        afters(&scripted),
        "{name}: groups differ"
    );
    assert!(
        afters(&exported).iter().any(|(_, b, a)| a < b),
        "{name}: nothing shrank"
    );
    for key in [
        "parameters_before",
        "parameters_after",
        "macs_before",
        "macs_after",
    ] {
        assert_eq!(exported[key], scripted[key], "{name}: {key}");
    }
    assert_eq!(removed(&exported), removed(&scripted), "{name}: removed");
    assert_eq!(exported["input_shape"], serde_json::json!([1, 3, 32, 32]));
    assert!(exported["file_bytes_after"].as_u64() < exported["file_bytes_before"].as_u64());

    // PyTorch loads and runs it; the weights are the TorchScript shrink's; the output is the
    // group-zeroed original's; the other entries are the input's.
    let report = dir.path().join("report.json");
    std::fs::write(&report, exported.to_string()).unwrap();
    let printed = common::run_python(
        SCRIPT,
        &[Path::new("check"), &pt2, &out_pt2, &out_pt, &report],
    )
    .expect("these tests need TCH_PRUNE_PYTHON with torch (make test provides it)");
    let count: i64 = printed.split_whitespace().next().unwrap().parse().unwrap();
    assert_eq!(count, exported["parameters_after"].as_i64().unwrap());
    eprintln!(
        "{name}: parameters {} -> {}, zeroed-reference error {}",
        exported["parameters_before"],
        exported["parameters_after"],
        printed.split_whitespace().nth(1).unwrap_or("?")
    );
}

#[test]
fn pt2_resnet18() {
    check("resnet18");
}

/// resnet18's program in the core ATen opset (`run_decompositions`): `convolution` read as the
/// `conv2d` it computes, `addmm(bias, x, permute(weight))` as a linear layer; it shrinks as the
/// TorchScript file does.
#[test]
fn pt2_resnet18_core_aten() {
    check_as("resnet18_core", "resnet18");
}

#[test]
fn pt2_resnet50() {
    check("resnet50");
}

#[test]
fn pt2_mobilenet_v2() {
    check("mobilenet_v2");
}

#[test]
fn pt2_efficientnet_b0() {
    check("efficientnet_b0");
}

/// ShuffleNetV2's channel shuffle, `view(b, 2, c / 2, h, w)`, is written in the program with
/// its sizes (`[1, 2, 24, 16, 16]`): the shrink rewrites them. Each depthwise convolution of the
/// program has its own `groups`, where TorchScript's instances of a class share one: the
/// groups that TorchScript keeps for that reason shrink here.
#[test]
fn pt2_channel_shuffle_views() {
    let dir = common::tempdir();
    let input = models().join("shufflenet_v2_x0_5.pt2");
    let out = dir.path().join("out.pt2");
    let v = json(&shrink_half(&input, &out, &["--json"]));
    for producer in [
        "stage2.0.branch2.0 ",
        "stage3.0.branch2.0 ",
        "stage4.0.branch2.0 ",
    ] {
        let g = group(&v, producer).unwrap_or_else(|| panic!("{producer}: {v}"));
        assert_eq!(
            g["after"].as_i64().unwrap() * 2,
            g["before"].as_i64().unwrap(),
            "{g}"
        );
    }
    let report = dir.path().join("report.json");
    std::fs::write(&report, v.to_string()).unwrap();
    common::run_python(
        SCRIPT,
        &[Path::new("check"), &input, &out, Path::new("-"), &report],
    )
    .expect("these tests need TCH_PRUNE_PYTHON with torch");
}

/// A weight two layers share (its storage under two names) keeps its shape, saying why; the
/// rest shrinks and the output runs.
#[test]
fn pt2_tied_weights_keep_their_channels() {
    let dir = common::tempdir();
    let input = models().join("tied.pt2");
    let out = dir.path().join("out.pt2");
    let v = json(&shrink_half(&input, &out, &["--json"]));
    let tied = group(&v, "b ").unwrap_or_else(|| panic!("{v}"));
    assert_eq!(tied["after"], tied["before"], "{tied}");
    assert!(
        tied["blocked"]
            .to_string()
            .contains("b.weight cannot change shape: its storage is shared with a.weight"),
        "{tied}"
    );
    assert_eq!(group(&v, "c ").unwrap()["after"], 4, "{v}");
    let run = "import sys, torch\nep = torch.export.load(sys.argv[1])\nprint(tuple(ep.module()(torch.randn(2, 8)).shape), tuple(ep.state_dict['c.weight'].shape))";
    let printed = common::run_python(run, &[&out]).expect("needs TCH_PRUNE_PYTHON with torch");
    assert_eq!(printed.trim(), "(2, 4) (4, 8)");
}

/// The small net's archive changed as `mode` says (tests/py/shrink_pt2.py's HOSTILE).
fn hostile(mode: &str, dir: &Path) -> PathBuf {
    let out = dir.join(format!("{mode}.pt2"));
    let printed = common::run_python(
        SCRIPT,
        &[
            Path::new("hostile"),
            &models().join("tiny.pt2"),
            &out,
            Path::new(mode),
        ],
    )
    .expect("these tests need TCH_PRUNE_PYTHON with torch");
    assert_eq!(printed.trim(), "ok");
    out
}

fn group<'v>(v: &'v Value, producer: &str) -> Option<&'v Value> {
    v["groups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["producer"].as_str().unwrap().starts_with(producer))
}

#[test]
fn pt2_hostile_programs() {
    let dir = common::tempdir();
    let out = dir.path().join("out.pt2");
    let run = |input: &Path| shrink_half(input, &out, &["--json"]);
    // The unchanged net: `a` and `b` both shrink.
    let v = json(&run(&models().join("tiny.pt2")));
    assert_eq!(group(&v, "a ").unwrap()["after"], 4, "{v}");
    assert_eq!(group(&v, "b ").unwrap()["after"], 4, "{v}");

    // Lies and unknowns keep the channels they touch, with the reason; the rest shrinks.
    for (mode, kept, reason, shrinks) in [
        (
            "lying_sizes",
            "a ",
            "gives a layout the analysis cannot follow",
            "b ",
        ),
        (
            "unknown_op",
            "a ",
            "used by torch.ops.aten.fancy_op.default, which the channel analysis does not understand",
            "b ",
        ),
        (
            "lying_placeholder",
            "a ",
            "the program records a.weight as [16, 3, 3, 3], the weights config as [8, 3, 3, 3]",
            "b ",
        ),
        // `b`'s activations recorded with 2^80 elements are read as of unknown shape: the
        // pooling that reads them is not understood.
        (
            "huge_sizes",
            "b ",
            "used by aten::adaptive_avg_pool2d, which the channel analysis does not understand",
            "a ",
        ),
    ] {
        let v = json(&run(&hostile(mode, dir.path())));
        let g = group(&v, kept).unwrap_or_else(|| panic!("{mode}: {v}"));
        assert_eq!(g["after"], g["before"], "{mode}: {g}");
        assert!(g["blocked"].to_string().contains(reason), "{mode}: {g}");
        assert_eq!(group(&v, shrinks).unwrap()["after"], 4, "{mode}: {v}");
    }
    // A node whose target spells `aten::conv2d` is not taken for one: `a` makes no group.
    let v = json(&run(&hostile("spoofed_kind", dir.path())));
    assert!(group(&v, "a ").is_none(), "{v}");
    assert!(!v["removed"].to_string().contains("\"a.weight\""), "{v}");

    // Programs that are not torch.export's: refused on one line, nothing written.
    let _ = std::fs::remove_file(&out);
    for (mode, message) in [
        (
            "dangling",
            "reads the tensor 'nothing_defines_this' before anything defines it",
        ),
        ("not_json", "is not JSON this reader takes"),
    ] {
        refused(&run(&hostile(mode, dir.path())), mode, message, &out);
    }
}

/// `--verify` runs the programs (the shrunk one and the original with the removed channels
/// zeroed) through tch-prune's interpreter: it passes on an honest program; on a program holding
/// an operator outside libtorch's allowed aten operators, or a target that is not an operator,
/// it refuses to run anything, on one line, and writes nothing.
#[test]
fn pt2_verify_runs_the_program_or_refuses_it() {
    let dir = common::tempdir();
    let out = dir.path().join("out.pt2");
    let run = |input: &Path| shrink_half(input, &out, &["--verify"]);
    let r = run(&models().join("tiny.pt2"));
    let said = String::from_utf8_lossy(&r.stdout);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    assert!(said.contains("verify: relative error"), "{said}");
    assert!(said.contains("run only by --verify"), "{said}");
    std::fs::remove_file(&out).unwrap();
    for (mode, message) in [
        (
            "unknown_op",
            "cannot run the program: its node relu (torch.ops.aten.fancy_op.default) calls an operator the code policy does not allow",
        ),
        (
            "spoofed_kind",
            "(aten::conv2d) is not an operator of libtorch's aten namespace",
        ),
    ] {
        refused(&run(&hostile(mode, dir.path())), mode, message, &out);
    }
}

#[test]
fn pt2_refused_flags() {
    let dir = common::tempdir();
    let input = models().join("tiny.pt2");
    let out = dir.path().join("out.pt2");
    refused(
        &shrink_half(&input, &out, &["--input-shape", "1,3,8,8"]),
        "--input-shape",
        "a .pt2 program holds the shapes it was exported with",
        &out,
    );
    // --params names the archive's parameters.
    let v = json(&shrink_half(&input, &out, &["--params", "b.*", "--json"]));
    assert_eq!(group(&v, "a ").unwrap()["after"], 8, "{v}");
    assert_eq!(group(&v, "b ").unwrap()["after"], 4, "{v}");
}

/// The small net's archive with its program mutated at random (sizes, strides, targets,
/// argument values, inputs and outputs dropped or repeated, wrong JSON types): every run
/// shrinks or refuses on one line, none panics or dies of a signal, and a refusal writes
/// nothing.
#[test]
fn pt2_mutated_programs() {
    let dir = common::tempdir();
    let printed = common::run_python(
        SCRIPT,
        &[
            Path::new("mutate"),
            &models().join("tiny.pt2"),
            dir.path(),
            Path::new("120"),
        ],
    )
    .expect("these tests need TCH_PRUNE_PYTHON with torch");
    assert_eq!(printed.trim(), "ok");
    let out = dir.path().join("out.pt2");
    let (mut shrunk, mut refused) = (0, 0);
    for k in 0..120 {
        let input = dir.path().join(format!("mutant_{k}.pt2"));
        let _ = std::fs::remove_file(&out);
        let r = shrink_half(&input, &out, &[]);
        let err = String::from_utf8_lossy(&r.stderr);
        match r.status.code() {
            Some(0) => shrunk += 1,
            Some(1) => {
                refused += 1;
                assert_eq!(err.trim().lines().count(), 1, "mutant {k}: {err}");
                assert!(!out.exists(), "mutant {k}: refused, yet written");
            }
            other => panic!("mutant {k}: exit {other:?}: {err}"),
        }
    }
    // Both outcomes are exercised.
    assert!(
        shrunk > 10 && refused > 10,
        "{shrunk} shrunk, {refused} refused"
    );
}
