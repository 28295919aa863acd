//! The registry on a VarStore: reparametrization, hooks, training, `remove`, and atomic failures.

use crate::common;

use common::assert_same;
use std::collections::HashMap;
use tch::nn::{self, Module, ModuleT, OptimizerConfig};
use tch::{Device, Kind, Tensor};
use tch_prune::*;

fn mlp(vs: &nn::VarStore) -> nn::Sequential {
    let root = vs.root();
    nn::seq()
        .add(nn::linear(&root / "fc1", 6, 16, Default::default()))
        .add_fn(|x| x.relu())
        .add(nn::linear(&root / "fc2", 16, 3, Default::default()))
}

fn data(device: Device) -> (Tensor, Tensor) {
    let x = Tensor::randn([64, 6], (Kind::Float, device));
    let y = x.narrow(1, 0, 3).argmax(1, false);
    (x, y)
}

/// Everything observable about a store and its pruner, to check that failed calls change nothing.
fn snapshot(vs: &nn::VarStore, pruner: &Pruner) -> String {
    let vars = vs.variables();
    let mut names: Vec<&String> = vars.keys().collect();
    names.sort();
    let mut out = String::new();
    for name in names {
        let t = &vars[name];
        out += &format!(
            "{name} {:?} {:?} {} {:?}\n",
            t.kind(),
            t.size(),
            t.requires_grad(),
            Vec::<f64>::try_from(&t.to_kind(Kind::Double).view([-1])).unwrap()
        );
    }
    out += &format!("trainable: {}\n", vs.trainable_variables().len());
    for name in pruner.pruned_names() {
        out += &format!(
            "{name}: {:?} {}\n",
            pruner.history(&name),
            pruner.tensor(&name).unwrap()
        );
    }
    out
}

#[test]
fn pruning_leaves_orig_and_mask_with_pytorchs_names_dtype_and_device() {
    let _generator = common::generator();
    let vs = nn::VarStore::new(Device::Cpu);
    let _ = (vs.root() / "fc1").add(
        "weight",
        Tensor::randn([4, 5], (Kind::Double, Device::Cpu)),
        true,
    );
    let before = vs.variables()["fc1.weight"].copy();
    let pruner = Pruner::new(&vs);
    pruner.l1_unstructured("fc1.weight", 0.5, None).unwrap();
    let vars = vs.variables();
    assert!(!vars.contains_key("fc1.weight"));
    let (orig, mask) = (&vars["fc1.weight_orig"], &vars["fc1.weight_mask"]);
    assert_same(orig, &before, "orig keeps the values");
    assert_eq!(mask.kind(), Kind::Double);
    assert_eq!(mask.device(), Device::Cpu);
    assert!(orig.requires_grad() && !mask.requires_grad());
    assert_eq!(mask.eq(0).sum(Kind::Int64).int64_value(&[]), 10);
    // The trainable list has orig; the mask is a buffer.
    let trainable = vs.trainable_variables();
    assert!(trainable.iter().any(|t| t.data_ptr() == orig.data_ptr()));
    assert!(!trainable.iter().any(|t| t.data_ptr() == mask.data_ptr()));
    assert!(pruner.is_pruned("fc1.weight"));
    assert_eq!(pruner.pruned_names(), ["fc1.weight"]);
}

#[test]
fn modules_inside_a_sequential_see_the_masked_weights_without_rewiring() {
    let _generator = common::generator();
    let vs = nn::VarStore::new(Device::Cpu);
    let net = mlp(&vs);
    let x = Tensor::randn([8, 6], (Kind::Float, Device::Cpu));
    let pruner = Pruner::new(&vs);
    pruner.l1_unstructured("fc1.weight", 1.0, None).unwrap();
    pruner.l1_unstructured("fc1.bias", 1.0, None).unwrap();
    // fc1 outputs zeros, so the net outputs fc2's bias whatever the input.
    let y = net.forward(&x);
    let bias = vs.variables()["fc2.bias"].shallow_clone();
    assert_same(&y, &bias.expand_as(&y), "output is fc2.bias");
}

#[test]
fn reapplying_masks_after_orig_changes() {
    let _generator = common::generator();
    let vs = nn::VarStore::new(Device::Cpu);
    let net = mlp(&vs);
    let pruner = Pruner::new(&vs);
    pruner.random_unstructured("fc1.weight", 0.5).unwrap();
    let orig = pruner.orig("fc1.weight").unwrap();
    let _ = tch::no_grad(|| orig.shallow_clone().fill_(2.0));
    // Inference path: no grad, explicit call.
    tch::no_grad(|| pruner.apply_masks()).unwrap();
    let expected = pruner.mask("fc1.weight").unwrap() * 2.0;
    assert_same(
        &pruner.tensor("fc1.weight").unwrap(),
        &expected,
        "after apply_masks",
    );
    // Loading new values into the store is seen at the next forward pass through the wrapper.
    let dir = common::tempdir();
    let path = dir.path().join("s.safetensors");
    let _ = tch::no_grad(|| orig.shallow_clone().fill_(3.0));
    vs.save(&path).unwrap();
    let _ = tch::no_grad(|| orig.shallow_clone().fill_(0.0));
    let mut vs2 = vs;
    vs2.load(&path).unwrap();
    let model = pruner.wrap(net);
    let _ = tch::no_grad(|| model.forward(&Tensor::zeros([1, 6], (Kind::Float, Device::Cpu))));
    let expected = pruner.mask("fc1.weight").unwrap() * 3.0;
    assert_same(
        &pruner.tensor("fc1.weight").unwrap(),
        &expected,
        "after load + forward",
    );
}

/// Trains a pruned MLP; returns the first and last losses.
fn train(device: Device, adam: bool, optimizer_before_pruning: bool) -> (f64, f64) {
    tch::manual_seed(7);
    let vs = nn::VarStore::new(device);
    let net = mlp(&vs);
    let build = |vs: &nn::VarStore| {
        if adam {
            nn::Adam::default().build(vs, 1e-2).unwrap()
        } else {
            nn::Sgd::default().build(vs, 0.1).unwrap()
        }
    };
    let mut early = optimizer_before_pruning.then(|| build(&vs));
    let pruner = Pruner::new(&vs);
    pruner.l1_unstructured("fc1.weight", 0.6, None).unwrap();
    pruner.ln_structured("fc2.weight", 1, 2.0, 1, None).unwrap();
    pruner
        .global_unstructured(
            &["fc1.weight", "fc2.weight"],
            &L1Unstructured::new(0.2).unwrap(),
            &HashMap::new(),
        )
        .unwrap();
    let mut opt = early.take().unwrap_or_else(|| build(&vs));
    let origs: Vec<Tensor> = ["fc1.weight", "fc2.weight"]
        .iter()
        .map(|n| pruner.orig(n).unwrap().copy())
        .collect();
    let model = pruner.wrap_t(net);
    let (x, y) = data(device);
    let mut losses = vec![];
    for _ in 0..30 {
        let loss = model.forward_t(&x, true).cross_entropy_for_logits(&y);
        opt.backward_step(&loss);
        losses.push(loss.double_value(&[]));
    }
    let _ = tch::no_grad(|| model.forward_t(&x, false));
    for (name, before) in ["fc1.weight", "fc2.weight"].iter().zip(origs) {
        let mask = pruner.mask(name).unwrap();
        let pruned = mask.eq(0);
        let effective = pruner.tensor(name).unwrap();
        assert_eq!(
            effective
                .masked_select(&pruned)
                .abs()
                .sum(Kind::Double)
                .double_value(&[]),
            0.0,
            "{name}: pruned positions stay zero"
        );
        let orig = pruner.orig(name).unwrap();
        assert_same(
            &orig.masked_select(&pruned),
            &before.masked_select(&pruned),
            &format!("{name}: orig keeps its values where pruned"),
        );
        let kept = pruned.logical_not();
        let unchanged = orig
            .masked_select(&kept)
            .eq_tensor(&before.masked_select(&kept))
            .all();
        assert_eq!(
            unchanged.int64_value(&[]),
            0,
            "{name}: unpruned entries trained"
        );
    }
    (losses[0], *losses.last().unwrap())
}

#[test]
fn training_keeps_pruned_positions_at_zero_and_learns() {
    let _generator = common::generator();
    for adam in [false, true] {
        for before in [false, true] {
            let (first, last) = train(Device::Cpu, adam, before);
            assert!(
                last < first * 0.8,
                "adam={adam} optimizer before pruning={before}: loss {first} -> {last}"
            );
        }
    }
}

/// libtorch prints warnings to stderr (e.g. when an optimizer reads `.grad` of a non-leaf); the
/// training loop runs in a child process so that its stderr can be checked.
#[test]
fn training_prints_no_libtorch_warnings() {
    let _generator = common::generator();
    if std::env::var_os("TCH_PRUNE_WARNING_CHILD").is_some() {
        train(Device::Cpu, false, true);
        train(Device::Cpu, true, false);
        // The explicit-call path, with a conv net (whose backward reuses the weight it saved).
        let vs = nn::VarStore::new(Device::Cpu);
        let conv = nn::conv2d(vs.root() / "conv", 2, 3, 3, Default::default());
        let mut opt = nn::Adam::default().build(&vs, 0.1).unwrap();
        let pruner = Pruner::new(&vs);
        pruner.l1_unstructured("conv.weight", 0.5, None).unwrap();
        let x = Tensor::randn([4, 2, 5, 5], (Kind::Float, Device::Cpu));
        for _ in 0..3 {
            opt.zero_grad();
            pruner.apply_masks().unwrap();
            let loss = conv.forward(&x).square().mean(Kind::Float);
            loss.backward();
            opt.step();
        }
        return;
    }
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "pruner::training_prints_no_libtorch_warnings",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("TCH_PRUNE_WARNING_CHILD", "1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "child failed: {stderr}");
    assert!(
        !stderr.contains("Warning") && !stderr.contains("[W"),
        "libtorch warned:\n{stderr}"
    );
}

#[test]
fn remove_makes_pruning_permanent_and_training_continues_on_the_plain_variable() {
    let _generator = common::generator();
    let vs = nn::VarStore::new(Device::Cpu);
    let net = mlp(&vs);
    let pruner = Pruner::new(&vs);
    pruner.l1_unstructured("fc1.weight", 0.5, None).unwrap();
    let expected = pruner.orig("fc1.weight").unwrap() * pruner.mask("fc1.weight").unwrap();
    pruner.remove_all().unwrap();
    assert!(pruner.pruned_names().is_empty());
    let w = vs.variables()["fc1.weight"].shallow_clone();
    assert_same(&w, &expected, "masked values");
    assert!(w.requires_grad() && w.is_leaf());
    let mut opt = nn::Sgd::default().build(&vs, 0.1).unwrap();
    let (x, y) = data(Device::Cpu);
    opt.backward_step(&net.forward(&x).cross_entropy_for_logits(&y));
    assert_eq!(
        w.eq_tensor(&expected).all().int64_value(&[]),
        0,
        "the weight trains again"
    );
}

#[test]
fn every_rejected_input_gives_its_error_and_changes_nothing() {
    let _generator = common::generator();
    let vs = nn::VarStore::new(Device::Cpu);
    let _net = mlp(&vs);
    let _ = (vs.root() / "bn").zeros_no_train("running_mean", &[3]);
    let _ = (vs.root() / "taken").zeros("weight", &[2, 2]);
    let _ = (vs.root() / "taken").zeros_no_train("weight_mask", &[2, 2]);
    let pruner = Pruner::new(&vs);
    pruner.l1_unstructured("fc1.weight", 0.5, None).unwrap();
    pruner.ln_structured("fc2.weight", 2, 1.0, 1, None).unwrap();
    let state = snapshot(&vs, &pruner);
    let wrong_shape = Tensor::ones([3, 3], (Kind::Float, Device::Cpu));
    let check = |what: &str, result: Result<()>, expected: fn(&PruneError) -> bool| {
        let err = result.expect_err(what);
        assert!(expected(&err), "{what}: unexpected error {err:?}");
        assert!(
            !err.to_string().contains('\n'),
            "{what}: message is one line"
        );
        assert_eq!(snapshot(&vs, &pruner), state, "{what}: state changed");
    };
    use PruneError::*;
    check(
        "fraction above 1",
        pruner.l1_unstructured("fc1.weight", 1.5, None),
        |e| matches!(e, InvalidAmount(_)),
    );
    check(
        "negative count",
        pruner.random_unstructured("fc1.bias", -1),
        |e| matches!(e, InvalidAmount(_)),
    );
    check(
        "NaN",
        pruner.l1_unstructured("fc1.bias", f64::NAN, None),
        |e| matches!(e, InvalidAmount(_)),
    );
    check(
        "count above size",
        pruner.l1_unstructured("fc1.bias", 17, None),
        |e| {
            matches!(
                e,
                AmountTooLarge {
                    amount: 17,
                    available: 16
                }
            )
        },
    );
    // fc1.weight has 48 of 96 entries left.
    check(
        "count above what remains",
        pruner.l1_unstructured("fc1.weight", 49, None),
        |e| {
            matches!(
                e,
                AmountTooLarge {
                    amount: 49,
                    available: 48
                }
            )
        },
    );
    check(
        "channels above what remain",
        pruner.ln_structured("fc2.weight", 15, 2.0, 1, None),
        |e| {
            matches!(
                e,
                AmountTooLarge {
                    amount: 15,
                    available: 14
                }
            )
        },
    );
    check(
        "dim too large",
        pruner.ln_structured("fc1.weight", 1, 2.0, 2, None),
        |e| matches!(e, InvalidDim { dim: 2, .. }),
    );
    check(
        "dim too negative",
        pruner.random_structured("fc2.bias", 1, -3),
        |e| matches!(e, NotMultidimensional { .. }),
    );
    check(
        "dim too negative, 2-D",
        pruner.random_structured("fc2.weight", 1, -3),
        |e| matches!(e, InvalidDim { dim: -3, .. }),
    );
    check(
        "structured on 1-D",
        pruner.ln_structured("fc1.bias", 1, 2.0, 0, None),
        |e| matches!(e, NotMultidimensional { .. }),
    );
    check(
        "fro over 3 dims",
        pruner.ln_structured("fc1.weight", 1, Norm::Nuc, 0, None),
        |e| matches!(e, InvalidNorm { .. }),
    );
    check(
        "unknown tensor",
        pruner.l1_unstructured("fc3.weight", 0.1, None),
        |e| matches!(e, UnknownTensor(_)),
    );
    check(
        "a buffer",
        pruner.l1_unstructured("bn.running_mean", 0.1, None),
        |e| matches!(e, NotAParameter(_)),
    );
    check(
        "name taken",
        pruner.l1_unstructured("taken.weight", 0.1, None),
        |e| matches!(e, NameTaken { .. }),
    );
    check(
        "scores of the wrong shape",
        pruner.l1_unstructured("fc1.bias", 0.1, Some(&wrong_shape)),
        |e| matches!(e, ShapeMismatch { .. }),
    );
    check(
        "scores of the wrong shape, re-prune",
        pruner.l1_unstructured("fc1.weight", 0.1, Some(&wrong_shape)),
        |e| matches!(e, ShapeMismatch { .. }),
    );
    check("remove unpruned", pruner.remove("fc1.bias"), |e| {
        matches!(e, NotPruned(_))
    });
    check(
        "custom mask of the wrong shape",
        pruner.custom_from_mask("fc1.bias", &wrong_shape),
        |e| matches!(e, ShapeMismatch { .. }),
    );
    check(
        "custom mask of the wrong shape, re-prune",
        pruner.custom_from_mask("fc1.weight", &wrong_shape),
        |e| matches!(e, ShapeMismatch { .. }),
    );
    let l1 = L1Unstructured::new(0.5).unwrap();
    let none = HashMap::new();
    check(
        "global with a structured method",
        pruner.global_unstructured(
            &["fc1.weight"],
            &LnStructured::new(1, 2.0, 0).unwrap(),
            &none,
        ),
        |e| matches!(e, NotUnstructured(_)),
    );
    check(
        "global with no tensors",
        pruner.global_unstructured(&[], &l1, &none),
        |e| matches!(e, NothingToPrune),
    );
    check(
        "global with an unknown tensor",
        pruner.global_unstructured(&["fc1.bias", "nope"], &l1, &none),
        |e| matches!(e, UnknownTensor(_)),
    );
    check(
        "global count too large",
        pruner.global_unstructured(
            &["fc1.weight", "fc1.bias"],
            &L1Unstructured::new(65).unwrap(),
            &none,
        ),
        |e| {
            matches!(
                e,
                AmountTooLarge {
                    amount: 65,
                    available: 64
                }
            )
        },
    );
    check(
        "global listing a tensor twice",
        pruner.global_unstructured(&["fc1.bias", "fc1.bias"], &l1, &none),
        |e| matches!(e, ListedTwice { name, what: "global" } if name == "fc1.bias"),
    );
    let bad_scores = HashMap::from([("fc1.bias".to_string(), wrong_shape.shallow_clone())]);
    check(
        "global scores of the wrong shape",
        pruner.global_unstructured(&["fc1.weight", "fc1.bias"], &l1, &bad_scores),
        |e| matches!(e, ShapeMismatch { .. }),
    );
    let stray_scores = HashMap::from([(
        "fc2.bias".to_string(),
        Tensor::ones([3], (Kind::Float, Device::Cpu)),
    )]);
    check(
        "global scores for a tensor not pruned",
        pruner.global_unstructured(&["fc1.bias"], &l1, &stray_scores),
        |e| matches!(e, ScoresForUnselected(name) if name == "fc2.bias"),
    );
    // Construction errors, before any pruner call.
    assert!(matches!(
        LnStructured::new(1.1, 2.0, 0),
        Err(InvalidAmount(_))
    ));
    assert!(matches!(
        RandomStructured::new(-2, 0),
        Err(InvalidAmount(_))
    ));
    assert!("fr0".parse::<Norm>().is_err());
}

#[test]
fn bad_input_never_panics_with_unusual_dtypes() {
    let _generator = common::generator();
    let vs = nn::VarStore::new(Device::Cpu);
    let _ = vs.root().add(
        "counts",
        Tensor::ones([4], (Kind::Int64, Device::Cpu)),
        false,
    );
    let pruner = Pruner::new(&vs);
    assert!(matches!(
        pruner.l1_unstructured("counts", 1, None),
        Err(PruneError::NotAParameter(_))
    ));
    // Integer scores are fine for magnitude ranking, as in PyTorch.
    let _ = vs.root().var("w", &[2, 2], nn::Init::Const(1.0));
    let scores = Tensor::from_slice(&[3i64, 1, 2, 4]).view([2, 2]);
    pruner.l1_unstructured("w", 1, Some(&scores)).unwrap();
    assert_eq!(
        Vec::<f32>::try_from(&pruner.mask("w").unwrap().view([-1])).unwrap(),
        [1., 0., 1., 1.]
    );
}

#[test]
fn a_failed_re_prune_keeps_the_hook_unlike_pytorch() {
    let _generator = common::generator();
    let vs = nn::VarStore::new(Device::Cpu);
    let net = mlp(&vs);
    let pruner = Pruner::new(&vs);
    pruner.l1_unstructured("fc1.weight", 0.5, None).unwrap();
    assert!(pruner.l1_unstructured("fc1.weight", 1000, None).is_err());
    // PyTorch would have dropped the hook here; ours still reapplies the mask.
    assert!(pruner.is_pruned("fc1.weight"));
    let orig = pruner.orig("fc1.weight").unwrap();
    let _ = tch::no_grad(|| orig.shallow_clone().fill_(1.0));
    let model = pruner.wrap(net);
    let _ = model.forward(&Tensor::zeros([1, 6], (Kind::Float, Device::Cpu)));
    assert_same(
        &pruner.tensor("fc1.weight").unwrap(),
        &pruner.mask("fc1.weight").unwrap(),
        "mask reapplied",
    );
    pruner.l1_unstructured("fc1.weight", 0.5, None).unwrap();
    assert_eq!(pruner.history("fc1.weight").len(), 2);
}

#[test]
fn rankings_use_fresh_values_not_those_of_the_last_forward_pass() {
    let _generator = common::generator();
    // PyTorch ranks the attribute computed at the last forward pass, stale after an optimizer
    // step; the registry always ranks orig * mask as it is now.
    let vs = nn::VarStore::new(Device::Cpu);
    let _ = vs
        .root()
        .var_copy("w", &Tensor::from_slice(&[1f32, 2., 3., 4.]));
    let pruner = Pruner::new(&vs);
    pruner.identity("w").unwrap();
    let orig = pruner.orig("w").unwrap();
    tch::no_grad(|| {
        orig.shallow_clone()
            .copy_(&Tensor::from_slice(&[4f32, 3., 2., 1.]))
    });
    pruner.l1_unstructured("w", 1, None).unwrap();
    assert_eq!(
        Vec::<f32>::try_from(&pruner.mask("w").unwrap()).unwrap(),
        [1., 1., 1., 0.]
    );
}

#[test]
fn seeded_random_pruning_reproduces_pytorchs_golden_draws() {
    let _generator = common::generator();
    // The spec's golden values: torch.manual_seed(42), then RandomUnstructured(5) and
    // RandomStructured(2, dim=1) on ones(3, 4).
    let ones = Tensor::ones([3, 4], (Kind::Float, Device::Cpu));
    tch::manual_seed(42);
    let m = RandomUnstructured::new(5)
        .unwrap()
        .compute_mask(&ones, &ones)
        .unwrap();
    assert_eq!(
        Vec::<f32>::try_from(&m.view([-1])).unwrap(),
        [0., 0., 1., 0., 1., 1., 1., 1., 0., 1., 0., 1.]
    );
    tch::manual_seed(42);
    let m = RandomStructured::new(2, 1)
        .unwrap()
        .compute_mask(&ones, &ones)
        .unwrap();
    assert_eq!(
        Vec::<f32>::try_from(&m.view([-1])).unwrap(),
        [0., 1., 0., 1.].repeat(3)
    );
}

#[test]
fn each_forward_after_an_optimizer_step_computes_with_the_updated_orig() {
    let _generator = common::generator();
    // Optimizers update `_orig` through `.data()`, which leaves its version counter alone.
    for adam in [false, true] {
        let vs = nn::VarStore::new(Device::Cpu);
        let net = mlp(&vs);
        let pruner = Pruner::new(&vs);
        pruner.l1_unstructured("fc1.weight", 0.5, None).unwrap();
        let mut opt = if adam {
            nn::Adam::default().build(&vs, 0.1)
        } else {
            nn::Sgd::default().build(&vs, 0.1)
        }
        .unwrap();
        let model = pruner.wrap(net);
        let (x, y) = data(Device::Cpu);
        for step in 0..4 {
            if step % 2 == 0 {
                opt.backward_step(&model.forward(&x).cross_entropy_for_logits(&y));
            } else {
                opt.zero_grad();
                model.forward(&x).cross_entropy_for_logits(&y).backward();
                opt.step();
                opt.zero_grad();
            }
            let _ = tch::no_grad(|| model.forward(&x));
            let expected = pruner.orig("fc1.weight").unwrap() * pruner.mask("fc1.weight").unwrap();
            assert_same(
                &pruner.tensor("fc1.weight").unwrap(),
                &expected,
                &format!("adam={adam} step {step}"),
            );
        }
    }
}

#[test]
fn evaluation_with_nothing_changed_rewrites_nothing() {
    let _generator = common::generator();
    let vs = nn::VarStore::new(Device::Cpu);
    let net = mlp(&vs);
    let pruner = Pruner::new(&vs);
    pruner.l1_unstructured("fc1.weight", 0.5, None).unwrap();
    let model = pruner.wrap(net);
    let x = Tensor::randn([2, 6], (Kind::Float, Device::Cpu));
    let target = pruner.tensor("fc1.weight").unwrap();
    let _ = tch::no_grad(|| model.forward(&x));
    let version = target.internal_version();
    for _ in 0..3 {
        let _ = tch::no_grad(|| model.forward(&x));
    }
    assert_eq!(
        target.internal_version(),
        version,
        "the masked tensor was rewritten"
    );
    // An in-place edit of the mask is seen at the next forward pass.
    let _ = pruner.mask("fc1.weight").unwrap().fill_(1.0);
    let _ = tch::no_grad(|| model.forward(&x));
    assert_same(
        &target,
        &pruner.orig("fc1.weight").unwrap(),
        "mask edit applied",
    );
}

#[test]
fn structured_masks_in_the_store_are_tensors_of_their_own() {
    let _generator = common::generator();
    // LnStructured computes one value per channel, broadcast; the store holds a real tensor,
    // which `VarStore::load` can copy into.
    let mut vs = nn::VarStore::new(Device::Cpu);
    let _net = mlp(&vs);
    let pruner = Pruner::new(&vs);
    pruner
        .ln_structured("fc1.weight", 0.5, 2.0, 0, None)
        .unwrap();
    pruner.random_structured("fc2.weight", 1, 1).unwrap();
    for name in ["fc1.weight", "fc2.weight"] {
        let mask = pruner.mask(name).unwrap();
        assert!(mask.is_contiguous() && mask.stride().iter().all(|&s| s > 0));
    }
    let dir = common::tempdir();
    let path = dir.path().join("s.safetensors");
    let saved = pruner.mask("fc1.weight").unwrap().copy();
    vs.save(&path).unwrap();
    let _ = tch::no_grad(|| pruner.mask("fc1.weight").unwrap().fill_(1.0));
    vs.load(&path).unwrap();
    assert_same(&pruner.mask("fc1.weight").unwrap(), &saved, "loaded mask");
}
