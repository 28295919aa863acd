//! Prunes a small MLP, trains it with the masks applied through the hooks, and makes the
//! pruning permanent: the library's main loop (`cargo run --example train_pruned`).
use tch::nn::{self, ModuleT, OptimizerConfig};
use tch::{Device, Kind, Tensor};
use tch_prune::{L1Unstructured, Pruner};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    tch::manual_seed(0);
    let device = Device::cuda_if_available();
    let vs = nn::VarStore::new(device);
    let root = vs.root();
    let net = nn::seq()
        .add(nn::linear(&root / "fc1", 10, 64, Default::default()))
        .add_fn(|x| x.relu())
        .add(nn::linear(&root / "fc2", 64, 2, Default::default()));
    let x = Tensor::randn([256, 10], (Kind::Float, device));
    let y = x
        .narrow(1, 0, 2)
        .sum_dim_intlist(1, false, Kind::Float)
        .gt(0)
        .to_kind(Kind::Int64);

    let pruner = Pruner::new(&vs);
    let model = pruner.wrap_t(net);
    let mut opt = nn::Adam::default().build(&vs, 1e-2)?;
    let names = ["fc1.weight", "fc2.weight"];
    println!("round  sparsity  loss");
    for round in 1..=3 {
        // Half of what remains in each layer: 50 %, 75 %, 87.5 % sparse.
        for name in names {
            pruner.prune(name, &L1Unstructured::new(0.5)?, None)?;
        }
        let mut loss = 0.0;
        for _ in 0..50 {
            let l = model.forward_t(&x, true).cross_entropy_for_logits(&y);
            opt.backward_step(&l);
            loss = l.double_value(&[]);
        }
        let (zeros, total) = names.iter().fold((0, 0), |(z, t), n| {
            let m = pruner.mask(n).unwrap();
            (
                z + m.eq(0).sum(Kind::Int64).int64_value(&[]),
                t + m.numel() as i64,
            )
        });
        println!(
            "{round:>5}  {:>7.1}%  {loss:.4}",
            100.0 * zeros as f64 / total as f64
        );
    }
    pruner.remove_all()?;
    let w = &vs.variables()["fc1.weight"];
    println!(
        "fc1.weight is a plain variable again, {} zeros",
        w.eq(0).sum(Kind::Int64).int64_value(&[])
    );
    Ok(())
}
