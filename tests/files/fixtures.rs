//! The readers on small files PyTorch wrote, committed in tests/fixtures/formats/ (made by
//! tests/py/make_fixtures.py), so that they are tested on real files even where no Python is
//! installed: every value bit for bit against a reference read by tch's own safetensors reader,
//! every key list against the one PyTorch gave. Where Python is installed, the last test checks
//! that the script still makes files that read the same.

use crate::common;
use crate::formats;

use formats::*;
use std::io::Cursor;
use tch_prune::checkpoint::{
    read_safetensors, read_state_dict, read_torch_zip, read_torch_zip_from, read_torchscript_state,
    CheckpointError, Format,
};

/// Reads the fixture `name` with `read` and checks it against `<name>.ref.safetensors` and the
/// keys of expected.json.
fn assert_fixture(
    name: &str,
    read: impl Fn(&std::path::Path) -> Result<Vec<(String, tch::Tensor)>, CheckpointError>,
) -> Vec<(String, tch::Tensor)> {
    let sd = read(&fixture(name)).unwrap_or_else(|e| panic!("{e}"));
    assert_state_dict(
        &sd,
        &fixture_keys(name),
        &fixture(&format!("{name}.ref.safetensors")),
    );
    sd
}

#[test]
fn mlp_state_dict_and_safetensors() {
    assert_eq!(
        Format::detect(fixture("mlp.pt")).expect("detect"),
        Format::TorchZip
    );
    assert_fixture("mlp.pt", |p| read_torch_zip(p));
    assert_fixture("mlp.pt", |p| read_state_dict(p));
    assert_fixture("mlp.pt", |p| {
        read_torch_zip_from(Cursor::new(std::fs::read(p).expect("read")), "in memory")
    });
    assert_eq!(
        Format::detect(fixture("mlp.safetensors")).expect("detect"),
        Format::Safetensors
    );
    // safetensors keeps no order of its own but its data offsets, which follow the names here.
    let mut keys = fixture_keys("mlp.pt");
    keys.sort();
    assert_state_dict(
        &read_safetensors(fixture("mlp.safetensors")).expect("read"),
        &keys,
        &fixture("mlp.pt.ref.safetensors"),
    );
}

#[test]
fn strided_and_shared_views_read_as_independent_copies() {
    let mut sd = assert_fixture("views.pt", |p| read_torch_zip(p));
    // base, slice, column and again share one storage in the file: writing into one tensor
    // read from it leaves the others as they were.
    let reference = reference(&fixture("views.pt.ref.safetensors"));
    for (name, tensor) in sd.iter_mut() {
        if name != "base" {
            let _ = tensor.fill_(0.0);
        }
    }
    assert_bits(
        &sd[0].1,
        &reference["base"],
        "base after writing to its views",
    );
}

#[test]
fn every_dtype_in_both_formats() {
    let sd = assert_fixture("dtypes.pt", |p| read_torch_zip(p));
    assert_eq!(sd.len(), 10);
    let from_st = read_safetensors(fixture("dtypes.safetensors")).expect("read");
    let reference = reference(&fixture("dtypes.pt.ref.safetensors"));
    assert_eq!(from_st.len(), reference.len());
    for (name, tensor) in &from_st {
        assert_bits(tensor, &reference[name], name);
    }
}

#[test]
fn nested_training_checkpoint_at_protocol_2() {
    assert_fixture("nested.pt", |p| read_state_dict(p));
}

#[test]
fn torchscript_state() {
    assert_eq!(
        Format::detect(fixture("script.pt")).expect("detect"),
        Format::TorchScript
    );
    assert_fixture("script.pt", |p| read_torchscript_state(p));
    let err = unwrap_err(read_state_dict(fixture("script.pt")));
    assert!(matches!(err, CheckpointError::TorchScript { .. }), "{err}");
}

#[test]
fn a_pickle_calling_a_function_is_refused_without_calling_it() {
    let file = fixture("calls_os_system.pt");
    for err in [
        unwrap_err(read_torch_zip(&file)),
        unwrap_err(read_state_dict(&file)),
    ] {
        assert!(
            matches!(&err, CheckpointError::ForbiddenGlobal { global, .. } if global.ends_with(".system")),
            "{err}"
        );
        assert_error(&err, &file, ".system`");
    }
}

/// The committed files are what tests/py/make_fixtures.py makes: made again, each reads as the
/// committed one does (bytes may differ, e.g. in zip metadata; what is read may not).
#[test]
fn fixtures_are_what_the_script_makes() {
    let Some(python) = common::python() else {
        eprintln!("skipped: TCH_PRUNE_PYTHON is not set (run the tests through `make test`)");
        return;
    };
    let dir = common::tempdir();
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/py/make_fixtures.py");
    let out = std::process::Command::new(python)
        .arg(&script)
        .arg(dir.path())
        .env("OMP_NUM_THREADS", "1")
        .output()
        .expect("failed to start python");
    assert!(
        out.status.success(),
        "make_fixtures.py failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let expected = std::fs::read_to_string(dir.path().join("expected.json")).expect("json");
    let committed = std::fs::read_to_string(fixture("expected.json")).expect("json");
    assert_eq!(expected, committed, "expected.json");
    for name in ["mlp.pt", "views.pt", "dtypes.pt", "nested.pt", "tiny.pt"] {
        let made = read_state_dict(dir.path().join(name)).expect("read made");
        let kept = read_state_dict(fixture(name)).expect("read committed");
        assert_eq!(made.len(), kept.len(), "{name}");
        for ((a_name, a), (b_name, b)) in made.iter().zip(&kept) {
            assert_eq!(a_name, b_name, "{name}");
            assert_bits(a, b, &format!("{name} {a_name}"));
        }
    }
    for name in ["script.pt", "tiny_script.pt"] {
        let made = read_torchscript_state(dir.path().join(name)).expect("read made");
        let kept = read_torchscript_state(fixture(name)).expect("read committed");
        assert_eq!(made.len(), kept.len(), "{name}");
        for ((a_name, a), (b_name, b)) in made.iter().zip(&kept) {
            assert_eq!(a_name, b_name, "{name}");
            assert_bits(a, b, &format!("{name} {a_name}"));
        }
    }
    for name in ["mlp.safetensors", "dtypes.safetensors"] {
        assert_eq!(
            std::fs::read(dir.path().join(name)).expect("read"),
            std::fs::read(fixture(name)).expect("read"),
            "{name}"
        );
    }
}
