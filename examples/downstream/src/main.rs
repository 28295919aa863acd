//! A training program with tch-prune as a dependency: prunes a small MLP, trains it a few steps
//! with the masks on, makes the pruning permanent and saves it. `make test` runs it under
//! `env -i`: it must start without `LD_LIBRARY_PATH`, with libtorch's CUDA backend loaded when
//! libtorch has one, and fails (non-zero status) if anything is not as it should be.
use std::error::Error;
use tch::nn::{self, ModuleT, OptimizerConfig};
use tch::{Device, Kind, Tensor};
use tch_prune::backend::Backend;
use tch_prune::distributed::{GroupConfig, ProcessGroup, ReduceOp};
use tch_prune::{LnStructured, Pruner};

fn main() -> Result<(), Box<dyn Error>> {
    let out = std::env::args()
        .nth(1)
        .ok_or("usage: tch-prune-downstream OUT.safetensors | --libtorch-lib")?;
    if out == "--libtorch-lib" {
        // The folder the binary was linked against and carries as its run path.
        println!("{}", tch_prune::backend::LIBTORCH_LIB);
        return Ok(());
    }
    let backend = Backend::detect();
    println!("{backend}");
    if backend.cuda_compiled && !backend.cuda_loaded {
        return Err(
            "libtorch has a CUDA backend but this binary did not load it: \
                    its build.rs must pass on DEP_TCH_PRUNE_LINK_ARG"
                .into(),
        );
    }

    tch::manual_seed(0);
    let device = Device::cuda_if_available();
    let vs = nn::VarStore::new(device);
    let net = nn::seq_t()
        .add(nn::linear(vs.root() / "fc1", 16, 64, Default::default()))
        .add_fn(|x| x.relu())
        .add(nn::linear(vs.root() / "fc2", 64, 2, Default::default()));
    let x = Tensor::randn([256, 16], (Kind::Float, device));
    let y = x
        .narrow(1, 0, 3)
        .sum_dim_intlist(1, false, Kind::Float)
        .gt(0)
        .to_kind(Kind::Int64);

    let pruner = Pruner::new(&vs);
    pruner.l1_unstructured("fc1.weight", 0.5, None)?;
    pruner.prune("fc2.weight", &LnStructured::new(16, 2.0, 1)?, None)?;
    one_rank_group(&pruner)?;
    let names = ["fc1.weight", "fc2.weight"];
    let before: Vec<Tensor> = names
        .iter()
        .map(|n| pruner.orig(n).unwrap().copy())
        .collect();
    let model = pruner.wrap_t(net);
    let mut opt = nn::Adam::default().build(&vs, 1e-2)?;
    let mut losses = vec![];
    for _ in 0..20 {
        let loss = model.forward_t(&x, true).cross_entropy_for_logits(&y);
        opt.backward_step(&loss);
        losses.push(loss.double_value(&[]));
    }
    let (first, last) = (losses[0], losses[losses.len() - 1]);
    println!(
        "on {device:?}: loss {first:.4} -> {last:.4} in {} steps",
        losses.len()
    );
    if last >= first {
        return Err(format!("training did not reduce the loss: {first} -> {last}").into());
    }
    // Training moved the kept weights and nothing else: the pruned positions got no gradient
    // (`_orig` keeps its values there) and the weight the model computes with is zero there.
    for (name, before) in names.iter().zip(&before) {
        let pruned = pruner
            .mask(name)
            .ok_or(format!("{name} has no mask"))?
            .eq(0);
        let orig = pruner.orig(name).ok_or(format!("{name} has no _orig"))?;
        let weight = pruner
            .tensor(name)
            .ok_or(format!("{name} is not in the store"))?;
        let moved = (&orig - before).abs();
        let kept_moved = moved.masked_select(&pruned.logical_not()).sum(Kind::Double);
        let pruned_moved = moved.masked_select(&pruned).sum(Kind::Double);
        let pruned_values = weight.abs().masked_select(&pruned).sum(Kind::Double);
        if kept_moved.double_value(&[]) == 0.0
            || pruned_moved.double_value(&[]) != 0.0
            || pruned_values.double_value(&[]) != 0.0
        {
            return Err(format!("{name}: training did not respect the mask").into());
        }
    }

    pruner.remove_all()?;
    vs.save(&out)?;
    let saved = Tensor::read_safetensors(&out)?;
    let fc1 = &saved
        .iter()
        .find(|(name, _)| name == "fc1.weight")
        .ok_or("fc1.weight was not saved")?
        .1;
    let zeros = fc1.eq(0).sum(Kind::Int64).int64_value(&[]);
    println!(
        "saved {out}: {} tensors, fc1.weight {zeros} of {} zero",
        saved.len(),
        fc1.numel()
    );
    if zeros as usize != fc1.numel() / 2 {
        return Err(format!("fc1.weight should be half zeros, has {zeros}").into());
    }
    Ok(())
}

/// A process group of one rank (c10d's TCPStore and Gloo, in libtorch_cpu.so): the distributed
/// API links and runs from a dependent's binary too.
fn one_rank_group(pruner: &Pruner) -> Result<(), Box<dyn Error>> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let group = ProcessGroup::new(&GroupConfig::new(0, 1, "127.0.0.1", port))?;
    let t = Tensor::from_slice(&[2f32, 3.]);
    group.all_reduce(&t, ReduceOp::Max)?;
    pruner.check_consistent(&group)?;
    if Vec::<f32>::try_from(&t)? != [2., 3.] || group.world_size() != 1 {
        return Err("a one-rank all_reduce changed its tensor".into());
    }
    println!("process group: {group:?}");
    Ok(())
}
