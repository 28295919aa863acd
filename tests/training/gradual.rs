//! Pruning while training: the digits CNN trained from scratch in Rust and pruned gradually on
//! the cubic schedule to 90 % (exact counts, pruned positions at zero, accuracy within 2 points
//! of the dense model), gradual pruning per tensor and structured, rewinding, and what is
//! refused.

use crate::common;
#[path = "../../examples/shared/digits.rs"]
mod digits;

use digits::{accuracy, cnn, train_epoch, Digits, WEIGHTS};
use std::collections::HashMap;
use tch::nn::{self, OptimizerConfig};
use tch::{Device, Kind, Tensor};
use tch_prune::train::{
    CubicSchedule, GradualPruner, LinearSchedule, NmSparsity, RewindPoint, SparsitySchedule,
    StepSchedule,
};
use tch_prune::{L1Unstructured, LnStructured, PruneError, Pruner};

const EPOCHS: i64 = 16;

fn fresh(device: Device) -> (nn::VarStore, nn::SequentialT, Pruner) {
    tch::manual_seed(0);
    let vs = nn::VarStore::new(device);
    let model = cnn(&vs.root());
    let pruner = Pruner::new(&vs);
    (vs, model, pruner)
}

/// Mask-zero positions of every weight hold exactly zero in the tensor the model uses.
fn assert_pruned_positions_zero(pruner: &Pruner) {
    for name in WEIGHTS {
        let (t, mask) = (pruner.tensor(name).unwrap(), pruner.mask(name).unwrap());
        let leaked = t
            .abs()
            .masked_select(&mask.eq(0))
            .sum(Kind::Double)
            .double_value(&[]);
        assert_eq!(leaked, 0.0, "{name}: pruned positions moved");
    }
}

#[test]
fn cubic_schedule_to_90_percent_is_exact_and_keeps_accuracy() {
    let _generator = common::generator();
    tch::set_num_threads(1);
    let device = Device::Cpu;
    let data = Digits::load(device).unwrap();
    let spe = data.steps_per_epoch();

    let (vs, model, pruner) = fresh(device);
    let mut opt = nn::Adam::default().build(&vs, 1e-3).unwrap();
    let mut step = 0;
    for _ in 0..EPOCHS {
        train_epoch(&model, &pruner, &mut opt, &data, &mut step, |_| Ok(())).unwrap();
    }
    let dense = accuracy(&model, &pruner, &data).unwrap();

    let (vs, model, pruner) = fresh(device);
    let schedule = CubicSchedule::new(0.9, spe, 10, 15).unwrap();
    let end = schedule.end_step();
    assert!(end < (EPOCHS - 3) * spe, "leaves epochs to fine-tune");
    let gradual = GradualPruner::new(&pruner, &WEIGHTS, schedule, L1Unstructured::new)
        .unwrap()
        .global()
        .unwrap();
    let units: i64 = WEIGHTS
        .iter()
        .map(|n| pruner.mask(n).unwrap().numel() as i64)
        .sum();
    let mut opt = nn::Adam::default().build(&vs, 1e-3).unwrap();
    let (mut step, mut rounds, mut last) = (0, 0, 0);
    for _ in 0..EPOCHS {
        train_epoch(&model, &pruner, &mut opt, &data, &mut step, |t| {
            if t >= spe && (t - spe) % 10 == 0 {
                let done = gradual.step(t)?;
                // Exact counts at every round: round(s(t) * units), never fewer than before.
                let wanted = (schedule.sparsity_at(t) * units as f64).round_ties_even() as i64;
                assert_eq!((done.pruned, done.units), (wanted, units), "step {t}");
                assert!(done.pruned >= last);
                last = done.pruned;
                rounds += 1;
                if t == end {
                    assert_eq!(done.target, 0.9);
                    assert_eq!(done.pruned, (0.9 * units as f64).round() as i64);
                }
            }
            Ok(())
        })
        .unwrap();
        assert_pruned_positions_zero(&pruner);
    }
    assert!(rounds > 15, "pruned in {rounds} rounds");
    let pruned_accuracy = accuracy(&model, &pruner, &data).unwrap();
    assert_eq!(gradual.sparsity().unwrap(), last as f64 / units as f64);
    assert_eq!(last, (0.9 * units as f64).round() as i64);

    // Permanent: the weights themselves hold exactly that many zeros (none more: trained
    // weights are never exactly zero).
    pruner.remove_all().unwrap();
    let zeros: i64 = WEIGHTS
        .iter()
        .map(|n| vs.variables()[*n].eq(0).sum(Kind::Int64).int64_value(&[]))
        .sum();
    assert_eq!(zeros, last);
    let permanent_accuracy = accuracy(&model, &pruner, &data).unwrap();
    assert_eq!(permanent_accuracy, pruned_accuracy);
    eprintln!(
        "dense {:.2}%, gradual 90% {:.2}%",
        100.0 * dense,
        100.0 * pruned_accuracy
    );
    assert!(
        pruned_accuracy >= dense - 0.02,
        "gradual pruning to 90% lost more than 2 points: {:.2}% vs dense {:.2}%",
        100.0 * pruned_accuracy,
        100.0 * dense
    );
}

fn store(shapes: &[(&str, &[i64])]) -> (nn::VarStore, Pruner) {
    tch::manual_seed(7);
    let vs = nn::VarStore::new(Device::Cpu);
    for (name, shape) in shapes {
        let _ = vs.root().randn(name, shape, 0.0, 1.0);
    }
    let pruner = Pruner::new(&vs);
    (vs, pruner)
}

#[test]
fn per_tensor_and_structured_schedules_prune_exact_counts() {
    let _generator = common::generator();
    let (_vs, pruner) = store(&[("a", &[10, 7]), ("b", &[3, 5, 2])]);
    let schedule = LinearSchedule::new(0.0, 0.75, 0, 4).unwrap();
    let per_tensor =
        GradualPruner::new(&pruner, &["a", "b"], schedule, L1Unstructured::new).unwrap();
    for t in 0..=6 {
        let done = per_tensor.step(t).unwrap();
        let s = schedule.sparsity_at(t);
        let want = |n: i64| (s * n as f64).round_ties_even() as i64;
        assert_eq!(done.pruned, want(70) + want(30), "step {t}");
        for (name, n) in [("a", 70), ("b", 30)] {
            let zeros = pruner
                .mask(name)
                .unwrap()
                .eq(0)
                .sum(Kind::Int64)
                .int64_value(&[]);
            assert_eq!(zeros, want(n), "{name} at step {t}");
        }
    }
    // The survivors are the largest magnitudes of each tensor.
    for name in ["a", "b"] {
        let (orig, mask) = (pruner.orig(name).unwrap(), pruner.mask(name).unwrap());
        let kept_min = orig
            .abs()
            .masked_select(&mask.eq(1))
            .min()
            .double_value(&[]);
        let pruned_max = orig
            .abs()
            .masked_select(&mask.eq(0))
            .max()
            .double_value(&[]);
        assert!(kept_min >= pruned_max, "{name}");
    }

    // Structured: channels along dim 0, per tensor, with importance scores for one of them.
    let (_vs, pruner) = store(&[("c", &[8, 4]), ("d", &[6, 3, 2])]);
    let steps = StepSchedule::new(&[(1, 0.25), (2, 0.5)]).unwrap();
    let gradual = GradualPruner::new(&pruner, &["c", "d"], steps, |a| {
        LnStructured::new(a, 2.0, 0)
    })
    .unwrap();
    // Scores that rank the rows of `c` by index: rows 0, 1 go first, then 2, 3.
    let scores = Tensor::arange(8, (Kind::Float, Device::Cpu))
        .unsqueeze(1)
        .expand([8, 4], false)
        + 1.0;
    let scores = HashMap::from([("c".to_string(), scores)]);
    let done = gradual.step_with_scores(0, &scores).unwrap();
    assert_eq!((done.pruned, done.units), (0, 14));
    gradual.step_with_scores(1, &scores).unwrap();
    let done = gradual.step_with_scores(2, &scores).unwrap();
    assert_eq!((done.pruned, done.units), (4 + 3, 14));
    let rows_kept = pruner
        .mask("c")
        .unwrap()
        .sum_dim_intlist(1, false, Kind::Float);
    assert_eq!(
        Vec::<f32>::try_from(&rows_kept).unwrap(),
        [0., 0., 0., 0., 4., 4., 4., 4.]
    );
    let d_rows = pruner
        .mask("d")
        .unwrap()
        .ne(0)
        .any_dim(2, false)
        .any_dim(1, false);
    assert_eq!(d_rows.sum(Kind::Int64).int64_value(&[]), 3);
    assert_eq!(gradual.sparsity().unwrap(), 0.5);
    // Scores for a tensor the schedule does not prune are a mistake, not ignored.
    let stray = HashMap::from([(
        "e".to_string(),
        Tensor::ones([2], (Kind::Float, Device::Cpu)),
    )]);
    assert!(gradual.step_with_scores(3, &stray).is_err());
}

#[test]
fn what_a_schedule_cannot_drive_is_refused_and_changes_nothing() {
    let (vs, pruner) = store(&[("a", &[4, 4]), ("v", &[4])]);
    let s = CubicSchedule::new(0.5, 0, 1, 4).unwrap();
    let nm = GradualPruner::new(&pruner, &["a"], s, |_| NmSparsity::new(2, 4));
    assert!(matches!(nm, Err(PruneError::InvalidConfig(_))), "{nm:?}");
    let global_structured =
        GradualPruner::new(&pruner, &["a"], s, |a| LnStructured::new(a, 1.0, 0))
            .unwrap()
            .global();
    assert!(matches!(
        global_structured,
        Err(PruneError::NotUnstructured(_))
    ));
    pruner.remove("a").unwrap();
    assert!(GradualPruner::new(&pruner, &["a", "a"], s, L1Unstructured::new).is_err());
    assert!(GradualPruner::new(&pruner, &["a", "nope"], s, L1Unstructured::new).is_err());
    // A 1-D tensor has no channels: refused before anything is reparametrized.
    assert!(GradualPruner::new(&pruner, &["a", "v"], s, |a| LnStructured::new(a, 1.0, 0)).is_err());
    assert!(!pruner.is_pruned("a") && !pruner.is_pruned("v"));
    assert!(vs.variables().contains_key("a"));
}

#[test]
fn rewinding_restores_the_survivors_and_keeps_the_masks() {
    let _generator = common::generator();
    tch::manual_seed(3);
    let vs = nn::VarStore::new(Device::Cpu);
    let fc1 = nn::linear(vs.root() / "fc1", 6, 8, Default::default());
    let fc2 = nn::linear(vs.root() / "fc2", 8, 3, Default::default());
    let pruner = Pruner::new(&vs);
    // fc2 is pruned before the rewind point, fc1 after it.
    pruner.l1_unstructured("fc2.weight", 0.25, None).unwrap();
    let net = pruner.wrap(nn::seq().add(fc1).add_fn(|x| x.relu()).add(fc2));
    let mut opt = nn::Adam::default().build(&vs, 1e-2).unwrap();
    let (x, y) = (
        Tensor::randn([16, 6], (Kind::Float, Device::Cpu)),
        Tensor::randint(3, [16], (Kind::Int64, Device::Cpu)),
    );
    let train = |opt: &mut nn::Optimizer| {
        for _ in 0..5 {
            opt.backward_step(&nn::Module::forward(&net, &x).cross_entropy_for_logits(&y));
        }
    };
    train(&mut opt);
    let point = RewindPoint::capture(&pruner).unwrap();
    assert_eq!(
        point.names(),
        ["fc1.bias", "fc1.weight", "fc2.bias", "fc2.weight"]
    );
    train(&mut opt);
    pruner.l1_unstructured("fc1.weight", 0.5, None).unwrap();
    pruner.l1_unstructured("fc2.weight", 0.5, None).unwrap();
    train(&mut opt);
    let masks: Vec<Tensor> = ["fc1.weight", "fc2.weight"]
        .iter()
        .map(|n| pruner.mask(n).unwrap().copy())
        .collect();
    assert!(
        !pruner
            .orig("fc1.weight")
            .unwrap()
            .equal(point.value("fc1.weight").unwrap()),
        "training moved it"
    );

    let mut opt = point
        .rewind_with_optimizer(&pruner, &vs, nn::Adam::default(), 1e-2)
        .unwrap();
    for (name, mask) in ["fc1.weight", "fc2.weight"].iter().zip(&masks) {
        let captured = point.value(name).unwrap();
        assert!(
            pruner.orig(name).unwrap().equal(captured),
            "{name}: _orig rewound"
        );
        assert!(pruner.mask(name).unwrap().equal(mask), "{name}: mask kept");
        assert!(
            pruner.tensor(name).unwrap().equal(&(captured * mask)),
            "{name}: masked values written"
        );
    }
    let bias = vs.variables()["fc1.bias"].shallow_clone();
    assert!(bias.equal(point.value("fc1.bias").unwrap()));
    // Training goes on from there with the masks on.
    train(&mut opt);
    for (name, mask) in ["fc1.weight", "fc2.weight"].iter().zip(&masks) {
        let t = pruner.tensor(name).unwrap();
        assert_eq!(
            t.masked_select(&mask.eq(0))
                .abs()
                .sum(Kind::Double)
                .double_value(&[]),
            0.0
        );
    }

    // A store that lost a variable cannot be rewound, and nothing is written.
    pruner.remove("fc1.weight").unwrap();
    let before = vs.variables()["fc2.bias"].copy();
    let smaller = nn::VarStore::new(Device::Cpu);
    let _ = (smaller.root() / "fc2").randn("bias", &[3], 0.0, 1.0);
    let err = point.rewind(&Pruner::new(&smaller)).unwrap_err();
    assert!(err.to_string().contains("fc1.bias"), "{err}");
    assert!(vs.variables()["fc2.bias"].equal(&before));
}

#[test]
fn boolean_masks_and_random_methods_follow_the_schedule_too() {
    let _generator = common::generator();
    tch::manual_seed(11);
    let vs = nn::VarStore::new(Device::Cpu);
    let _ = vs.root().randn("w", &[9, 11], 0.0, 1.0);
    let _ = vs.root().randn("u", &[5, 5], 0.0, 1.0);
    let pruner = Pruner::with_bool_masks(&vs);
    let schedule = CubicSchedule::new(0.8, 0, 1, 5).unwrap();
    let l1 = GradualPruner::new(&pruner, &["w"], schedule, L1Unstructured::new)
        .unwrap()
        .global()
        .unwrap();
    let random = GradualPruner::new(&pruner, &["u"], schedule, |a| {
        tch_prune::RandomUnstructured::new(a)
    })
    .unwrap();
    for t in 0..=5 {
        let want = |n: i64| (schedule.sparsity_at(t) * n as f64).round_ties_even() as i64;
        assert_eq!(l1.step(t).unwrap().pruned, want(99), "step {t}");
        assert_eq!(random.step(t).unwrap().pruned, want(25), "step {t}");
        for (name, n) in [("w", 99), ("u", 25)] {
            let mask = pruner.mask(name).unwrap();
            assert_eq!(mask.kind(), Kind::Bool);
            let zeros = mask.logical_not().sum(Kind::Int64).int64_value(&[]);
            assert_eq!(zeros, want(n), "{name} at step {t}");
        }
    }
}
