//! `tch-prune prune` of a sharded checkpoint by several ranks (Gloo over localhost, the
//! variables a launcher sets): the same bytes as one process, f32, f16 and bf16, ties across
//! ranks included; a rank killed mid-write leaves no output folder, and the others stop naming
//! it; one `torchrun --no-python` run.

use crate::common::{self, Cli};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};
use tch::{Device, Kind, Tensor};

/// A sharded safetensors checkpoint of `shards` files in `dir`: `count` weights of `numel`
/// entries of `kind` (values from 9 levels when `ties`, so that many tie at any threshold, in
/// every shard), and a bias per layer.
fn write_sharded(dir: &Path, kind: Kind, count: usize, numel: i64, ties: bool, shards: usize) {
    std::fs::create_dir_all(dir).expect("folder");
    tch::manual_seed(5);
    let mut tensors: Vec<(String, Tensor)> = Vec::new();
    for i in 0..count {
        let w = if ties {
            (Tensor::randint(9, [numel], (Kind::Int64, Device::Cpu)) - 4).to_kind(kind)
        } else {
            Tensor::randn([numel], (Kind::Float, Device::Cpu)).to_kind(kind)
        };
        tensors.push((format!("layers.{i:02}.weight"), w.view([numel / 64, 64])));
        tensors.push((
            format!("layers.{i:02}.bias"),
            Tensor::randn([64], (Kind::Float, Device::Cpu)).to_kind(kind),
        ));
    }
    let per = tensors.len().div_ceil(shards);
    let mut weight_map = serde_json::Map::new();
    for (i, group) in tensors.chunks(per).enumerate() {
        let name = format!("model-{:05}-of-{:05}.safetensors", i + 1, shards);
        Tensor::write_safetensors(group, dir.join(&name)).expect("write shard");
        for (tensor, _) in group {
            weight_map.insert(tensor.clone(), name.clone().into());
        }
    }
    let json = serde_json::json!({"metadata": {"total_size": 0}, "weight_map": weight_map});
    std::fs::write(
        dir.join("model.safetensors.index.json"),
        serde_json::to_string_pretty(&json).expect("json"),
    )
    .expect("index");
}

/// Starts `world` ranks of `cli`.
fn ranks(cli: &Cli, world: usize, extra: &[(&str, &str)]) -> Vec<Child> {
    common::ranks::spawn(|| cli.command(), world, extra)
}

fn outputs(children: Vec<Child>) -> Vec<Output> {
    children
        .into_iter()
        .map(|c| common::wait_within(c, "a rank"))
        .collect()
}

/// The files of a folder, name and bytes, sorted.
fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut all: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .expect("list")
        .map(|e| {
            let path = e.expect("entry").path();
            let name = path
                .file_name()
                .expect("name")
                .to_string_lossy()
                .into_owned();
            (name, std::fs::read(&path).expect("read"))
        })
        .collect();
    all.sort();
    all
}

#[test]
fn several_ranks_write_the_bytes_of_one_process() {
    let dir = common::tempdir();
    let runs = [
        (
            Kind::Float,
            false,
            "--method l1-unstructured --amount 0.45 --global",
        ),
        (
            Kind::Float,
            true,
            "--method l1-unstructured --amount 0.5 --global --params *.weight,*.bias",
        ),
        (
            Kind::Half,
            true,
            "--method l1-unstructured --amount 0.3 --global",
        ),
        (
            Kind::BFloat16,
            true,
            "--method l1-unstructured --amount 0.6 --global",
        ),
        (
            Kind::BFloat16,
            false,
            "--method l1-unstructured --amount 0.25",
        ),
        (
            Kind::Float,
            false,
            "--method ln-structured --amount 2 --n 2 --dim 0",
        ),
        // Each rank draws for the others' shards too: the draws of one process.
        (
            Kind::Float,
            false,
            "--method random-unstructured --amount 0.3 --seed 1",
        ),
        (
            Kind::Half,
            false,
            "--method random-structured --amount 0.5 --dim 0 --seed 7",
        ),
    ];
    for (i, (kind, ties, flags)) in runs.iter().enumerate() {
        let input = dir.path().join(format!("in-{i}"));
        write_sharded(&input, *kind, 7, 4096, *ties, 5);
        let one = dir.path().join(format!("one-{i}"));
        Cli::prune(&input, &one).flags(flags).ok();
        for world in [2, 3] {
            let many = dir.path().join(format!("many-{i}-{world}"));
            let outs = outputs(ranks(&Cli::prune(&input, &many).flags(flags), world, &[]));
            for (rank, out) in outs.iter().enumerate() {
                assert!(
                    out.status.success(),
                    "{kind:?} {flags} rank {rank} of {world}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            let said = String::from_utf8_lossy(&outs[0].stdout);
            assert!(
                said.contains(&format!("5 shards and their index, by {world} ranks")),
                "{said}"
            );
            assert_eq!(
                files(&many),
                files(&one),
                "{kind:?} {flags}: {world} ranks differ from one process"
            );
        }
    }
}

/// Ranks on machines that do not share a filesystem, each naming a folder on its own disk (here:
/// ranks given different output folders, as the command of each machine names its own): each
/// machine's ranks write one folder, rank 0's holds the index, and their union is the
/// one-process output, with nothing else left. When one rank cannot create its folder, no
/// folder appears anywhere.
#[test]
fn ranks_without_a_shared_folder_write_a_folder_per_machine() {
    let dir = common::tempdir();
    let input = dir.path().join("in");
    write_sharded(&input, Kind::Float, 7, 4096, true, 5);
    let flags = "--method l1-unstructured --amount 0.5 --global";
    let one = dir.path().join("one");
    Cli::prune(&input, &one).flags(flags).ok();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    std::fs::create_dir_all(&a).expect("a");
    std::fs::create_dir_all(&b).expect("b");
    // Ranks 0 and 2 on machine a, rank 1 on machine b.
    let machine = |rank: usize| if rank == 1 { &b } else { &a };
    let run = |name: &str| {
        outputs(common::ranks::spawn_each(
            |rank| {
                Cli::prune(&input, &machine(rank).join(name))
                    .flags(flags)
                    .command()
            },
            3,
            &[],
        ))
    };
    let outs = run("out");
    for (rank, out) in outs.iter().enumerate() {
        assert!(
            out.status.success(),
            "rank {rank}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let said = String::from_utf8_lossy(&outs[0].stdout);
    assert!(
        said.contains("by 3 ranks into 2 folders, one per machine"),
        "{said}"
    );
    let (on_a, on_b) = (files(&a.join("out")), files(&b.join("out")));
    let names = |f: &[(String, Vec<u8>)]| f.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
    // Shards go round-robin: rank 1 writes the second and the fifth.
    assert_eq!(
        names(&on_b),
        [
            "model-00002-of-00005.safetensors",
            "model-00005-of-00005.safetensors"
        ]
    );
    assert!(names(&on_a).contains(&"model.safetensors.index.json".to_string()));
    let mut union = [on_a, on_b].concat();
    union.sort();
    assert_eq!(
        union,
        files(&one),
        "the folders together differ from one process"
    );

    // Machine b's folder is taken: nothing is written anywhere.
    std::fs::create_dir_all(b.join("taken")).expect("folder");
    std::fs::write(b.join("taken/file"), b"mine").expect("file");
    let outs = {
        let cli = |rank: usize| {
            let out = if rank == 1 {
                b.join("taken")
            } else {
                a.join("taken")
            };
            Cli::prune(&input, &out).flags(flags).command()
        };
        outputs(common::ranks::spawn_each(cli, 3, &[]))
    };
    for (rank, out) in outs.iter().enumerate() {
        assert!(!out.status.success(), "rank {rank} succeeded");
    }
    let stderr = String::from_utf8_lossy(&outs[0].stderr);
    assert!(
        stderr.contains("rank 1"),
        "rank 0 does not name rank 1: {stderr}"
    );
    assert!(!a.join("taken").exists(), "machine a's folder appeared");
    assert_eq!(files(&b.join("taken")).len(), 1);
    for machine in [&a, &b] {
        assert!(
            temporary_folder(machine).is_none(),
            "a temporary folder was left"
        );
    }
}

#[test]
fn single_files_are_refused_on_several_ranks() {
    let dir = common::tempdir();
    let input = dir.path().join("in");
    write_sharded(&input, Kind::Float, 2, 1024, false, 2);
    let single = input.join("model-00001-of-00002.safetensors");
    let cli = Cli::prune(&single, &dir.path().join("o.safetensors")).flags("--method identity");
    let outs = outputs(ranks(&cli, 2, &[]));
    for o in &outs {
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(
            stderr.contains("several ranks prune a sharded checkpoint"),
            "{stderr}"
        );
    }
}

#[test]
fn a_rank_killed_mid_write_leaves_no_output_and_is_named() {
    let dir = common::tempdir();
    let input = dir.path().join("in");
    // 4 shards of about 32 MB: rank 1 writes the second and the fourth.
    write_sharded(&input, Kind::Float, 8, 1 << 21, false, 4);
    let out = dir.path().join("out");
    let cli = Cli::prune(&input, &out).flags("--method l1-unstructured --amount 0.5 --global");
    let mut children = ranks(&cli, 2, &[]);
    // Stop rank 1 the moment its first shard appears in the temporary folder, then kill it.
    let start = Instant::now();
    let mut stopped = false;
    while start.elapsed() < Duration::from_secs(120) && !stopped {
        if let Some(tmp) = temporary_folder(dir.path()) {
            if tmp.join("model-00002-of-00004.safetensors").exists() {
                let pid = children[1].id().to_string();
                let _ = Command::new("kill").args(["-STOP", &pid]).status();
                stopped = true;
            }
        }
        if children
            .iter_mut()
            .any(|c| matches!(c.try_wait(), Ok(Some(_))))
        {
            break;
        }
        std::thread::sleep(Duration::from_micros(300));
    }
    assert!(stopped, "rank 1 wrote no shard: nothing was tested");
    let _ = Command::new("kill")
        .args(["-KILL", &children[1].id().to_string()])
        .status();
    let outs = outputs(children);
    let stderr = String::from_utf8_lossy(&outs[0].stderr);
    assert!(!outs[0].status.success(), "rank 0 succeeded without rank 1");
    let line = stderr
        .lines()
        .find(|l| l.starts_with("error:"))
        .unwrap_or("");
    assert!(
        line.contains("rank 1"),
        "rank 0's error does not name rank 1: {stderr}"
    );
    eprintln!("rank 0 said: {line}");
    assert!(!out.exists(), "an output folder appeared");
    assert!(
        temporary_folder(dir.path()).is_none(),
        "the temporary folder was left"
    );
}

/// The temporary output folder beside `out` (`.tch-prune-*.tmp`), if there is one.
fn temporary_folder(parent: &Path) -> Option<PathBuf> {
    std::fs::read_dir(parent).ok()?.find_map(|e| {
        let path = e.ok()?.path();
        let name = path.file_name()?.to_string_lossy().into_owned();
        (name.starts_with(".tch-prune-") && path.is_dir()).then_some(path)
    })
}

#[test]
fn torchrun_prunes_a_sharded_checkpoint() {
    let Some(python) = common::python() else {
        return;
    };
    let dir = common::tempdir();
    let input = dir.path().join("in");
    write_sharded(&input, Kind::Float, 5, 4096, true, 3);
    let flags = "--method l1-unstructured --amount 0.5 --global";
    let one = dir.path().join("one");
    Cli::prune(&input, &one).flags(flags).ok();
    let many = dir.path().join("many");
    let out = common::output_within(
        common::ranks::torchrun(&python, Path::new(env!("CARGO_BIN_EXE_tch-prune")))
            .args(["prune"])
            .arg(&input)
            .arg("-o")
            .arg(&many)
            .args(flags.split(' ')),
    );
    assert!(
        out.status.success(),
        "torchrun failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(files(&many), files(&one));
}
