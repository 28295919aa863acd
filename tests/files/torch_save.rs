//! `torch.save` zip checkpoints against real PyTorch: files written by `torch.save` read here bit
//! for bit (every dtype, strided and shared storages, empty and 0-d tensors, pruned models, other
//! protocols, nested checkpoints), and files written here read by Python. The scripts are in
//! tests/py/formats/; every comparison is on raw bytes.

use crate::common;
use crate::formats;

use formats::*;
use std::collections::HashMap;
use std::io::Cursor;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};
use tch_prune::checkpoint::{
    read_safetensors, read_state_dict, read_torch_zip, read_torch_zip_from, write_safetensors,
    write_torch_zip, Format,
};

#[test]
fn mlp_state_dict_matches_python() {
    let dir = common::tempdir();
    let (pt, reference_file) = (
        dir.path().join("mlp.pt"),
        dir.path().join("ref.safetensors"),
    );
    let Some(out) = run_py("mlp_state_dict.py", &[&pt, &reference_file]) else {
        return;
    };
    let keys = keys_of(&out);
    assert_eq!(keys, ["0.weight", "0.bias", "2.weight", "2.bias"]);

    assert_eq!(Format::detect(&pt).expect("detect"), Format::TorchZip);
    assert_state_dict(
        &read_torch_zip(&pt).expect("read .pt"),
        &keys,
        &reference_file,
    );
    assert_state_dict(
        &read_state_dict(&pt).expect("read_state_dict"),
        &keys,
        &reference_file,
    );
    let bytes = std::fs::read(&pt).expect("read file");
    let from_memory = read_torch_zip_from(Cursor::new(bytes), "in memory").expect("from memory");
    assert_state_dict(&from_memory, &keys, &reference_file);
}

#[test]
fn cnn_with_batchnorm_state_dict_matches_python() {
    let dir = common::tempdir();
    let (pt, reference_file) = (
        dir.path().join("cnn.pt"),
        dir.path().join("ref.safetensors"),
    );
    let Some(out) = run_py("cnn_state_dict.py", &[&pt, &reference_file]) else {
        return;
    };
    let keys = keys_of(&out);
    let sd = read_torch_zip(&pt).expect("read");
    assert_state_dict(&sd, &keys, &reference_file);
    let (_, tracked) = sd
        .iter()
        .find(|(k, _)| k == "1.num_batches_tracked")
        .expect("num_batches_tracked");
    assert_eq!(tracked.kind(), Kind::Int64);
    assert_eq!(tracked.size(), Vec::<i64>::new());
    assert_eq!(tracked.int64_value(&[]), 2);
}

#[test]
fn every_dtype_reads_bit_for_bit() {
    let dir = common::tempdir();
    let (pt, st) = (
        dir.path().join("dtypes.pt"),
        dir.path().join("dtypes.safetensors"),
    );
    let Some(out) = run_py("every_dtype.py", &[&pt, &st]) else {
        return;
    };
    let expected = parse_expected(&out);
    assert_eq!(expected.len(), 10);

    let from_pt = read_torch_zip(&pt).expect("read .pt");
    let names: Vec<&str> = from_pt.iter().map(|(k, _)| k.as_str()).collect();
    let expected_names: Vec<&str> = expected.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(names, expected_names, ".pt keeps the dict's order");
    assert_matches_expected(&from_pt, &expected, ".pt");

    assert_eq!(Format::detect(&st).expect("detect"), Format::Safetensors);
    assert_matches_expected(
        &read_safetensors(&st).expect("read .safetensors"),
        &expected,
        "safetensors",
    );
    assert_matches_expected(
        &read_state_dict(&st).expect("read_state_dict"),
        &expected,
        "read_state_dict",
    );
}

#[test]
fn non_contiguous_and_offset_views_read_as_their_values() {
    let dir = common::tempdir();
    let (pt, reference_file) = (
        dir.path().join("views.pt"),
        dir.path().join("ref.safetensors"),
    );
    let Some(out) = run_py("strided_views.py", &[&pt, &reference_file]) else {
        return;
    };
    assert_state_dict(
        &read_torch_zip(&pt).expect("read"),
        &keys_of(&out),
        &reference_file,
    );
}

#[test]
fn shared_storages_and_tied_weights_read_as_independent_copies() {
    let dir = common::tempdir();
    let pt = dir.path().join("shared.pt");
    let tied = dir.path().join("tied.pt");
    let (ref_shared, ref_tied) = (
        dir.path().join("shared.safetensors"),
        dir.path().join("tied.safetensors"),
    );
    let Some(out) = run_py("shared_storages.py", &[&pt, &tied, &ref_shared, &ref_tied]) else {
        return;
    };
    let lists: Vec<Vec<String>> = out
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON key list"))
        .collect();

    let mut shared = read_torch_zip(&pt).expect("read shared");
    assert_state_dict(&shared, &lists[0], &ref_shared);
    // Writing into one view must leave the others alone: each is its own copy.
    for (name, tensor) in shared.iter_mut() {
        if name != "base" {
            let _ = tensor.fill_(0.0);
        }
    }
    let expected = reference(&ref_shared);
    assert_bits(
        &shared[0].1,
        &expected["base"],
        "base after writing to its views",
    );

    let mut tied_sd = read_torch_zip(&tied).expect("read tied");
    assert_state_dict(&tied_sd, &lists[1], &ref_tied);
    assert_bits(&tied_sd[0].1, &tied_sd[1].1, "tied weights");
    // The first takes the storage's memory, the second is a copy: pruning one in place (as
    // the CLI does) leaves the other as it was.
    let _ = tied_sd[0].1.fill_(0.0);
    assert_bits(
        &tied_sd[1].1,
        &reference(&ref_tied)[&tied_sd[1].0],
        "the other tied weight",
    );
}

#[test]
fn empty_and_scalar_tensors() {
    let dir = common::tempdir();
    let (pt, reference_file) = (
        dir.path().join("small.pt"),
        dir.path().join("ref.safetensors"),
    );
    let Some(out) = run_py("empty_and_scalar.py", &[&pt, &reference_file]) else {
        return;
    };
    let sd = read_torch_zip(&pt).expect("read");
    assert_state_dict(&sd, &keys_of(&out), &reference_file);
    let shapes: Vec<Vec<i64>> = sd.iter().map(|(_, t)| t.size()).collect();
    assert_eq!(
        shapes,
        [vec![0], vec![3, 0], vec![0], vec![], vec![], vec![]]
    );
    assert_eq!(sd[3].1.double_value(&[]), 3.5);
    assert_eq!(sd[4].1.int64_value(&[]), -7);
}

#[test]
fn state_dict_of_a_model_pruned_in_python() {
    let dir = common::tempdir();
    let (pt, reference_file) = (
        dir.path().join("pruned.pt"),
        dir.path().join("ref.safetensors"),
    );
    let Some(out) = run_py("pruned_in_python.py", &[&pt, &reference_file]) else {
        return;
    };
    let keys = keys_of(&out);
    assert!(
        keys.contains(&"0.weight_orig".to_string()) && keys.contains(&"0.weight_mask".to_string())
    );
    let sd = read_torch_zip(&pt).expect("read");
    let names: Vec<&str> = sd.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(names, keys.iter().map(String::as_str).collect::<Vec<_>>());
    let expected = reference(&reference_file);
    let by_name: HashMap<&str, &Tensor> = sd.iter().map(|(k, t)| (k.as_str(), t)).collect();
    for (name, tensor) in &by_name {
        assert_bits(tensor, &expected[*name], name);
    }
    let effective = by_name["0.weight_orig"] * by_name["0.weight_mask"];
    assert_bits(&effective, &expected["effective.0.weight"], "orig * mask");
}

#[test]
fn parameters_other_protocols_and_nested_checkpoints() {
    let dir = common::tempdir();
    let names = [
        "params.pt",
        "proto4.pt",
        "proto5.pt",
        "nested.pt",
        "model.pt",
        "cuda.pt",
    ];
    let files: Vec<PathBuf> = names.iter().map(|n| dir.path().join(n)).collect();
    let reference_file = dir.path().join("ref.safetensors");
    let mut args: Vec<&Path> = files.iter().map(PathBuf::as_path).collect();
    args.push(&reference_file);
    let Some(out) = run_py("protocols_and_nesting.py", &args) else {
        return;
    };
    let keys = keys_of(&out);
    for file in &files {
        let sd = read_state_dict(file).unwrap_or_else(|e| panic!("{e}"));
        assert_state_dict(&sd, &keys, &reference_file);
    }
}

#[test]
fn files_written_here_are_read_by_python() {
    let dir = common::tempdir();
    let (pt, st) = (
        dir.path().join("dtypes.pt"),
        dir.path().join("dtypes.safetensors"),
    );
    let Some(_) = run_py("every_dtype.py", &[&pt, &st]) else {
        return;
    };
    let mut tensors = read_torch_zip(&pt).expect("read");
    let mat = Tensor::arange(15, (Kind::Float, Device::Cpu)).reshape([3, 5]);
    tensors.push(("mat_t".into(), mat.tr()));
    tensors.push((
        "grad".into(),
        Tensor::ones([2], (Kind::Float, Device::Cpu)).set_requires_grad(true),
    ));
    tensors.push((
        "empty".into(),
        Tensor::zeros([0, 3], (Kind::Int, Device::Cpu)),
    ));
    tensors.push(("scalar".into(), Tensor::from(2.5f64)));
    tensors.push(("mask_t".into(), mat.gt(6.0).tr()));
    if tch::Cuda::is_available() {
        tensors.push(("on_cuda".into(), mat.to_device(Device::Cuda(0)).tr()));
    }
    let (out_st, out_pt) = (
        dir.path().join("out.safetensors"),
        dir.path().join("out.pt"),
    );
    write_safetensors(&out_st, &tensors).expect("write safetensors");
    write_torch_zip(&out_pt, &tensors).expect("write .pt");

    let out = run_py("check_written_files.py", &[&pt, &out_st, &out_pt]).expect("python ran");
    assert_eq!(out.trim(), "OK");

    // And they read back here in the order written (.pt) or by offset (safetensors).
    let back = read_torch_zip(&out_pt).expect("read back .pt");
    assert_eq!(back.len(), tensors.len());
    for ((name, a), (back_name, b)) in tensors.iter().zip(&back) {
        assert_eq!(name, back_name);
        assert_bits(a, b, name);
    }
    let back: HashMap<String, Tensor> = read_safetensors(&out_st)
        .expect("read back")
        .into_iter()
        .collect();
    for (name, tensor) in &tensors {
        assert_bits(tensor, &back[name], name);
    }
}

#[test]
fn bool_tensors_round_trip() {
    let dir = common::tempdir();
    let values = Tensor::from_slice(&[true, false, true, true, false, false]).reshape([2, 3]);
    let tensors = vec![
        ("mask".to_string(), values.shallow_clone()),
        ("mask_t".to_string(), values.tr()),
    ];
    let (st, pt) = (dir.path().join("b.safetensors"), dir.path().join("b.pt"));
    write_safetensors(&st, &tensors).expect("write");
    write_torch_zip(&pt, &tensors).expect("write");
    for back in [
        read_safetensors(&st).expect("read"),
        read_torch_zip(&pt).expect("read"),
    ] {
        let back: HashMap<String, Tensor> = back.into_iter().collect();
        assert_eq!(back["mask"].kind(), Kind::Bool);
        assert_bits(&back["mask"], &values, "mask");
        assert_bits(&back["mask_t"], &values.tr(), "mask_t");
    }
}
