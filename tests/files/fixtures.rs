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
    CheckpointError, Format, Pt2Archive,
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

/// A zip's entries, in order, with their bytes.
fn zip_entries(path: &std::path::Path) -> Vec<(String, Vec<u8>)> {
    use std::io::Read;
    let mut zip = zip::ZipArchive::new(std::fs::File::open(path).expect("open")).expect("zip");
    (0..zip.len())
        .map(|i| {
            let mut entry = zip.by_index(i).expect("entry");
            let mut bytes = Vec::new();
            entry.read_to_end(&mut bytes).expect("read");
            (entry.name().to_string(), bytes)
        })
        .collect()
}

#[test]
fn exported_program_archive() {
    let path = fixture("exported.pt2");
    assert_eq!(Format::detect(&path).expect("detect"), Format::Pt2);
    let tensors = assert_fixture("exported.pt2", |p| Pt2Archive::read(p).map(|(_, t)| t));
    assert_fixture("exported.pt2", |p| read_state_dict(p));
    let (archive, _) = Pt2Archive::read(&path).expect("read");
    assert!(archive.is_parameter("emb.weight") && archive.is_parameter("bn.weight"));
    assert!(
        !archive.is_parameter("bn.running_mean") && !archive.is_parameter("bn.num_batches_tracked")
    );
    // The tie is one tensor, as the module's one Parameter.
    let get = |n: &str| &tensors.iter().find(|(m, _)| m == n).expect(n).1;
    assert_eq!(get("emb.weight").data_ptr(), get("out.weight").data_ptr());
    // Read by read_state_dict, each name has its own memory.
    let copies = read_state_dict(&path).expect("read");
    let got = |n: &str| &copies.iter().find(|(m, _)| m == n).expect(n).1;
    assert_ne!(got("emb.weight").data_ptr(), got("out.weight").data_ptr());
}

/// Written back unchanged, a `.pt2` holds the input's entries, byte for byte; pruned, only the
/// storage of the pruned tensor changes, and the tie stays one storage.
#[test]
fn exported_program_archive_written_back() {
    let dir = common::tempdir();
    let path = fixture("exported.pt2");
    let (archive, tensors) = Pt2Archive::read(&path).expect("read");
    let same = dir.path().join("same.pt2");
    archive.write(&same, &tensors).expect("write");
    assert!(zip_entries(&path) == zip_entries(&same), "entries changed");
    // Another shape than the graph's, or a tensor missing: refused, nothing written.
    let refused = dir.path().join("refused.pt2");
    let mut wrong: Vec<(String, tch::Tensor)> = tensors
        .iter()
        .map(|(n, t)| (n.clone(), t.shallow_clone()))
        .collect();
    wrong[2].1 = tch::Tensor::zeros([3], (tch::Kind::Float, tch::Device::Cpu));
    let err = archive.write(&refused, &wrong).unwrap_err().to_string();
    assert!(
        err.contains("'bn.weight'") && err.contains("shapes its graph"),
        "{err}"
    );
    let err = archive
        .write(&refused, &tensors[1..])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("'emb.weight'") && err.contains("do not"),
        "{err}"
    );
    assert!(!refused.exists());

    let model = tch_prune::model::ModelFile::open(&path, tch::Device::Cpu).expect("open");
    assert_eq!(
        model.buffers(),
        [
            "bn.running_mean",
            "bn.running_var",
            "bn.num_batches_tracked"
        ]
    );
    let pruner = model.pruner().expect("pruner");
    pruner
        .prune_and_remove(
            "emb.weight",
            &tch_prune::L1Unstructured::new(0.5).expect("amount"),
            None,
        )
        .expect("prune");
    let pruned = dir.path().join("pruned.pt2");
    model.save(&pruned, &pruner).expect("save");
    let (before, after) = (zip_entries(&path), zip_entries(&pruned));
    let changed: Vec<&str> = before
        .iter()
        .zip(&after)
        .filter(|(a, b)| a != b)
        .map(|(a, _)| a.0.as_str())
        .collect();
    assert_eq!(changed.len(), 1, "{changed:?}");
    assert!(changed[0].contains("/data/weights/weight_"), "{changed:?}");
    let (_, read) = Pt2Archive::read(&pruned).expect("read");
    let get = |n: &str| &read.iter().find(|(m, _)| m == n).expect(n).1;
    assert_eq!(get("emb.weight").data_ptr(), get("out.weight").data_ptr());
    let zeros = get("emb.weight")
        .eq(0.0)
        .sum(tch::Kind::Int64)
        .int64_value(&[]);
    assert_eq!(zeros, 12);
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
    let out = common::output_within(
        std::process::Command::new(python)
            .arg(&script)
            .arg(dir.path())
            .env("OMP_NUM_THREADS", "1"),
    );
    assert!(
        out.status.success(),
        "make_fixtures.py failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let expected = std::fs::read_to_string(dir.path().join("expected.json")).expect("json");
    let committed = std::fs::read_to_string(fixture("expected.json")).expect("json");
    assert_eq!(expected, committed, "expected.json");
    for name in [
        "mlp.pt",
        "views.pt",
        "dtypes.pt",
        "nested.pt",
        "tiny.pt",
        "exported.pt2",
    ] {
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
