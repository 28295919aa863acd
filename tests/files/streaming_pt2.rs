//! The streaming path on `torch.export` archives (`.pt2`, PyTorch's own, from
//! tests/py/streaming_pt2.py) against the in-memory path: the same bytes out for every method it
//! takes, f32, f16 and bf16; outputs that `torch.export.load` reads and runs; tied weights left
//! to the in-memory path with their reason; `--state-out` on a tied `.pt2`.

use crate::common;

use common::{run_python, streamed_as_in_memory, Cli};
use std::path::{Path, PathBuf};

const SCRIPT: &str = include_str!("../py/streaming_pt2.py");

/// PyTorch's archives, made in `dir`; `None` where no Python torch is configured.
fn inputs(dir: &Path) -> Option<PathBuf> {
    run_python(SCRIPT, &[Path::new("make"), dir])?;
    Some(dir.to_path_buf())
}

const METHODS: [&[&str]; 6] = [
    &["--method", "l1-unstructured", "--amount", "0.5"],
    &["--method", "l1-unstructured", "--amount", "0.3", "--global"],
    &[
        "--method",
        "random-unstructured",
        "--amount",
        "0.3",
        "--seed",
        "3",
    ],
    &[
        "--method",
        "ln-structured",
        "--amount",
        "0.25",
        "--n",
        "2",
        "--dim",
        "0",
    ],
    &[
        "--method",
        "random-structured",
        "--amount",
        "0.25",
        "--dim",
        "1",
        "--seed",
        "4",
    ],
    &["--method", "nm", "--pattern", "2:4"],
];

#[test]
fn streamed_and_in_memory_runs_write_identical_pt2_bytes_that_pytorch_runs() {
    let dir = common::tempdir();
    let Some(folder) = inputs(dir.path()) else {
        return;
    };
    for model in ["cnn", "mlp_half", "mlp_bf16"] {
        let input = folder.join(format!("{model}.pt2"));
        for flags in METHODS {
            let work = common::tempdir();
            streamed_as_in_memory(&input, flags, work.path(), model);
            let out = run_python(
                SCRIPT,
                &[Path::new("check"), &input, &work.path().join("chosen.pt2")],
            )
            .expect("Python made the inputs");
            let zeros: u64 = out
                .trim()
                .strip_prefix("OK ")
                .and_then(|z| z.parse().ok())
                .unwrap_or_else(|| panic!("{model} {flags:?}: {out}"));
            assert!(zeros > 0, "{model} {flags:?}: nothing pruned");
        }
    }
}

#[test]
fn tied_weights_in_a_pt2_are_pruned_in_memory_saying_why() {
    let dir = common::tempdir();
    let Some(folder) = inputs(dir.path()) else {
        return;
    };
    let out = dir.path().join("out.pt2");
    let said = Cli::prune(&folder.join("tied.pt2"), &out)
        .args(["--method", "l1-unstructured", "--amount", "0.5"])
        .ok();
    assert!(
        said.contains("in memory: 'emb.weight' and 'out.weight' are one tensor (tied weights)"),
        "{said}"
    );
    let check = run_python(
        SCRIPT,
        &[Path::new("check"), &folder.join("tied.pt2"), &out],
    );
    assert!(check.is_some_and(|c| c.starts_with("OK ")));
}

#[test]
fn a_pt2_pruned_with_state_out_writes_the_reparametrized_state_of_its_weights() {
    let dir = common::tempdir();
    let Some(folder) = inputs(dir.path()) else {
        return;
    };
    let (out, state) = (
        dir.path().join("out.pt2"),
        dir.path().join("state.safetensors"),
    );
    Cli::prune(&folder.join("tied.pt2"), &out)
        .args(["--method", "l1-unstructured", "--amount", "0.5"])
        .arg("--state-out")
        .arg(&state)
        .ok();
    let state = tch_prune::checkpoint::read_safetensors(&state).unwrap();
    let get = |n: &str| &state.iter().find(|(m, _)| m == n).unwrap().1;
    let (_, pruned) = tch_prune::checkpoint::Pt2Archive::read(&out).unwrap();
    // The tie is pruned once, under its first name; the alias holds the `_orig` values, as the
    // other module of a tied PyTorch model holds the Parameter that became `_orig`.
    let weight = &pruned.iter().find(|(n, _)| n == "emb.weight").unwrap().1;
    assert!(weight.equal(&(get("emb.weight_orig") * get("emb.weight_mask"))));
    assert!(get("out.weight").equal(get("emb.weight_orig")));
    let alias = &pruned.iter().find(|(n, _)| n == "out.weight").unwrap().1;
    assert!(alias.equal(weight), "the tie is kept in the archive");
}
