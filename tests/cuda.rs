//! Everything that runs on a GPU, for the day one is lent: `make test-cuda` runs exactly these
//! with `TCH_PRUNE_REQUIRE_CUDA=1`, so that a missing GPU (or CUDA failing to load) fails them.
//! Under `make test` they skip where there is no GPU, with a visible line (tests/common/cuda.rs).
//! Each runs its CPU counterpart first where there is one, and compares with it or with
//! PyTorch on the same GPU.
//!
//! Parity on a GPU means parity with PyTorch on the same GPU: norms and `topk` are computed by
//! CUDA kernels there, which may round differently than the CPU's.

mod common;

use common::cuda;
use common::moves::{check_moved, pruned_mlp, PRUNED};
use common::{assert_bits, assert_same, run_python, run_python_without_gpu};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tch::nn::{self, Module, OptimizerConfig, VarStore};
use tch::{Device, Kind, Tensor};
use tch_prune::checkpoint::{read_state_dict, write_safetensors};
use tch_prune::model::{ModelFile, ScriptModel};
use tch_prune::*;

/// Values with ties, NaN, infinities, signed zeros and subnormals, of `kind`.
fn hard_values(shape: &[i64], kind: Kind) -> Tensor {
    let n: i64 = shape.iter().product();
    let special = Tensor::from_slice(&[
        f64::NAN,
        f64::INFINITY,
        f64::NEG_INFINITY,
        0.0,
        -0.0,
        1e-40,
        -1e-40,
        1.0,
        -1.0,
        1.0,
    ]);
    let noise = (Tensor::randn([n - 10], (Kind::Double, Device::Cpu)) * 2.0).round();
    Tensor::cat(&[special, noise], 0).to_kind(kind).view(shape)
}

/// L1 pruning (first, iterative over a live mask, global, and made permanent at once) of the
/// same values on `device`: the masks and weights, on the CPU.
fn l1_run(values: &[Tensor], device: Device, bool_masks: bool) -> Vec<Tensor> {
    let vs = VarStore::new(device);
    for (i, v) in values.iter().enumerate() {
        let _ = vs
            .root()
            .add(&format!("w{i}"), v.copy().to_device(device), true);
    }
    let pruner = if bool_masks {
        Pruner::with_bool_masks(&vs)
    } else {
        Pruner::new(&vs)
    };
    pruner.l1_unstructured("w0", 0.3, None).unwrap();
    pruner.l1_unstructured("w0", 5, None).unwrap();
    pruner
        .global_unstructured(
            &["w0", "w1"],
            &L1Unstructured::new(0.4).unwrap(),
            &HashMap::new(),
        )
        .unwrap();
    pruner
        .global_unstructured_and_remove(
            &["w2", "w3"],
            &L1Unstructured::new(0.6).unwrap(),
            &HashMap::new(),
        )
        .unwrap();
    let vars = vs.variables();
    let mut out: Vec<Tensor> = ["w0", "w1"]
        .iter()
        .map(|n| pruner.mask(n).unwrap().to_device(Device::Cpu))
        .collect();
    out.extend(["w2", "w3"].iter().map(|n| vars[*n].to_device(Device::Cpu)));
    out
}

#[test]
fn l1_selection_on_cuda_equals_cpu() {
    let _generator = common::generator();
    tch::manual_seed(21);
    let mut runs = Vec::new();
    for kind in [Kind::Float, Kind::Double, Kind::Half, Kind::BFloat16] {
        let values: Vec<Tensor> = [[8, 16], [5, 7], [12, 9], [3, 30]]
            .iter()
            .map(|s| hard_values(s, kind))
            .collect();
        for bool_masks in [false, true] {
            let cpu = l1_run(&values, Device::Cpu, bool_masks);
            // The CPU side prunes exactly what was asked: 30 % of w0 (38), 5 more, then 40 %
            // of what is left of w0 and w1 together.
            let live = |m: &Tensor| m.to_kind(Kind::Int64).sum(Kind::Int64).int64_value(&[]);
            let left = (128 - 38 - 5) + 35;
            let kept = left - (0.4 * left as f64).round() as i64;
            assert_eq!(live(&cpu[0]) + live(&cpu[1]), kept, "{kind:?}");
            let values_now: Vec<Tensor> = values.iter().map(Tensor::shallow_clone).collect();
            runs.push((kind, bool_masks, values_now, cpu));
        }
    }
    let Some(device) = cuda::device("l1_selection_on_cuda_equals_cpu") else {
        return;
    };
    for (kind, bool_masks, values, cpu) in runs {
        let gpu = l1_run(&values, device, bool_masks);
        for (i, (c, g)) in cpu.iter().zip(&gpu).enumerate() {
            let what = format!("{kind:?} bool_masks={bool_masks} tensor {i}");
            if i < 2 {
                assert_bits(&c.to_kind(Kind::Float), &g.to_kind(Kind::Float), &what);
            } else {
                // Weights: a kept NaN may come back with another payload from the GPU.
                assert_same(c, g, &what);
            }
        }
    }
}

#[test]
fn parity_cases_equal_pytorchs_on_cuda() {
    let _generator = common::generator();
    let Some(device) = cuda::device("parity_cases_equal_pytorchs_on_cuda") else {
        return;
    };
    let n = cuda::python_ran(
        "parity_cases_equal_pytorchs_on_cuda",
        common::parity::check_against_pytorch(device).map(|n| n.to_string()),
    );
    if let Some(n) = n {
        eprintln!("{n} cases equal to PyTorch's on {device:?}, twice");
    }
}

/// One forward and backward pass of the pruned MLP on `device` in `kind`, against PyTorch's
/// on the same device: the loss and each `_orig.grad` bit for bit; then Adam steps keep the
/// pruned positions at exactly 0. Returns false when Python's torch is not configured.
fn training_against_pytorch(device: Device, kind: Kind) -> bool {
    let (mut vs, net, pruner) = pruned_mlp(device, false);
    pruner.set_kind(&mut vs, kind).unwrap();
    tch::manual_seed(31);
    let x = Tensor::randn([32, 6], (Kind::Float, device)).to_kind(kind);
    let y = Tensor::randint(3, [32], (Kind::Int64, device));
    let dir = common::tempdir();
    let (state, out) = (
        dir.path().join("state.safetensors"),
        dir.path().join("grads.safetensors"),
    );
    let vars = vs.variables();
    let mut saved: Vec<(String, Tensor)> = vars
        .iter()
        .map(|(n, t)| (n.clone(), t.detach().to_device(Device::Cpu)))
        .collect();
    saved.push(("x".into(), x.to_device(Device::Cpu)));
    saved.push(("y".into(), y.to_device(Device::Cpu)));
    write_safetensors(&state, &saved).unwrap();
    let device_name = match device {
        Device::Cuda(i) => format!("cuda:{i}"),
        _ => "cpu".into(),
    };
    let dtype = match kind {
        Kind::BFloat16 => "bfloat16",
        Kind::Half => "float16",
        Kind::Double => "float64",
        _ => "float32",
    };
    let ran = run_python(
        include_str!("py/training_grads.py"),
        &[&state, &out, Path::new(&device_name), Path::new(dtype)],
    );
    if ran.is_none() {
        return false;
    }
    let expected: HashMap<String, Tensor> = read_state_dict(&out).unwrap().into_iter().collect();

    let model = pruner.wrap(net);
    let mut opt = nn::Adam::default().build(&vs, 1e-2).unwrap();
    opt.zero_grad();
    let loss = model.forward(&x).cross_entropy_for_logits(&y);
    loss.backward();
    let what = format!("{device:?} {kind:?}");
    assert_bits(
        &loss.to_device(Device::Cpu).reshape([1]),
        &expected["loss"],
        &format!("{what}: loss"),
    );
    for name in PRUNED {
        let grad = pruner.orig(name).unwrap().grad();
        assert_eq!(
            (grad.device(), grad.kind()),
            (device, kind),
            "{what} {name}"
        );
        assert_bits(
            &grad.to_device(Device::Cpu),
            &expected[&format!("{name}_orig.grad")],
            &format!("{what}: {name}_orig.grad = PyTorch's weight_orig.grad"),
        );
    }
    opt.step();
    for _ in 0..4 {
        let loss = model.forward(&x).cross_entropy_for_logits(&y);
        opt.backward_step(&loss);
    }
    pruner.apply_masks().unwrap();
    for name in PRUNED {
        let pruned = pruner.mask(name).unwrap().eq(0.0);
        let values = pruner.tensor(name).unwrap().masked_select(&pruned);
        assert!(
            values.eq(0.0).all().int64_value(&[]) == 1,
            "{what}: {name} pruned positions moved under Adam"
        );
    }
    true
}

#[test]
fn training_grads_equal_pytorchs_on_cpu() {
    let _generator = common::generator();
    for kind in [Kind::Float, Kind::BFloat16] {
        if !training_against_pytorch(Device::Cpu, kind) {
            return;
        }
    }
}

#[test]
fn training_grads_equal_pytorchs_on_cuda() {
    let _generator = common::generator();
    let Some(device) = cuda::device("training_grads_equal_pytorchs_on_cuda") else {
        return;
    };
    for kind in [Kind::Float, Kind::BFloat16] {
        let ran = training_against_pytorch(device, kind);
        cuda::python_ran(
            "training_grads_equal_pytorchs_on_cuda",
            ran.then(String::new),
        );
    }
}

#[test]
fn a_pruned_store_follows_set_device_both_ways() {
    let _generator = common::generator();
    let Some(device) = cuda::device("a_pruned_store_follows_set_device_both_ways") else {
        return;
    };
    for bool_masks in [false, true] {
        // Pruned on the CPU, trained on the GPU: the most common order.
        let (mut vs, net, pruner) = pruned_mlp(Device::Cpu, bool_masks);
        vs.set_device(device);
        check_moved(&vs, net, &pruner, device, Kind::Float, bool_masks);
        // And back, through the pruner.
        let (mut vs, net, pruner) = pruned_mlp(device, bool_masks);
        pruner.set_device(&mut vs, Device::Cpu).unwrap();
        check_moved(&vs, net, &pruner, Device::Cpu, Kind::Float, bool_masks);
        // To the GPU in bf16.
        let (mut vs, net, pruner) = pruned_mlp(Device::Cpu, bool_masks);
        pruner.set_device(&mut vs, device).unwrap();
        vs.bfloat16();
        check_moved(&vs, net, &pruner, device, Kind::BFloat16, bool_masks);
    }
}

#[test]
fn masks_live_on_the_parameters_device_and_cpu_scores_are_moved() {
    let _generator = common::generator();
    let Some(device) = cuda::device("masks_live_on_the_parameters_device_and_cpu_scores_are_moved")
    else {
        return;
    };
    let (vs, _net, pruner) = pruned_mlp(device, false);
    tch::manual_seed(3);
    pruner.random_unstructured("fc1.bias", 0.5).unwrap();
    pruner.random_structured("fc2.weight", 1, 1).unwrap();
    for name in pruner.pruned_names() {
        assert_eq!(pruner.mask(&name).unwrap().device(), device, "{name}");
        assert_eq!(pruner.tensor(&name).unwrap().device(), device, "{name}");
        assert_eq!(pruner.orig(&name).unwrap().device(), device, "{name}");
    }
    // Importance scores on the CPU for a CUDA weight: moved to it (PyTorch accepts them),
    // the same mask as the same scores on the GPU, per tensor and global alike.
    let scores = Tensor::randn([3, 16], (Kind::Float, Device::Cpu));
    let ln = LnStructured::new(1, 2.0, 0).unwrap();
    let weights = Tensor::randn([3, 16], (Kind::Float, Device::Cpu));
    let run = |scores: &Tensor, global: bool| {
        let vs = VarStore::new(device);
        let _ = vs.root().var_copy("w", &weights);
        let p = Pruner::new(&vs);
        if global {
            let s = HashMap::from([("w".to_string(), scores.shallow_clone())]);
            p.global_unstructured(&["w"], &L1Unstructured::new(0.5).unwrap(), &s)
                .unwrap();
        } else {
            p.prune("w", &ln, Some(scores)).unwrap();
        }
        p.mask("w").unwrap().to_device(Device::Cpu)
    };
    for global in [false, true] {
        assert_bits(
            &run(&scores, global),
            &run(&scores.to_device(device), global),
            "cpu scores",
        );
    }
    // Tensors on two devices in one global pruning: refused, nothing changed.
    let _ = vs.root().add(
        "on_cpu",
        Tensor::randn([4, 4], (Kind::Float, Device::Cpu)),
        true,
    );
    let before = pruner.mask("fc1.weight").unwrap().to_device(Device::Cpu);
    let err = pruner
        .global_unstructured(
            &["fc1.weight", "on_cpu"],
            &L1Unstructured::new(0.1).unwrap(),
            &HashMap::new(),
        )
        .unwrap_err();
    assert!(matches!(err, PruneError::MixedDevices { .. }), "{err}");
    assert_same(
        &pruner.mask("fc1.weight").unwrap().to_device(Device::Cpu),
        &before,
        "unchanged",
    );
}

#[test]
fn pruning_made_permanent_at_once_on_cuda_equals_cpu() {
    let _generator = common::generator();
    tch::manual_seed(4);
    let t = Tensor::randn([16, 12], (Kind::Float, Device::Cpu));
    let methods: [&dyn PruningMethod; 2] = [
        &L1Unstructured::new(0.5).unwrap(),
        &LnStructured::new(0.5, 2.0, 1).unwrap(),
    ];
    let run = |device: Device, method: &dyn PruningMethod| {
        let vs = VarStore::new(device);
        let w = vs.root().var_copy("w", &t);
        Pruner::new(&vs)
            .prune_and_remove("w", method, None)
            .unwrap();
        w.to_device(Device::Cpu)
    };
    let cpu: Vec<Tensor> = methods.iter().map(|m| run(Device::Cpu, *m)).collect();
    assert_eq!(cpu[0].eq(0.0).sum(Kind::Int64).int64_value(&[]), 96);
    let Some(device) = cuda::device("pruning_made_permanent_at_once_on_cuda_equals_cpu") else {
        return;
    };
    for (method, cpu) in methods.iter().zip(&cpu) {
        assert_bits(&run(device, *method), cpu, &format!("{method:?}"));
    }
}

fn fixtures(dir: &Path) -> Option<()> {
    run_python(
        include_str!("py/reference.py"),
        &[Path::new("fixtures"), dir],
    )?;
    run_python(include_str!("py/pruned_checkpoint.py"), &[dir])?;
    Some(())
}

/// Prunes each of the CNN's files with the CLI on `device`; returns the outputs.
fn cli_outputs(dir: &Path, device: &str) -> Vec<PathBuf> {
    let mut outputs = Vec::new();
    for file in ["cnn.ts.pt", "cnn.sd.pt", "cnn.safetensors"] {
        for (i, args) in [
            &["--method", "l1-unstructured", "--amount", "0.5", "--global"][..],
            &[
                "--method",
                "ln-structured",
                "--amount",
                "2",
                "--n",
                "2",
                "--dim",
                "0",
            ][..],
        ]
        .iter()
        .enumerate()
        {
            let out = dir.join(format!("{device}-{i}-{file}"));
            let input = dir.join(file);
            let mut all = vec![
                "prune",
                input.to_str().unwrap(),
                "-o",
                out.to_str().unwrap(),
                "--device",
                device,
            ];
            all.extend_from_slice(args);
            common::ok(&all);
            outputs.push(out);
        }
    }
    outputs
}

const NO_GPU_CHECK: &str = r#"
import sys, torch
assert not torch.cuda.is_available()
for path in sys.argv[1:]:
    m = torch.jit.load(path)
    assert all(t.device.type == "cpu" for t in m.state_dict().values()), path
print("OK")
"#;

/// The TorchScript files among `outputs` load and run in a PyTorch that sees no GPU.
fn loads_without_a_gpu(outputs: &[PathBuf]) {
    let script: Vec<&Path> = outputs
        .iter()
        .filter(|p| p.to_string_lossy().ends_with(".ts.pt"))
        .map(PathBuf::as_path)
        .collect();
    let out = run_python_without_gpu(NO_GPU_CHECK, &script).unwrap();
    assert_eq!(out.trim(), "OK");
}

#[test]
fn cli_on_cuda_equals_cpu_and_its_torchscript_loads_without_a_gpu() {
    const TEST: &str = "cli_on_cuda_equals_cpu_and_its_torchscript_loads_without_a_gpu";
    let dir = common::tempdir();
    if fixtures(dir.path()).is_none() {
        let _ = cuda::python_ran(TEST, None);
        return;
    }
    let cpu = cli_outputs(dir.path(), "cpu");
    loads_without_a_gpu(&cpu);
    let Some(_) = cuda::device(TEST) else {
        return;
    };
    let gpu = cli_outputs(dir.path(), "cuda");
    loads_without_a_gpu(&gpu);
    for (c, g) in cpu.iter().zip(&gpu) {
        let (c, g) = (read_state_dict(c).unwrap(), read_state_dict(g).unwrap());
        assert_eq!(c.len(), g.len());
        for ((cn, ct), (gn, gt)) in c.iter().zip(&g) {
            assert_eq!(cn, gn);
            assert_eq!(gt.device(), Device::Cpu, "{cn}: read back onto the CPU");
            assert_same(ct, gt, &format!("{cn}: --device cuda = --device cpu"));
        }
    }
}

#[test]
fn pytorch_pruned_checkpoints_load_onto_cuda() {
    let dir = common::tempdir();
    if fixtures(dir.path()).is_none() {
        let _ = cuda::python_ran("pytorch_pruned_checkpoints_load_onto_cuda", None);
        return;
    }
    let path = dir.path().join("pruned.sd.pt");
    let state = |device: Device| {
        let model = ModelFile::open(&path, device).unwrap();
        let pruner = model.pruner().unwrap();
        assert_eq!(pruner.pruned_names(), ["0.weight", "3.weight", "7.bias"]);
        for name in pruner.pruned_names() {
            assert_eq!(pruner.mask(&name).unwrap().device(), device, "{name}");
            assert_eq!(pruner.tensor(&name).unwrap().device(), device, "{name}");
        }
        pruner.l1_unstructured("0.weight", 0.5, None).unwrap();
        model.reparametrized_state(&pruner).unwrap()
    };
    let cpu = state(Device::Cpu);
    let Some(device) = cuda::device("pytorch_pruned_checkpoints_load_onto_cuda") else {
        return;
    };
    for ((cn, ct), (gn, gt)) in cpu.iter().zip(&state(device)) {
        assert_eq!(cn, gn);
        assert_same(ct, gt, cn);
    }
}

#[test]
fn torchscript_from_a_cuda_model_loads_without_a_gpu() {
    let Some(device) = cuda::device("torchscript_from_a_cuda_model_loads_without_a_gpu") else {
        return;
    };
    let dir = common::tempdir();
    let made = run_python(
        include_str!("py/script_export.py"),
        &[Path::new("make"), dir.path()],
    );
    if cuda::python_ran("torchscript_from_a_cuda_model_loads_without_a_gpu", made).is_none() {
        return;
    }
    let original = dir.path().join("cnn.ts.pt");
    let model = ScriptModel::load(&original, device).unwrap();
    let pruner = Pruner::new(model.var_store());
    pruner.l1_unstructured("0.weight", 0.5, None).unwrap();
    pruner.ln_structured("3.weight", 2, 2.0, 0, None).unwrap();
    let x = Tensor::randn([2, 3, 8, 8], (Kind::Float, device));
    let _ = pruner.forward(|| model.forward(&x)).unwrap().unwrap();
    let (saved, on_gpu) = (dir.path().join("saved.pt"), dir.path().join("on-gpu.pt"));
    model.save(&saved).unwrap();
    model.save_on(&on_gpu, device).unwrap();
    // The module still runs on the GPU.
    assert_eq!(
        pruner
            .forward(|| model.forward(&x))
            .unwrap()
            .unwrap()
            .device(),
        device
    );
    let vars = model.var_store().variables();
    let params: Vec<(String, Tensor)> = model
        .parameter_names()
        .iter()
        .map(|n| (n.clone(), vars[n].detach().to_device(Device::Cpu)))
        .collect();
    let expected = dir.path().join("expected.safetensors");
    write_safetensors(&expected, &params).unwrap();
    let out = run_python_without_gpu(
        include_str!("py/script_export.py"),
        &[Path::new("check"), &original, &expected, &saved],
    )
    .unwrap();
    assert_eq!(out.trim(), "OK");
    // Asked for the GPU, the tensors are on the GPU.
    let on_cuda = run_python(
        "import sys, torch\nm = torch.jit.load(sys.argv[1])\nprint({t.device.type for t in m.state_dict().values()})",
        &[&on_gpu],
    )
    .unwrap();
    assert_eq!(on_cuda.trim(), "{'cuda'}");
}

/// The process group's collectives and the data-parallel check on CUDA tensors, over localhost
/// (this binary run again as each rank): Gloo stages a CUDA tensor through the CPU; NCCL reduces
/// it on the GPU, one rank per GPU (NCCL refuses two ranks on one device); the masks pruned on
/// the GPU are identical on every rank; the selection across ranks refuses CUDA tensors with one
/// line on every rank (no rank waits for the others). The CPU run first.
#[test]
fn process_group_on_cuda_tensors() {
    let test = "process_group_on_cuda_tensors";
    run_ranks("cpu", 2);
    if cuda::device(test).is_some() {
        run_ranks("cuda", 2);
        run_ranks("nccl", (tch::Cuda::device_count() as usize).min(2));
    }
}

fn run_ranks(device: &str, world: usize) {
    let exe = std::env::current_exe().expect("the test binary");
    let worker = || {
        let mut command = std::process::Command::new(&exe);
        command
            .args(["--exact", "distributed_worker", "--nocapture"])
            .env("TCH_PRUNE_DIST_WORKER", device);
        command
    };
    let children: Vec<_> = common::ranks::spawn(worker, world, &[])
        .into_iter()
        .map(|c| common::wait_within(c, "a rank"))
        .collect();
    for (rank, out) in children.iter().enumerate() {
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains(&format!("rank {rank}: ok {device}")),
            "{device} rank {rank}: {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// One rank of [`process_group_on_cuda_tensors`]; nothing when run as an ordinary test.
#[test]
fn distributed_worker() {
    use tch_prune::distributed::{Backend, GroupConfig, ProcessGroup, ReduceOp};
    let Ok(which) = std::env::var("TCH_PRUNE_DIST_WORKER") else {
        return;
    };
    let backend = if which == "nccl" {
        Backend::Nccl
    } else {
        Backend::Gloo
    };
    let config = GroupConfig::from_env().unwrap().with_backend(backend);
    let group = ProcessGroup::new(&config).unwrap();
    assert_eq!(group.backend(), backend);
    let device = match which.as_str() {
        "cuda" | "nccl" => Device::Cuda(group.local_rank() % tch::Cuda::device_count() as usize),
        _ => Device::Cpu,
    };
    let w = group.world_size() as f64;
    let t = Tensor::ones([5], (Kind::Float, device));
    group.all_reduce(&t, ReduceOp::Sum).unwrap();
    assert_eq!(t.device(), device);
    assert_eq!(t.sum(Kind::Double).double_value(&[]), 5.0 * w);
    // A strided view, reduced through a contiguous copy on the same device.
    let m = Tensor::ones([4, 3], (Kind::Float, device));
    group.all_reduce(&m.tr(), ReduceOp::Max).unwrap();
    assert_eq!(m.sum(Kind::Double).double_value(&[]), 12.0);
    let root = Tensor::full([3], group.rank() as f64, (Kind::Double, device));
    group.broadcast(&root, 0).unwrap();
    assert_eq!(root.sum(Kind::Double).double_value(&[]), 0.0);
    let gathered = group.all_gather(&t).unwrap();
    assert_eq!(gathered.size(), [group.world_size() as i64, 5]);
    let on = if backend == Backend::Nccl {
        device
    } else {
        Device::Cpu
    };
    assert_eq!(gathered.device(), on);
    // Gradients averaged over the ranks, on the GPU with NCCL.
    let grads = VarStore::new(device);
    let x = grads.root().var("x", &[6], nn::Init::Const(0.0));
    (&x * (group.rank() as f64 + 1.0))
        .sum(Kind::Float)
        .backward();
    group.all_reduce_gradients(&grads).unwrap();
    let mean = (1..=group.world_size()).sum::<usize>() as f64 / w;
    assert_eq!(x.grad().mean(Kind::Double).double_value(&[]), mean);

    tch::manual_seed(1);
    let vs = VarStore::new(device);
    let _a = nn::linear(vs.root() / "a", 32, 16, Default::default());
    let _b = nn::linear(vs.root() / "b", 16, 4, Default::default());
    let pruner = Pruner::new(&vs);
    pruner.l1_unstructured("a.weight", 0.4, None).unwrap();
    pruner
        .global_unstructured(
            &["a.weight", "b.weight"],
            &L1Unstructured::new(0.3).unwrap(),
            &HashMap::new(),
        )
        .unwrap();
    pruner.check_consistent(&group).unwrap();

    // Across ranks the selection takes CPU tensors only: refused on every rank, at once.
    let refused = pruner.global_unstructured_across(
        &group,
        &["b.bias"],
        &L1Unstructured::new(0.5).unwrap(),
        &HashMap::new(),
    );
    if device != Device::Cpu {
        let e = refused.unwrap_err().to_string();
        assert!(e.contains("contiguous CPU tensors"), "{e}");
    } else {
        refused.unwrap();
    }
    group.barrier().unwrap();
    println!("rank {}: ok {which}", group.rank());
}
