//! The `tch-prune` command line on real files written by PyTorch, checked by PyTorch: each run's
//! output must equal `torch.nn.utils.prune` applied to the same model (tests/py/reference.py).

use crate::common;

use common::{cli, ok, Cli};

use serde_json::{json, Value};
use std::path::{Path, PathBuf};

const REFERENCE: &str = include_str!("../py/reference.py");

/// The model files PyTorch wrote, made once per test binary.
fn fixtures() -> Option<&'static Path> {
    static DIR: std::sync::OnceLock<Option<tempfile::TempDir>> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let dir = common::tempdir();
        common::run_python(REFERENCE, &[Path::new("fixtures"), dir.path()])?;
        Some(dir)
    })
    .as_ref()
    .map(|d| d.path())
}

/// One run of `tch-prune prune` on a fixture, which PyTorch then checks: the output must equal
/// `steps` applied by `torch.nn.utils.prune` to the same model.
struct Case {
    model: &'static str,
    format: &'static str,
    cli_flags: Vec<String>,
    seed: Option<i64>,
    state_out: bool,
}

/// `model` (`mlp`, `cnn` or `nested`) in `format` (`ts`: TorchScript, `sd`: `torch.save`, `st`:
/// safetensors), pruned with `flags` (split at spaces).
fn prune(model: &'static str, format: &'static str, flags: &str) -> Case {
    Case {
        model,
        format,
        cli_flags: flags.split_whitespace().map(str::to_string).collect(),
        seed: None,
        state_out: false,
    }
}

impl Case {
    /// One more argument, as it is.
    fn arg(mut self, arg: &str) -> Case {
        self.cli_flags.push(arg.to_string());
        self
    }

    /// `--seed SEED`, which PyTorch seeds its generator with too.
    fn seed(mut self, seed: i64) -> Case {
        self.seed = Some(seed);
        self
    }

    /// `--state-out`, whose file PyTorch loads strictly into the reparametrized model.
    fn state_out(mut self) -> Case {
        self.state_out = true;
        self
    }

    /// Runs the CLI and has PyTorch check its output against `steps`.
    fn check(self, steps: Value) {
        let Some(dir) = fixtures() else { return };
        let (model, format) = (self.model, self.format);
        let ext = match format {
            "ts" => "ts.pt",
            "sd" => "sd.pt",
            _ => "safetensors",
        };
        let input = dir.join(format!("{model}.{ext}"));
        let work = common::tempdir();
        let output = work.path().join(format!("out.{ext}"));
        let state = work.path().join("state.safetensors");
        let cli = Cli::prune(&input, &output)
            .args(&self.cli_flags)
            .option("--seed", self.seed)
            .option("--state-out", self.state_out.then(|| state.display()));
        cli.ok();
        let spec = json!({
            "model": model, "format": format, "input": input, "output": output,
            "steps": steps, "seed": self.seed, "order": common::tensor_order(&input),
            "state_out": if self.state_out { Some(state.clone()) } else { None },
        });
        let spec_path = work.path().join("spec.json");
        std::fs::write(&spec_path, spec.to_string()).unwrap();
        let out = common::run_python(REFERENCE, &[Path::new("check"), &spec_path]).unwrap();
        assert_eq!(out.trim(), "OK", "{model}.{ext} {cli}");
    }
}

fn flags_step(method: &str, amount: Value) -> Value {
    json!({"method": method, "amount": amount})
}

#[test]
fn l1_unstructured_on_every_format_and_architecture() {
    for model in ["mlp", "cnn", "nested"] {
        for format in ["ts", "sd", "st"] {
            prune(model, format, "--method l1-unstructured --amount 0.3")
                .check(json!([flags_step("l1-unstructured", json!(0.3))]));
        }
    }
}

#[test]
fn global_pruning_with_patterns() {
    for format in ["ts", "sd", "st"] {
        let steps = json!([{"method": "l1-unstructured", "amount": 0.5, "global": true, "params": "*.weight"}]);
        prune(
            "cnn",
            format,
            "--method l1-unstructured --amount 0.5 --global --params *.weight",
        )
        .check(steps);
    }
    let steps = json!([{"method": "l1-unstructured", "amount": 100, "global": true, "params": "block.*,head.*"}]);
    prune(
        "nested",
        "ts",
        "--method l1-unstructured --amount 100 --global --params block.*,head.*",
    )
    .check(steps);
}

#[test]
fn structured_methods_norms_and_negative_dims() {
    let steps = json!([{"method": "ln-structured", "amount": 2, "n": "inf", "dim": 0}]);
    prune(
        "cnn",
        "ts",
        "--method ln-structured --amount 2 --n inf --dim 0",
    )
    .check(steps);
    let steps = json!([{"method": "ln-structured", "amount": 0.25, "n": 1, "dim": -1}]);
    prune(
        "mlp",
        "sd",
        "--method ln-structured --amount 0.25 --n 1 --dim -1",
    )
    .check(steps);
    let steps = json!([{"method": "ln-structured", "amount": 0.5, "n": "-inf", "dim": 1, "params": "0.weight"}]);
    prune(
        "mlp",
        "st",
        "--method ln-structured --amount 0.5 --n -inf --dim 1 --params 0.weight",
    )
    .check(steps);
}

#[test]
fn seeded_random_methods_equal_pytorchs() {
    for format in ["ts", "sd", "st"] {
        let steps = json!([flags_step("random-unstructured", json!(0.4))]);
        prune("mlp", format, "--method random-unstructured --amount 0.4")
            .seed(17)
            .check(steps);
        let steps = json!([{"method": "random-structured", "amount": 1, "dim": 0}]);
        prune(
            "cnn",
            format,
            "--method random-structured --amount 1 --dim 0",
        )
        .seed(5)
        .check(steps);
    }
}

#[test]
fn multi_step_plans_compose_iteratively() {
    let Some(_) = fixtures() else { return };
    let plan = json!([
        {"params": "*.weight", "method": "l1-unstructured", "amount": 0.2, "global": true},
        {"params": ["block.layers.0.weight"], "method": "ln-structured", "amount": 3, "n": 2, "dim": 0},
        {"method": "random-unstructured", "amount": 0.5},
        {"params": "head.*", "method": "l1-unstructured", "amount": 5},
    ]);
    let work = common::tempdir();
    let plan_path = work.path().join("plan.json");
    std::fs::write(&plan_path, plan.to_string()).unwrap();
    for format in ["ts", "sd", "st"] {
        prune("nested", format, "--plan")
            .arg(plan_path.to_str().unwrap())
            .seed(3)
            .check(plan.clone());
    }
}

#[test]
fn state_out_loads_strictly_into_a_reparametrized_pytorch_model() {
    for format in ["ts", "sd", "st"] {
        let steps = json!([flags_step("l1-unstructured", json!(0.5))]);
        prune("cnn", format, "--method l1-unstructured --amount 0.5")
            .state_out()
            .check(steps);
    }
}

#[test]
fn report_lists_every_tensor_with_totals() {
    let Some(dir) = fixtures() else { return };
    let table = ok(&["report", dir.join("cnn.sd.pt").to_str().unwrap()]);
    assert!(
        table.contains("0.weight")
            && table.contains("1.running_mean")
            && table.contains("1.num_batches_tracked")
    );
    assert!(table.lines().last().unwrap().starts_with("total"));
    let json: Value = serde_json::from_str(&ok(&[
        "report",
        dir.join("mlp.safetensors").to_str().unwrap(),
        "--json",
    ]))
    .unwrap();
    let numel: i64 = json["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["numel"].as_i64().unwrap())
        .sum();
    assert_eq!(json["numel"].as_i64().unwrap(), numel);
    assert_eq!(numel, 8 * 16 + 16 + 16 * 16 + 16 + 16 * 4 + 4);
}

/// Bad input: a non-zero exit, a one-line message naming the problem, no output file, and the
/// input left as it was.
#[test]
fn every_bad_input_fails_cleanly() {
    let Some(dir) = fixtures() else { return };
    let work = common::tempdir();
    let w = work.path();
    let good = dir.join("mlp.sd.pt");
    let text = w.join("notes.txt");
    std::fs::write(&text, "not a model").unwrap();
    let bytes = std::fs::read(&good).unwrap();
    let truncated = w.join("truncated.pt");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let corrupt = w.join("corrupt.pt");
    let mut flipped = bytes.clone();
    let mid = flipped.len() / 2;
    flipped[mid..mid + 64].iter_mut().for_each(|b| *b ^= 0x5a);
    std::fs::write(&corrupt, &flipped).unwrap();
    let out: PathBuf = w.join("out.pt");
    let g = good.to_str().unwrap();
    let l1 = ["--method", "l1-unstructured", "--amount", "0.3"];
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["/no/such/model.pt"], "/no/such/model.pt"),
        (vec![text.to_str().unwrap()], "notes.txt"),
        (vec![truncated.to_str().unwrap()], "truncated.pt"),
        (vec![corrupt.to_str().unwrap()], "corrupt.pt"),
        (vec![g, "--method", "magic", "--amount", "0.3"], "magic"),
        (
            vec![g, "--method", "l1-unstructured", "--amount", "1.5"],
            "1.5",
        ),
        (
            vec![g, "--method", "l1-unstructured", "--amount", "-2"],
            "-2",
        ),
        (
            vec![g, "--method", "l1-unstructured", "--amount", "lots"],
            "lots",
        ),
        (
            vec![g, "--method", "l1-unstructured", "--amount", "100000"],
            "100000",
        ),
        (
            vec![
                g,
                "--method",
                "l1-unstructured",
                "--amount",
                "0.3",
                "--params",
                "fc9.weight",
            ],
            "fc9.weight",
        ),
        (
            vec![
                g,
                "--method",
                "l1-unstructured",
                "--amount",
                "0.3",
                "--params",
                "decoder.*",
            ],
            "decoder.*",
        ),
        (
            vec![
                g,
                "--method",
                "ln-structured",
                "--amount",
                "1",
                "--n",
                "2",
                "--dim",
                "0",
                "--global",
            ],
            "--global",
        ),
        (
            vec![
                g,
                "--method",
                "l1-unstructured",
                "--amount",
                "1",
                "--n",
                "2",
            ],
            "--n",
        ),
        (
            vec![
                g,
                "--method",
                "ln-structured",
                "--amount",
                "1",
                "--n",
                "2",
                "--dim",
                "2",
            ],
            "dim 2",
        ),
        (
            vec![
                g,
                "--method",
                "ln-structured",
                "--amount",
                "1",
                "--n",
                "2",
                "--dim",
                "-3",
            ],
            "dim -3",
        ),
        (
            vec![
                g,
                "--method",
                "ln-structured",
                "--amount",
                "1",
                "--n",
                "two",
                "--dim",
                "0",
            ],
            "two",
        ),
        (
            vec![
                g,
                "--method",
                "l1-unstructured",
                "--amount",
                "0.3",
                "--device",
                "tpu",
            ],
            "tpu",
        ),
        (vec![g, "--plan", "/no/such/plan.json"], "plan.json"),
    ];
    for (args, needle) in cases {
        let before = std::fs::read(args[0]).ok();
        let mut full = vec!["prune"];
        full.extend(&args);
        full.extend(["-o", out.to_str().unwrap()]);
        if !args.contains(&"--method") && !args.contains(&"--plan") {
            full.extend(l1);
        }
        let result = cli(&full);
        let stderr = String::from_utf8_lossy(&result.stderr);
        assert!(!result.status.success(), "{args:?} succeeded");
        assert_eq!(
            stderr.trim_end().lines().count(),
            1,
            "{args:?}: not one line:\n{stderr}"
        );
        assert!(
            stderr.contains(needle),
            "{args:?}: message does not name '{needle}': {stderr}"
        );
        assert!(
            !stderr.contains("panicked") && !stderr.contains("frame #"),
            "{args:?}: {stderr}"
        );
        assert!(!out.exists(), "{args:?}: an output file was written");
        assert_eq!(
            std::fs::read(args[0]).ok(),
            before,
            "{args:?}: the input changed"
        );
        let leftovers: Vec<_> = std::fs::read_dir(w)
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().contains(".tmp"))
            .collect();
        assert!(leftovers.is_empty(), "{args:?}: temporary files left");
    }
    // Arguments clap rejects: exit status 2, one line that names what is missing.
    for (args, needle) in [
        (vec!["prune", "in.pt", "--method", "identity"], "--output"),
        (vec!["prune", "in.pt", "-o", "out.pt"], "--method"),
    ] {
        let result = cli(&args);
        let stderr = String::from_utf8_lossy(&result.stderr);
        assert_eq!(result.status.code(), Some(2), "{args:?}: {stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
    }
    // No command at all: the help, on stderr.
    let result = cli(&[]);
    assert_eq!(result.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&result.stderr).contains("Usage"));
}

#[test]
fn help_exists_for_every_subcommand() {
    for args in [
        vec!["--help"],
        vec!["prune", "--help"],
        vec!["report", "--help"],
    ] {
        let out = ok(&args);
        assert!(out.contains("Usage"), "{args:?}");
    }
}

/// A reader that stops early (`tch-prune report m.safetensors | head -1`) ends the run quietly,
/// as it ends `cat`: no panic on the failed print.
#[test]
fn a_closed_pipe_ends_the_report_quietly() {
    use std::io::{BufRead, BufReader};
    let dir = common::tempdir();
    let model = dir.path().join("many.safetensors");
    // Several times a pipe's buffer of report lines.
    let tensors: Vec<(String, tch::Tensor)> = (0..4000)
        .map(|i| {
            (
                format!("blocks.{i:05}.attention.output.dense.weight"),
                tch::Tensor::ones([2], (tch::Kind::Float, tch::Device::Cpu)),
            )
        })
        .collect();
    tch_prune::checkpoint::write_safetensors(&model, &tensors).unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_tch-prune"))
        .args(["report", model.to_str().unwrap()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert!(first.starts_with("name"), "{first}");
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.is_empty(), "{stderr}");
}
