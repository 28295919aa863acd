//! safetensors files: written by Python and read here in the order of their data, and hand-made
//! bytes (non-0/1 booleans, empty tensors, scalars, a truncated file).

use crate::common;
use crate::formats;

use formats::*;
use std::collections::HashMap;
use tch::Tensor;
use tch_prune::checkpoint::{read_safetensors, read_torch_zip};

#[test]
fn safetensors_written_by_python_read_in_offset_order() {
    let dir = common::tempdir();
    let (pt, st) = (
        dir.path().join("mlp.pt"),
        dir.path().join("mlp.safetensors"),
    );
    let Some(out) = run_py("mlp_state_dict.py", &[&pt, &st]) else {
        return;
    };
    let Some(order_out) = run_py("safetensors_offset_order.py", &[&st]) else {
        return;
    };
    let offset_order = keys_of(&order_out);
    let sd = read_safetensors(&st).expect("read");
    assert_state_dict(&sd, &offset_order, &st);
    // Same tensors as the .pt, whose order is the model's.
    let pt_sd = read_torch_zip(&pt).expect("read .pt");
    assert_eq!(keys_of(&out).len(), sd.len());
    let from_st: HashMap<&str, &Tensor> = sd.iter().map(|(k, t)| (k.as_str(), t)).collect();
    for (name, tensor) in &pt_sd {
        assert_bits(tensor, from_st[name.as_str()], name);
    }
}

#[test]
fn safetensors_read_from_hand_made_bytes() {
    // Booleans stored as bytes other than 0/1 read as true; empty tensors and scalars read too.
    let header = r#"{"b":{"dtype":"BOOL","shape":[4],"data_offsets":[0,4]},"e":{"dtype":"F32","shape":[0,3],"data_offsets":[4,4]},"s":{"dtype":"I16","shape":[],"data_offsets":[4,6]}}"#;
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend(header.as_bytes());
    bytes.extend([0u8, 2, 1, 255, 0x34, 0x12]);
    let dir = common::tempdir();
    let path = dir.path().join("hand.safetensors");
    std::fs::write(&path, &bytes).unwrap();
    let back: HashMap<String, Tensor> = read_safetensors(&path).unwrap().into_iter().collect();
    assert_eq!(
        Vec::<bool>::try_from(&back["b"]).unwrap(),
        [false, true, true, true]
    );
    assert_eq!(back["e"].size(), [0, 3]);
    assert_eq!(back["s"].int64_value(&[]), 0x1234);
    // One byte short: refused, naming the problem.
    std::fs::write(&path, &bytes[..bytes.len() - 1]).unwrap();
    let err = read_safetensors(&path).unwrap_err();
    assert!(err.to_string().contains("truncated"), "{err}");
}
