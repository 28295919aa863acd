//! One model, the same answer whatever file it came in (issue 12): tied weights pruned once and
//! kept tied, buffers never selected, the order PyTorch prunes in, format detection that cannot
//! take one format for another, and errors of multi-tensor steps that name the tensor.

use crate::common;

use common::{ok, Cli};

use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use tch::{Kind, Tensor};
use tch_prune::checkpoint::{read_safetensors, read_state_dict, write_safetensors, Format};

const SCRIPT: &str = include_str!("../py/same_answer.py");
const FORMATS: [(&str, &str); 3] = [("ts", "ts.pt"), ("sd", "sd.pt"), ("st", "safetensors")];

/// The one error line a failing run prints (after any warnings about the selection).
fn fails(cli: &Cli) -> String {
    let out = cli.run();
    assert_eq!(out.status.code(), Some(1), "{cli} should fail");
    let err = String::from_utf8_lossy(&out.stderr);
    let errors: Vec<&str> = err
        .lines()
        .filter(|l| !l.starts_with("warning: "))
        .collect();
    assert_eq!(errors.len(), 1, "{err}");
    errors[0].to_string()
}

/// The model files PyTorch wrote, made once per test binary.
fn fixtures() -> Option<&'static Path> {
    static DIR: std::sync::OnceLock<Option<tempfile::TempDir>> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let dir = common::tempdir();
        common::run_python(SCRIPT, &[Path::new("fixtures"), dir.path()])?;
        Some(dir)
    })
    .as_ref()
    .map(|d| d.path())
}

fn path_str(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// What PyTorch is to do for one output: prune `model` as `steps` say (names in the order
/// PyTorch prunes them) and compare with `output`.
fn spec(
    model: &str,
    format: &str,
    input: &Path,
    output: &Path,
    steps: Value,
    seed: Option<i64>,
) -> Value {
    json!({"model": model, "format": format, "input": input, "output": output,
           "steps": steps, "seed": seed})
}

/// Has PyTorch check every spec, in one process; each must answer OK.
fn pytorch_agrees(specs: &[Value]) {
    let work = common::tempdir();
    let path = work.path().join("specs.json");
    std::fs::write(&path, Value::from(specs.to_vec()).to_string()).unwrap();
    let out = common::run_python(SCRIPT, &[Path::new("check"), &path]).unwrap();
    let ok = out.lines().filter(|l| *l == "OK").count();
    assert_eq!(
        ok,
        specs.len(),
        "PyTorch checked {ok} of {} outputs:\n{out}",
        specs.len()
    );
}

// 1. Tied weights

#[test]
fn tied_weights_are_pruned_once_and_stay_tied_in_every_format() {
    let Some(dir) = fixtures() else { return };
    let work = common::tempdir();
    let mut specs = Vec::new();
    for (format, ext) in FORMATS {
        let input = dir.join(format!("tied.{ext}"));
        // Seeded random pruning: each name pruned on its own would draw two masks.
        let output = work.path().join(format!("random.{ext}"));
        let stdout = Cli::prune(&input, &output)
            .flags("--method random-unstructured --amount 0.3 --seed 4")
            .ok();
        // embed.weight (40x8, tied to decoder.weight) and hidden.weight, each once.
        assert!(stdout.starts_with("pruned 2 tensors"), "{format}: {stdout}");
        let steps = json!([{"method": "random-unstructured", "amount": 0.3,
                            "names": ["embed.weight", "hidden.weight"]}]);
        specs.push(spec("tied", format, &input, &output, steps, Some(4)));

        // Global L1 over every name: the tied tensor is ranked once, not twice.
        let output = work.path().join(format!("global.{ext}"));
        Cli::prune(&input, &output)
            .flags("--method l1-unstructured --amount 0.5 --global --params *.weight")
            .ok();
        let steps = json!([{"method": "l1-unstructured", "amount": 0.5, "global": true,
                            "names": ["embed.weight", "hidden.weight"]}]);
        specs.push(spec("tied", format, &input, &output, steps, None));

        // Naming only the second name of the tie prunes the tensor.
        let output = work.path().join(format!("named.{ext}"));
        Cli::prune(&input, &output)
            .flags("--method l1-unstructured --amount 0.25 --params decoder.weight")
            .ok();
        let steps =
            json!([{"method": "l1-unstructured", "amount": 0.25, "names": ["embed.weight"]}]);
        specs.push(spec("tied", format, &input, &output, steps, None));

        // The output is no larger than the input: no second copy of the tied tensor.
        let (before, after) = (
            std::fs::metadata(&input).unwrap().len(),
            std::fs::metadata(&output).unwrap().len(),
        );
        assert!(after < before + 1024, "{format}: {before} -> {after} bytes");
    }
    pytorch_agrees(&specs);
}

/// `--state-out` of a tied model: PyTorch loads it strictly into the tied model reparametrized
/// under the name the tensor was pruned under (the first name of the tie; in safetensors, the
/// name the file holds), the other name holding `_orig`'s values as PyTorch's does.
#[test]
fn the_reparametrized_state_of_a_tied_model_loads_strictly_into_pytorch() {
    let Some(dir) = fixtures() else { return };
    let work = common::tempdir();
    let mut args: Vec<PathBuf> = Vec::new();
    for (format, ext) in FORMATS {
        let input = dir.join(format!("tied.{ext}"));
        let output = work.path().join(format!("out.{ext}"));
        let state = work.path().join(format!("state-{format}.safetensors"));
        Cli::prune(&input, &output)
            .flags("--method l1-unstructured --amount 0.3 --state-out")
            .arg(&state)
            .ok();
        args.push(state);
    }
    let mut args: Vec<&Path> = args.iter().map(PathBuf::as_path).collect();
    args.insert(0, Path::new("tied-states"));
    let out = common::run_python(SCRIPT, &args).unwrap();
    assert_eq!(out.trim(), "OK");
}

#[test]
fn the_readers_keep_ties_only_when_asked() {
    let Some(dir) = fixtures() else { return };
    let sd = dir.join("tied.sd.pt");
    let find = |tensors: &[(String, Tensor)], n: &str| {
        tensors
            .iter()
            .find(|(k, _)| k == n)
            .map(|(_, t)| t.data_ptr())
            .unwrap()
    };
    let tied = tch_prune::checkpoint::read_torch_zip_tied(&sd).unwrap();
    assert_eq!(find(&tied, "embed.weight"), find(&tied, "decoder.weight"));
    assert_ne!(find(&tied, "embed.weight"), find(&tied, "hidden.weight"));
    // read_torch_zip keeps its promise: tensors that share no memory.
    let copies = tch_prune::checkpoint::read_torch_zip(&sd).unwrap();
    assert_ne!(
        find(&copies, "embed.weight"),
        find(&copies, "decoder.weight")
    );
    // save_model's convention, as the metadata of the safetensors file.
    let st = dir.join("tied.safetensors");
    let metadata = tch_prune::checkpoint::read_safetensors_metadata(&st).unwrap();
    assert_eq!(metadata["embed.weight"], "decoder.weight");
}

#[test]
fn report_counts_a_tied_tensor_once_and_says_it_is_tied() {
    let Some(dir) = fixtures() else { return };
    for (format, ext) in FORMATS {
        let input = dir.join(format!("tied.{ext}"));
        let report: Value =
            serde_json::from_str(&ok(&["report", path_str(&input), "--json"])).unwrap();
        let rows = report["tensors"].as_array().unwrap();
        let tied: Vec<&Value> = rows.iter().filter(|r| r.get("tied_to").is_some()).collect();
        assert_eq!(tied.len(), 1, "{format}: {report}");
        let alias = tied[0]["name"].as_str().unwrap();
        let kept = tied[0]["tied_to"].as_str().unwrap();
        let mut pair = [alias, kept];
        pair.sort();
        assert_eq!(pair, ["decoder.weight", "embed.weight"], "{format}");
        // 40x8 embedding once, hidden 8x8 + 8.
        assert_eq!(report["numel"], 320 + 64 + 8, "{format}");
        let table = ok(&["report", path_str(&input)]);
        assert!(
            table.contains(&format!("tied to {kept}")),
            "{format}: {table}"
        );
    }
}

// 2. Buffers

#[test]
fn globs_never_select_buffers_and_naming_one_says_it_is_a_buffer() {
    let Some(dir) = fixtures() else { return };
    let work = common::tempdir();
    for (format, ext) in FORMATS {
        let input = dir.join(format!("cnn.{ext}"));
        let output = work.path().join(format!("out.{ext}"));
        Cli::prune(&input, &output)
            .flags("--method l1-unstructured --amount 0.5 --params features.*")
            .ok();
        let (before, after) = match format {
            "ts" => (
                tch_prune::checkpoint::read_torchscript_state(&input).unwrap(),
                tch_prune::checkpoint::read_torchscript_state(&output).unwrap(),
            ),
            _ => (
                read_state_dict(&input).unwrap(),
                read_state_dict(&output).unwrap(),
            ),
        };
        let find = |sd: &[(String, Tensor)], n: &str| {
            sd.iter()
                .find(|(k, _)| k == n)
                .map(|(_, t)| t.shallow_clone())
                .unwrap()
        };
        for buffer in [
            "features.1.running_mean",
            "features.1.running_var",
            "features.1.num_batches_tracked",
        ] {
            common::assert_same(&find(&before, buffer), &find(&after, buffer), buffer);
        }
        // The parameters it matches are pruned: the conv weights, and batch norm's weight.
        let w = find(&after, "features.1.weight");
        assert_eq!(w.eq(0.0).sum(Kind::Int64).int64_value(&[]), 3, "{format}");

        for name in ["features.1.running_var", "features.1.num_batches_tracked"] {
            let err = fails(
                &Cli::prune(&input, &output)
                    .flags("--method l1-unstructured --amount 0.5 --params")
                    .arg(name),
            );
            assert!(
                err.contains(&format!("'{name}' is a buffer")),
                "{format}: {err}"
            );
        }
        let err = fails(
            &Cli::prune(&input, &output)
                .flags("--method l1-unstructured --amount 0.5 --params *.running_*"),
        );
        assert!(err.contains("matches only buffers"), "{format}: {err}");
    }
}

// 3. Order

#[test]
fn names_given_in_a_plan_give_the_model_order_for_safetensors() {
    let Some(dir) = fixtures() else { return };
    let input = dir.join("cnn.safetensors");
    // The file's order is not the model's: safetensors sorts classifier.* before features.*.
    let report: Value = serde_json::from_str(&ok(&["report", path_str(&input), "--json"])).unwrap();
    let names: Vec<&str> = report["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    let at = |n: &str| names.iter().position(|m| *m == n).unwrap();
    assert!(
        at("classifier.weight") < at("features.0.weight"),
        "{names:?}"
    );

    let model_order = [
        "features.0.weight",
        "features.3.weight",
        "classifier.weight",
    ];
    let work = common::tempdir();
    let plan = work.path().join("plan.json");
    let mut specs = Vec::new();
    for global in [false, true] {
        let output = work.path().join(format!("out-{global}.safetensors"));
        let steps = json!([{"method": "random-unstructured", "amount": 0.4, "global": global,
                            "params": model_order}]);
        std::fs::write(&plan, steps.to_string()).unwrap();
        Cli::prune(&input, &output)
            .arg("--plan")
            .arg(&plan)
            .flags("--seed 11")
            .ok();
        let steps = json!([{"method": "random-unstructured", "amount": 0.4, "global": global,
                            "names": model_order}]);
        specs.push(spec("cnn", "st", &input, &output, steps, Some(11)));
    }
    pytorch_agrees(&specs);
}

// 4. Format detection

/// A safetensors file holding one f32 `t = [1.5]` whose header is exactly `len` bytes (JSON
/// padded with spaces, as the format allows).
fn safetensors_with_header_len(len: usize) -> Vec<u8> {
    let json = r#"{"t":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#;
    assert!(len >= json.len());
    let mut bytes = (len as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(json.as_bytes());
    bytes.resize(8 + len, b' ');
    bytes.extend_from_slice(&1.5f32.to_le_bytes());
    bytes
}

#[test]
fn safetensors_is_recognised_whatever_its_header_length() {
    let work = common::tempdir();
    let path = work.path().join("t.safetensors");
    let mut lengths: Vec<usize> = (54..=2100).collect();
    // 0x80 in the first byte (a pickle's PROTO opcode) and 2..=5 in the second: the lengths a
    // pickle sniffer took for legacy torch.save files.
    lengths.extend([640, 896, 1152, 1408, 0x0280 + 0x10000, 70_000]);
    for len in lengths {
        std::fs::write(&path, safetensors_with_header_len(len)).unwrap();
        assert_eq!(
            Format::detect(&path).unwrap(),
            Format::Safetensors,
            "header of {len} bytes"
        );
        let t = read_state_dict(&path).unwrap_or_else(|e| panic!("header of {len} bytes: {e}"));
        assert_eq!(t[0].1.double_value(&[0]), 1.5);
    }
    // A header that is not a JSON object is no safetensors file, whatever its length says.
    let mut bad = safetensors_with_header_len(640);
    bad[8 + 5] = b'#';
    std::fs::write(&path, &bad).unwrap();
    assert!(Format::detect(&path).is_err());
}

/// The files the CLI writes, whatever their size: written with header lengths through 640, 896,
/// 1152 and 1408, each is read back as safetensors (by the CLI, and by Python's safetensors).
#[test]
fn every_safetensors_file_the_cli_writes_is_recognised() {
    let work = common::tempdir();
    let mut hit = std::collections::BTreeSet::new();
    let mut written = Vec::new();
    for n in 0..200 {
        let path = work.path().join(format!("w{n}.safetensors"));
        let name = format!("layer.{}.weight", "x".repeat(n));
        let tensors: Vec<(String, Tensor)> = (0..8)
            .map(|i| {
                (
                    format!("{name}{i}"),
                    Tensor::from_slice(&[i as f32; 4]).reshape([2, 2]),
                )
            })
            .collect();
        write_safetensors(&path, &tensors).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let len = u64::from_le_bytes(bytes[..8].try_into().unwrap());
        hit.insert(len);
        assert_eq!(Format::detect(&path).unwrap(), Format::Safetensors, "{len}");
        assert_eq!(read_safetensors(&path).unwrap().len(), 8);
        if [640, 896, 1152, 1408].contains(&len) {
            written.push(path);
        }
    }
    for len in [640, 896, 1152, 1408] {
        assert!(
            hit.contains(&len),
            "no file with a header of {len} bytes: {hit:?}"
        );
    }
    assert_eq!(written.len(), 4);
    for path in &written {
        // The CLI reads and rewrites it; the output is recognised too.
        let out = path.with_extension("out.safetensors");
        ok(&["report", path_str(path)]);
        // The names end in weight0..7, which the default selection skips, and selecting
        // nothing is an error (issue 11).
        Cli::prune(path, &out)
            .flags("--method l1-unstructured --amount 0.5 --params layer.*")
            .ok();
        ok(&["report", path_str(&out)]);
    }
    let script = "import sys\nfrom safetensors.torch import load_file\nfor p in sys.argv[1:]: assert len(load_file(p)) == 8\nprint('OK')\n";
    let args: Vec<&Path> = written.iter().map(PathBuf::as_path).collect();
    if let Some(out) = common::run_python(script, &args) {
        assert_eq!(out.trim(), "OK");
    }
}

/// Every file the CLI writes (pruned models of each format, --state-out) is recognised as what it is.
#[test]
fn every_file_the_cli_writes_is_recognised_as_its_format() {
    let Some(dir) = fixtures() else { return };
    let work = common::tempdir();
    for model in ["tied", "cnn"] {
        for (format, ext) in FORMATS {
            let input = dir.join(format!("{model}.{ext}"));
            let output = work.path().join(format!("{model}.{ext}"));
            let state = work
                .path()
                .join(format!("{model}-{format}-state.safetensors"));
            Cli::prune(&input, &output)
                .flags("--method l1-unstructured --amount 0.3 --state-out")
                .arg(&state)
                .ok();
            let expected = match format {
                "ts" => Format::TorchScript,
                "sd" => Format::TorchZip,
                _ => Format::Safetensors,
            };
            assert_eq!(Format::detect(&output).unwrap(), expected, "{model}.{ext}");
            assert_eq!(
                Format::detect(&state).unwrap(),
                Format::Safetensors,
                "{model} state"
            );
            ok(&["report", path_str(&output)]);
            ok(&["report", path_str(&state)]);
        }
    }
}

// 5. Errors of multi-tensor steps

#[test]
fn a_step_that_fails_on_one_tensor_names_it() {
    let Some(dir) = fixtures() else { return };
    let work = common::tempdir();
    for (format, ext) in FORMATS {
        let input = dir.join(format!("cnn.{ext}"));
        let output = work.path().join(format!("out.{ext}"));
        // 5 entries: more than features.3.bias holds (4), no more than the others.
        let err = fails(
            &Cli::prune(&input, &output)
                .flags("--method l1-unstructured --amount 5 --params *.bias"),
        );
        assert!(err.contains("'features.3.bias'"), "{format}: {err}");
        assert!(
            err.contains("amount=5 should be smaller than the number of parameters to prune=4"),
            "{format}: {err}"
        );
        assert!(!output.exists());
        // A plan's second step, on a tensor its first step emptied.
        let plan = work.path().join("plan.json");
        std::fs::write(&plan, json!([
            {"method": "l1-unstructured", "amount": 1.0, "params": ["classifier.bias"]},
            {"method": "l1-unstructured", "amount": 2, "params": ["features.0.bias", "classifier.bias"]}
        ]).to_string()).unwrap();
        let err = fails(&Cli::prune(&input, &output).arg("--plan").arg(&plan));
        assert!(
            err.contains("step 2") && err.contains("'classifier.bias'"),
            "{format}: {err}"
        );
        assert!(err.contains("prune=0"), "{format}: {err}");
    }
}
