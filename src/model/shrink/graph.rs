//! The `forward` graph as src/ffi/shrink_graph.cpp describes it: nodes in execution order, what
//! each value is (a measured tensor, a constant, a submodule), the submodules with their class
//! and int class constants, and which names are parameters or buffers.

use crate::error::{PruneError, Result};
use std::collections::HashMap;

/// A constant of the graph.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Const {
    Bool(bool),
    Int(i64),
    Float(f64),
    None,
    Ints(Vec<i64>),
    Str(String),
    Other,
}

/// What a value of the graph is.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum ValueKind {
    /// A tensor and its shape as measured on the example input (`None` where it could not be
    /// measured: inside a branch or loop that stayed in the graph).
    Tensor(Option<Vec<i64>>),
    Const(Const),
    /// A submodule, by dotted path ("" for the root).
    Module(String),
    Other,
}

#[derive(Clone, Debug)]
pub(crate) struct Node {
    pub kind: String,
    /// For `prim::GetAttr`: the dotted name of what it reads.
    pub attr: Option<String>,
    pub inputs: Vec<usize>,
    pub outputs: Vec<usize>,
    /// A node with sub-blocks (an `if` or a loop that constant folding left in place); its
    /// inputs include the values its blocks use.
    pub has_blocks: bool,
}

#[derive(Clone, Debug)]
pub(crate) struct SubModule {
    /// The TorchScript class (instances of one class share its constants and code).
    pub class: String,
    pub int_constants: HashMap<String, i64>,
}

#[derive(Clone, Debug, Default)]
pub(crate) struct Graph {
    pub values: HashMap<usize, ValueKind>,
    pub nodes: Vec<Node>,
    pub inputs: Vec<usize>,
    pub outputs: Vec<usize>,
    pub modules: HashMap<String, SubModule>,
    /// Dotted name -> true for a parameter, false for a buffer.
    pub tensors: HashMap<String, bool>,
}

impl Graph {
    pub(crate) fn parse(text: &str) -> Result<Self> {
        let mut g = Graph::default();
        for (i, line) in text.lines().enumerate() {
            let bad = || {
                PruneError::Shrink(format!(
                    "graph description line {}: cannot read {line:?}",
                    i + 1
                ))
            };
            let mut it = line.split(' ');
            let tag = it.next().unwrap_or("");
            let rest: Vec<&str> = it.collect();
            let num = |s: &str| s.parse::<i64>().map_err(|_| bad());
            let id = |s: &str| s.parse::<usize>().map_err(|_| bad());
            match tag {
                "M" => {
                    let path = rest.first().ok_or_else(bad)?;
                    let path = if *path == "." {
                        String::new()
                    } else {
                        path.to_string()
                    };
                    let class = rest.get(1).ok_or_else(bad)?.to_string();
                    let mut int_constants = HashMap::new();
                    for kv in &rest[2..] {
                        let (k, v) = kv.split_once('=').ok_or_else(bad)?;
                        int_constants.insert(k.to_string(), num(v)?);
                    }
                    g.modules.insert(
                        path,
                        SubModule {
                            class,
                            int_constants,
                        },
                    );
                }
                "A" => {
                    let name = rest.first().ok_or_else(bad)?.to_string();
                    g.tensors.insert(name, rest.get(1) == Some(&"param"));
                }
                "V" => {
                    let v = id(rest.first().ok_or_else(bad)?)?;
                    let kind = match rest.get(1).copied() {
                        Some("t") => match rest.get(2).copied() {
                            Some("?") => ValueKind::Tensor(None),
                            Some(_) => {
                                let shape = rest[3..]
                                    .iter()
                                    .map(|s| num(s))
                                    .collect::<Result<Vec<_>>>()?;
                                ValueKind::Tensor(Some(shape))
                            }
                            None => return Err(bad()),
                        },
                        Some("m") => {
                            let p = rest.get(2).ok_or_else(bad)?;
                            ValueKind::Module(if *p == "." {
                                String::new()
                            } else {
                                p.to_string()
                            })
                        }
                        Some("c") => ValueKind::Const(match rest.get(2).copied() {
                            Some("b") => Const::Bool(rest.get(3) == Some(&"1")),
                            Some("i") => Const::Int(num(rest.get(3).ok_or_else(bad)?)?),
                            Some("f") => Const::Float(
                                rest.get(3).ok_or_else(bad)?.parse().map_err(|_| bad())?,
                            ),
                            Some("n") => Const::None,
                            Some("il") => {
                                let s = rest.get(3).ok_or_else(bad)?;
                                if *s == "-" {
                                    Const::Ints(vec![])
                                } else {
                                    Const::Ints(s.split(',').map(num).collect::<Result<_>>()?)
                                }
                            }
                            Some("s") => Const::Str(rest.get(3).unwrap_or(&"").to_string()),
                            _ => Const::Other,
                        }),
                        _ => ValueKind::Other,
                    };
                    g.values.insert(v, kind);
                }
                "N" => {
                    let kind = rest.first().ok_or_else(bad)?.to_string();
                    let attr = rest.get(1).ok_or_else(bad)?;
                    let attr = (*attr != "-").then(|| attr.to_string());
                    let n_in = id(rest.get(2).ok_or_else(bad)?)?;
                    let inputs = rest
                        .get(3..3 + n_in)
                        .ok_or_else(bad)?
                        .iter()
                        .map(|s| id(s))
                        .collect::<Result<Vec<_>>>()?;
                    let n_out = id(rest.get(3 + n_in).ok_or_else(bad)?)?;
                    let outputs = rest
                        .get(4 + n_in..4 + n_in + n_out)
                        .ok_or_else(bad)?
                        .iter()
                        .map(|s| id(s))
                        .collect::<Result<Vec<_>>>()?;
                    let has_blocks = rest.get(4 + n_in + n_out) == Some(&"B");
                    g.nodes.push(Node {
                        kind,
                        attr,
                        inputs,
                        outputs,
                        has_blocks,
                    });
                }
                "I" => {
                    g.inputs = rest
                        .iter()
                        .filter(|s| !s.is_empty())
                        .map(|s| id(s))
                        .collect::<Result<_>>()?
                }
                "O" => {
                    g.outputs = rest
                        .iter()
                        .filter(|s| !s.is_empty())
                        .map(|s| id(s))
                        .collect::<Result<_>>()?
                }
                "" => {}
                _ => return Err(bad()),
            }
        }
        Ok(g)
    }

    pub(crate) fn kind(&self, v: usize) -> &ValueKind {
        self.values.get(&v).unwrap_or(&ValueKind::Other)
    }

    /// The measured shape of a tensor value.
    pub(crate) fn shape(&self, v: usize) -> Option<&[i64]> {
        match self.kind(v) {
            ValueKind::Tensor(Some(s)) => Some(s),
            _ => None,
        }
    }

    pub(crate) fn int(&self, v: usize) -> Option<i64> {
        match self.kind(v) {
            ValueKind::Const(Const::Int(i)) => Some(*i),
            _ => None,
        }
    }

    pub(crate) fn ints(&self, v: usize) -> Option<&[i64]> {
        match self.kind(v) {
            ValueKind::Const(Const::Ints(i)) => Some(i),
            _ => None,
        }
    }

    pub(crate) fn is_none(&self, v: usize) -> bool {
        matches!(self.kind(v), ValueKind::Const(Const::None))
    }

    /// Multiply-accumulates of the convolutions and linear layers for the measured input: per
    /// output element, one per weight it reads (`in_channels / groups × kernel` or
    /// `in_features`).
    pub(crate) fn macs(&self) -> i64 {
        let mut total = 0i64;
        for n in &self.nodes {
            let conv = matches!(
                n.kind.as_str(),
                "aten::conv1d" | "aten::conv2d" | "aten::conv3d"
            );
            if !(conv || n.kind == "aten::linear" || n.kind == "aten::matmul") {
                continue;
            }
            let (Some(out), Some(w)) = (
                n.outputs.first().and_then(|&o| self.shape(o)),
                n.inputs.get(1).and_then(|&w| self.shape(w)),
            ) else {
                continue;
            };
            let out_numel: i64 = out.iter().product();
            let per = if conv {
                w[1..].iter().product::<i64>()
            } else if n.kind == "aten::linear" {
                *w.last().unwrap_or(&1)
            } else {
                // matmul: the contracted dimension is the first input's last.
                n.inputs
                    .first()
                    .and_then(|&a| self.shape(a))
                    .and_then(|a| a.last().copied())
                    .unwrap_or(0)
            };
            total += out_numel * per;
        }
        total
    }
}
