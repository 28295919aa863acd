//! The selection's two paths against each other: the radix select on CPU memory and the
//! tensor-operation path (what GPU tensors take), run here on CPU tensors. One idea: both
//! select the same entries, exactly `k`, in the passes and syncs the ops path promises.

use super::ops::OpsCounts;
use super::{zero_smallest, zero_smallest_by_ops, Part};
use tch::{Device, Kind, Tensor};

/// A float live mask for each of `scores`: 1 where a uniform draw is above `pruned`.
fn live_masks(scores: &[Tensor], pruned: f64) -> Vec<Tensor> {
    scores
        .iter()
        .map(|s| {
            Tensor::rand(s.size(), (Kind::Float, Device::Cpu))
                .gt(pruned)
                .to_kind(Kind::Float)
        })
        .collect()
}

/// The parts of a selection: each of `scores` with its live mask, zeroed into its `outs`.
fn parts<'a>(scores: &'a [Tensor], live: &'a [Tensor], outs: &'a [Tensor]) -> Vec<Part<'a>> {
    scores
        .iter()
        .zip(live)
        .zip(outs)
        .map(|((scores, live), out)| Part {
            scores,
            live: Some(live),
            out,
        })
        .collect()
}

/// The radix select on CPU and the tensor-operation path (what GPU tensors take) prune the
/// same entries, ties included.
#[test]
fn both_paths_select_the_same_entries() {
    tch::manual_seed(5);
    for kinds in [
        [Kind::Float, Kind::Float],
        [Kind::Double, Kind::Float],
        [Kind::Half, Kind::BFloat16],
    ] {
        for ties in [false, true] {
            let scores: Vec<Tensor> = [[40, 30], [7, 9]]
                .iter()
                .zip(kinds)
                .map(|(shape, kind)| {
                    let t = Tensor::randn(shape, (Kind::Float, Device::Cpu));
                    if ties { t.round() } else { t }.to_kind(kind)
                })
                .collect();
            let live = live_masks(&scores, 0.2);
            let total: i64 = live
                .iter()
                .map(|l| l.sum(Kind::Int64).int64_value(&[]))
                .sum();
            for k in [1, total / 3, total / 2, total] {
                let run = |by_ops: bool| -> Vec<Tensor> {
                    let outs: Vec<Tensor> = live.iter().map(|l| l.copy()).collect();
                    let parts = parts(&scores, &live, &outs);
                    if by_ops {
                        zero_smallest_by_ops(&parts, k).unwrap();
                    } else {
                        zero_smallest(&parts, k).unwrap();
                    }
                    outs
                };
                let (radix, ops) = (run(false), run(true));
                for (a, b) in radix.iter().zip(&ops) {
                    assert!(a.equal(b), "{kinds:?} ties={ties} k={k}");
                }
                let pruned: i64 = live
                    .iter()
                    .zip(&radix)
                    .map(|(l, o)| (l - o).sum(Kind::Int64).int64_value(&[]))
                    .sum();
                assert_eq!(pruned, k);
            }
        }
    }
}

/// Scores with NaN, infinities, signed zeros, subnormals and ties, in every float dtype;
/// live masks as floats, booleans or absent: the tensor-operation path (what GPU tensors
/// take) selects what the radix select selects, exactly `k` entries.
#[test]
fn both_paths_agree_on_special_values_and_every_live_mask() {
    tch::manual_seed(6);
    let special = [
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
    ];
    for kind in [Kind::Float, Kind::Double, Kind::Half, Kind::BFloat16] {
        for live_kind in [None, Some(Kind::Float), Some(Kind::Bool)] {
            let noise = Tensor::randn([50], (Kind::Double, Device::Cpu)).round();
            let scores = Tensor::cat(&[Tensor::from_slice(&special), noise], 0)
                .to_kind(kind)
                .view([6, 10]);
            let live = live_kind.map(|k| {
                Tensor::rand([6, 10], (Kind::Float, Device::Cpu))
                    .gt(0.3)
                    .to_kind(k)
            });
            let total = live.as_ref().map_or(60, |l| {
                l.to_kind(Kind::Int64).sum(Kind::Int64).int64_value(&[])
            });
            for k in [1, 2, 5, total / 2, total - 1, total] {
                let run = |by_ops: bool| {
                    let out = Tensor::ones([6, 10], (Kind::Bool, Device::Cpu));
                    let part = Part {
                        scores: &scores,
                        live: live.as_ref(),
                        out: &out,
                    };
                    if by_ops {
                        zero_smallest_by_ops(&[part], k).unwrap();
                    } else {
                        zero_smallest(&[part], k).unwrap();
                    }
                    out
                };
                let (radix, ops) = (run(false), run(true));
                assert!(radix.equal(&ops), "{kind:?} live={live_kind:?} k={k}");
                let zeros = 60 - radix.to_kind(Kind::Int64).sum(Kind::Int64).int64_value(&[]);
                assert_eq!(zeros, k, "{kind:?} live={live_kind:?}");
            }
        }
    }
}

/// Many tensors, f32 and f64 keys: a fixed number of passes and syncs, whatever the number
/// of tensors, and the same entries as the radix select.
#[test]
fn one_sync_per_pass_whatever_the_number_of_tensors() {
    tch::manual_seed(8);
    for (kind, digits) in [(Kind::Float, 2), (Kind::Double, 4)] {
        let scores: Vec<Tensor> = (0..20)
            .map(|i| Tensor::randn([30 + i, 7], (kind, Device::Cpu)))
            .collect();
        let live = live_masks(&scores, 0.25);
        let outs = |_: ()| -> Vec<Tensor> { live.iter().map(Tensor::copy).collect() };
        let (a, b) = (outs(()), outs(()));
        let counts = zero_smallest_by_ops(&parts(&scores, &live, &a), 1000).unwrap();
        assert_eq!(
            counts,
            OpsCounts {
                passes: digits + 2,
                syncs: digits + 1
            },
            "{kind:?}"
        );
        zero_smallest(&parts(&scores, &live, &b), 1000).unwrap();
        for (x, y) in a.iter().zip(&b) {
            assert!(x.equal(y), "{kind:?}");
        }
    }
}
