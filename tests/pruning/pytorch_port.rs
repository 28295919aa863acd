//! The deterministic cases of PyTorch's own `test/nn/test_pruning.py`, ported. Each test names
//! the PyTorch test it mirrors; expectations are PyTorch's.

use crate::common;

use common::assert_same;
use std::collections::HashMap;
use tch::nn::{self, Module, OptimizerConfig};
use tch::{Device, Kind, Tensor};
use tch_prune::*;

fn t2(rows: &[&[f32]]) -> Tensor {
    let flat: Vec<f32> = rows.iter().flat_map(|r| r.iter().copied()).collect();
    Tensor::from_slice(&flat).view([rows.len() as i64, -1])
}

fn i2(rows: &[&[i64]]) -> Tensor {
    let flat: Vec<i64> = rows.iter().flat_map(|r| r.iter().copied()).collect();
    Tensor::from_slice(&flat).view([rows.len() as i64, -1])
}

/// A VarStore with one Linear-like layer `name` holding `weight` and a zero bias.
fn store_with(name: &str, weight: &Tensor) -> nn::VarStore {
    let vs = nn::VarStore::new(Device::Cpu);
    let p = vs.root() / name;
    let _ = p.var_copy("weight", weight);
    let _ = p.zeros("bias", &[weight.size()[0]]);
    vs
}

fn var(vs: &nn::VarStore, name: &str) -> Tensor {
    vs.variables()[name].shallow_clone()
}

/// The values the model computes with for `name`, checked against `orig * mask` in the store.
fn effective(vs: &nn::VarStore, pruner: &Pruner, name: &str) -> Tensor {
    let from_store = var(vs, &orig_name(name)) * var(vs, &mask_name(name));
    let used = pruner.tensor(name).unwrap();
    assert_same(&used, &from_store, "tensor used by modules vs orig * mask");
    used
}

// test_pruning_container_compute_mask
#[test]
fn pruning_container_compute_mask() {
    let t = t2(&[&[1., 2., 3., 4.], &[5., 6., 7., 8.]]);
    let default_mask = i2(&[&[1, 1, 1, 0], &[1, 1, 0, 1]]);
    let l1 = L1Unstructured::new(2).unwrap();
    let m = combine_masks(&l1, &t, &default_mask).unwrap();
    assert_same(&m, &t2(&[&[0., 0., 1., 0.], &[1., 1., 0., 1.]]), "L1(2)");
    let ln0 = LnStructured::new(1, 2.0, 0).unwrap();
    let m = combine_masks(&ln0, &t, &default_mask).unwrap();
    assert_same(
        &m,
        &t2(&[&[0., 0., 0., 0.], &[1., 1., 0., 1.]]),
        "Ln(1, dim 0)",
    );
    let ln1 = LnStructured::new(1, 2.0, 1).unwrap();
    let m = combine_masks(&ln1, &t, &default_mask).unwrap();
    assert_same(
        &m,
        &t2(&[&[0., 1., 1., 0.], &[0., 1., 0., 1.]]),
        "Ln(1, dim 1)",
    );
    // The caller's mask is never modified.
    assert_same(
        &default_mask,
        &i2(&[&[1, 1, 1, 0], &[1, 1, 0, 1]]),
        "default mask",
    );
}

// test_l1_unstructured_pruning
#[test]
fn l1_unstructured_pruning() {
    let vs = store_with("m", &t2(&[&[1., 2., 3., 4.], &[-4., -3., -2., -1.]]));
    let pruner = Pruner::new(&vs);
    pruner.l1_unstructured("m.weight", 2, None).unwrap();
    assert_same(
        &effective(&vs, &pruner, "m.weight"),
        &t2(&[&[0., 2., 3., 4.], &[-4., -3., -2., 0.]]),
        "first",
    );
    pruner.l1_unstructured("m.weight", 2, None).unwrap();
    assert_same(
        &effective(&vs, &pruner, "m.weight"),
        &t2(&[&[0., 0., 3., 4.], &[-4., -3., 0., 0.]]),
        "second",
    );
}

// test_l1_unstructured_pruning_with_importance_scores
#[test]
fn l1_unstructured_pruning_with_importance_scores() {
    let vs = store_with("m", &t2(&[&[1., 2., 3., 4.], &[-4., -3., -2., -1.]]));
    let scores = t2(&[&[4., 2., 1., 3.], &[-3., -1., -2., -4.]]);
    let pruner = Pruner::new(&vs);
    pruner
        .l1_unstructured("m.weight", 2, Some(&scores))
        .unwrap();
    assert_same(
        &effective(&vs, &pruner, "m.weight"),
        &t2(&[&[1., 2., 0., 4.], &[-4., 0., -2., -1.]]),
        "first",
    );
    pruner
        .l1_unstructured("m.weight", 2, Some(&scores))
        .unwrap();
    assert_same(
        &effective(&vs, &pruner, "m.weight"),
        &t2(&[&[1., 0., 0., 4.], &[-4., 0., 0., -1.]]),
        "second",
    );
}

// test_unstructured_pruning_same_magnitude
#[test]
fn unstructured_pruning_same_magnitude_prunes_a_count_not_a_threshold() {
    let _generator = common::generator();
    tch::manual_seed(0);
    let t = (Tensor::randint(3, [10, 7], (Kind::Int64, Device::Cpu)) - 1) * 2;
    let mask = L1Unstructured::new(0.2)
        .unwrap()
        .compute_mask(&t.to_kind(Kind::Float), &t.ones_like())
        .unwrap();
    assert_eq!(mask.eq(0).sum(Kind::Int64).int64_value(&[]), 14);
}

// test_random_structured_pruning_amount
#[test]
fn random_structured_pruning_amount() {
    let _generator = common::generator();
    tch::manual_seed(0);
    let t = Tensor::rand([5, 4, 2], (Kind::Float, Device::Cpu));
    let mask = RandomStructured::new(0.6, 2)
        .unwrap()
        .compute_mask(&t, &t.ones_like())
        .unwrap();
    let zeros_per_channel = mask
        .eq(0)
        .sum_dim_intlist(&[0i64, 1][..], false, Kind::Int64);
    let mut counts = Vec::<i64>::try_from(&zeros_per_channel).unwrap();
    counts.sort();
    assert_eq!(counts, [0, 20]);
}

fn conv_weight() -> Tensor {
    Tensor::from_slice(&[1f32, 2., 1., 2.5, 0.5, 1., 0.1, 0.1, -3., -5., 0.1, -1.])
        .view([1, 3, 2, 2])
}

// test_ln_structured_pruning
#[test]
fn ln_structured_pruning() {
    let vs = store_with("conv", &conv_weight());
    let pruner = Pruner::new(&vs);
    pruner
        .ln_structured("conv.weight", 1, 2.0, 1, None)
        .unwrap();
    let expected = conv_weight();
    let _ = expected.narrow(1, 1, 1).fill_(0.0);
    assert_same(
        &effective(&vs, &pruner, "conv.weight"),
        &expected,
        "channel 1",
    );
    pruner
        .ln_structured("conv.weight", 1, 1.0, -1, None)
        .unwrap();
    let _ = expected.narrow(3, 0, 1).fill_(0.0);
    assert_same(
        &effective(&vs, &pruner, "conv.weight"),
        &expected,
        "then column 0",
    );
}

// test_ln_structured_pruning_importance_scores
#[test]
fn ln_structured_pruning_importance_scores() {
    let vs = store_with("conv", &conv_weight());
    let scores = Tensor::from_slice(&[10f32, 1., 10., 1., 30., 3., 30., 3., -20., -2., -20., -2.])
        .view([1, 3, 2, 2]);
    let pruner = Pruner::new(&vs);
    pruner
        .ln_structured("conv.weight", 1, 2.0, 1, Some(&scores))
        .unwrap();
    let expected = conv_weight();
    let _ = expected.narrow(1, 0, 1).fill_(0.0);
    assert_same(
        &effective(&vs, &pruner, "conv.weight"),
        &expected,
        "channel 0",
    );
    pruner
        .ln_structured("conv.weight", 1, 1.0, -1, Some(&scores))
        .unwrap();
    let _ = expected.narrow(3, 1, 1).fill_(0.0);
    assert_same(
        &effective(&vs, &pruner, "conv.weight"),
        &expected,
        "then column 1",
    );
}

// test_remove_pruning_exception
#[test]
fn remove_pruning_exception() {
    let vs = store_with("m", &t2(&[&[1., 2.]]));
    let pruner = Pruner::new(&vs);
    assert!(!pruner.is_pruned("m.weight"));
    assert!(matches!(
        pruner.remove("m.weight"),
        Err(PruneError::NotPruned(_))
    ));
}

fn global_store() -> nn::VarStore {
    let vs = nn::VarStore::new(Device::Cpu);
    let _ = (vs.root() / "m").var_copy("weight", &t2(&[&[1., 2., 3., 4.], &[-4., -3., -2., -1.]]));
    let _ = (vs.root() / "n").var_copy("weight", &t2(&[&[0., 0.1, -2.]]));
    vs
}

// test_global_pruning
#[test]
fn global_pruning() {
    let vs = global_store();
    let pruner = Pruner::new(&vs);
    let l1 = L1Unstructured::new(4).unwrap();
    pruner
        .global_unstructured(&["m.weight", "n.weight"], &l1, &HashMap::new())
        .unwrap();
    assert_same(
        &effective(&vs, &pruner, "m.weight"),
        &t2(&[&[0., 2., 3., 4.], &[-4., -3., -2., 0.]]),
        "m",
    );
    assert_same(
        &effective(&vs, &pruner, "n.weight"),
        &t2(&[&[0., 0., -2.]]),
        "n",
    );
}

// test_global_pruning_importance_scores
#[test]
fn global_pruning_importance_scores() {
    let vs = global_store();
    let pruner = Pruner::new(&vs);
    let scores = HashMap::from([
        (
            "m.weight".to_string(),
            t2(&[&[4., 2., 1., 3.], &[-3., -1., -2., -4.]]),
        ),
        ("n.weight".to_string(), t2(&[&[0., 10., -0.2]])),
    ]);
    let l1 = L1Unstructured::new(4).unwrap();
    pruner
        .global_unstructured(&["m.weight", "n.weight"], &l1, &scores)
        .unwrap();
    assert_same(
        &effective(&vs, &pruner, "m.weight"),
        &t2(&[&[1., 2., 0., 4.], &[-4., 0., -2., -1.]]),
        "m",
    );
    assert_same(
        &effective(&vs, &pruner, "n.weight"),
        &t2(&[&[0., 0.1, 0.]]),
        "n",
    );
}

// test_custom_from_mask_pruning
#[test]
fn custom_from_mask_pruning() {
    let _generator = common::generator();
    let mask = i2(&[&[0, 1, 1, 0], &[0, 0, 1, 1]]);
    let default_mask = i2(&[&[0, 0, 0, 0], &[1, 1, 1, 1]]);
    let t = Tensor::rand([2, 4], (Kind::Float, Device::Cpu));
    let computed = CustomFromMask::new(&mask)
        .compute_mask(&t, &default_mask)
        .unwrap();
    assert_same(&computed, &i2(&[&[0, 0, 0, 0], &[0, 0, 1, 1]]), "mask");
}

fn prune_inputs() -> (Tensor, Tensor) {
    (
        t2(&[&[1., 2., 3., 4.], &[5., 6., 7., 8.]]),
        i2(&[&[1, 1, 1, 0], &[1, 1, 0, 1]]),
    )
}

// test_prune
#[test]
fn prune() {
    let (t, default_mask) = prune_inputs();
    let pruned = L1Unstructured::new(2)
        .unwrap()
        .prune(&t, None, Some(&default_mask))
        .unwrap();
    let expected = &t * t2(&[&[0., 0., 1., 0.], &[1., 1., 0., 1.]]);
    assert_same(&pruned, &expected, "pruned");
}

// test_prune_importance_scores
#[test]
fn prune_importance_scores() {
    let (t, default_mask) = prune_inputs();
    let scores = t2(&[&[1., 2., 3., 4.], &[1.5, 1.6, 1.7, 1.8]]);
    let pruned = L1Unstructured::new(2)
        .unwrap()
        .prune(&t, Some(&scores), Some(&default_mask))
        .unwrap();
    let expected = &t * t2(&[&[0., 1., 1., 0.], &[0., 1., 0., 1.]]);
    assert_same(&pruned, &expected, "pruned");
}

// test_prune_importance_scores_mimic_default
#[test]
fn prune_importance_scores_mimic_default() {
    let _generator = common::generator();
    let (t, default_mask) = prune_inputs();
    let l1 = L1Unstructured::new(2).unwrap();
    let with_scores = l1.prune(&t, Some(&t), Some(&default_mask)).unwrap();
    let without = l1.prune(&t, None, Some(&default_mask)).unwrap();
    assert_same(&with_scores, &without, "same");
    assert_same(
        &without,
        &(&t * t2(&[&[0., 0., 1., 0.], &[1., 1., 0., 1.]])),
        "expected",
    );
}

fn linear_store(out: i64, inp: i64) -> (nn::VarStore, nn::Linear) {
    let vs = nn::VarStore::new(Device::Cpu);
    tch::manual_seed(0);
    let lin = nn::linear(vs.root() / "fc", inp, out, Default::default());
    (vs, lin)
}

// test_identity_pruning
#[test]
fn identity_pruning_keeps_outputs_and_gradients() {
    let _generator = common::generator();
    let (vs, lin) = linear_store(2, 5);
    let x = Tensor::ones([1, 5], (Kind::Float, Device::Cpu));
    let y_before = lin.forward(&x);
    y_before.sum(Kind::Float).backward();
    let grad_before = lin.ws.grad().copy();
    let bias_grad_before = lin.bs.as_ref().unwrap().grad().copy();
    assert_same(
        &grad_before,
        &grad_before.ones_like(),
        "pre-prune weight grad",
    );

    let pruner = Pruner::new(&vs);
    pruner.identity("fc.weight").unwrap();
    let _ = lin.bs.as_ref().unwrap().grad().zero_();
    let model = pruner.wrap(lin);
    let y = model.forward(&x);
    assert_same(&y, &y_before, "output");
    y.sum(Kind::Float).backward();
    assert_same(
        &pruner.orig("fc.weight").unwrap().grad(),
        &grad_before,
        "orig grad",
    );
    assert_same(
        &model.inner().bs.as_ref().unwrap().grad(),
        &bias_grad_before,
        "bias grad",
    );
    assert_same(&model.forward(&x), &model.forward(&x), "two forwards");
}

fn forced_mask() -> Tensor {
    let mask = Tensor::ones([2, 5], (Kind::Float, Device::Cpu));
    let _ = mask.get(1).get(0).fill_(0.0);
    let _ = mask.get(0).get(3).fill_(0.0);
    mask
}

// test_random_pruning (with the mocked mask replaced by custom_from_mask)
#[test]
fn pruned_positions_get_zero_gradient_and_do_not_move_under_sgd() {
    let _generator = common::generator();
    let (vs, lin) = linear_store(2, 5);
    let pruner = Pruner::new(&vs);
    pruner
        .custom_from_mask("fc.weight", &forced_mask())
        .unwrap();
    let model = pruner.wrap(lin);
    let mut opt = nn::Sgd::default().build(&vs, 1.0).unwrap();
    let x = Tensor::ones([1, 5], (Kind::Float, Device::Cpu));
    opt.zero_grad();
    let y = model.forward(&x);
    y.sum(Kind::Float).backward();
    let orig = pruner.orig("fc.weight").unwrap();
    assert_same(&orig.grad(), &forced_mask(), "orig grad == mask");
    // The tensor the module computes with passes its gradient on and keeps none.
    assert!(!model.inner().ws.grad().defined());
    assert_same(
        &model.inner().bs.as_ref().unwrap().grad(),
        &Tensor::ones([2], (Kind::Float, Device::Cpu)),
        "bias grad",
    );
    let before = orig.copy();
    opt.step();
    assert_eq!(orig.double_value(&[1, 0]), before.double_value(&[1, 0]));
    assert_eq!(orig.double_value(&[0, 3]), before.double_value(&[0, 3]));
    assert_ne!(orig.double_value(&[0, 0]), before.double_value(&[0, 0]));
}

// test_random_pruning_forward
#[test]
fn forward_uses_only_unpruned_entries() {
    let (vs, lin) = linear_store(2, 5);
    let pruner = Pruner::new(&vs);
    let mask = forced_mask().ones_like() - forced_mask();
    pruner.custom_from_mask("fc.weight", &mask).unwrap();
    let model = pruner.wrap(lin);
    let y = model.forward(&Tensor::ones([1, 5], (Kind::Float, Device::Cpu)));
    let orig = pruner.orig("fc.weight").unwrap();
    let bias = &model.inner().bs.as_ref().unwrap();
    assert_eq!(
        y.double_value(&[0, 0]),
        (orig.get(0).get(3) + bias.get(0)).double_value(&[])
    );
    assert_eq!(
        y.double_value(&[0, 1]),
        (orig.get(1).get(0) + bias.get(1)).double_value(&[])
    );
}

// test_remove_pruning_forward, test_remove_pruning, test_pruning_id_consistency
#[test]
fn remove_keeps_outputs_and_restores_a_plain_variable() {
    let (vs, lin) = linear_store(2, 5);
    let pruner = Pruner::new(&vs);
    pruner
        .custom_from_mask("fc.weight", &forced_mask())
        .unwrap();
    let vars = vs.variables();
    assert!(vars.contains_key("fc.weight_orig") && vars.contains_key("fc.weight_mask"));
    assert!(!vars.contains_key("fc.weight"));
    let model = pruner.wrap(lin);
    let x = Tensor::ones([1, 5], (Kind::Float, Device::Cpu));
    let before = model.forward(&x);
    let expected = pruner.orig("fc.weight").unwrap() * forced_mask();
    pruner.remove("fc.weight").unwrap();
    assert!(!pruner.is_pruned("fc.weight"));
    let vars = vs.variables();
    assert!(vars.contains_key("fc.weight"));
    assert!(!vars.contains_key("fc.weight_orig") && !vars.contains_key("fc.weight_mask"));
    assert_same(&vars["fc.weight"], &expected, "permanent values");
    // The variable is the very tensor the module holds, trainable again.
    assert_eq!(vars["fc.weight"].data_ptr(), model.inner().ws.data_ptr());
    assert!(vars["fc.weight"].requires_grad());
    assert_same(&model.forward(&x), &before, "output after remove");
}

// test_pruning_rollback (the mocked failure replaced by a method that fails)
#[derive(Debug)]
struct Failing;
impl PruningMethod for Failing {
    fn pruning_type(&self) -> PruningType {
        PruningType::Unstructured
    }
    fn compute_mask(&self, _: &Tensor, _: &Tensor) -> Result<Tensor> {
        Err(PruneError::InvalidArgument(
            "this method always fails".into(),
        ))
    }
}

#[test]
fn pruning_rollback() {
    for name in ["fc.weight", "fc.bias"] {
        let (vs, _lin) = linear_store(2, 5);
        let before: Vec<String> = {
            let mut k: Vec<String> = vs.variables().into_keys().collect();
            k.sort();
            k
        };
        let pruner = Pruner::new(&vs);
        assert!(pruner.prune(name, &Failing, None).is_err());
        let mut after: Vec<String> = vs.variables().into_keys().collect();
        after.sort();
        assert_eq!(before, after, "{name}");
        assert!(!pruner.is_pruned(name));
    }
}

// test_pruning_serialization_state_dict: after remove, the saved store has plain keys.
#[test]
fn serialization_after_remove_has_plain_keys() {
    let _generator = common::generator();
    let (vs, _lin) = linear_store(1, 10);
    let pruner = Pruner::new(&vs);
    pruner.l1_unstructured("fc.weight", 0.9, None).unwrap();
    let dir = common::tempdir();
    let pruned_path = dir.path().join("pruned.safetensors");
    vs.save(&pruned_path).unwrap();
    let keys: Vec<String> = Tensor::read_safetensors(&pruned_path)
        .unwrap()
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert!(
        keys.contains(&"fc.weight_orig".to_string())
            && keys.contains(&"fc.weight_mask".to_string())
    );
    let expected = pruner.orig("fc.weight").unwrap() * pruner.mask("fc.weight").unwrap();
    pruner.remove("fc.weight").unwrap();
    let path = dir.path().join("removed.safetensors");
    vs.save(&path).unwrap();
    let mut fresh = nn::VarStore::new(Device::Cpu);
    let _ = nn::linear(fresh.root() / "fc", 10, 1, Default::default());
    fresh.load(&path).unwrap();
    assert_same(
        &fresh.variables()["fc.weight"],
        &expected,
        "reloaded weight",
    );
}
