//! The channel spaces and their layouts: a union-find over spaces (`union`, `unify`), the
//! views that see one space as repeats of a smaller one or as another's channels taken several
//! at a time (`fold`, `coarsen`, `expand`), the blocking of a space with its reason, and the
//! layout of every value's dims (`tag`, `set_tag`) and of every parameter's (`couple`). The
//! rules of the ops (the other files) are written in these terms.

use super::analysis::Layer;
use std::collections::{BTreeMap, HashMap};

/// A stretch of a dimension that belongs to one channel space.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Seg {
    pub space: usize,
    /// Consecutive indices per channel (1 unless a flatten/reshape merged trailing dims).
    pub inner: i64,
}

/// The layout of one dimension: its segments in order.
pub(crate) type Tag = Vec<Seg>;

pub(super) struct Space {
    parent: usize,
    pub(super) size: i64,
    pub(super) blocked: Vec<String>,
    pub(super) producer: String,
    /// Set on a root whose channels are `reps` repeats of the channels of another space, each
    /// `inner` consecutive indices wide: channel `t*(n*inner) + q*inner + j` of this space is
    /// channel `q` of that one, for every `t < reps` and `j < inner`. A grouped convolution
    /// (input channel `l` of every group reads weight column `l`) or a `chunk` (piece `t` holds
    /// the same channels of every piece) makes such repeats; a channel shuffle's interleaving
    /// makes the `inner` ones. The space itself then owns no channels of its own: its slices
    /// are expanded into those of the other space.
    view: Option<View>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct View {
    space: usize,
    reps: i64,
    inner: i64,
}

#[derive(Default)]
pub(super) struct State {
    pub(super) spaces: Vec<Space>,
    pub(super) tags: HashMap<usize, Vec<Option<Tag>>>,
    /// Values that are parameters or buffers, by dotted name.
    pub(super) tensors: HashMap<usize, String>,
    /// Values that are lists or tuples, by their elements.
    pub(super) containers: HashMap<usize, Vec<usize>>,
    pub(super) layouts: BTreeMap<(String, usize), Tag>,
    /// Parameters read by an op the analysis does not understand: their shapes must stay.
    pub(super) frozen: HashMap<String, String>,
    pub(super) layers: Vec<Layer>,
    /// Values made by the analysis (the pieces of a `chunk`), counted down from the top.
    synthetic: usize,
}

impl State {
    pub(super) fn synthetic_value(&mut self) -> usize {
        self.synthetic += 1;
        usize::MAX - self.synthetic
    }

    pub(super) fn find(&mut self, mut s: usize) -> usize {
        while self.spaces[s].parent != s {
            let p = self.spaces[s].parent;
            self.spaces[s].parent = self.spaces[p].parent;
            s = p;
        }
        s
    }

    /// How many indices of its dimension a segment covers.
    pub(super) fn width(&mut self, seg: &Seg) -> i64 {
        let r = self.find(seg.space);
        self.spaces[r].size * seg.inner
    }

    pub(super) fn new_space(&mut self, size: i64, producer: String) -> usize {
        let id = self.spaces.len();
        self.spaces.push(Space {
            parent: id,
            size,
            blocked: vec![],
            producer,
            view: None,
        });
        id
    }

    /// A new space of `size` channels that is `view` of another (see `Space::view`).
    fn new_view(&mut self, size: i64, producer: String, view: View) -> usize {
        let id = self.new_space(size, producer);
        self.spaces[id].view = Some(view);
        id
    }

    pub(super) fn block(&mut self, s: usize, reason: &str) {
        let r = self.find(s);
        if !self.spaces[r].blocked.iter().any(|b| b == reason) {
            self.spaces[r].blocked.push(reason.to_string());
        }
        // A viewed space's channels are the other space's: so is its fate.
        if let Some(v) = self.spaces[r].view {
            self.block(v.space, reason);
        }
    }

    /// The space `f` of `period` channels such that space `s` is `size / period` repeats of
    /// it: channel `c` and `c + period` of `s` are then always kept or removed together.
    /// `None` when `s` cannot be seen that way (its width is not a multiple, or it already
    /// repeats with an incompatible period).
    pub(super) fn fold(&mut self, s: usize, period: i64) -> Option<usize> {
        let r = self.find(s);
        let n = self.spaces[r].size;
        if period <= 0 || n % period != 0 {
            return None;
        }
        if period == n {
            return Some(r);
        }
        let producer = self.spaces[r].producer.clone();
        match self.spaces[r].view {
            None => {
                let f = self.new_space(period, producer);
                self.spaces[r].view = Some(View {
                    space: f,
                    reps: n / period,
                    inner: 1,
                });
                let blocked = self.spaces[r].blocked.clone();
                for b in blocked {
                    self.block(f, &b);
                }
                Some(f)
            }
            Some(View { space, reps, inner }) => {
                let current = n / reps;
                if inner == 1 {
                    if current == period {
                        Some(self.find(space))
                    } else if current % period == 0 {
                        self.fold(space, period)
                    } else if period % current == 0 {
                        Some(self.new_view(
                            period,
                            producer,
                            View {
                                space,
                                reps: period / current,
                                inner: 1,
                            },
                        ))
                    } else {
                        None
                    }
                } else if reps == 1 && period % inner == 0 {
                    // `s` is `space` with each channel `inner` wide: fold `space` instead.
                    let f = self.fold(space, period / inner)?;
                    Some(self.new_view(
                        period,
                        producer,
                        View {
                            space: f,
                            reps: 1,
                            inner,
                        },
                    ))
                } else {
                    None
                }
            }
        }
    }

    /// The space `c` of `size / k` channels such that each channel of `c` is `k` consecutive
    /// channels of space `s` (kept or removed together).
    pub(super) fn coarsen(&mut self, s: usize, k: i64) -> Option<usize> {
        let r = self.find(s);
        let n = self.spaces[r].size;
        if k <= 0 || n % k != 0 {
            return None;
        }
        if k == 1 {
            return Some(r);
        }
        let producer = self.spaces[r].producer.clone();
        match self.spaces[r].view {
            None => {
                let c = self.new_space(n / k, producer);
                self.spaces[r].view = Some(View {
                    space: c,
                    reps: 1,
                    inner: k,
                });
                let blocked = self.spaces[r].blocked.clone();
                for b in blocked {
                    self.block(c, &b);
                }
                Some(c)
            }
            Some(View { space, reps, inner }) => {
                if reps == 1 && inner == k {
                    Some(self.find(space))
                } else if reps == 1 && k % inner == 0 {
                    self.coarsen(space, k / inner)
                } else if inner == 1 {
                    // `s` repeats `space`: coarsen one repeat, and repeat that.
                    let c = self.coarsen(space, k)?;
                    Some(self.new_view(
                        n / k,
                        producer,
                        View {
                            space: c,
                            reps,
                            inner: 1,
                        },
                    ))
                } else {
                    None
                }
            }
        }
    }

    /// `seg` as segments of spaces that are not views, in order.
    pub(super) fn expand(&mut self, seg: Seg) -> Vec<Seg> {
        let r = self.find(seg.space);
        match self.spaces[r].view {
            None => vec![Seg {
                space: r,
                inner: seg.inner,
            }],
            Some(v) => {
                let one = self.expand(Seg {
                    space: v.space,
                    inner: seg.inner * v.inner,
                });
                (0..v.reps).flat_map(|_| one.clone()).collect()
            }
        }
    }

    pub(super) fn block_tag(&mut self, tag: &[Seg], reason: &str) {
        for seg in tag {
            self.block(seg.space, reason);
        }
    }

    pub(super) fn block_value(&mut self, v: usize, reason: &str) {
        if let Some(elements) = self.containers.get(&v).cloned() {
            for e in elements {
                self.block_value(e, reason);
            }
        }
        if let Some(name) = self.tensors.get(&v).cloned() {
            self.frozen
                .entry(name)
                .or_insert_with(|| reason.to_string());
        }
        for tag in self
            .tags
            .get(&v)
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .flatten()
        {
            self.block_tag(&tag, reason);
        }
    }

    pub(super) fn union(&mut self, a: usize, b: usize) -> bool {
        // The older space stays the root: its producer (the first layer of the group in
        // execution order) names the group.
        let (x, y) = (self.find(a), self.find(b));
        let (ra, rb) = (x.min(y), x.max(y));
        if ra == rb {
            return true;
        }
        if self.spaces[ra].size != self.spaces[rb].size {
            return false;
        }
        let (va, vb) = (self.spaces[ra].view, self.spaces[rb].view);
        let view = match (va, vb) {
            (Some(p), Some(q)) if p.reps != q.reps || p.inner != q.inner => return false,
            (Some(p), _) => Some(p),
            (None, q) => q,
        };
        let blocked = std::mem::take(&mut self.spaces[rb].blocked);
        self.spaces[rb].parent = ra;
        self.spaces[ra].view = view;
        if let (Some(p), Some(q)) = (va, vb) {
            if !self.union(p.space, q.space) {
                self.block(ra, "its channels repeat in two layouts that do not line up");
            }
        }
        let mut all = blocked;
        all.extend(self.spaces[ra].blocked.clone());
        for b in all {
            self.block(ra, &b);
        }
        true
    }

    /// Makes two layouts of one dimension the same channels; blocks both where they cannot be.
    /// Segments of two layouts that cover the same indices with a different `inner` (a
    /// channel shuffle's pieces) line up when the narrower one's channels are taken `k` at a
    /// time.
    pub(super) fn unify(&mut self, a: &Tag, b: &Tag, reason: &str) -> bool {
        let mut aligned = a.len() == b.len();
        if aligned {
            for (x, y) in a.iter().zip(b) {
                aligned = aligned && self.width(x) == self.width(y);
            }
        }
        if aligned {
            for (x, y) in a.iter().zip(b) {
                let pair = if x.inner == y.inner {
                    Some((x.space, y.space))
                } else if x.inner > y.inner && x.inner % y.inner == 0 {
                    self.coarsen(y.space, x.inner / y.inner)
                        .map(|c| (x.space, c))
                } else if y.inner % x.inner == 0 {
                    self.coarsen(x.space, y.inner / x.inner)
                        .map(|c| (c, y.space))
                } else {
                    None
                };
                if !pair.is_some_and(|(p, q)| self.union(p, q)) {
                    self.block(x.space, reason);
                    self.block(y.space, reason);
                }
            }
            true
        } else {
            self.block_tag(a, reason);
            self.block_tag(b, reason);
            false
        }
    }

    /// Ties dim `dim` of parameter/buffer `name` to the layout `tag`.
    pub(super) fn couple(&mut self, name: &str, dim: usize, tag: &Tag) {
        let key = (name.to_string(), dim);
        match self.layouts.get(&key).cloned() {
            Some(existing) => {
                self.unify(
                    &existing,
                    tag,
                    &format!("{name} dim {dim} is read with two different channel layouts"),
                );
            }
            None => {
                self.layouts.insert(key, tag.clone());
            }
        }
    }

    pub(super) fn tag(&self, v: usize, dim: usize) -> Option<Tag> {
        self.tags
            .get(&v)
            .and_then(|t| t.get(dim).cloned())
            .flatten()
    }

    pub(super) fn set_tag(&mut self, v: usize, rank: usize, dim: usize, tag: Tag) {
        let t = self.tags.entry(v).or_insert_with(|| vec![None; rank]);
        if t.len() < rank {
            t.resize(rank, None);
        }
        t[dim] = Some(tag);
    }

    pub(super) fn tagged(&self, v: usize) -> bool {
        self.tags
            .get(&v)
            .is_some_and(|t| t.iter().any(Option::is_some))
            || self
                .containers
                .get(&v)
                .is_some_and(|e| e.iter().any(|&x| self.tagged(x)))
    }
}

pub(super) fn param(st: &State, v: usize) -> Option<String> {
    st.tensors.get(&v).cloned()
}
