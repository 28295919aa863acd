//! The file-format layer against real PyTorch: files written by `torch.save`, `torch.jit.save`
//! and `safetensors.torch.save_file`, read here bit for bit; files written here, read by Python.
//! Every comparison is on raw bytes, so NaN payloads, -0.0 and int64 beyond 2^53 count.

mod common;

use std::collections::HashMap;
use std::io::{Cursor, Read, Write};
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};
use tch_prune::checkpoint::{
    read_safetensors, read_state_dict, read_torch_zip, read_torch_zip_from, read_torchscript_state,
    read_torchscript_state_from, write_safetensors, write_torch_zip, CheckpointError, Format,
};

// ----------------------------------------------------------------------------------------------
// Helpers

/// A tensor's dtype, shape and raw bytes (contiguous, on the CPU).
fn bits(t: &Tensor) -> (Kind, Vec<i64>, Vec<u8>) {
    let t = t.to_device(Device::Cpu).contiguous();
    let numel = t.numel();
    let mut bytes = vec![0u8; numel * t.kind().elt_size_in_bytes()];
    if numel > 0 {
        t.copy_data_u8(&mut bytes, numel);
    }
    (t.kind(), t.size(), bytes)
}

fn assert_bits(a: &Tensor, b: &Tensor, what: &str) {
    let (ka, sa, ba) = bits(a);
    let (kb, sb, bb) = bits(b);
    assert_eq!((ka, &sa), (kb, &sb), "{what}: dtype or shape differ");
    assert!(ba == bb, "{what}: bytes differ\nleft:  {a}\nright: {b}");
}

/// Reads a safetensors file with tch's own reader: an implementation independent of ours.
fn reference(path: &Path) -> HashMap<String, Tensor> {
    Tensor::read_safetensors(path)
        .expect("tch reads the reference file")
        .into_iter()
        .collect()
}

/// Checks names (in order) and values of a state dict against Python's key list and a
/// reference safetensors file.
fn assert_state_dict(got: &[(String, Tensor)], keys: &[String], reference_file: &Path) {
    let names: Vec<&str> = got.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        names,
        keys.iter().map(String::as_str).collect::<Vec<_>>(),
        "key order"
    );
    let expected = reference(reference_file);
    assert_eq!(expected.len(), got.len());
    for (name, tensor) in got {
        assert_bits(tensor, &expected[name], name);
        assert_eq!(tensor.device(), Device::Cpu);
        assert!(tensor.is_contiguous(), "{name} is not contiguous");
        assert!(!tensor.requires_grad(), "{name} requires grad");
    }
}

fn keys_of(stdout: &str) -> Vec<String> {
    let line = stdout
        .lines()
        .find(|l| l.starts_with('['))
        .expect("a JSON key list");
    serde_json::from_str(line).expect("JSON key list")
}

/// Asserts a one-line message that names the file and contains `needle`.
fn assert_error(err: &CheckpointError, file: &Path, needle: &str) {
    let message = err.to_string();
    assert!(!message.contains('\n'), "not one line: {message}");
    let name = file.file_name().expect("a file name").to_string_lossy();
    assert!(message.contains(&*name), "does not name {name}: {message}");
    assert!(
        message.contains(needle),
        "does not say '{needle}': {message}"
    );
}

fn unwrap_err<T: std::fmt::Debug>(result: Result<T, CheckpointError>) -> CheckpointError {
    match result {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(e) => e,
    }
}

/// Copies a zip entry by entry, letting `edit` replace (Some) or drop (None of the outer
/// option) entries.
fn rewrite_zip(src: &Path, dst: &Path, edit: impl Fn(&str, Vec<u8>) -> Option<Vec<u8>>) {
    let mut archive = zip::ZipArchive::new(std::fs::File::open(src).expect("open")).expect("zip");
    let mut out = zip::ZipWriter::new(std::fs::File::create(dst).expect("create"));
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Stored)
        .with_alignment(64);
    for i in 0..archive.len() {
        let mut entry = archive.by_index(i).expect("entry");
        let name = entry.name().to_string();
        let mut bytes = Vec::new();
        entry.read_to_end(&mut bytes).expect("read entry");
        if let Some(bytes) = edit(&name, bytes) {
            out.start_file(name, options).expect("start");
            out.write_all(&bytes).expect("write");
        }
    }
    out.finish().expect("finish");
}

const MLP: &str = r#"
import sys, json, torch
from safetensors.torch import save_file
pt, ref = sys.argv[1:3]
torch.manual_seed(0)
m = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
sd = m.state_dict()
torch.save(sd, pt)
save_file({k: v.contiguous() for k, v in sd.items()}, ref)
print(json.dumps(list(sd.keys())))
"#;

// ----------------------------------------------------------------------------------------------
// Reading what PyTorch writes

#[test]
fn mlp_state_dict_matches_python() {
    let dir = common::tempdir();
    let (pt, reference_file) = (
        dir.path().join("mlp.pt"),
        dir.path().join("ref.safetensors"),
    );
    let Some(out) = common::run_python(MLP, &[&pt, &reference_file]) else {
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
    let script = r#"
import sys, json, torch
from safetensors.torch import save_file
pt, ref = sys.argv[1:3]
torch.manual_seed(1)
m = torch.nn.Sequential(
    torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
    torch.nn.Flatten(), torch.nn.Linear(4 * 6 * 6, 2))
m.train()
m(torch.randn(2, 3, 8, 8)); m(torch.randn(2, 3, 8, 8))
sd = m.state_dict()
assert sd["1.num_batches_tracked"].dtype == torch.int64
torch.save(sd, pt)
save_file({k: v.contiguous() for k, v in sd.items()}, ref)
print(json.dumps(list(sd.keys())))
"#;
    let Some(out) = common::run_python(script, &[&pt, &reference_file]) else {
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

/// Python prints each tensor's dtype, shape and raw bytes; both formats must give those bytes.
const EVERY_DTYPE: &str = r#"
import sys, torch
from safetensors.torch import save_file
pt, st = sys.argv[1:3]
floats = [0.0, -0.0, 1.5, -2.25, float("inf"), float("-inf"), float("nan"), 1e-40, 3.4e38]
d = {
    "f32": torch.tensor(floats, dtype=torch.float32),
    "f16": torch.tensor([0.0, -0.0, 1.5, 65504.0, float("inf"), float("nan"), 6e-8], dtype=torch.float16),
    "bf16": torch.tensor([0.0, -0.0, 1.5, 3e38, float("-inf"), float("nan"), 1e-39], dtype=torch.bfloat16),
    "f64": torch.tensor(floats + [1e-310, 1.7e308], dtype=torch.float64),
    "i64": torch.tensor([0, -1, 2**63 - 1, -2**63, 2**53 + 1], dtype=torch.int64),
    "i32": torch.tensor([0, -1, 2**31 - 1, -2**31], dtype=torch.int32),
    "i16": torch.tensor([0, -1, 32767, -32768], dtype=torch.int16),
    "i8": torch.tensor([0, -1, 127, -128], dtype=torch.int8),
    "u8": torch.tensor([0, 1, 128, 255], dtype=torch.uint8),
    "bool": torch.tensor([[True, False], [False, True]]),
}
torch.save(d, pt)
save_file(d, st)
for k, v in d.items():
    raw = v.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes().hex()
    print(k, str(v.dtype), ",".join(map(str, v.shape)), raw)
"#;

struct Expected {
    kind: Kind,
    shape: Vec<i64>,
    bytes: Vec<u8>,
}

fn parse_expected(stdout: &str) -> Vec<(String, Expected)> {
    stdout
        .lines()
        .map(|line| {
            let parts: Vec<&str> = line.split(' ').collect();
            let [name, dtype, shape, hex] = parts[..] else {
                panic!("bad line {line}")
            };
            let kind = match dtype {
                "torch.float32" => Kind::Float,
                "torch.float16" => Kind::Half,
                "torch.bfloat16" => Kind::BFloat16,
                "torch.float64" => Kind::Double,
                "torch.int64" => Kind::Int64,
                "torch.int32" => Kind::Int,
                "torch.int16" => Kind::Int16,
                "torch.int8" => Kind::Int8,
                "torch.uint8" => Kind::Uint8,
                "torch.bool" => Kind::Bool,
                other => panic!("unexpected dtype {other}"),
            };
            let shape = shape
                .split(',')
                .filter(|s| !s.is_empty())
                .map(|s| s.parse().expect("dim"))
                .collect();
            let bytes = (0..hex.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex"))
                .collect();
            (name.to_string(), Expected { kind, shape, bytes })
        })
        .collect()
}

fn assert_matches_expected(got: &[(String, Tensor)], expected: &[(String, Expected)], what: &str) {
    let got: HashMap<&str, &Tensor> = got.iter().map(|(k, t)| (k.as_str(), t)).collect();
    assert_eq!(got.len(), expected.len(), "{what}: tensor count");
    for (name, e) in expected {
        let (kind, shape, bytes) = bits(got[name.as_str()]);
        assert_eq!((kind, &shape), (e.kind, &e.shape), "{what} {name}");
        assert!(bytes == e.bytes, "{what} {name}: bytes differ");
    }
}

#[test]
fn every_dtype_reads_bit_for_bit() {
    let dir = common::tempdir();
    let (pt, st) = (
        dir.path().join("dtypes.pt"),
        dir.path().join("dtypes.safetensors"),
    );
    let Some(out) = common::run_python(EVERY_DTYPE, &[&pt, &st]) else {
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
    let script = r#"
import sys, json, torch
from safetensors.torch import save_file
pt, ref = sys.argv[1:3]
torch.manual_seed(2)
base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
d = {
    "wt": torch.randn(3, 5).t(),
    "slice": base[1:3, ::2],
    "column": base[:, 4],
    "expanded": torch.tensor([7.0]).expand(3, 4),
    "narrow": torch.arange(10, dtype=torch.int64)[3:7],
    "permuted": torch.randn(2, 3, 4).permute(2, 0, 1),
    "half_t": torch.randn(2, 3).half().t(),
    "bool_t": (torch.randn(3, 2) > 0).t(),
}
for k in ["wt", "slice", "column", "expanded", "permuted", "half_t", "bool_t"]:
    assert not d[k].is_contiguous(), k
assert d["narrow"].storage_offset() == 3
torch.save(d, pt)
save_file({k: v.contiguous() for k, v in d.items()}, ref)
print(json.dumps(list(d.keys())))
"#;
    let Some(out) = common::run_python(script, &[&pt, &reference_file]) else {
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
    let script = r#"
import sys, json, zipfile, torch
from safetensors.torch import save_file
pt, tied, ref_shared, ref_tied = sys.argv[1:5]
torch.manual_seed(3)
base = torch.randn(4, 5)
d = {"base": base, "row0": base[0], "rows": base[1:3], "tail": base.view(-1)[7:], "again": base}
torch.save(d, pt)
assert sum("/data/" in n for n in zipfile.ZipFile(pt).namelist()) == 1
save_file({k: v.clone().contiguous() for k, v in d.items()}, ref_shared)
print(json.dumps(list(d.keys())))

class Tied(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.enc = torch.nn.Embedding(10, 4)
        self.dec = torch.nn.Linear(4, 10, bias=False)
        self.dec.weight = self.enc.weight
sd = Tied().state_dict()
torch.save(sd, tied)
assert sum("/data/" in n for n in zipfile.ZipFile(tied).namelist()) == 1
save_file({k: v.clone().contiguous() for k, v in sd.items()}, ref_tied)
print(json.dumps(list(sd.keys())))
"#;
    let Some(out) = common::run_python(script, &[&pt, &tied, &ref_shared, &ref_tied]) else {
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
    let script = r#"
import sys, json, torch
from safetensors.torch import save_file
pt, ref = sys.argv[1:3]
d = {
    "empty": torch.zeros(0),
    "empty2d": torch.zeros(3, 0, dtype=torch.int64),
    "empty_view": torch.arange(5.0)[5:],
    "scalar": torch.tensor(3.5),
    "int_scalar": torch.tensor(-7),
    "bool_scalar": torch.tensor(True),
}
torch.save(d, pt)
save_file({k: v.contiguous() for k, v in d.items()}, ref)
print(json.dumps(list(d.keys())))
"#;
    let Some(out) = common::run_python(script, &[&pt, &reference_file]) else {
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
    let script = r#"
import sys, json, torch
import torch.nn.utils.prune as prune
from safetensors.torch import save_file
pt, ref = sys.argv[1:3]
torch.manual_seed(4)
m = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.ReLU(), torch.nn.Linear(5, 2))
prune.l1_unstructured(m[0], "weight", 0.4)
prune.l1_unstructured(m[0], "bias", 2)
prune.random_structured(m[2], "weight", 0.5, dim=0)
sd = m.state_dict()
torch.save(sd, pt)
refs = {k: v.contiguous() for k, v in sd.items()}
refs["effective.0.weight"] = m[0].weight.detach().contiguous()
save_file(refs, ref)
print(json.dumps(list(sd.keys())))
"#;
    let Some(out) = common::run_python(script, &[&pt, &reference_file]) else {
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
    let script = r#"
import sys, json, torch
from safetensors.torch import save_file
params, p4, p5, nested, model, cuda, ref = sys.argv[1:8]
torch.manual_seed(5)
m = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
opt = torch.optim.Adam(m.parameters())
m(torch.randn(5, 4)).sum().backward()
opt.step()
torch.save(m.state_dict(keep_vars=True), params)
torch.save(m.state_dict(), p4, pickle_protocol=4)
torch.save(m.state_dict(), p5, pickle_protocol=5)
torch.save({"epoch": 3, "state_dict": m.state_dict(), "optimizer": opt.state_dict(),
            "lr": 0.1, "note": "x", "flags": {1, 2}, "blob": b"abc", "big": 2**70, "none": None}, nested)
torch.save({"model": m.state_dict(), "step": 10}, model)
# As if saved from a GPU: the storages' location says cuda:0 (this machine may have no GPU).
tag = torch.serialization.location_tag
torch.serialization.location_tag = lambda storage: "cuda:0"
torch.save(m.state_dict(), cuda)
torch.serialization.location_tag = tag
assert b"cuda:0" in __import__("zipfile").ZipFile(cuda).read("cuda/data.pkl")
sd = m.state_dict()
save_file({k: v.contiguous() for k, v in sd.items()}, ref)
print(json.dumps(list(sd.keys())))
"#;
    let mut args: Vec<&Path> = files.iter().map(PathBuf::as_path).collect();
    args.push(&reference_file);
    let Some(out) = common::run_python(script, &args) else {
        return;
    };
    let keys = keys_of(&out);
    for file in &files {
        let sd = read_state_dict(file).unwrap_or_else(|e| panic!("{e}"));
        assert_state_dict(&sd, &keys, &reference_file);
    }
}

#[test]
fn safetensors_written_by_python_read_in_offset_order() {
    let dir = common::tempdir();
    let (pt, st) = (
        dir.path().join("mlp.pt"),
        dir.path().join("mlp.safetensors"),
    );
    let Some(out) = common::run_python(MLP, &[&pt, &st]) else {
        return;
    };
    let order = r#"
import sys, json, struct
with open(sys.argv[1], "rb") as f:
    n = struct.unpack("<Q", f.read(8))[0]
    header = json.loads(f.read(n))
header.pop("__metadata__", None)
print(json.dumps(sorted(header, key=lambda k: header[k]["data_offsets"])))
"#;
    let Some(order_out) = common::run_python(order, &[&st]) else {
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

// ----------------------------------------------------------------------------------------------
// Writing what PyTorch reads

#[test]
fn files_written_here_are_read_by_python() {
    let dir = common::tempdir();
    let (pt, st) = (
        dir.path().join("dtypes.pt"),
        dir.path().join("dtypes.safetensors"),
    );
    let Some(_) = common::run_python(EVERY_DTYPE, &[&pt, &st]) else {
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

    let script = r#"
import sys, torch
from safetensors.torch import load_file
src, out_st, out_pt = sys.argv[1:4]
expected = torch.load(src)
mat = torch.arange(15, dtype=torch.float32).reshape(3, 5)
expected.update({
    "mat_t": mat.t(), "grad": torch.ones(2), "empty": torch.zeros(0, 3, dtype=torch.int32),
    "scalar": torch.tensor(2.5, dtype=torch.float64), "mask_t": (mat > 6).t(),
})
def same(a, b):
    # Bytes, so that NaN and -0.0 count; torch.equal on the byte views.
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(
        a.contiguous().reshape(-1).view(torch.uint8), b.contiguous().reshape(-1).view(torch.uint8))
for name, loaded in [("safetensors", load_file(out_st)),
                     ("torch.load", torch.load(out_pt, weights_only=True)),
                     ("torch.load mmap", torch.load(out_pt, weights_only=True, mmap=True))]:
    if "on_cuda" in loaded:
        assert same(loaded.pop("on_cuda"), mat.t()), name
    assert set(loaded) == set(expected), (name, set(loaded) ^ set(expected))
    for k, v in expected.items():
        assert same(loaded[k], v), (name, k, loaded[k], v)
print("OK")
"#;
    let out = common::run_python(script, &[&pt, &out_st, &out_pt]).expect("python ran");
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

#[test]
fn failed_writes_leave_the_old_file_and_no_temporary_file() {
    let dir = common::tempdir();
    let st = dir.path().join("model.safetensors");
    std::fs::write(&st, b"previous contents").expect("write");
    let complex = Tensor::zeros([2], (Kind::ComplexFloat, Device::Cpu));
    let tensors = [
        ("ok", Tensor::zeros([2], (Kind::Float, Device::Cpu))),
        ("c", complex),
    ];
    let err = unwrap_err(write_safetensors(&st, &tensors));
    assert_error(&err, &st, "tensor 'c' has dtype ComplexFloat");
    let err = unwrap_err(write_torch_zip(dir.path().join("x.pt"), &tensors));
    assert!(
        matches!(err, CheckpointError::UnsupportedDtype { .. }),
        "{err}"
    );
    let dup = [
        ("a", Tensor::zeros([1], (Kind::Float, Device::Cpu))),
        ("a", Tensor::zeros([1], (Kind::Float, Device::Cpu))),
    ];
    let err = unwrap_err(write_safetensors(&st, &dup));
    assert_error(&err, &st, "given twice");
    // Into a folder that does not exist: fails before anything is written.
    let missing = dir.path().join("no/such/folder/m.safetensors");
    let err = unwrap_err(write_safetensors(&missing, &tensors[..1]));
    assert_error(&err, &missing, "m.safetensors");

    let names: Vec<String> = std::fs::read_dir(dir.path())
        .expect("list")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["model.safetensors"]);
    assert_eq!(std::fs::read(&st).expect("read"), b"previous contents");
}

// ----------------------------------------------------------------------------------------------
// Rejections

#[test]
fn rejects_the_legacy_format() {
    let dir = common::tempdir();
    let pt = dir.path().join("legacy.pt");
    let script = r#"
import sys, torch
torch.save(torch.nn.Linear(2, 2).state_dict(), sys.argv[1], _use_new_zipfile_serialization=False)
"#;
    let Some(_) = common::run_python(script, &[&pt]) else {
        return;
    };
    for err in [
        unwrap_err(read_torch_zip(&pt)),
        unwrap_err(read_state_dict(&pt)),
        unwrap_err(Format::detect(&pt)),
    ] {
        assert!(matches!(err, CheckpointError::LegacyFormat { .. }), "{err}");
        assert_error(&err, &pt, "_use_new_zipfile_serialization=True");
    }
}

#[test]
fn rejects_a_truncated_file() {
    let dir = common::tempdir();
    let (pt, reference_file) = (
        dir.path().join("mlp.pt"),
        dir.path().join("ref.safetensors"),
    );
    let Some(_) = common::run_python(MLP, &[&pt, &reference_file]) else {
        return;
    };
    let bytes = std::fs::read(&pt).expect("read");
    let half = dir.path().join("half.pt");
    std::fs::write(&half, &bytes[..bytes.len() / 2]).expect("write");
    for err in [
        unwrap_err(read_torch_zip(&half)),
        unwrap_err(read_state_dict(&half)),
    ] {
        assert!(
            matches!(err, CheckpointError::CorruptArchive { .. }),
            "{err}"
        );
        assert_error(&err, &half, "corrupt or truncated");
    }
    let st_bytes = std::fs::read(&reference_file).expect("read");
    let half_st = dir.path().join("half.safetensors");
    std::fs::write(&half_st, &st_bytes[..st_bytes.len() / 2]).expect("write");
    let err = unwrap_err(read_safetensors(&half_st));
    assert_error(&err, &half_st, "truncated");
}

#[test]
fn rejects_random_bytes() {
    let dir = common::tempdir();
    let file = dir.path().join("noise.bin");
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let noise: Vec<u8> = (0..4096)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect();
    assert!(noise[0] != b'P' && noise[0] != 0x80);
    std::fs::write(&file, &noise).expect("write");
    let err = unwrap_err(read_state_dict(&file));
    assert!(
        matches!(err, CheckpointError::UnknownFormat { .. }),
        "{err}"
    );
    assert_error(&err, &file, "unrecognized file format");
    assert_error(
        &unwrap_err(read_torch_zip(&file)),
        &file,
        "not a zip archive",
    );
    assert_error(
        &unwrap_err(read_safetensors(&file)),
        &file,
        "invalid safetensors file",
    );
    let empty = dir.path().join("empty.pt");
    std::fs::write(&empty, b"").expect("write");
    assert_error(
        &unwrap_err(read_state_dict(&empty)),
        &empty,
        "unrecognized file format",
    );
}

#[test]
fn rejects_a_zip_that_is_not_a_checkpoint() {
    let dir = common::tempdir();
    let file = dir.path().join("notes.zip");
    let script = r#"
import sys, zipfile
with zipfile.ZipFile(sys.argv[1], "w") as z:
    z.writestr("notes/hello.txt", "hello")
"#;
    let Some(_) = common::run_python(script, &[&file]) else {
        return;
    };
    for err in [
        unwrap_err(read_torch_zip(&file)),
        unwrap_err(read_state_dict(&file)),
        unwrap_err(Format::detect(&file)),
    ] {
        assert!(
            matches!(err, CheckpointError::NotACheckpoint { .. }),
            "{err}"
        );
        assert_error(&err, &file, "no data.pkl");
    }
}

#[test]
fn rejects_custom_classes_and_never_runs_their_code() {
    let dir = common::tempdir();
    let (custom, evil) = (dir.path().join("custom.pt"), dir.path().join("evil.pt"));
    let marker = dir.path().join("pwned");
    let script = r#"
import sys, os, torch
custom, evil, marker = sys.argv[1:4]
class Foo:
    pass
torch.save({"a": torch.zeros(1), "b": Foo()}, custom)
class Evil:
    def __reduce__(self):
        return (os.system, ("touch " + marker,))
torch.save({"a": torch.zeros(1), "b": Evil()}, evil)
assert not os.path.exists(marker)
"#;
    let Some(_) = common::run_python(script, &[&custom, &evil, &marker]) else {
        return;
    };
    let err = unwrap_err(read_torch_zip(&custom));
    assert!(
        matches!(&err, CheckpointError::ForbiddenGlobal { global, .. } if global == "__main__.Foo"),
        "{err}"
    );
    assert_error(&err, &custom, "`__main__.Foo`");
    for err in [
        unwrap_err(read_torch_zip(&evil)),
        unwrap_err(read_state_dict(&evil)),
    ] {
        // os.system pickles as posix.system on Linux (nt.system on Windows).
        assert!(
            matches!(&err, CheckpointError::ForbiddenGlobal { global, .. } if global.ends_with(".system")),
            "{err}"
        );
        assert_error(&err, &evil, ".system`");
    }
    assert!(!marker.exists(), "the pickle's code ran");
}

#[test]
fn rejects_what_is_not_a_dict_of_tensors() {
    let dir = common::tempdir();
    let files: Vec<PathBuf> = [
        "list.pt",
        "mixed.pt",
        "tensor.pt",
        "int_key.pt",
        "bad_nested.pt",
    ]
    .iter()
    .map(|n| dir.path().join(n))
    .collect();
    let script = r#"
import sys, torch
lst, mixed, tensor, int_key, bad_nested = sys.argv[1:6]
torch.save([torch.zeros(1), torch.ones(1)], lst)
torch.save({"a": torch.zeros(1), "b": 3}, mixed)
torch.save(torch.zeros(2), tensor)
torch.save({1: torch.zeros(1)}, int_key)
torch.save({"state_dict": {"w": torch.zeros(1), "step": 4}, "epoch": 1}, bad_nested)
"#;
    let args: Vec<&Path> = files.iter().map(PathBuf::as_path).collect();
    let Some(_) = common::run_python(script, &args) else {
        return;
    };
    let needles = [
        "the file holds a list, not a dict of tensors",
        "the value of 'b' is an int, not a tensor",
        "the file holds a tensor, not a dict of tensors",
        "a key that is an int",
        "the value of 'state_dict.step' is an int, not a tensor",
    ];
    for (file, needle) in files.iter().zip(needles) {
        let err = unwrap_err(read_torch_zip(file));
        assert!(
            matches!(err, CheckpointError::NotAStateDict { .. }),
            "{err}"
        );
        assert_error(&err, file, needle);
    }
}

#[test]
fn rejects_torchscript_given_as_a_state_dict() {
    let dir = common::tempdir();
    let file = dir.path().join("scripted.pt");
    let script = r#"
import sys, torch
torch.jit.save(torch.jit.script(torch.nn.Linear(2, 1)), sys.argv[1])
"#;
    let Some(_) = common::run_python(script, &[&file]) else {
        return;
    };
    assert_eq!(Format::detect(&file).expect("detect"), Format::TorchScript);
    for err in [
        unwrap_err(read_state_dict(&file)),
        unwrap_err(read_torch_zip(&file)),
    ] {
        assert!(matches!(err, CheckpointError::TorchScript { .. }), "{err}");
        assert_error(&err, &file, "TorchScript module saved by torch.jit.save");
    }
}

#[test]
fn rejects_unsupported_dtypes_naming_the_tensor() {
    let dir = common::tempdir();
    let (pt, st) = (
        dir.path().join("complex.pt"),
        dir.path().join("u16.safetensors"),
    );
    let script = r#"
import sys, torch
from safetensors.torch import save_file
pt, st = sys.argv[1:3]
torch.save({"a": torch.zeros(1), "c": torch.zeros(2, dtype=torch.complex64)}, pt)
save_file({"a": torch.zeros(1), "u": torch.zeros(2, dtype=torch.uint16)}, st)
"#;
    let Some(_) = common::run_python(script, &[&pt, &st]) else {
        return;
    };
    let err = unwrap_err(read_torch_zip(&pt));
    assert!(
        matches!(&err, CheckpointError::UnsupportedDtype { tensor, .. } if tensor == "c"),
        "{err}"
    );
    assert_error(&err, &pt, "tensor 'c' has dtype torch.ComplexFloatStorage");
    let err = unwrap_err(read_safetensors(&st));
    assert_error(&err, &st, "tensor 'u' has dtype U16");
}

#[test]
fn rejects_damaged_archives() {
    let dir = common::tempdir();
    let (pt, reference_file) = (
        dir.path().join("mlp.pt"),
        dir.path().join("ref.safetensors"),
    );
    let Some(_) = common::run_python(MLP, &[&pt, &reference_file]) else {
        return;
    };

    let big_endian = dir.path().join("big_endian.pt");
    rewrite_zip(&pt, &big_endian, |name, bytes| {
        Some(if name.ends_with("/byteorder") {
            b"big".to_vec()
        } else {
            bytes
        })
    });
    assert_error(
        &unwrap_err(read_torch_zip(&big_endian)),
        &big_endian,
        "big-endian",
    );

    let short = dir.path().join("short_storage.pt");
    rewrite_zip(&pt, &short, |name, mut bytes| {
        if name.ends_with("/data/0") {
            bytes.truncate(bytes.len() - 4);
        }
        Some(bytes)
    });
    assert_error(
        &unwrap_err(read_torch_zip(&short)),
        &short,
        "but data.pkl declares",
    );

    let missing = dir.path().join("missing_storage.pt");
    rewrite_zip(&pt, &missing, |name, bytes| {
        (!name.ends_with("/data/1")).then_some(bytes)
    });
    assert_error(
        &unwrap_err(read_torch_zip(&missing)),
        &missing,
        "has no entry",
    );

    let cut = dir.path().join("cut_pickle.pt");
    rewrite_zip(&pt, &cut, |name, bytes| {
        Some(if name.ends_with("/data.pkl") {
            bytes[..bytes.len() - 10].to_vec()
        } else {
            bytes
        })
    });
    let err = unwrap_err(read_torch_zip(&cut));
    assert!(
        matches!(err, CheckpointError::MalformedPickle { .. }),
        "{err}"
    );
    assert_error(&err, &cut, "malformed data.pkl at byte");
}

#[test]
fn truncations_and_byte_flips_of_a_real_file_never_panic() {
    let dir = common::tempdir();
    let pt = dir.path().join("tiny.pt");
    let script = r#"
import sys, torch
torch.manual_seed(6)
torch.save(torch.nn.Linear(3, 2).state_dict(), sys.argv[1])
"#;
    let Some(_) = common::run_python(script, &[&pt]) else {
        return;
    };
    let bytes = std::fs::read(&pt).expect("read");
    assert_fuzzed_safely(&bytes, |data| {
        read_torch_zip_from(Cursor::new(data), "fuzzed.pt")
    });
}

/// Every strict prefix of `bytes` is refused, and each single byte flip is refused or read,
/// never a panic, each error one line naming the file. Some flips, in bytes no reader checks
/// (timestamps, padding), still read: proof that the loop reached the whole file, while flips
/// in the pickle or the storages are caught by the CRC.
fn assert_fuzzed_safely(
    bytes: &[u8],
    read: impl Fn(Vec<u8>) -> Result<Vec<(String, Tensor)>, CheckpointError>,
) {
    let check = |data: Vec<u8>| match read(data) {
        Ok(sd) => sd.len(),
        Err(e) => {
            let message = e.to_string();
            assert!(
                !message.contains('\n') && message.starts_with("fuzzed.pt: "),
                "{message}"
            );
            0
        }
    };
    for len in 0..bytes.len() {
        assert_eq!(
            check(bytes[..len].to_vec()),
            0,
            "prefix of {len} bytes was accepted"
        );
    }
    let mut accepted = 0;
    for i in 0..bytes.len() {
        let mut flipped = bytes.to_vec();
        flipped[i] ^= 0x5a;
        accepted += usize::from(check(flipped) > 0);
    }
    assert!(
        accepted > 0 && accepted < bytes.len(),
        "{accepted} of {} flips accepted",
        bytes.len()
    );
}

// ----------------------------------------------------------------------------------------------
// The state of TorchScript archives, against `torch.jit.load(p).state_dict()`

/// Prepended to the TorchScript scripts: `reference(pt, ref)` loads the archive back in Python,
/// saves its state dict as the reference file and prints its keys as the first JSON line.
const JIT_PRELUDE: &str = r#"
import sys, json, torch
from torch import nn
from safetensors.torch import save_file
def reference(pt, ref):
    sd = torch.jit.load(pt).state_dict()
    # clone: safetensors refuses tensors that share memory (tied weights).
    save_file({k: v.detach().clone().contiguous() for k, v in sd.items()}, ref)
    print(json.dumps(list(sd.keys())))
    return sd
"#;

/// Runs `body` after [`JIT_PRELUDE`] with the archive and reference paths as `sys.argv[1:3]`,
/// and checks [`read_torchscript_state`] against the reference; returns what it read.
fn check_torchscript(body: &str, expected_keys: &[&str]) -> Option<Vec<(String, Tensor)>> {
    let dir = common::tempdir();
    let (pt, reference_file) = (
        dir.path().join("scripted.pt"),
        dir.path().join("ref.safetensors"),
    );
    let out = common::run_python(&format!("{JIT_PRELUDE}{body}"), &[&pt, &reference_file])?;
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
    let body = r#"
pt, ref = sys.argv[1:3]
torch.manual_seed(0)
m = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
torch.jit.save(torch.jit.script(m), pt)
reference(pt, ref)
"#;
    check_torchscript(body, &["0.weight", "0.bias", "2.weight", "2.bias"]);
}

#[test]
fn torchscript_cnn_with_batchnorm_state_matches_python() {
    let body = r#"
pt, ref = sys.argv[1:3]
torch.manual_seed(1)
m = nn.Sequential(
    nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 2))
m.train()
m(torch.randn(2, 3, 8, 8)); m(torch.randn(2, 3, 8, 8))
torch.jit.save(torch.jit.script(m), pt)
sd = reference(pt, ref)
assert sd["1.num_batches_tracked"].dtype == torch.int64
assert not torch.equal(sd["1.running_mean"], torch.zeros(4))
"#;
    let Some(sd) = check_torchscript(
        body,
        &[
            "0.weight",
            "0.bias",
            "1.weight",
            "1.bias",
            "1.running_mean",
            "1.running_var",
            "1.num_batches_tracked",
            "4.weight",
            "4.bias",
        ],
    ) else {
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
    let body = r#"
import enum
pt, ref = sys.argv[1:3]
torch.manual_seed(2)
class Mode(enum.Enum):
    FAST = 1
    SLOW = 2

@torch.jit.script
class Holder:
    def __init__(self, x: torch.Tensor):
        self.x = x

class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = nn.ModuleList([nn.Linear(3, 4, bias=False), nn.ReLU(), nn.Linear(4, 2)])
        self.register_buffer("scale", torch.tensor(0.5))
        self.register_buffer("cache", torch.ones(2), persistent=False)
        self.plain = torch.full((2,), 7.0)
        self.sizes = [1, 2]
        self.name = "block"
        self.holder = Holder(torch.ones(2))
        self.mode = Mode.FAST
    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        if self.mode == Mode.SLOW:
            x = x + 1
        return x * self.scale + self.cache + self.plain + self.holder.x

class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.block = Block()
        self.head = nn.Linear(2, 1)
        self.register_buffer("steps", torch.tensor([3, -4], dtype=torch.int32))
        self.register_buffer("mask", torch.tensor([True, False]))
        self.register_buffer("nothing", None)
        self.gain = nn.Parameter(torch.randn(1, dtype=torch.float64))
    def forward(self, x):
        y = self.head(self.block(x)) * self.gain.float()
        return y + self.steps.float().sum() + self.mask.float().sum()

m = Net()
torch.jit.save(torch.jit.script(m), pt)
keys = list(reference(pt, ref).keys())
eager = list(m.state_dict().keys())
assert "block.cache" in keys and "block.cache" not in eager
assert [k for k in keys if k != "block.cache"] == eager
"#;
    let Some(sd) = check_torchscript(
        body,
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
    let body = r#"
pt, ref = sys.argv[1:3]
torch.manual_seed(3)
m = nn.Sequential(
    nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 2))
m.train()
m(torch.randn(2, 3, 8, 8))
m.eval()
torch.jit.save(torch.jit.trace(m, torch.randn(1, 3, 8, 8)), pt)
reference(pt, ref)
"#;
    check_torchscript(
        body,
        &[
            "0.weight",
            "0.bias",
            "1.weight",
            "1.bias",
            "1.running_mean",
            "1.running_var",
            "1.num_batches_tracked",
            "4.weight",
            "4.bias",
        ],
    );
}

#[test]
fn half_precision_torchscript_state_matches_python() {
    let body = r#"
pt, ref = sys.argv[1:3]
torch.manual_seed(4)
m = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.LayerNorm(3))
m.train()
m(torch.randn(5, 4))
m = m.half()
torch.jit.save(torch.jit.script(m), pt)
sd = reference(pt, ref)
assert sd["0.weight"].dtype == torch.float16 and sd["1.num_batches_tracked"].dtype == torch.int64
"#;
    let Some(sd) = check_torchscript(
        body,
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
    let body = r#"
pt, ref = sys.argv[1:3]
torch.manual_seed(5)
class Tied(nn.Module):
    def __init__(self):
        super().__init__()
        self.shared = nn.Linear(2, 2)
        self.again = self.shared
        self.other = nn.Linear(2, 2)
        self.other.weight = self.shared.weight
    def forward(self, x):
        return self.shared(x) + self.again(x) + self.other(x)
torch.jit.save(torch.jit.script(Tied()), pt)
reference(pt, ref)
"#;
    let Some(sd) = check_torchscript(
        body,
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

#[test]
fn torchscript_reader_rejects_other_formats_and_tampered_archives() {
    let dir = common::tempdir();
    let (pt, state_dict, st) = (
        dir.path().join("scripted.pt"),
        dir.path().join("sd.pt"),
        dir.path().join("sd.safetensors"),
    );
    let script = r#"
import sys, torch
from safetensors.torch import save_file
pt, sd, st = sys.argv[1:4]
m = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.ReLU(), torch.nn.Linear(3, 1))
torch.jit.save(torch.jit.script(m), pt)
torch.save(m.state_dict(), sd)
save_file(m.state_dict(), st)
"#;
    let Some(_) = common::run_python(script, &[&pt, &state_dict, &st]) else {
        return;
    };
    assert_eq!(read_torchscript_state(&pt).expect("reads").len(), 4);
    let err = unwrap_err(read_torchscript_state(&state_dict));
    assert!(matches!(err, CheckpointError::WrongFormat { .. }), "{err}");
    assert_error(
        &err,
        &state_dict,
        "a torch.save checkpoint (read it with read_state_dict)",
    );
    assert_error(
        &unwrap_err(read_torchscript_state(&st)),
        &st,
        "expected a TorchScript archive written by torch.jit.save, but this is a safetensors file",
    );

    let sequential = b"c__torch__.torch.nn.modules.container\nSequential\n";
    let replace = |bytes: &[u8], by: &[u8]| -> Vec<u8> {
        let at = bytes
            .windows(sequential.len())
            .position(|w| w == sequential)
            .expect("the pickle names the Sequential class");
        [&bytes[..at], by, &bytes[at + sequential.len()..]].concat()
    };

    let evil = dir.path().join("evil.pt");
    rewrite_zip(&pt, &evil, |name, bytes| {
        Some(if name.ends_with("/data.pkl") {
            replace(&bytes, b"cos\nsystem\n")
        } else {
            bytes
        })
    });
    let err = unwrap_err(read_torchscript_state(&evil));
    assert!(
        matches!(&err, CheckpointError::ForbiddenGlobal { global, .. } if global == "os.system"),
        "{err}"
    );
    assert_error(&err, &evil, "`os.system`");

    let undefined = dir.path().join("undefined.pt");
    rewrite_zip(&pt, &undefined, |name, bytes| {
        Some(if name.ends_with("/data.pkl") {
            replace(
                &bytes,
                b"c__torch__.torch.nn.modules.container\nSequential2\n",
            )
        } else {
            bytes
        })
    });
    assert_error(
        &unwrap_err(read_torchscript_state(&undefined)),
        &undefined,
        "data.pkl uses the class __torch__.torch.nn.modules.container.Sequential2 but the archive's code/ does not define it",
    );

    let no_code = dir.path().join("no_linear_code.pt");
    rewrite_zip(&pt, &no_code, |name, bytes| {
        (!name.ends_with("/code/__torch__/torch/nn/modules/linear.py")).then_some(bytes)
    });
    assert_error(
        &unwrap_err(read_torchscript_state(&no_code)),
        &no_code,
        "does not define it",
    );

    let cut = dir.path().join("cut.pt");
    rewrite_zip(&pt, &cut, |name, bytes| {
        Some(if name.ends_with("/data.pkl") {
            bytes[..bytes.len() / 2].to_vec()
        } else {
            bytes
        })
    });
    let err = unwrap_err(read_torchscript_state(&cut));
    assert!(
        matches!(err, CheckpointError::MalformedPickle { .. }),
        "{err}"
    );
    assert_error(&err, &cut, "malformed data.pkl at byte");
}

#[test]
fn truncations_and_byte_flips_of_a_torchscript_file_never_panic() {
    let dir = common::tempdir();
    let pt = dir.path().join("tiny_script.pt");
    let script = r#"
import sys, torch
torch.manual_seed(6)
torch.jit.save(torch.jit.script(torch.nn.Linear(3, 2)), sys.argv[1])
"#;
    let Some(_) = common::run_python(script, &[&pt]) else {
        return;
    };
    let bytes = std::fs::read(&pt).expect("read");
    let read = |data| read_torchscript_state_from(Cursor::new(data), "fuzzed.pt");
    assert_eq!(read(bytes.clone()).expect("the whole file reads").len(), 2);
    assert_fuzzed_safely(&bytes, read);
}

/// Layers with unusual attributes: LSTM/GRU keep their weights a second time in a list of
/// tensors (`_flat_weights`), MultiheadAttention has None parameters and a Linear subclass,
/// TransformerEncoder deep-copies its layers into a ModuleList, a frozen module has no state.
#[test]
fn torchscript_standard_layers_state_matches_python() {
    let dir = common::tempdir();
    let script = r#"
import sys, os, json, torch, warnings
from torch import nn
from safetensors.torch import save_file
warnings.simplefilter("ignore")
out = sys.argv[1]
torch.manual_seed(7)
class Frozen(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(2, 2)
    def forward(self, x):
        return self.lin(x)
models = {
    "transformer": torch.jit.script(
        nn.TransformerEncoder(nn.TransformerEncoderLayer(8, 2, 16, batch_first=True), 2)),
    "lstm": torch.jit.script(nn.LSTM(4, 5, num_layers=2, bidirectional=True)),
    "gru": torch.jit.script(nn.GRU(3, 4, bias=False)),
    "mha": torch.jit.script(nn.MultiheadAttention(8, 2, add_bias_kv=True, kdim=6, vdim=6)),
    "misc": torch.jit.script(nn.Sequential(
        nn.Embedding(10, 4), nn.GroupNorm(2, 4), nn.PReLU(), nn.ConvTranspose1d(4, 2, 3),
        nn.InstanceNorm1d(2, affine=True, track_running_stats=True))),
    "frozen": torch.jit.freeze(torch.jit.script(Frozen().eval())),
}
keys = {}
for name, m in models.items():
    pt = os.path.join(out, name + ".pt")
    torch.jit.save(m, pt)
    sd = torch.jit.load(pt).state_dict()
    save_file({k: v.detach().clone().contiguous() for k, v in sd.items()},
              os.path.join(out, name + ".safetensors"))
    keys[name] = list(sd.keys())
print(json.dumps(keys))
"#;
    let Some(out) = common::run_python(script, &[dir.path()]) else {
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
