//! The streaming path on `torch.save` zips (PyTorch's own files, from tests/py/streaming_torch_save.py)
//! against the in-memory path: the same bytes out for every method it takes, f32, f16 and bf16;
//! outputs that PyTorch loads with the expected zeros; the inputs it leaves to the in-memory
//! path, each with its reason; all-or-nothing output; anonymous memory bounded.

use crate::common;

use common::{
    assert_streamed_memory_under, both_paths, folder_entries, kill_when, large_headers, run_python,
    stream_runs, streamed_as_in_memory, Cli,
};
use std::io::Write;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};
use tch_prune::checkpoint::{write_torch_zip_streamed, CheckpointError};

const SCRIPT: &str = include_str!("../py/streaming_torch_save.py");

/// PyTorch's files, made once per test in `dir`; `None` where no Python torch is configured
/// (the test is then skipped, saying so, or fails under TCH_PRUNE_REQUIRE_PYTHON).
fn inputs(dir: &Path) -> Option<PathBuf> {
    run_python(SCRIPT, &[Path::new("make"), dir])?;
    Some(dir.to_path_buf())
}

#[test]
fn streamed_and_in_memory_runs_write_identical_bytes() {
    let dir = common::tempdir();
    let Some(folder) = inputs(dir.path()) else {
        return;
    };
    let runs = stream_runs(dir.path());
    let runs: Vec<Vec<&str>> = runs
        .iter()
        .map(|r| r.iter().map(String::as_str).collect())
        .collect();
    for dtype in ["float32", "float16", "bfloat16"] {
        let input = folder.join(format!("model-{dtype}.pt"));
        for run in &runs {
            streamed_as_in_memory(&input, run, dir.path(), dtype);
        }
    }
    // A training checkpoint's state dict streams too, written as the in-memory path writes it.
    let input = folder.join("nested.pt");
    let (streamed, in_memory, said) = both_paths(&input, &runs[0], dir.path());
    assert!(said.contains("streamed from a memory map"), "{said}");
    assert!(streamed == in_memory, "nested.pt: different bytes");
}

/// Python's rounding of `amount * n` (half to even), as PyTorch counts a fraction.
fn count(amount: f64, n: i64) -> i64 {
    (amount * n as f64).round_ties_even() as i64
}

#[test]
fn the_streamed_output_loads_in_pytorch_with_the_expected_zeros() {
    let dir = common::tempdir();
    let Some(folder) = inputs(dir.path()) else {
        return;
    };
    for dtype in ["float32", "float16", "bfloat16"] {
        let input = folder.join(format!("model-{dtype}.pt"));
        let out = dir.path().join(format!("pruned-{dtype}.pt"));
        let said = Cli::prune(&input, &out)
            .flags("--method l1-unstructured --amount 0.5 --global")
            .ok();
        assert!(said.contains("streamed from a memory map"), "{said}");
        let zeros = |file: &Path| -> Vec<(String, String, i64, i64)> {
            let listed = run_python(SCRIPT, &[Path::new("zeros"), file]).expect("python ran");
            listed
                .lines()
                .map(|l| {
                    let f: Vec<&str> = l.split(' ').collect();
                    let n = |i: usize| f[i].parse::<i64>().expect("a count");
                    (f[0].to_string(), f[1].to_string(), n(2), n(3))
                })
                .collect()
        };
        let before = zeros(&input);
        let after = zeros(&out);
        assert_eq!(before.len(), after.len());
        // The CLI's default selection: every floating-point weight.
        let pruned = |name: &str, dtype: &str| {
            ["float32", "float16", "bfloat16"].contains(&dtype) && name.ends_with(".weight")
        };
        let mut numel = 0;
        let mut zeros_after = 0;
        for (b, a) in before.iter().zip(&after) {
            assert_eq!(
                (&b.0, &b.1, b.2),
                (&a.0, &a.1, a.2),
                "names, dtypes, sizes kept"
            );
            if pruned(&a.0, &a.1) {
                numel += a.2;
                zeros_after += a.3;
            } else {
                assert_eq!(b.3, a.3, "{}: not pruned, unchanged", a.0);
            }
        }
        // The input's own zeros are among the smallest magnitudes, so the global half is exact.
        assert_eq!(zeros_after, count(0.5, numel), "{dtype}");
    }
}

#[test]
fn what_the_streaming_path_cannot_take_falls_back_and_says_why() {
    let dir = common::tempdir();
    let Some(folder) = inputs(dir.path()) else {
        return;
    };
    let flags = ["--method", "l1-unstructured", "--amount", "0.5", "--global"];
    for (file, reason) in [
        ("tied.pt", "(tied weights)"),
        ("strided.pt", "is a strided view of its storage"),
        ("views.pt", "are views of one storage"),
        ("pruned.pt", "saved pruned"),
        ("compressed.pt", "is compressed"),
    ] {
        let (fallback, in_memory, said) = both_paths(&folder.join(file), &flags, dir.path());
        assert!(
            said.contains("(in memory: ") && said.contains(reason),
            "{file}: {said}"
        );
        assert!(fallback == in_memory, "{file}: different bytes");
    }
}

#[test]
fn a_failing_write_leaves_no_output_and_no_temporary_file() {
    let dir = common::tempdir();
    let Some(folder) = inputs(dir.path()) else {
        return;
    };
    let outputs = dir.path().join("outputs");
    std::fs::create_dir(&outputs).expect("folder");
    let out = outputs.join("pruned.pt");
    // 30 rows of "embed.weight" (50) are pruned and written; "layers.0.attn.weight" has 24:
    // the run fails with part of the file written.
    let failed = Cli::prune(&folder.join("model-float32.pt"), &out)
        .flags("--method ln-structured --amount 30 --n 1 --dim 0")
        .run();
    assert!(!failed.status.success());
    let stderr = String::from_utf8_lossy(&failed.stderr);
    assert!(stderr.contains("layers.0.attn.weight"), "{stderr}");
    assert_eq!(folder_entries(&outputs), Vec::<String>::new());
}

/// Writes a `torch.save` file of `tensors` random f32 tensors of `numel` values each, one
/// tensor in memory at a time.
fn write_large(path: &Path, tensors: usize, numel: usize) {
    let headers = large_headers("", tensors, numel);
    let _generator = common::generator();
    tch::manual_seed(5);
    write_torch_zip_streamed(path, &headers, |i, out: &mut dyn Write| {
        let t = Tensor::randn(headers[i].shape.as_slice(), (Kind::Float, Device::Cpu));
        let values: Vec<f32> = Vec::try_from(t.flatten(0, -1)).expect("f32 values");
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        out.write_all(&bytes).map_err(|e| CheckpointError::Io {
            path: PathBuf::new(),
            action: "write",
            error: e,
        })
    })
    .expect("write large model");
}

#[test]
fn anonymous_memory_stays_under_budget_for_a_model_eight_times_larger() {
    let (model_mb, budget_mb) = (256usize, 32u64);
    let dir = common::tempdir();
    let large = dir.path().join("large.pt");
    write_large(&large, 16, model_mb * (1 << 20) / 4 / 16);
    let small = dir.path().join("small.pt");
    write_large(&small, 2, 1024);
    assert_streamed_memory_under(&small, &large, &dir.path().join("out.pt"), budget_mb);
}

/// The size of the file `pid` has open under `folder` (its temporary output), if any.
fn temporary_output_size(pid: u32, folder: &Path) -> Option<u64> {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?;
    fds.filter_map(|fd| fd.ok())
        .filter(|fd| std::fs::read_link(fd.path()).is_ok_and(|target| target.starts_with(folder)))
        .find_map(|fd| std::fs::metadata(fd.path()).ok().map(|m| m.len()))
}

#[test]
fn a_killed_write_leaves_no_output_and_no_temporary_file() {
    let dir = common::tempdir();
    let input = dir.path().join("large.pt");
    write_large(&input, 8, 4 << 20);
    let outputs = dir.path().join("outputs");
    std::fs::create_dir(&outputs).expect("folder");
    let out = outputs.join("pruned.pt");
    // SIGKILL once its temporary file holds part of the output: mid-way through the write.
    let run = Cli::prune(&input, &out).flags("--method l1-unstructured --amount 0.5 --global");
    let killed_mid_way = kill_when(&run, |pid| {
        temporary_output_size(pid, &outputs).is_some_and(|len| len > 1 << 20)
    });
    assert!(
        killed_mid_way,
        "the run ended before its output was half written: nothing was tested"
    );
    assert!(!out.exists(), "a killed run left a partial output");
    // Nothing at all: an unnamed temporary file goes with its process, a named one (on
    // filesystems without O_TMPFILE) is removed by the next run.
    let leftovers = folder_entries(&outputs);
    if !leftovers.is_empty() {
        let again = Cli::prune(&input, &out).flags("--method identity").ok();
        assert!(again.contains("streamed"), "{again}");
        assert_eq!(folder_entries(&outputs), vec!["pruned.pt".to_string()]);
    }
}
