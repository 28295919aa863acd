//! Shared by the integration tests: the real PyTorch to compare against, and small helpers.
#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use tch::Tensor;

/// The Python that has torch 2.13 (set by `make test` through scripts/torch-env.sh).
///
/// When it is absent, a test that compares with PyTorch is skipped, and the first skip in a
/// test binary prints one line on the terminal; with `TCH_PRUNE_REQUIRE_PYTHON=1` (set by the
/// Makefile and CI) it fails instead, so that a suite cannot pass having compared nothing.
pub fn python() -> Option<PathBuf> {
    let path = std::env::var_os("TCH_PRUNE_PYTHON").map(PathBuf::from);
    let why = match &path {
        Some(path) if path.exists() => return path.clone().into(),
        Some(path) => format!("TCH_PRUNE_PYTHON={} does not exist", path.display()),
        None => "TCH_PRUNE_PYTHON is not set".to_string(),
    };
    if python_required() {
        panic!(
            "{why}, and TCH_PRUNE_REQUIRE_PYTHON is set: this test compares with PyTorch \
             (run it through `make test`, or point TCH_PRUNE_PYTHON at a Python with torch 2.13)"
        );
    }
    static SAID: std::sync::Once = std::sync::Once::new();
    SAID.call_once(|| {
        // Straight to stderr: libtest captures `eprintln!` of passing tests, and a skip must show.
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED: {why}: the comparisons with PyTorch in {} are skipped \
             (`make test` runs them; TCH_PRUNE_REQUIRE_PYTHON=1 makes this an error)",
            std::env::current_exe()
                .ok()
                .and_then(|exe| exe.file_name().map(|n| n.to_string_lossy().into_owned()))
                .unwrap_or_default()
        );
    });
    None
}

/// Whether `TCH_PRUNE_REQUIRE_PYTHON` asks that every comparison with PyTorch runs.
pub fn python_required() -> bool {
    std::env::var("TCH_PRUNE_REQUIRE_PYTHON").is_ok_and(|v| !v.is_empty() && v != "0")
}

/// Runs a Python script with torch available; panics with its stderr if it fails.
/// Returns None when no Python torch is configured (see [`python`]).
pub fn run_python(script: &str, args: &[&Path]) -> Option<String> {
    run_python_env(script, args, &[])
}

/// [`run_python`] with no GPU visible to PyTorch (`CUDA_VISIBLE_DEVICES` empty), as on a
/// machine without one, whatever this machine has.
pub fn run_python_without_gpu(script: &str, args: &[&Path]) -> Option<String> {
    run_python_env(script, args, &[("CUDA_VISIBLE_DEVICES", "")])
}

/// [`run_python`] with extra environment variables.
pub fn run_python_env(script: &str, args: &[&Path], env: &[(&str, &str)]) -> Option<String> {
    let python = python()?;
    // From a file, not `-c`: TorchScript's compiler reads class sources through `inspect`.
    let mut file = tempfile::Builder::new()
        .suffix(".py")
        .tempfile()
        .expect("temporary script");
    std::io::Write::write_all(&mut file, script.as_bytes()).expect("write script");
    let out = Command::new(python)
        .arg(file.path())
        .args(args)
        .env("OMP_NUM_THREADS", "1")
        .envs(env.iter().copied())
        .output()
        .expect("failed to start python");
    assert!(
        out.status.success(),
        "python failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Exact equality of two float tensors' bit patterns (the signs of zeros and NaNs included).
pub fn assert_bits(a: &Tensor, b: &Tensor, what: &str) {
    assert_eq!(a.kind(), b.kind(), "{what}: dtypes differ");
    assert_eq!(a.size(), b.size(), "{what}: shapes differ");
    let int = match a.kind() {
        tch::Kind::Double => tch::Kind::Int64,
        tch::Kind::Float => tch::Kind::Int,
        _ => tch::Kind::Int16,
    };
    let (a, b) = (a.contiguous(), b.contiguous());
    assert!(
        a.view_dtype(int).equal(&b.view_dtype(int)),
        "{what}: bits differ\nleft:  {a}\nright: {b}"
    );
}

/// Bitwise equality of two tensors of the same dtype, -0.0 counted as 0.0 (PyTorch keeps the
/// sign of pruned negative values, and so do we, but comparisons should not depend on it).
pub fn assert_same(a: &Tensor, b: &Tensor, what: &str) {
    assert_eq!(a.size(), b.size(), "{what}: shapes differ");
    assert_eq!(a.kind(), b.kind(), "{what}: dtypes differ");
    let a = a.to_device(tch::Device::Cpu);
    let b = b.to_device(tch::Device::Cpu);
    let a = if a.is_floating_point() { &a + 0.0 } else { a };
    let b = if b.is_floating_point() { &b + 0.0 } else { b };
    let equal = a
        .to_kind(tch::Kind::Double)
        .eq_tensor(&b.to_kind(tch::Kind::Double));
    let nan_both = if a.is_floating_point() {
        a.isnan().logical_and(&b.isnan())
    } else {
        a.zeros_like().to_kind(tch::Kind::Bool)
    };
    let ok = equal.logical_or(&nan_both).all().int64_value(&[]) == 1;
    assert!(ok, "{what}: values differ\nleft:  {a}\nright: {b}");
}

/// A fresh temporary folder for a test's files.
pub fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().expect("temporary folder")
}

/// libtorch's random generator is global and a binary's tests run in parallel: a test that
/// seeds it, or draws from it, holds this for its whole run, so that a seed gives the draws it
/// promises whatever else is running.
pub fn generator() -> std::sync::MutexGuard<'static, ()> {
    static GENERATOR: std::sync::Mutex<()> = std::sync::Mutex::new(());
    GENERATOR.lock().unwrap_or_else(|e| e.into_inner())
}

pub mod cuda;
pub mod moves;
pub mod parity;

/// Runs this crate's `tch-prune` binary with `args`.
pub fn cli(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tch-prune"))
        .args(args)
        .output()
        .expect("failed to start tch-prune")
}

/// The arguments of `tch-prune prune INPUT -o OUTPUT`, then `flags` split at spaces, then
/// `values` as they are (names and paths).
pub fn prune_args<'a>(
    input: &'a Path,
    output: &'a Path,
    flags: &'a str,
    values: &[&'a str],
) -> Vec<&'a str> {
    let path = |p: &'a Path| p.to_str().expect("test paths are UTF-8");
    let mut args = vec!["prune", path(input), "-o", path(output)];
    args.extend(flags.split_whitespace());
    args.extend_from_slice(values);
    args
}

/// [`cli`], which must succeed; its standard output.
pub fn ok(args: &[&str]) -> String {
    let out = cli(args);
    assert!(
        out.status.success(),
        "tch-prune {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
