//! `tch-prune prune --method wanda|sparsegpt --calibration FILE` on TorchScript models against
//! the references (tests/py/calibrated.py: locuslab/wanda and IST-DASLab/sparsegpt's code on
//! the same GPT-2- and LLaMA-shaped stacks, the same calibration inputs), f32 and f64, 50 % and
//! 2:4, block by block and one-shot: the statistics come from the TorchScript path (a copy of
//! the inlined forward that returns the linear layers' inputs). The same criteria as
//! tests/pruning/calibrated.rs. And bad calibration inputs: one clear error, nothing written.

use crate::common::{self, Cli};

use std::collections::HashMap;
use std::path::Path;
use tch::{Kind, Tensor};

fn read(path: &Path) -> HashMap<String, Tensor> {
    Tensor::read_safetensors(path)
        .unwrap()
        .into_iter()
        .collect()
}

fn weights(path: &Path) -> HashMap<String, Tensor> {
    let module = tch::CModule::load(path).unwrap();
    module.named_parameters().unwrap().into_iter().collect()
}

fn relative(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).norm().double_value(&[]) / b.norm().double_value(&[])
}

/// The reference's files for one architecture and dtype, in `dir`; false without Python.
fn reference(dir: &Path, arch: &str, dtype: &str) -> bool {
    // As many threads as the command line's libtorch: BLAS sums in another order with another
    // thread count, and SparseGPT's solve amplifies that rounding.
    let threads = tch::get_num_threads().to_string();
    common::run_python_env(
        include_str!("../py/calibrated.py"),
        &[dir, Path::new(arch), Path::new(dtype)],
        &[("OMP_NUM_THREADS", &threads)],
    )
    .is_some()
}

fn check(arch: &str, dtype: &str, kind: Kind) {
    let dir = common::tempdir();
    if !reference(dir.path(), arch, dtype) {
        return;
    }
    let expected = read(&dir.path().join("results.safetensors"));
    let model = dir.path().join("model.pt");
    let calibration = dir.path().join("calibration.safetensors");
    for method in ["wanda", "sparsegpt"] {
        for (label, flag) in [("0.5", "--amount 0.5"), ("2:4", "--pattern 2:4")] {
            for order in ["sequential", "oneshot"] {
                let case = format!("{method}/{label}/{order}");
                let out = dir
                    .path()
                    .join(format!("{method}-{order}-{}.pt", label.replace(':', "-")));
                // One sample a forward, as the reference scripts run them.
                let cli = Cli::prune(&model, &out)
                    .args(["--method", method, "--calibration"])
                    .arg(&calibration)
                    .flags(&format!("{flag} --batch-size 1"));
                let cli = if order == "sequential" {
                    cli.arg("--sequential")
                } else {
                    cli
                };
                let summary = cli.ok();
                assert!(
                    summary.contains("pruned 8 linear layers")
                        || summary.contains("pruned 14 linear layers"),
                    "{summary}"
                );
                for (name, got) in weights(&out) {
                    let Some(reference) = expected.get(&format!("{case}/{name}")) else {
                        continue;
                    };
                    let what = format!("{arch} {dtype} {case} {name}");
                    assert_eq!(got.kind(), kind, "{what}");
                    if method == "wanda" {
                        common::assert_same(&got, reference, &format!("{what}: weight"));
                        continue;
                    }
                    let agree = got
                        .ne(0)
                        .eq_tensor(&reference.ne(0))
                        .to_kind(Kind::Double)
                        .mean(None::<Kind>)
                        .double_value(&[]);
                    let error = relative(&got, reference);
                    if order == "sequential" && !name.starts_with("blocks.0.") {
                        assert!(agree >= 0.999, "{what}: masks agree on {agree}");
                        assert!(error <= 1e-3, "{what}: weights differ by {error:e}");
                    } else {
                        assert_eq!(agree, 1.0, "{what}: masks differ");
                        assert!(error <= 1e-5, "{what}: weights differ by {error:e}");
                    }
                }
            }
        }
    }
}

#[test]
fn gpt2_f32_matches_the_references() {
    check("gpt2", "float32", Kind::Float);
}

#[test]
fn gpt2_f64_matches_the_references() {
    check("gpt2", "float64", Kind::Double);
}

#[test]
fn llama_f32_matches_the_references() {
    check("llama", "float32", Kind::Float);
}

#[test]
fn llama_f64_matches_the_references() {
    check("llama", "float64", Kind::Double);
}

/// Each bad calibration file is refused with one line that says what is wrong, exit 1, and no
/// output file.
#[test]
fn bad_calibration_inputs_are_one_clear_error_and_nothing_written() {
    let dir = common::tempdir();
    if !reference(dir.path(), "gpt2", "float32") {
        return;
    }
    let model = dir.path().join("model.pt");
    let good = read(&dir.path().join("calibration.safetensors"))["input"].shallow_clone();
    let nan = good.copy();
    let _ = nan.get(0).get(0).get(0).fill_(f64::NAN);
    // (label, the file's tensors, what the error says)
    type Case<'a> = (&'a str, Vec<(&'a str, Tensor)>, &'a str);
    let cases: Vec<Case> = vec![
        (
            "wrong-shape",
            vec![("input", good.narrow(2, 0, 10).contiguous())],
            "forward failed",
        ),
        (
            "wrong-dtype",
            vec![("input", good.to_kind(Kind::Int64))],
            "forward failed",
        ),
        (
            "empty",
            vec![("input", good.narrow(0, 0, 0).contiguous())],
            "at least one",
        ),
        ("nan", vec![("input", nan)], "NaN"),
        (
            "misnamed",
            vec![("x", good.shallow_clone())],
            "named 'input'",
        ),
        (
            "uneven",
            vec![
                ("input.0", good.shallow_clone()),
                ("input.1", good.narrow(0, 0, 3)),
            ],
            "samples",
        ),
        (
            "too-many",
            vec![
                ("input.0", good.shallow_clone()),
                ("input.1", good.shallow_clone()),
            ],
            "the model's forward takes 1 input (forward(Tensor x)) and the calibration file holds 2",
        ),
    ];
    for (label, tensors, says) in cases {
        let path = dir.path().join(format!("{label}.safetensors"));
        Tensor::write_safetensors(&tensors, &path).unwrap();
        let out = dir.path().join(format!("{label}.pt"));
        let run = Cli::prune(&model, &out)
            .flags("--method sparsegpt --amount 0.5 --calibration")
            .arg(&path)
            .run();
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert_eq!(run.status.code(), Some(1), "{label}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{label}: {stderr}");
        assert!(stderr.contains(says), "{label}: {stderr}");
        assert!(!out.exists(), "{label}: an output was written");
    }
    // Options that do not fit: refused before anything is read.
    let out = dir.path().join("x.pt");
    let calibration = dir.path().join("calibration.safetensors");
    for flags in [
        "--method wanda --amount 1",
        "--method wanda",
        "--method sparsegpt --amount 0.5 --pattern 2:4",
        "--method l1-unstructured --amount 0.5",
    ] {
        let run = Cli::prune(&model, &out)
            .flags(flags)
            .arg("--calibration")
            .arg(&calibration)
            .run();
        assert_eq!(
            run.status.code(),
            Some(1),
            "{flags}: {}",
            String::from_utf8_lossy(&run.stderr)
        );
        assert!(!out.exists());
    }
    // The forward passes run under the memory limit, as shrink's runs.
    let run = Cli::prune(&model, &out)
        .flags("--method wanda --amount 0.5 --memory-limit 1M --calibration")
        .arg(&calibration)
        .run();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("memory limit"), "{stderr}");
    assert!(!out.exists());
    // A state dict has no forward to run.
    let state = dir.path().join("model.safetensors");
    let run = Cli::prune(&state, &out)
        .flags("--method wanda --amount 0.5 --calibration")
        .arg(&calibration)
        .run();
    assert!(String::from_utf8_lossy(&run.stderr).contains("TorchScript"));
    assert!(!out.exists());
}
