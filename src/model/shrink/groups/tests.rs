//! The layout algebra on its own: folds (repeats), coarsening (channels taken `k` at a time),
//! their compositions, and what must block.

use super::spaces::{Seg, State};
use super::split::equal_pieces;

fn seg(space: usize, inner: i64) -> Seg {
    Seg { space, inner }
}

fn expanded(st: &mut State, s: usize) -> Vec<(usize, i64)> {
    st.expand(seg(s, 1))
        .into_iter()
        .map(|x| (st.find(x.space), x.inner))
        .collect()
}

#[test]
fn a_fold_repeats_one_space() {
    let mut st = State::default();
    let s = st.new_space(8, "conv".into());
    let f = st.fold(s, 2).unwrap();
    assert_eq!(st.spaces[f].size, 2);
    assert_eq!(expanded(&mut st, s), vec![(f, 1); 4]);
    // The same period again is the same space; a finer one folds the fold.
    assert_eq!(st.fold(s, 2), Some(f));
    let g = st.fold(s, 1).unwrap();
    assert_eq!(expanded(&mut st, s), vec![(g, 1); 8]);
    // A period that does not divide the width cannot be.
    let t = st.new_space(6, "other".into());
    assert_eq!(st.fold(t, 4), None);
}

#[test]
fn a_shuffle_coarsens_then_folds() {
    // ShuffleNet: a branch's 8 outputs line up with pairs of the passed-through channels
    // (coarsen by 2), and the next chunk folds what they became.
    let mut st = State::default();
    let b = st.new_space(8, "branch".into());
    let c = st.coarsen(b, 2).unwrap();
    assert_eq!(expanded(&mut st, b), vec![(c, 2)]);
    let f = st.fold(c, 2).unwrap();
    assert_eq!(expanded(&mut st, b), vec![(f, 2), (f, 2)]);
    // Blocking the viewed space blocks the one its channels are.
    st.block(b, "why");
    let root = st.find(f);
    assert_eq!(st.spaces[root].blocked, vec!["why".to_string()]);
}

#[test]
fn unions_of_incompatible_views_fail() {
    let mut st = State::default();
    let a = st.new_space(8, "a".into());
    let b = st.new_space(8, "b".into());
    st.fold(a, 4).unwrap();
    st.coarsen(b, 2).unwrap();
    assert!(!st.union(a, b));
    // Compatible ones merge their views.
    let c = st.new_space(8, "c".into());
    let fc = st.fold(c, 4).unwrap();
    assert!(st.union(a, c));
    let fa = st.fold(a, 4).unwrap();
    assert_eq!(st.find(fa), st.find(fc));
}

#[test]
fn equal_pieces_of_a_concatenation_are_unified() {
    let mut st = State::default();
    let a = st.new_space(4, "a".into());
    let b = st.new_space(4, "b".into());
    let pieces = equal_pieces(&mut st, &vec![seg(a, 1), seg(b, 1)], 8, 2).unwrap();
    assert_eq!(pieces.len(), 2);
    assert_eq!(st.find(a), st.find(b));
    // A cut through the middle of a segment that is not a whole number of pieces fails.
    let c = st.new_space(3, "c".into());
    let d = st.new_space(5, "d".into());
    assert!(equal_pieces(&mut st, &vec![seg(c, 1), seg(d, 1)], 8, 2).is_none());
    // One space cut in two: its halves are one folded space.
    let e = st.new_space(6, "e".into());
    let halves = equal_pieces(&mut st, &vec![seg(e, 1)], 6, 2).unwrap();
    let f = st.fold(e, 3).unwrap();
    assert_eq!(halves, vec![vec![seg(f, 1)], vec![seg(f, 1)]]);
}
