//! Shared by the tests of the file-format layer (tests/files/): running the Python
//! reference scripts of tests/py/formats/, the committed fixtures of tests/fixtures/formats/,
//! and comparisons on raw bytes (so NaN payloads, -0.0 and int64 beyond 2^53 count).
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use tch::{Device, Kind, Tensor};
use tch_prune::checkpoint::CheckpointError;

/// Runs `tests/py/formats/<script>` (in place, so that it can import its neighbours) with
/// `args`; panics with its stderr if it fails. Returns None (and says why) when no Python torch
/// is configured, as `common::run_python` does.
pub fn run_py(script: &str, args: &[&Path]) -> Option<String> {
    let Some(python) = crate::common::python() else {
        eprintln!("skipped: TCH_PRUNE_PYTHON is not set (run the tests through `make test`)");
        return None;
    };
    let file = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/py/formats")
        .join(script);
    let out = crate::common::output_within(
        Command::new(python)
            .arg(&file)
            .args(args)
            .env("OMP_NUM_THREADS", "1"),
    );
    assert!(
        out.status.success(),
        "{script} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A committed fixture (see tests/py/make_fixtures.py).
pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/formats")
        .join(name)
}

/// The keys PyTorch gives for the fixture `name`, from tests/fixtures/formats/expected.json.
pub fn fixture_keys(name: &str) -> Vec<String> {
    let text = std::fs::read_to_string(fixture("expected.json")).expect("expected.json");
    let mut all: HashMap<String, Vec<String>> = serde_json::from_str(&text).expect("JSON");
    all.remove(name)
        .unwrap_or_else(|| panic!("expected.json has no keys for {name}"))
}

/// A tensor's dtype, shape and raw bytes (contiguous, on the CPU).
pub fn bits(t: &Tensor) -> (Kind, Vec<i64>, Vec<u8>) {
    let t = t.to_device(Device::Cpu).contiguous();
    let numel = t.numel();
    let mut bytes = vec![0u8; numel * t.kind().elt_size_in_bytes()];
    if numel > 0 {
        t.copy_data_u8(&mut bytes, numel);
    }
    (t.kind(), t.size(), bytes)
}

pub fn assert_bits(a: &Tensor, b: &Tensor, what: &str) {
    let (ka, sa, ba) = bits(a);
    let (kb, sb, bb) = bits(b);
    assert_eq!((ka, &sa), (kb, &sb), "{what}: dtype or shape differ");
    assert!(ba == bb, "{what}: bytes differ\nleft:  {a}\nright: {b}");
}

/// Reads a safetensors file with tch's own reader: an implementation independent of ours.
pub fn reference(path: &Path) -> HashMap<String, Tensor> {
    Tensor::read_safetensors(path)
        .expect("tch reads the reference file")
        .into_iter()
        .collect()
}

/// Checks names (in order) and values of a state dict against Python's key list and a
/// reference safetensors file.
pub fn assert_state_dict(got: &[(String, Tensor)], keys: &[String], reference_file: &Path) {
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

/// The first JSON list printed by a script.
pub fn keys_of(stdout: &str) -> Vec<String> {
    let line = stdout
        .lines()
        .find(|l| l.starts_with('['))
        .expect("a JSON key list");
    serde_json::from_str(line).expect("JSON key list")
}

/// Asserts a one-line message that names the file and contains `needle`.
pub fn assert_error(err: &CheckpointError, file: &Path, needle: &str) {
    let message = err.to_string();
    assert!(!message.contains('\n'), "not one line: {message}");
    let name = file.file_name().expect("a file name").to_string_lossy();
    assert!(message.contains(&*name), "does not name {name}: {message}");
    assert!(
        message.contains(needle),
        "does not say '{needle}': {message}"
    );
}

pub fn unwrap_err<T: std::fmt::Debug>(result: Result<T, CheckpointError>) -> CheckpointError {
    match result {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(e) => e,
    }
}

/// Copies a zip entry by entry, letting `edit` replace (Some) or drop (None of the outer
/// option) entries.
pub fn rewrite_zip(src: &Path, dst: &Path, edit: impl Fn(&str, Vec<u8>) -> Option<Vec<u8>>) {
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

/// An edit of one zip entry (the first whose name ends with `suffix`), for [`rewrite_zip`]:
/// `None` drops the entry.
pub fn edit_entry(
    suffix: &'static str,
    edit: impl Fn(Vec<u8>) -> Option<Vec<u8>>,
) -> impl Fn(&str, Vec<u8>) -> Option<Vec<u8>> {
    move |name, bytes| {
        if name.ends_with(suffix) {
            edit(bytes)
        } else {
            Some(bytes)
        }
    }
}

/// Every strict prefix of `bytes` is refused, and each single byte flip is refused or read,
/// never a panic, each error one line naming the file. Some flips, in bytes no reader checks
/// (timestamps, padding), still read: proof that the loop reached the whole file, while flips
/// in the pickle or the storages are caught by the CRC.
pub fn assert_fuzzed_safely(
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

/// The expected contents printed by tests/py/formats/every_dtype.py: per tensor its dtype,
/// shape and raw bytes.
pub struct Expected {
    pub kind: Kind,
    pub shape: Vec<i64>,
    pub bytes: Vec<u8>,
}

pub fn parse_expected(stdout: &str) -> Vec<(String, Expected)> {
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

pub fn assert_matches_expected(
    got: &[(String, Tensor)],
    expected: &[(String, Expected)],
    what: &str,
) {
    let got: HashMap<&str, &Tensor> = got.iter().map(|(k, t)| (k.as_str(), t)).collect();
    assert_eq!(got.len(), expected.len(), "{what}: tensor count");
    for (name, e) in expected {
        let (kind, shape, bytes) = bits(got[name.as_str()]);
        assert_eq!((kind, &shape), (e.kind, &e.shape), "{what} {name}");
        assert!(bytes == e.bytes, "{what} {name}: bytes differ");
    }
}
