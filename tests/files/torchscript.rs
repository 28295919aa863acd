//! The state of TorchScript archives (`torch.jit.save`), against
//! `torch.jit.load(p).state_dict()`: names, order, dtypes and values, for scripted, traced, nested,
//! half-precision, tied and standard-layer models. The scripts are tests/py/formats/jit_*.py.

use crate::common;
use crate::formats;

use formats::*;
use std::collections::HashMap;
use tch::{Kind, Tensor};
use tch_prune::checkpoint::{read_state_dict, read_torchscript_state, CheckpointError, Format};

/// Runs tests/py/formats/`script` with the archive and reference paths as `sys.argv[1:3]`,
/// and checks [`read_torchscript_state`] against the reference; returns what it read.
fn check_torchscript(script: &str, expected_keys: &[&str]) -> Option<Vec<(String, Tensor)>> {
    let dir = common::tempdir();
    let (pt, reference_file) = (
        dir.path().join("scripted.pt"),
        dir.path().join("ref.safetensors"),
    );
    let out = run_py(script, &[&pt, &reference_file])?;
    let keys = keys_of(&out);
    assert_eq!(keys, expected_keys, "torch.jit.load(p).state_dict() keys");
    assert_eq!(Format::detect(&pt).expect("detect"), Format::TorchScript);
    let sd = read_torchscript_state(&pt).expect("read the TorchScript state");
    assert_state_dict(&sd, &keys, &reference_file);
    // read_state_dict keeps refusing TorchScript files.
    let err = unwrap_err(read_state_dict(&pt));
    assert!(matches!(err, CheckpointError::TorchScript { .. }), "{err}");
    Some(sd)
}

#[test]
fn torchscript_sequential_mlp_state_matches_python() {
    check_torchscript(
        "jit_sequential_mlp.py",
        &["0.weight", "0.bias", "2.weight", "2.bias"],
    );
}

/// The state of the conv + batch norm + linear network of jit_cnn_batchnorm.py and jit_traced.py.
const CNN_KEYS: [&str; 9] = [
    "0.weight",
    "0.bias",
    "1.weight",
    "1.bias",
    "1.running_mean",
    "1.running_var",
    "1.num_batches_tracked",
    "4.weight",
    "4.bias",
];

#[test]
fn torchscript_cnn_with_batchnorm_state_matches_python() {
    let Some(sd) = check_torchscript("jit_cnn_batchnorm.py", &CNN_KEYS) else {
        return;
    };
    let (_, tracked) = &sd[6];
    assert_eq!(tracked.kind(), Kind::Int64);
    assert_eq!(tracked.size(), Vec::<i64>::new());
    assert_eq!(tracked.int64_value(&[]), 2);
}

/// Per module its parameters, then its buffers, then its submodules, so `gain` (registered
/// last) comes first; non-persistent buffers are in it (the flag does not survive scripting,
/// unlike in the eager module's state dict), None parameters and buffers, plain tensor
/// attributes and tensors inside scripted-class objects are not; enum attributes are read past.
#[test]
fn torchscript_nested_custom_module_state_matches_python() {
    let Some(sd) = check_torchscript(
        "jit_nested_custom.py",
        &[
            "gain",
            "steps",
            "mask",
            "block.scale",
            "block.cache",
            "block.layers.0.weight",
            "block.layers.2.weight",
            "block.layers.2.bias",
            "head.weight",
            "head.bias",
        ],
    ) else {
        return;
    };
    let kinds: Vec<Kind> = sd.iter().take(4).map(|(_, t)| t.kind()).collect();
    assert_eq!(kinds, [Kind::Double, Kind::Int, Kind::Bool, Kind::Float]);
    assert_eq!(sd[3].1.size(), Vec::<i64>::new());
}

#[test]
fn traced_model_state_matches_python() {
    check_torchscript("jit_traced.py", &CNN_KEYS);
}

#[test]
fn half_precision_torchscript_state_matches_python() {
    let Some(sd) = check_torchscript(
        "jit_half.py",
        &[
            "0.weight",
            "0.bias",
            "1.weight",
            "1.bias",
            "1.running_mean",
            "1.running_var",
            "1.num_batches_tracked",
            "2.weight",
            "2.bias",
        ],
    ) else {
        return;
    };
    for (name, t) in &sd {
        let expected = if name.ends_with("num_batches_tracked") {
            Kind::Int64
        } else {
            Kind::Half
        };
        assert_eq!(t.kind(), expected, "{name}");
    }
}

#[test]
fn torchscript_shared_modules_and_tied_weights_read_as_copies() {
    let Some(sd) = check_torchscript(
        "jit_tied.py",
        &[
            "shared.weight",
            "shared.bias",
            "again.weight",
            "again.bias",
            "other.weight",
            "other.bias",
        ],
    ) else {
        return;
    };
    let pointers: std::collections::HashSet<usize> =
        sd.iter().map(|(_, t)| t.data_ptr() as usize).collect();
    assert_eq!(pointers.len(), sd.len(), "tensors share memory");
}

/// Layers with unusual attributes: LSTM/GRU keep their weights a second time in a list of
/// tensors (`_flat_weights`), MultiheadAttention has None parameters and a Linear subclass,
/// TransformerEncoder deep-copies its layers into a ModuleList, a frozen module has no state.
#[test]
fn torchscript_standard_layers_state_matches_python() {
    let dir = common::tempdir();
    let Some(out) = run_py("jit_standard_layers.py", &[dir.path()]) else {
        return;
    };
    let line = out.lines().find(|l| l.starts_with('{')).expect("JSON");
    let keys: HashMap<String, Vec<String>> = serde_json::from_str(line).expect("JSON keys");
    assert_eq!(keys.len(), 6);
    for (name, keys) in &keys {
        let pt = dir.path().join(format!("{name}.pt"));
        let sd = read_torchscript_state(&pt).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_state_dict(&sd, keys, &dir.path().join(format!("{name}.safetensors")));
    }
    assert!(keys["frozen"].is_empty());
    assert!(keys["lstm"].contains(&"weight_hh_l1_reverse".to_string()));
    assert!(keys["mha"].contains(&"bias_k".to_string()));
}
