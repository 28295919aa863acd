//! The streaming path (safetensors through a memory map, written tensor by tensor) against the
//! in-memory path: the same bytes out for every method it takes, one file and sharded, f32, f16
//! and bf16; all-or-nothing sharded output; anonymous memory bounded whatever the model's size.

use crate::common;

use common::{
    assert_streamed_memory_under, cli, folder_entries, kill_when, large_headers, ok, stream_runs,
    streamed_as_in_memory, Cli,
};
use std::io::Write;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};
use tch_prune::checkpoint::{
    read_safetensors, write_safetensors, write_safetensors_streamed, write_torch_zip,
};

fn s(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

/// A small model with weights of `kind`, a bias, a 4-D conv weight, an integer buffer and
/// tie-heavy values (rounded to quarters) so that the tie rule is exercised.
fn model(kind: Kind, seed: i64) -> Vec<(String, Tensor)> {
    let _generator = common::generator();
    tch::manual_seed(seed);
    let w = |shape: &[i64]| Tensor::randn(shape, (Kind::Float, Device::Cpu)).to_kind(kind);
    let tied = (Tensor::randn([48, 40], (Kind::Float, Device::Cpu)) * 4.0).round() / 4.0;
    vec![
        ("embed.weight".into(), w(&[50, 24])),
        ("layers.0.attn.weight".into(), w(&[24, 24])),
        ("layers.0.attn.bias".into(), w(&[24])),
        ("layers.0.conv.weight".into(), w(&[6, 4, 3, 3])),
        ("layers.1.ff.weight".into(), tied.to_kind(kind)),
        ("layers.1.ff.bias".into(), w(&[48])),
        (
            "head.weight".into(),
            Tensor::randn([10, 40], (Kind::Float, Device::Cpu)),
        ),
        (
            "position_ids".into(),
            Tensor::arange(16, (Kind::Int64, Device::Cpu)),
        ),
    ]
}

#[test]
fn streamed_and_in_memory_runs_write_identical_bytes() {
    let dir = tempfile::tempdir().expect("temporary folder");
    for kind in [Kind::Float, Kind::Half, Kind::BFloat16] {
        let input = dir.path().join(format!("{kind:?}.safetensors"));
        write_safetensors(&input, &model(kind, 11)).expect("write model");
        for run in stream_runs(dir.path()) {
            let args: Vec<&str> = run.iter().map(String::as_str).collect();
            let x = streamed_as_in_memory(&input, &args, dir.path(), &format!("{kind:?}"));
            // Not a comparison of two unpruned copies: the runs that prune did prune.
            if !args.contains(&"identity") {
                assert_ne!(x, std::fs::read(&input).expect("read"), "{kind:?} {args:?}");
            }
        }
    }
}

/// Shards of the model in the order its merged file lays the tensors out (widest dtype first,
/// then by name), so that the merged file pruned in memory is the reference, ties included.
fn write_sharded(dir: &Path, tensors: &[(String, Tensor)], shards: usize) -> PathBuf {
    std::fs::create_dir_all(dir).expect("folder");
    let merged = dir.join("merged.safetensors");
    write_safetensors(&merged, tensors).expect("write merged");
    let ordered = read_safetensors(&merged).expect("read merged");
    std::fs::remove_file(&merged).expect("remove merged");
    let per = ordered.len().div_ceil(shards);
    let mut weight_map = serde_json::Map::new();
    for (i, group) in ordered.chunks(per).enumerate() {
        let name = format!("model-{:05}-of-{:05}.safetensors", i + 1, shards);
        write_safetensors(dir.join(&name), group).expect("write shard");
        for (tensor, _) in group {
            weight_map.insert(tensor.clone(), name.clone().into());
        }
    }
    let index = dir.join("model.safetensors.index.json");
    let json = serde_json::json!({"metadata": {"total_size": 1234}, "weight_map": weight_map});
    std::fs::write(&index, serde_json::to_string_pretty(&json).expect("json")).expect("index");
    index
}

#[test]
fn sharded_checkpoints_stream_to_the_same_shards_and_index() {
    let dir = tempfile::tempdir().expect("temporary folder");
    for kind in [Kind::Float, Kind::Half, Kind::BFloat16] {
        let tensors = model(kind, 5);
        let shard_dir = dir.path().join(format!("in-{kind:?}"));
        let index = write_sharded(&shard_dir, &tensors, 3);
        let merged = dir.path().join(format!("{kind:?}.safetensors"));
        write_safetensors(&merged, &tensors).expect("write merged");
        for (r, run) in stream_runs(dir.path()).into_iter().enumerate() {
            let args: Vec<&str> = run.iter().map(String::as_str).collect();
            let out = dir.path().join(format!("out-{kind:?}-{r}"));
            // The index file itself, and its folder, are both accepted as the input.
            let input = if r % 2 == 0 {
                index.clone()
            } else {
                shard_dir.clone()
            };
            let said = Cli::prune(&input, &out).args(&args).ok();
            assert!(said.contains("3 shards and their index"), "{said}");

            let reference = dir.path().join("reference.safetensors");
            Cli::prune(&merged, &reference)
                .arg("--in-memory")
                .args(&args)
                .ok();
            let pruned = read_safetensors(&reference).expect("read reference");
            // Each shard is what writing its tensors, pruned in memory, gives.
            let index_json: serde_json::Value = serde_json::from_str(
                &std::fs::read_to_string(out.join("model.safetensors.index.json"))
                    .expect("output index"),
            )
            .expect("index JSON");
            let input_json: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(&index).expect("index"))
                    .expect("index JSON");
            assert_eq!(index_json, input_json, "the index is carried over");
            let mut shards = 0;
            for entry in std::fs::read_dir(&shard_dir).expect("list") {
                let name = entry.expect("entry").file_name();
                let name = name.to_str().expect("name");
                if !name.ends_with(".safetensors") {
                    continue;
                }
                shards += 1;
                let names: Vec<String> = read_safetensors(shard_dir.join(name))
                    .expect("read shard")
                    .into_iter()
                    .map(|(n, _)| n)
                    .collect();
                let expected: Vec<&(String, Tensor)> =
                    pruned.iter().filter(|(n, _)| names.contains(n)).collect();
                let expected_path = dir.path().join("expected.safetensors");
                write_safetensors(
                    &expected_path,
                    &expected.iter().map(|(n, t)| (n, t)).collect::<Vec<_>>(),
                )
                .expect("write expected");
                assert!(
                    std::fs::read(out.join(name)).expect("output shard")
                        == std::fs::read(&expected_path).expect("expected"),
                    "{kind:?} {args:?}: shard {name} differs from the in-memory result"
                );
            }
            assert_eq!(shards, 3);
        }
    }
}

#[test]
fn a_failing_sharded_write_leaves_no_output() {
    let dir = tempfile::tempdir().expect("temporary folder");
    let index = write_sharded(&dir.path().join("in"), &model(Kind::Float, 2), 3);
    let out_parent = dir.path().join("outputs");
    std::fs::create_dir(&out_parent).expect("folder");
    let out = out_parent.join("pruned");
    // Structured pruning of a 1-D bias fails when that tensor is reached, in the last shard,
    // after the first shards were written.
    let failed = cli(&[
        "prune",
        s(&index),
        "-o",
        s(&out),
        "--method",
        "ln-structured",
        "--amount",
        "1",
        "--n",
        "2",
        "--dim",
        "0",
        "--params",
        "*",
    ]);
    assert!(!failed.status.success());
    let err = String::from_utf8_lossy(&failed.stderr);
    // One error line, after the warnings about what the selection includes.
    let errors: Vec<&str> = err
        .trim()
        .lines()
        .filter(|l| !l.starts_with("warning: "))
        .collect();
    assert_eq!(errors.len(), 1, "{err}");
    assert!(errors[0].contains("multidimensional"), "{err}");
    assert!(
        folder_entries(&out_parent).is_empty(),
        "{:?}",
        folder_entries(&out_parent)
    );

    // An existing, non-empty output folder is refused before anything is written.
    std::fs::create_dir(&out).expect("folder");
    std::fs::write(out.join("keep.txt"), b"mine").expect("write");
    let refused = cli(&["prune", s(&index), "-o", s(&out), "--method", "identity"]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("must not exist"));
    assert_eq!(folder_entries(&out), vec!["keep.txt".to_string()]);
    assert_eq!(folder_entries(&out_parent), vec!["pruned".to_string()]);
}

/// Writes a safetensors file of `tensors` × `numel` random f32 values without holding it.
fn write_large(path: &Path, prefix: &str, tensors: usize, numel: usize) {
    let headers = large_headers(prefix, tensors, numel);
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    write_safetensors_streamed(path, &headers, |_, out: &mut dyn Write| {
        let mut buf = Vec::with_capacity(1 << 20);
        for _ in 0..numel {
            // xorshift64*, mapped to [-1, 1)
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            let x = (state.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 40) as f32 / (1u64 << 23) as f32
                - 1.0;
            buf.extend_from_slice(&x.to_le_bytes());
            if buf.len() >= 1 << 20 {
                out.write_all(&buf)
                    .map_err(|e| tch_prune::checkpoint::CheckpointError::Io {
                        path: PathBuf::new(),
                        action: "write",
                        error: e,
                    })?;
                buf.clear();
            }
        }
        out.write_all(&buf)
            .map_err(|e| tch_prune::checkpoint::CheckpointError::Io {
                path: PathBuf::new(),
                action: "write",
                error: e,
            })
    })
    .expect("write large model");
}

fn memory_stays_under(model_mb: usize, budget_mb: u64) {
    let dir = tempfile::tempdir().expect("temporary folder");
    let large = dir.path().join("large.safetensors");
    let tensors = 16;
    write_large(&large, "", tensors, model_mb * (1 << 20) / 4 / tensors);
    let small = dir.path().join("small.safetensors");
    write_large(&small, "", 2, 1024);
    assert_streamed_memory_under(
        &small,
        &large,
        &dir.path().join("out.safetensors"),
        budget_mb,
    );
}

/// The size: a 1 GB model under a 64 MiB budget (16x). About 20 s in a debug build
/// on the 2-core machine under load, most of it writing the model.
#[test]
fn anonymous_memory_stays_under_budget_for_a_1gb_model() {
    memory_stays_under(1024, 64);
}

#[test]
fn a_killed_sharded_write_leaves_no_output_and_the_next_run_cleans_up() {
    let dir = tempfile::tempdir().expect("temporary folder");
    let input = dir.path().join("in");
    std::fs::create_dir(&input).expect("folder");
    let mut weight_map = serde_json::Map::new();
    for i in 0..4 {
        let name = format!("model-{:05}-of-00004.safetensors", i + 1);
        let prefix = format!("s{i}.");
        write_large(&input.join(&name), &prefix, 2, 4 << 20);
        for t in 0..2 {
            weight_map.insert(format!("{prefix}layers.{t:03}.weight"), name.clone().into());
        }
    }
    let index = input.join("model.safetensors.index.json");
    std::fs::write(
        &index,
        serde_json::to_string(&serde_json::json!({"metadata": {}, "weight_map": weight_map}))
            .expect("json"),
    )
    .expect("index");
    let outputs = dir.path().join("outputs");
    std::fs::create_dir(&outputs).expect("folder");
    let out = outputs.join("pruned");
    // Kill it once its temporary folder holds a shard: mid-way through the output.
    let run = Cli::prune(&index, &out).flags("--method l1-unstructured --amount 0.5 --global");
    let killed_mid_way = kill_when(&run, |_| {
        folder_entries(&outputs)
            .into_iter()
            .find(|n| n.starts_with(".tch-prune-"))
            .is_some_and(|temp| std::fs::read_dir(outputs.join(temp)).map_or(0, |d| d.count()) > 0)
    });
    assert!(
        killed_mid_way,
        "the run ended before a shard was written: nothing was tested"
    );
    assert!(!out.exists(), "a killed run left a partial output folder");
    // The next write into the folder removes what the killed process left.
    let status = run.run();
    assert!(status.status.success(), "{status:?}");
    assert_eq!(folder_entries(&outputs), ["pruned"]);
}

/// `report` over a memory map: a sharded checkpoint (which only the streaming path reads) gives
/// the in-memory report of the same tensors, and single files give what the in-memory report
/// gives (safetensors and `torch.save`, every dtype, exact zeros and -0.0 counted).
#[test]
fn report_reads_sharded_and_single_files_as_in_memory() {
    let dir = tempfile::tempdir().expect("temporary folder");
    let mut tensors = model(Kind::Float, 5);
    for (_, t) in tensors.iter_mut().take(4) {
        // Zeros, negative zeros and a few values: sparsities that differ per tensor.
        let keep = t.abs().gt(0.8);
        *t = t.where_self(&keep, &(t.sign() * 0.0));
    }
    tensors.push((
        "half.weight".into(),
        Tensor::from_slice(&[0.0f32, -0.0, 1.5, 0.0]).to_kind(Kind::Half),
    ));
    tensors.push((
        "flags".into(),
        Tensor::from_slice(&[true, false, false]).to_kind(Kind::Bool),
    ));
    let report = |path: &Path| -> serde_json::Value {
        serde_json::from_str(&ok(&["report", s(path), "--json"])).expect("json")
    };
    let in_memory = |path: &Path| -> serde_json::Value {
        let model = tch_prune::model::ModelFile::open(path, Device::Cpu).expect("open");
        let ties = model.ties().into_iter().collect();
        let pruner = model.pruner().expect("pruner");
        let r =
            tch_prune::model::Report::with_ties(&model.tensors(&pruner), &ties).expect("report");
        // Printed and parsed back as the CLI's output is (serde_json's float parsing may
        // differ from the value in the last bit).
        serde_json::from_str(&serde_json::to_string_pretty(&r).expect("json")).expect("json")
    };
    let single = dir.path().join("model.safetensors");
    write_safetensors(&single, &tensors).expect("write");
    assert_eq!(report(&single), in_memory(&single));
    let pt = dir.path().join("model.pt");
    tch_prune::checkpoint::write_torch_zip(&pt, &tensors).expect("write");
    assert_eq!(report(&pt), in_memory(&pt));

    let index = write_sharded(&dir.path().join("sharded"), &tensors, 3);
    let sharded = report(&index);
    let merged = read_safetensors(&single).expect("read");
    assert_eq!(sharded["zeros"], in_memory(&single)["zeros"], "{sharded}");
    assert_eq!(sharded["numel"], in_memory(&single)["numel"]);
    let rows = sharded["tensors"].as_array().expect("rows");
    assert_eq!(rows.len(), merged.len());
    for row in rows {
        let name = row["name"].as_str().expect("name");
        let (_, t) = merged.iter().find(|(n, _)| n == name).expect("tensor");
        let zeros = t.numel() as i64 - t.count_nonzero(None).int64_value(&[]);
        assert_eq!(row["zeros"], zeros, "{name}");
    }
    // The folder holding the index names it too.
    assert_eq!(report(index.parent().expect("folder")), sharded);
}

/// An index that names a tensor no shard holds is refused by both paths, naming it, and
/// nothing is written: the in-memory path wrote an output whose index still named it.
#[test]
fn an_index_naming_a_tensor_no_shard_holds_is_refused_by_both_paths() {
    let dir = tempfile::tempdir().expect("temporary folder");
    let index = write_sharded(&dir.path().join("in"), &model(Kind::Float, 3), 2);
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&index).expect("index")).expect("json");
    json["weight_map"]["ghost.weight"] = "model-00001-of-00002.safetensors".into();
    std::fs::write(&index, json.to_string()).expect("index");
    for extra in [None, Some("--in-memory")] {
        let out = dir.path().join("out");
        let mut args = vec!["prune", s(&index), "-o", s(&out), "--method", "identity"];
        args.extend(extra);
        let run = cli(&args);
        let err = String::from_utf8_lossy(&run.stderr);
        assert_eq!(run.status.code(), Some(1), "{extra:?}: {err}");
        assert!(
            err.contains("ghost.weight") || err.contains("lacks a tensor"),
            "{extra:?}: {err}"
        );
        assert!(!out.exists(), "{extra:?}: an output was written");
    }
}

/// Every write path (written back as it goes, the default on Linux; direct I/O; the page cache)
/// writes the same bytes, and the summary says which one ran. A `torch.save` output, whose zip
/// writer goes back over its entries' headers, is written back as it goes too, never with
/// direct I/O.
#[test]
fn every_write_path_writes_the_same_bytes_and_says_which_ran() {
    let dir = common::tempdir();
    let tensors = model(Kind::Float, 3);
    let default = if cfg!(target_os = "linux") {
        "written back as it went"
    } else {
        "the page cache"
    };
    for format in ["safetensors", "pt"] {
        let input = dir.path().join(format!("model.{format}"));
        if format == "pt" {
            write_torch_zip(&input, &tensors).expect("write model");
        } else {
            write_safetensors(&input, &tensors).expect("write model");
        }
        // A filesystem that refuses O_DIRECT (tmpfs) gets the page cache, and says so.
        let direct = match format {
            "pt" => [default, default],
            _ => ["direct I/O", "the page cache"],
        };
        let paths = [
            (None, [default, default]),
            (Some("direct"), direct),
            (Some("cache"), ["the page cache", "the page cache"]),
        ];
        let mut outputs = Vec::new();
        for (path, said) in paths {
            let out = dir
                .path()
                .join(format!("{}.{format}", path.unwrap_or("default")));
            let mut command = Cli::prune(&input, &out)
                .flags("--method l1-unstructured --amount 0.5 --global")
                .command();
            if let Some(path) = path {
                command.env("TCH_PRUNE_WRITE", path);
            }
            let run = common::output_within(&mut command);
            let stdout = String::from_utf8_lossy(&run.stdout);
            assert!(run.status.success(), "{format} {path:?}: {stdout}");
            assert!(stdout.contains("streamed"), "{format} {path:?}: {stdout}");
            assert!(
                said.iter().any(|s| stdout.contains(s)),
                "{format} {path:?}: {stdout}"
            );
            outputs.push(std::fs::read(&out).expect("read output"));
        }
        assert!(outputs.windows(2).all(|w| w[0] == w[1]), "{format}");
    }
}
