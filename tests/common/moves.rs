//! A pruned store moved to another device or dtype (`VarStore::set_device`, `set_kind`, `half`,
//! ...), then used: shared by the CPU tests (dtypes) and the CUDA tests (devices).

use super::assert_bits;
use tch::nn::{self, Module, OptimizerConfig, VarStore};
use tch::{Device, Kind, Tensor};
use tch_prune::{L1Unstructured, Pruner};

/// Names of the two weights [`pruned_mlp`] prunes.
pub const PRUNED: [&str; 2] = ["fc1.weight", "fc2.weight"];

/// An MLP on `device` with both weights pruned (L1, then Ln rows, then global L1), its masks
/// boolean if `bool_masks`.
pub fn pruned_mlp(device: Device, bool_masks: bool) -> (VarStore, nn::Sequential, Pruner) {
    tch::manual_seed(11);
    let vs = VarStore::new(device);
    let net = nn::seq()
        .add(nn::linear(vs.root() / "fc1", 6, 16, Default::default()))
        .add_fn(|x| x.relu())
        .add(nn::linear(vs.root() / "fc2", 16, 3, Default::default()));
    let pruner = if bool_masks {
        Pruner::with_bool_masks(&vs)
    } else {
        Pruner::new(&vs)
    };
    pruner.l1_unstructured(PRUNED[0], 0.5, None).unwrap();
    pruner.ln_structured(PRUNED[1], 1, 2.0, 0, None).unwrap();
    pruner
        .global_unstructured(
            &PRUNED,
            &L1Unstructured::new(0.2).unwrap(),
            &Default::default(),
        )
        .unwrap();
    (vs, net, pruner)
}

/// After the store was moved to (`device`, `kind`): every pruned tensor, its `_orig` and mask
/// (boolean masks stay boolean) are there, the tensor the module computes with holds
/// `orig * mask`, a forward and backward pass through the pruner give `_orig` exactly the
/// gradient PyTorch's `weight_orig` gets (`mask * orig` differentiated by autograd), and Adam
/// steps keep the pruned positions at exactly 0.
pub fn check_moved(
    vs: &VarStore,
    net: nn::Sequential,
    pruner: &Pruner,
    device: Device,
    kind: Kind,
    bool_masks: bool,
) {
    let mask_kind = if bool_masks { Kind::Bool } else { kind };
    let vars = vs.variables();
    for name in PRUNED {
        let (target, orig, mask) = (
            pruner.tensor(name).unwrap(),
            pruner.orig(name).unwrap(),
            pruner.mask(name).unwrap(),
        );
        for (what, t, k) in [
            ("tensor", &target, kind),
            ("_orig", &orig, kind),
            ("mask", &mask, mask_kind),
            (
                "_mask in the store",
                &vars[&format!("{name}_mask")],
                mask_kind,
            ),
        ] {
            assert_eq!((t.device(), t.kind()), (device, k), "{name}: {what}");
        }
        assert_bits(
            &target,
            &(&orig * mask.to_kind(kind)),
            &format!("{name}: tensor = orig * mask after the move"),
        );
    }

    // PyTorch's reparametrization on copies: weight = mask * weight_orig, differentiated.
    let x = Tensor::randn([32, 6], (Kind::Float, device)).to_kind(kind);
    let y = Tensor::randint(3, [32], (Kind::Int64, device));
    let leaves: Vec<Tensor> = PRUNED
        .iter()
        .map(|n| {
            pruner
                .orig(n)
                .unwrap()
                .detach()
                .copy()
                .set_requires_grad(true)
        })
        .collect();
    let weights: Vec<Tensor> = PRUNED
        .iter()
        .zip(&leaves)
        .map(|(n, o)| pruner.mask(n).unwrap().to_kind(kind) * o)
        .collect();
    let (b1, b2) = (vars["fc1.bias"].detach(), vars["fc2.bias"].detach());
    let reference = x
        .linear(&weights[0], Some(&b1))
        .relu()
        .linear(&weights[1], Some(&b2))
        .cross_entropy_for_logits(&y);
    reference.backward();

    let model = pruner.wrap(net);
    let mut opt = nn::Adam::default().build(vs, 1e-2).unwrap();
    let loss = model.forward(&x).cross_entropy_for_logits(&y);
    assert_bits(
        &loss,
        &reference,
        "loss, as PyTorch's reparametrized forward",
    );
    opt.zero_grad();
    loss.backward();
    for (name, leaf) in PRUNED.iter().zip(&leaves) {
        let grad = pruner.orig(name).unwrap().grad();
        assert_eq!((grad.device(), grad.kind()), (device, kind), "{name}: grad");
        assert_bits(
            &grad,
            &leaf.grad(),
            &format!("{name}: _orig.grad = PyTorch's"),
        );
        assert!(!pruner.tensor(name).unwrap().grad().defined(), "{name}");
    }
    let before: Vec<Tensor> = PRUNED
        .iter()
        .map(|n| pruner.orig(n).unwrap().detach().copy())
        .collect();
    opt.step();
    for _ in 0..3 {
        let loss = model.forward(&x).cross_entropy_for_logits(&y);
        opt.backward_step(&loss);
    }
    let _ = model.forward(&x);
    for (name, before) in PRUNED.iter().zip(&before) {
        let pruned = pruner.mask(name).unwrap().to_kind(Kind::Float).eq(0.0);
        let target = pruner.tensor(name).unwrap();
        let orig = pruner.orig(name).unwrap();
        let zeros = target.masked_select(&pruned);
        assert!(
            zeros.eq(0.0).all().int64_value(&[]) == 1,
            "{name}: pruned positions moved"
        );
        assert!(
            orig.masked_select(&pruned)
                .equal(&before.masked_select(&pruned)),
            "{name}: _orig moved at pruned positions"
        );
        assert!(
            !orig.equal(before),
            "{name}: _orig did not train at unpruned positions"
        );
    }
}
