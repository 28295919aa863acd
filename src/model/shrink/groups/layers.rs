//! The layers that make channels: a convolution (plain, depthwise or grouped) or a linear layer
//! creates the space of its output channels and ties its input's to its weight's dim 1; a
//! product with a parameter weight laid out `[in, out]` (`addmm`, `mm`, `matmul`: Hugging
//! Face's `Conv1D` in GPT-2) does the same with the weight's dims swapped; a batch norm ties its
//! four vectors to its input's channels.

use super::analysis::{Layer, LayerKind};
use super::shapes::pass_through;
use super::spaces::{param, Seg, State, Tag};
use crate::model::shrink::graph::{Graph, Node};

fn module_of(name: &str) -> String {
    name.rsplit_once('.')
        .map(|(p, _)| p.to_string())
        .unwrap_or_default()
}

/// What a convolution or linear layer reads and writes: its input `x` and output `o` with their
/// shapes, its weight's shape, and the names of its weight and bias. `None` when any of it is
/// unknown (the layer is then not understood).
struct LayerIo<'g> {
    x: usize,
    o: usize,
    xs: &'g [i64],
    ws: &'g [i64],
    os: &'g [i64],
    weight: String,
    bias: Option<String>,
}

fn layer_io<'g>(st: &State, g: &'g Graph, n: &Node) -> Option<LayerIo<'g>> {
    let (x, w, b) = (n.inputs[0], n.inputs[1], n.inputs[2]);
    let weight = param(st, w)?;
    let bias = if g.is_none(b) {
        None
    } else {
        Some(param(st, b)?)
    };
    let o = n.outputs.first().copied()?;
    Some(LayerIo {
        x,
        o,
        xs: g.shape(x)?,
        ws: g.shape(w)?,
        os: g.shape(o)?,
        weight,
        bias,
    })
}

pub(super) fn conv(st: &mut State, g: &Graph, n: &Node, op: &str) -> bool {
    let spatial = match op {
        "conv1d" => 1,
        "conv2d" => 2,
        _ => 3,
    };
    let Some(LayerIo {
        x,
        o,
        xs,
        ws,
        os,
        weight,
        bias,
    }) = layer_io(st, g, n)
    else {
        return false;
    };
    let groups = n.inputs.get(6).and_then(|&v| g.int(v)).unwrap_or(1);
    let rank = xs.len();
    if rank < spatial + 1 {
        return false;
    }
    let cdim = rank - spatial - 1;
    let path = module_of(&weight);
    // Tags on the batch or spatial dims: not a layout this analysis follows.
    for d in 0..rank {
        if d != cdim {
            if let Some(t) = st.tag(x, d) {
                st.block_tag(&t, &format!("reaches a non-channel dim of {path}"));
            }
        }
    }
    let in_tag = st.tag(x, cdim);
    let c_in = xs[cdim];
    let c_out = ws[0];
    let depthwise = groups > 1 && groups == c_in && c_out == c_in && ws[1] == 1;
    let producer = format!("{path} ({op} output channels)");
    if groups == 1 {
        if let Some(t) = &in_tag {
            st.couple(&weight, 1, t);
        }
        let s = st.new_space(c_out, producer);
        let tag = vec![Seg { space: s, inner: 1 }];
        st.couple(&weight, 0, &tag);
        if let Some(bn) = &bias {
            st.couple(bn, 0, &tag);
        }
        st.set_tag(o, os.len(), cdim, tag);
        st.layers.push(Layer {
            path,
            weight,
            kind: LayerKind::Conv {
                groups,
                depthwise: false,
            },
        });
    } else if depthwise {
        let tag = match in_tag {
            Some(t) => t,
            None => {
                let s = st.new_space(c_out, producer);
                st.block(
                    s,
                    &format!("depthwise {path} reads channels of fixed width (a network input, or channels an earlier op keeps)"),
                );
                vec![Seg { space: s, inner: 1 }]
            }
        };
        st.couple(&weight, 0, &tag);
        if let Some(bn) = &bias {
            st.couple(bn, 0, &tag);
        }
        st.set_tag(o, os.len(), cdim, tag.clone());
        st.layers.push(Layer {
            path,
            weight,
            kind: LayerKind::Conv {
                groups,
                depthwise: true,
            },
        });
    } else {
        return grouped(
            st,
            GroupedConv {
                path: &path,
                weight: &weight,
                bias: bias.as_deref(),
                groups,
                c_in,
                c_out,
                producer,
            },
            in_tag,
            o,
            os.len(),
            cdim,
        );
    }
    true
}

struct GroupedConv<'a> {
    path: &'a str,
    weight: &'a str,
    bias: Option<&'a str>,
    groups: i64,
    c_in: i64,
    c_out: i64,
    producer: String,
}

/// A grouped convolution whose `groups` stays (it is code): every group must keep the same
/// number of input and output channels. As Torch-Pruning's group-conv pruner does, channel `j`
/// of every group goes together: its output channels are `groups` repeats of a space of
/// `c_out / groups` channels, its input channels must be `groups` repeats of one of `c_in /
/// groups` (weight column `l` reads channel `l` of each input group).
fn grouped(
    st: &mut State,
    c: GroupedConv,
    in_tag: Option<Tag>,
    o: usize,
    rank: usize,
    cdim: usize,
) -> bool {
    let GroupedConv {
        path,
        weight,
        bias,
        groups,
        c_in,
        c_out,
        producer,
    } = c;
    let why = |what: &str| format!("grouped convolution {path} (groups={groups}) {what}");
    if groups < 1 || c_in % groups != 0 || c_out % groups != 0 {
        return false;
    }
    let (per_in, per_out) = (c_in / groups, c_out / groups);
    let columns = match in_tag.as_deref() {
        None => None,
        Some([seg]) if per_in > 1 && per_in % seg.inner == 0 => {
            match st.fold(seg.space, per_in / seg.inner) {
                Some(f) => Some(vec![Seg {
                    space: f,
                    inner: seg.inner,
                }]),
                None => {
                    st.block(
                        seg.space,
                        &why("reads channels that cannot be split into equal groups"),
                    );
                    None
                }
            }
        }
        Some(t) => {
            st.block_tag(t, &why("reads channels that cannot be split into equal groups (one per group, or a concatenation)"));
            None
        }
    };
    if let Some(cols) = &columns {
        st.couple(weight, 1, cols);
    }
    let s = st.new_space(c_out, producer);
    let tag = vec![Seg { space: s, inner: 1 }];
    if per_out == 1 {
        st.block(s, &why("has one output channel per group"));
    } else if st.fold(s, per_out).is_none() {
        st.block(
            s,
            &why("has output channels that cannot be split into equal groups"),
        );
    }
    st.couple(weight, 0, &tag);
    if let Some(b) = bias {
        st.couple(b, 0, &tag);
    }
    st.set_tag(o, rank, cdim, tag);
    st.layers.push(Layer {
        path: path.to_string(),
        weight: weight.to_string(),
        kind: LayerKind::Conv {
            groups,
            depthwise: false,
        },
    });
    true
}

pub(super) fn linear(st: &mut State, g: &Graph, n: &Node) -> bool {
    let Some(io) = layer_io(st, g, n) else {
        return false;
    };
    if io.ws.len() != 2 || io.xs.is_empty() {
        return false;
    }
    let last = io.xs.len() - 1;
    let rank = io.os.len();
    let path = module_of(&io.weight);
    if let Some(t) = st.tag(io.x, last) {
        st.couple(&io.weight, 1, &t);
    }
    // The other dims pass through (a sequence's length, the batch).
    for d in 0..last {
        if let Some(t) = st.tag(io.x, d) {
            st.set_tag(io.o, rank, d, t);
        }
    }
    let s = st.new_space(io.ws[0], format!("{path} (linear output features)"));
    let tag = vec![Seg { space: s, inner: 1 }];
    st.couple(&io.weight, 0, &tag);
    if let Some(bn) = &io.bias {
        st.couple(bn, 0, &tag);
    }
    st.set_tag(io.o, rank, rank - 1, tag);
    st.layers.push(Layer {
        path,
        weight: io.weight,
        kind: LayerKind::Linear,
    });
    true
}

/// `aten::addmm(bias, x, weight)`, `aten::mm(x, weight)` or `aten::matmul(x, weight)` with a
/// parameter `weight` of shape `[in, out]`: a linear layer stored transposed, as Hugging Face's
/// `Conv1D` (GPT-2's `c_attn`, `c_fc`, `c_proj`) computes `addmm(bias, x.view(-1, in), weight)`.
/// Its output features are the weight's dim 1 and the bias's dim 0, its input features the
/// weight's dim 0 (matched against `x`'s last dim). Anything else (a weight that is an
/// activation, a bias that is not a parameter vector) is not a layer: the caller blocks it.
pub(super) fn matmul(st: &mut State, g: &Graph, n: &Node, op: &str) -> bool {
    let (bias, x, w) = match op {
        "addmm" => (Some(n.inputs[0]), n.inputs[1], n.inputs[2]),
        _ => (None, n.inputs[0], n.inputs[1]),
    };
    let Some(weight) = param(st, w) else {
        return false;
    };
    let bias = match bias {
        None => None,
        Some(b) => match (param(st, b), g.shape(b)) {
            (Some(name), Some([_])) => Some(name),
            _ => return false,
        },
    };
    let Some(o) = n.outputs.first().copied() else {
        return false;
    };
    let (Some(xs), Some(ws), Some(os)) = (g.shape(x), g.shape(w), g.shape(o)) else {
        return false;
    };
    // `matmul` broadcasts a 1-D input or batches of weights: only `[..., in] @ [in, out]`.
    if ws.len() != 2 || xs.len() < 2 || os.len() != xs.len() || xs[xs.len() - 1] != ws[0] {
        return false;
    }
    let last = xs.len() - 1;
    let path = module_of(&weight);
    if let Some(t) = st.tag(x, last) {
        st.couple(&weight, 0, &t);
    }
    for d in 0..last {
        if let Some(t) = st.tag(x, d) {
            st.set_tag(o, os.len(), d, t);
        }
    }
    let s = st.new_space(ws[1], format!("{path} ({op} output features)"));
    let tag = vec![Seg { space: s, inner: 1 }];
    st.couple(&weight, 1, &tag);
    if let Some(b) = &bias {
        st.couple(b, 0, &tag);
    }
    st.set_tag(o, os.len(), last, tag);
    st.layers.push(Layer {
        path,
        weight,
        kind: LayerKind::Transposed,
    });
    true
}

pub(super) fn batch_norm(st: &mut State, g: &Graph, n: &Node) -> bool {
    let x = n.inputs[0];
    let Some(xs) = g.shape(x) else { return false };
    if xs.len() < 2 {
        return false;
    }
    let mut names = Vec::new();
    for &v in &n.inputs[1..5] {
        if g.is_none(v) {
            continue;
        }
        match param(st, v) {
            Some(p) => names.push(p),
            None => return false,
        }
    }
    for d in 0..xs.len() {
        if d != 1 {
            if let Some(t) = st.tag(x, d) {
                st.block_tag(&t, "reaches a non-channel dim of a batch norm");
            }
        }
    }
    if let Some(t) = st.tag(x, 1) {
        for p in &names {
            st.couple(p, 0, &t);
        }
    } else {
        for p in &names {
            st.frozen
                .entry(p.clone())
                .or_insert_with(|| "a batch norm over fixed channels".into());
        }
    }
    if let Some(first) = names.first() {
        st.layers.push(Layer {
            path: module_of(first),
            weight: first.clone(),
            kind: LayerKind::BatchNorm,
        });
    }
    pass_through(st, g, x, n.outputs.first().copied());
    true
}
