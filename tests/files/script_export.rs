//! TorchScript exports load anywhere: `ScriptModel::save` writes every tensor on the CPU,
//! whatever device the module runs on (`torch.jit.load` restores tensors to the device they
//! were saved from). The path a GPU module takes (a copy of the module on the CPU) is forced
//! here on the CPU; tests/cuda.rs runs it from a real GPU.

use crate::common;

use std::path::Path;
use tch::{Device, Kind};
use tch_prune::checkpoint::write_safetensors;
use tch_prune::model::ScriptModel;
use tch_prune::Pruner;

const SCRIPT: &str = include_str!("../py/script_export.py");

/// A scripted CNN written by PyTorch, or None (said) without Python's torch.
fn scripted_cnn(dir: &Path) -> Option<std::path::PathBuf> {
    common::run_python(SCRIPT, &[Path::new("make"), dir])?;
    Some(dir.join("cnn.ts.pt"))
}

#[test]
fn exports_through_the_gpu_path_load_with_no_gpu_visible() {
    let dir = common::tempdir();
    let Some(original) = scripted_cnn(dir.path()) else {
        return;
    };
    let model = ScriptModel::load(&original, Device::Cpu).unwrap();
    let pruner = Pruner::new(model.var_store());
    pruner.l1_unstructured("0.weight", 0.5, None).unwrap();
    pruner.ln_structured("3.weight", 2, 2.0, 0, None).unwrap();
    pruner.l1_unstructured("7.weight", 0.7, None).unwrap();
    // Saved while still reparametrized (the masked values are what the module holds) and
    // after `remove_all`: the same file contents.
    let (copied, direct, removed) = (
        dir.path().join("copied.pt"),
        dir.path().join("direct.pt"),
        dir.path().join("removed.pt"),
    );
    model.save_on_through_copy(&copied, Device::Cpu).unwrap();
    model.save(&direct).unwrap();
    pruner.remove_all().unwrap();
    model.save(&removed).unwrap();
    // The module keeps computing after the save (it was not touched).
    let _generator = common::generator();
    let x = tch::Tensor::randn([2, 3, 8, 8], (Kind::Float, Device::Cpu));
    let _ = model.forward(&x).unwrap();

    let vars = model.var_store().variables();
    let params: Vec<(String, tch::Tensor)> = model
        .parameter_names()
        .iter()
        .map(|n| (n.clone(), vars[n].detach()))
        .collect();
    let expected = dir.path().join("expected.safetensors");
    write_safetensors(&expected, &params).unwrap();
    let out = common::run_python_without_gpu(
        SCRIPT,
        &[
            Path::new("check"),
            &original,
            &expected,
            &copied,
            &direct,
            &removed,
        ],
    )
    .expect("python ran above");
    assert_eq!(out.trim(), "OK");
}

#[test]
fn saving_for_a_device_this_machine_lacks_fails_on_one_line_and_writes_nothing() {
    if tch::Cuda::is_available() {
        eprintln!("skipped: this machine has a GPU (tests/cuda.rs saves onto it)");
        return;
    }
    let dir = common::tempdir();
    let Some(original) = scripted_cnn(dir.path()) else {
        return;
    };
    let model = ScriptModel::load(&original, Device::Cpu).unwrap();
    let out = dir.path().join("on-gpu.pt");
    let err = model
        .save_on(&out, Device::Cuda(0))
        .unwrap_err()
        .to_string();
    assert!(!err.contains('\n'), "{err}");
    assert!(
        err.contains("on-gpu.pt") && err.contains("cannot save"),
        "{err}"
    );
    assert!(!out.exists());
    let leftovers = std::fs::read_dir(dir.path()).unwrap().count();
    assert_eq!(leftovers, 1, "only the original is there");
}
