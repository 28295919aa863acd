//! The groups read off the spaces once the walk is done: every parameter's layout expanded into
//! spaces that are not views, the depthwise layers that share a class checked, and one
//! [`ChannelGroup`] per remaining root, in execution order, with its slices.

use super::analysis::{Analysis, ChannelGroup, Slice, ValueSeg};
use super::spaces::{State, Tag};
use crate::model::shrink::graph::Graph;
use std::collections::{BTreeMap, HashMap};

/// A depthwise convolution's `groups` is a constant of its TorchScript class, shared by every
/// instance of the class: `select` gives the groups of such instances the same width. It can
/// only do that for a depthwise layer whose channels are one group laid out plainly; one that
/// reads pieces of several (or interleaved channels) keeps them unless its class is its own.
fn check_depthwise(st: &mut State, g: &Graph, expanded: &BTreeMap<(String, usize), Tag>) {
    let depthwise: Vec<(String, String)> = st
        .layers
        .iter()
        .filter(|l| l.is_depthwise())
        .map(|l| (l.path.clone(), l.weight.clone()))
        .collect();
    let class = |path: &str| g.modules.get(path).map(|m| m.class.clone());
    let mut layouts: Vec<(Option<String>, String, Tag)> = Vec::new();
    for (path, weight) in &depthwise {
        if let Some(tag) = expanded.get(&(weight.clone(), 0)) {
            layouts.push((class(path), path.clone(), tag.clone()));
        }
    }
    for (c, path, tag) in &layouts {
        if c.is_none() || matches!(tag.as_slice(), [seg] if seg.inner == 1) {
            continue;
        }
        let same_class: Vec<&(Option<String>, String, Tag)> =
            layouts.iter().filter(|(c2, _, _)| c2 == c).collect();
        if same_class.len() < 2 {
            continue;
        }
        // Every instance of the class keeps its width: they share one `groups`.
        let reason = format!(
            "depthwise {path} reads pieces of several channel groups and shares its `groups` constant with {}",
            same_class
                .iter()
                .filter(|(_, p, _)| p != path)
                .map(|(_, p, _)| p.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
        for (_, _, t) in same_class {
            st.block_tag(t, &reason);
        }
    }
}

pub(super) fn finish(mut st: State, g: &Graph) -> Analysis {
    // Group indices for the roots that own at least one slice.
    // Groups in execution order: by their oldest space (the first producer that runs).
    let keys: Vec<(String, usize)> = st.layouts.keys().cloned().collect();
    let mut expanded: BTreeMap<(String, usize), Tag> = BTreeMap::new();
    for key in keys {
        let tag: Tag = st.layouts[&key]
            .clone()
            .into_iter()
            .flat_map(|seg| st.expand(seg))
            .collect();
        expanded.insert(key, tag);
    }
    check_depthwise(&mut st, g, &expanded);
    let mut roots: Vec<usize> = Vec::new();
    for tag in expanded.values() {
        for seg in tag {
            roots.push(st.find(seg.space));
        }
    }
    roots.sort_unstable();
    roots.dedup();
    let mut index: HashMap<usize, usize> = HashMap::new();
    let mut groups: Vec<ChannelGroup> = Vec::new();
    for root in roots {
        index.insert(root, groups.len());
        groups.push(ChannelGroup {
            producer: st.spaces[root].producer.clone(),
            channels: st.spaces[root].size,
            slices: vec![],
            blocked: st.spaces[root].blocked.clone(),
        });
    }
    let mut layouts = BTreeMap::new();
    for (key, tag) in expanded {
        let mut offset = 0;
        let mut segs = Vec::new();
        for seg in tag {
            let root = st.find(seg.space);
            let gi = index[&root];
            groups[gi].slices.push(Slice {
                name: key.0.clone(),
                dim: key.1,
                offset,
                inner: seg.inner,
                is_parameter: g.tensors.get(&key.0).copied().unwrap_or(false),
            });
            offset += st.spaces[root].size * seg.inner;
            segs.push((gi, seg.inner));
        }
        layouts.insert(key, segs);
    }
    let mut layer_group = HashMap::new();
    for (i, l) in st.layers.iter().enumerate() {
        if l.is_depthwise() {
            if let Some([(gi, 1)]) = layouts.get(&(l.weight.clone(), 0)).map(Vec::as_slice) {
                layer_group.insert(i, *gi);
            }
        }
    }
    let mut values = HashMap::new();
    let tags: Vec<(usize, Vec<Option<Tag>>)> =
        st.tags.iter().map(|(v, t)| (*v, t.clone())).collect();
    for (v, dims) in tags {
        let dims: Vec<Option<Vec<ValueSeg>>> = dims
            .into_iter()
            .map(|tag| {
                tag.map(|tag| {
                    let segs: Vec<_> = tag.into_iter().flat_map(|seg| st.expand(seg)).collect();
                    segs.into_iter()
                        .map(|seg| {
                            let root = st.find(seg.space);
                            ValueSeg {
                                group: index.get(&root).copied(),
                                inner: seg.inner,
                                channels: st.spaces[root].size,
                            }
                        })
                        .collect()
                })
            })
            .collect();
        values.insert(v, dims);
    }
    Analysis {
        groups,
        layouts,
        layers: st.layers,
        layer_group,
        values,
    }
}
