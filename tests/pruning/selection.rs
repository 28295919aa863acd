//! The streaming magnitude selection (global and per-tensor L1 on CPU) against straightforward
//! references: PyTorch's `topk` where magnitudes do not tie, and a stable sort by magnitude
//! (the documented tie rule: earlier tensor, then lower index, pruned first) everywhere.

use crate::common;

use common::assert_same;
use std::collections::HashMap;
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};
use tch_prune::*;

/// The magnitudes' total order the selection uses, in the promoted dtype: NaN above +inf.
fn key(x: f64) -> u64 {
    x.abs().to_bits()
}

/// Flat positions pruned by taking the `k` smallest live magnitudes, ties by position.
fn reference(values: &[Vec<f64>], live: &[Vec<bool>], k: usize) -> Vec<Vec<bool>> {
    let mut order: Vec<(u64, usize, usize)> = Vec::new();
    for (t, (v, l)) in values.iter().zip(live).enumerate() {
        order.extend(
            v.iter()
                .zip(l)
                .enumerate()
                .filter(|(_, (_, &l))| l)
                .map(|(i, (&x, _))| (key(x), t, i)),
        );
    }
    order.sort();
    let mut pruned: Vec<Vec<bool>> = values.iter().map(|v| vec![false; v.len()]).collect();
    for &(_, t, i) in order.iter().take(k) {
        pruned[t][i] = true;
    }
    pruned
}

fn to_f64(t: &Tensor) -> Vec<f64> {
    Vec::<f64>::try_from(&t.to_kind(Kind::Double).view([-1])).unwrap()
}

fn random(shape: &[i64], kind: Kind, ties: bool) -> Tensor {
    if ties {
        // Values in {-2, -1, 0, 1, 2}: almost every magnitude is tied.
        (Tensor::randint(5, shape, (Kind::Int64, Device::Cpu)) - 2).to_kind(kind)
    } else {
        Tensor::randn(shape, (Kind::Float, Device::Cpu)).to_kind(kind)
    }
}

/// Prunes `names` globally in a fresh store, after a first per-tensor round so that masks are
/// partly zero, and checks the new masks against the reference.
fn check_global(kinds: &[Kind], ties: bool, amount: Amount, bool_masks: bool) {
    let shapes: [&[i64]; 4] = [&[37, 23], &[1000], &[3, 5, 7, 11], &[64, 64]];
    let vs = VarStore::new(Device::Cpu);
    let mut names = Vec::new();
    for (i, (shape, kind)) in shapes.iter().zip(kinds.iter().cycle()).enumerate() {
        let name = format!("t{i}");
        let _ = vs.root().add(&name, random(shape, *kind, ties), true);
        names.push(name);
    }
    let pruner = if bool_masks {
        Pruner::with_bool_masks(&vs)
    } else {
        Pruner::new(&vs)
    };
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    for (i, name) in names.iter().enumerate() {
        if i % 2 == 0 {
            pruner.random_unstructured(name, 0.3).unwrap();
        }
    }
    let before: Vec<(Vec<f64>, Vec<bool>)> = names
        .iter()
        .map(|n| {
            let values = match pruner.tensor(n) {
                Some(t) => t,
                None => vs.variables()[*n].shallow_clone(),
            };
            let live = match pruner.mask(n) {
                Some(m) => to_f64(&m).iter().map(|&x| x == 1.0).collect(),
                None => vec![true; values.numel()],
            };
            // The selection compares in the promoted dtype, exactly like these f64 values.
            (to_f64(&values), live)
        })
        .collect();
    let live_total: usize = before
        .iter()
        .map(|(_, l)| l.iter().filter(|&&x| x).count())
        .sum();
    let k = amount.to_count(live_total as i64).unwrap() as usize;
    pruner
        .global_unstructured(
            &names,
            &L1Unstructured::new(amount).unwrap(),
            &HashMap::new(),
        )
        .unwrap();
    let values: Vec<Vec<f64>> = before.iter().map(|(v, _)| v.clone()).collect();
    let live: Vec<Vec<bool>> = before.iter().map(|(_, l)| l.clone()).collect();
    let expected = reference(&values, &live, k);
    let mut newly_pruned = 0;
    for ((name, (_, live)), pruned) in names.iter().zip(&before).zip(&expected) {
        let mask = to_f64(&pruner.mask(name).unwrap());
        for (i, &m) in mask.iter().enumerate() {
            let want = if !live[i] || pruned[i] { 0.0 } else { 1.0 };
            assert_eq!(
                m, want,
                "{name}[{i}] kinds={kinds:?} ties={ties} amount={amount}"
            );
            newly_pruned += (live[i] && m == 0.0) as usize;
        }
    }
    assert_eq!(newly_pruned, k, "exact count");
}

#[test]
fn global_selection_matches_the_stable_reference_on_every_dtype() {
    let _generator = common::generator();
    for kinds in [
        vec![Kind::Float],
        vec![Kind::Double],
        vec![Kind::Half],
        vec![Kind::BFloat16],
        vec![Kind::Float, Kind::Half, Kind::BFloat16],
        vec![Kind::Float, Kind::Double],
    ] {
        for ties in [false, true] {
            for amount in [
                Amount::Fraction(0.37),
                Amount::Count(1),
                Amount::Fraction(1.0),
                Amount::Count(0),
            ] {
                check_global(&kinds, ties, amount, false);
            }
        }
    }
}

#[test]
fn bool_masks_select_the_same_entries() {
    let _generator = common::generator();
    for ties in [false, true] {
        check_global(&[Kind::Float], ties, Amount::Fraction(0.5), true);
    }
}

#[test]
fn without_ties_the_selection_is_exactly_topks() {
    let _generator = common::generator();
    for kind in [Kind::Float, Kind::Double] {
        let t = Tensor::randn([300, 301], (kind, Device::Cpu));
        let ones = t.ones_like();
        for k in [1, 777, 45_150, 90_299] {
            let fast = L1Unstructured::new(k)
                .unwrap()
                .compute_mask(&t, &ones)
                .unwrap();
            let (_, idx) = t.abs().view([-1]).topk(k, -1, false, true);
            let slow = ones.view([-1]).index_fill(0, &idx, 0.0).view([300, 301]);
            assert_same(&fast, &slow, &format!("{kind:?} k={k}"));
        }
    }
}

#[test]
fn iterative_l1_selects_among_live_entries_in_place() {
    let _generator = common::generator();
    for kind in [Kind::Float, Kind::Half] {
        for ties in [false, true] {
            let t = random(&[50, 40], kind, ties);
            let mask = (Tensor::rand([50, 40], (Kind::Float, Device::Cpu)).gt(0.3)).to_kind(kind);
            let new = combine_masks(&L1Unstructured::new(0.5).unwrap(), &t, &mask).unwrap();
            let live: Vec<bool> = to_f64(&mask).iter().map(|&m| m == 1.0).collect();
            let k = Amount::Fraction(0.5)
                .to_count(live.iter().filter(|&&l| l).count() as i64)
                .unwrap() as usize;
            let expected = reference(&[to_f64(&t)], std::slice::from_ref(&live), k);
            let got = to_f64(&new);
            for i in 0..got.len() {
                assert_eq!(
                    got[i],
                    if live[i] && !expected[0][i] { 1.0 } else { 0.0 },
                    "{kind:?} ties={ties} [{i}]"
                );
            }
            assert_eq!(new.kind(), kind);
        }
    }
}

#[test]
fn nan_and_infinite_magnitudes_rank_as_topk_ranks_them() {
    let t = Tensor::from_slice(&[
        f32::NAN,
        3.0,
        f32::NEG_INFINITY,
        -0.0,
        1.0,
        f32::INFINITY,
        -2.0,
    ]);
    let ones = t.ones_like();
    for k in 0..=7 {
        let fast = L1Unstructured::new(k)
            .unwrap()
            .compute_mask(&t, &ones)
            .unwrap();
        let (_, idx) = t.abs().topk(k, -1, false, true);
        let slow = ones.index_fill(0, &idx, 0.0);
        // Ties (the two infinities) aside, topk and the selection agree.
        if k != 5 {
            assert_same(&fast, &slow, &format!("k={k}"));
        }
        assert_eq!(fast.eq(0).sum(Kind::Int64).int64_value(&[]), k);
    }
}
