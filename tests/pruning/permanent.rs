//! Pruning made permanent at once (`prune_and_remove`, `global_unstructured_and_remove`): the
//! weights of `prune` then `remove`, bit for bit (the sign of pruned zeros and NaNs included),
//! computed in place, with nothing of the reparametrization left behind.

use crate::common;

use common::assert_bits;
use std::collections::HashMap;
use tch::nn::{self, Module};
use tch::{Device, Kind, Tensor};
use tch_prune::*;

const DTYPES: [Kind; 4] = [Kind::Float, Kind::Double, Kind::Half, Kind::BFloat16];

/// Holds the generator (see [`common::generator`]) and seeds it.
fn seeded(seed: i64) -> std::sync::MutexGuard<'static, ()> {
    let guard = common::generator();
    tch::manual_seed(seed);
    guard
}

/// Values that tie everywhere, zeros of both signs and infinities, or plain normal draws.
fn inputs(shape: &[i64], kind: Kind) -> [Tensor; 2] {
    let pool = Tensor::from_slice(&[-2f32, -1., -0.0, 0.0, 1., 2., f32::INFINITY, -1., 1.]);
    let n: i64 = shape.iter().product();
    let ties = pool
        .index_select(0, &Tensor::randint(9, [n], (Kind::Int64, Device::Cpu)))
        .view(shape)
        .to_kind(kind);
    let normal = Tensor::randn(shape, (Kind::Float, Device::Cpu)).to_kind(kind);
    [ties, normal]
}

fn store_with(name: &str, t: &Tensor) -> (nn::VarStore, Tensor) {
    let vs = nn::VarStore::new(Device::Cpu);
    let handle = vs.root().var_copy(name, t);
    (vs, handle)
}

/// Runs `method` both ways (each after `seed`) and compares the results.
fn both_ways(t: &Tensor, method: &dyn PruningMethod, scores: Option<&Tensor>, bool_masks: bool) {
    let pruner_for = |vs: &nn::VarStore| match bool_masks {
        true => Pruner::with_bool_masks(vs),
        false => Pruner::new(vs),
    };
    let (two_steps, _) = store_with("w", t);
    let pruner = pruner_for(&two_steps);
    tch::manual_seed(7);
    pruner.prune("w", method, scores).unwrap();
    pruner.remove("w").unwrap();

    let (at_once, handle) = store_with("w", t);
    let pointer = handle.data_ptr();
    let pruner = pruner_for(&at_once);
    tch::manual_seed(7);
    pruner.prune_and_remove("w", method, scores).unwrap();

    let what = format!("{method:?} on {:?} {:?}", t.kind(), t.size());
    let vars = at_once.variables();
    assert_eq!(
        vars.keys().collect::<Vec<_>>(),
        ["w"],
        "{what}: no _orig or _mask"
    );
    assert!(!pruner.is_pruned("w"), "{what}");
    assert_eq!(at_once.trainable_variables().len(), 1, "{what}");
    assert!(handle.requires_grad(), "{what}: still trainable");
    // In place: the tensor modules hold has the result, in the memory it always had.
    assert_eq!(handle.data_ptr(), pointer, "{what}: not in place");
    assert_bits(&handle, &two_steps.variables()["w"], &what);
}

#[test]
fn every_method_gives_the_weights_of_prune_then_remove_bit_for_bit() {
    let _generator = seeded(0);
    for kind in DTYPES {
        for t in inputs(&[6, 5, 3], kind) {
            let custom = Tensor::from_slice(&[0f32, 0.5, 1., 2., 1., 1.])
                .repeat([15])
                .view([6, 5, 3]);
            let methods: Vec<Box<dyn PruningMethod>> = vec![
                Box::new(Identity),
                Box::new(L1Unstructured::new(0.3).unwrap()),
                Box::new(L1Unstructured::new(17).unwrap()),
                Box::new(RandomUnstructured::new(0.6).unwrap()),
                Box::new(LnStructured::new(0.5, 1.0, 0).unwrap()),
                Box::new(LnStructured::new(2, 2.0, 1).unwrap()),
                Box::new(LnStructured::new(0.34, f64::INFINITY, -1).unwrap()),
                Box::new(RandomStructured::new(3, 0).unwrap()),
                Box::new(CustomFromMask::new(&custom)),
            ];
            for method in &methods {
                both_ways(&t, method.as_ref(), None, false);
            }
            for method in &methods[..3] {
                both_ways(&t, method.as_ref(), None, true);
            }
        }
        // Importance scores of another dtype rank the entries; the mask is cast as PyTorch casts it.
        let t = Tensor::randn([6, 5, 3], (Kind::Float, Device::Cpu)).to_kind(kind);
        let scores = Tensor::randn([6, 5, 3], (Kind::Double, Device::Cpu));
        for method in [
            &L1Unstructured::new(0.5).unwrap() as &dyn PruningMethod,
            &LnStructured::new(2, 2.0, 0).unwrap(),
        ] {
            both_ways(&t, method, Some(&scores), false);
        }
    }
}

#[test]
fn large_tensors_too() {
    // Boolean masks are applied a piece at a time: more than one piece here.
    let _generator = seeded(8);
    for kind in [Kind::Float, Kind::BFloat16] {
        let t = inputs(&[700, 500], kind)[0].shallow_clone();
        both_ways(&t, &L1Unstructured::new(0.37).unwrap(), None, false);
        both_ways(&t, &L1Unstructured::new(0.37).unwrap(), None, true);
    }
}

#[test]
fn a_tensor_pruned_before_is_pruned_again_then_removed() {
    let _generator = seeded(1);
    for bool_masks in [false, true] {
        let t = Tensor::randn([8, 6], (Kind::Float, Device::Cpu));
        let run = |at_once: bool| {
            let (vs, _) = store_with("w", &t);
            let pruner = match bool_masks {
                true => Pruner::with_bool_masks(&vs),
                false => Pruner::new(&vs),
            };
            pruner.l1_unstructured("w", 0.5, None).unwrap();
            let ln = LnStructured::new(0.5, 2.0, 0).unwrap();
            match at_once {
                true => pruner.prune_and_remove("w", &ln, None).unwrap(),
                false => {
                    pruner.prune("w", &ln, None).unwrap();
                    pruner.remove("w").unwrap();
                }
            }
            assert!(!pruner.is_pruned("w"));
            let vars = vs.variables();
            vars["w"].shallow_clone()
        };
        let w = run(true);
        assert_bits(&w, &run(false), "re-pruned");
        // Half the entries, then half the rows on top.
        let zero_rows = w.ne(0).sum_dim_intlist(1, false, Kind::Int64).eq(0);
        assert!(zero_rows.sum(Kind::Int64).int64_value(&[]) >= 4);
        assert!(w.ne(0).sum(Kind::Int64).int64_value(&[]) <= 24);
    }
}

#[test]
fn global_pruning_made_permanent_equals_global_pruning_then_remove() {
    let _generator = seeded(2);
    let tensors = [
        ("a", Tensor::randn([7, 5], (Kind::Float, Device::Cpu))),
        ("b", inputs(&[4, 9], Kind::Float)[0].shallow_clone()),
        ("c", Tensor::randn([30], (Kind::Float, Device::Cpu))),
    ];
    let scores = HashMap::from([(
        "c".to_string(),
        Tensor::randn([30], (Kind::Float, Device::Cpu)),
    )]);
    for method in [
        &L1Unstructured::new(0.4).unwrap() as &dyn PruningMethod,
        &L1Unstructured::new(33).unwrap(),
        &RandomUnstructured::new(0.25).unwrap(),
    ] {
        let run = |at_once: bool| {
            let vs = nn::VarStore::new(Device::Cpu);
            for (name, t) in &tensors {
                let _ = vs.root().var_copy(name, t);
            }
            let pruner = Pruner::new(&vs);
            // `b` was pruned before: the amount counts what remains of it.
            pruner.ln_structured("b", 1, 1.0, 0, None).unwrap();
            tch::manual_seed(5);
            if at_once {
                pruner
                    .global_unstructured_and_remove(&["a", "b", "c"], method, &scores)
                    .unwrap();
            } else {
                pruner
                    .global_unstructured(&["a", "b", "c"], method, &scores)
                    .unwrap();
                pruner.remove_all().unwrap();
            }
            assert!(pruner.pruned_names().is_empty());
            let vars = vs.variables();
            let mut names: Vec<_> = vars.keys().cloned().collect();
            names.sort();
            assert_eq!(names, ["a", "b", "c"]);
            tensors
                .iter()
                .map(|(name, _)| vars[*name].shallow_clone())
                .collect::<Vec<_>>()
        };
        for (x, y) in run(true).iter().zip(run(false).iter()) {
            assert_bits(x, y, &format!("global {method:?}"));
        }
    }
}

#[test]
fn failures_change_nothing() {
    let _generator = common::generator();
    let vs = nn::VarStore::new(Device::Cpu);
    let _net = nn::linear(vs.root() / "fc", 4, 3, Default::default());
    let _ = vs.root().zeros_no_train("buffer", &[3, 4]);
    let pruner = Pruner::new(&vs);
    pruner.l1_unstructured("fc.bias", 1, None).unwrap();
    let snapshot = || {
        let mut vars: Vec<(String, Vec<f32>)> = vs
            .variables()
            .into_iter()
            .map(|(n, t)| (n, Vec::<f32>::try_from(&t.reshape([-1])).unwrap()))
            .collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        (vars, pruner.pruned_names())
    };
    let before = snapshot();
    let l1 = |a: i64| L1Unstructured::new(a).unwrap();
    let wrong_shape = Tensor::ones([2, 2], (Kind::Float, Device::Cpu));
    let errors = [
        pruner.prune_and_remove("fc.weight", &l1(13), None),
        pruner.prune_and_remove("fc.bias", &l1(3), None),
        pruner.prune_and_remove("missing", &l1(1), None),
        pruner.prune_and_remove("buffer", &l1(1), None),
        pruner.prune_and_remove("fc.weight", &LnStructured::new(1, 2.0, 2).unwrap(), None),
        pruner.prune_and_remove("fc.weight", &l1(1), Some(&wrong_shape)),
        pruner.global_unstructured_and_remove(&["fc.weight", "fc.bias"], &l1(15), &HashMap::new()),
        pruner.global_unstructured_and_remove(
            &["fc.weight", "fc.bias"],
            &LnStructured::new(1, 2.0, 0).unwrap(),
            &HashMap::new(),
        ),
    ];
    for err in errors {
        assert!(err.is_err());
    }
    assert_eq!(snapshot(), before);
}

#[test]
fn boolean_mask_pruners_apply_custom_masks_as_pytorch_does() {
    // Nothing is stored, so a custom mask's 0.5 scales the weight, as PyTorch's prune then
    // remove does; reparametrized, a boolean mask could not hold it and it is refused.
    let t = Tensor::from_slice(&[1f32, -2., 3., 4.]);
    let custom = CustomFromMask::new(&Tensor::from_slice(&[0f32, 0.5, 1., 1.]));
    let (vs, w) = store_with("w", &t);
    let pruner = Pruner::with_bool_masks(&vs);
    assert!(pruner.prune("w", &custom, None).is_err());
    pruner.prune_and_remove("w", &custom, None).unwrap();
    assert_bits(&w, &Tensor::from_slice(&[0f32, -1., 3., 4.]), "scaled");
}

#[test]
fn variables_whose_entries_overlap_are_refused_unchanged() {
    let vs = nn::VarStore::new(Device::Cpu);
    let expanded = Tensor::from_slice(&[1f32, 2.])
        .view([2, 1])
        .expand([2, 3], false);
    let w = vs.root().add("w", expanded, true);
    let pruner = Pruner::new(&vs);
    let err = pruner
        .prune_and_remove("w", &LnStructured::new(1, 2.0, 0).unwrap(), None)
        .unwrap_err();
    assert!(err.to_string().contains("memory location"), "{err}");
    assert_eq!(
        Vec::<f32>::try_from(&w.reshape([-1])).unwrap(),
        [1., 1., 1., 2., 2., 2.]
    );
    assert_eq!(vs.variables().len(), 1);
}

#[test]
fn a_module_computes_with_the_permanently_pruned_weights() {
    let _generator = seeded(3);
    let vs = nn::VarStore::new(Device::Cpu);
    let fc = nn::linear(vs.root() / "fc", 8, 6, Default::default());
    let pruner = Pruner::new(&vs);
    pruner
        .prune_and_remove("fc.weight", &LnStructured::new(0.5, 2.0, 0).unwrap(), None)
        .unwrap();
    let x = Tensor::randn([5, 8], (Kind::Float, Device::Cpu));
    let y = fc.forward(&x);
    // Three output rows are pruned: those outputs are the bias alone.
    let pruned_rows = fc.ws.abs().sum_dim_intlist(1, false, Kind::Float).eq(0);
    assert_eq!(pruned_rows.sum(Kind::Int64).int64_value(&[]), 3);
    let bias_only = y
        .eq_tensor(&fc.bs.as_ref().unwrap().expand_as(&y))
        .all_dim(0, false);
    assert!(bias_only.logical_and(&pruned_rows).equal(&pruned_rows));
}
