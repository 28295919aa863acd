//! The `forward` graph as src/ffi/shrink_graph.cpp describes it: nodes in execution order, what
//! each value is (a measured tensor, a constant, a submodule), the submodules with their class
//! and int class constants, and which names are parameters or buffers.
//!
//! # The description's text format
//!
//! The C++ side (`describe` in shrink_graph.cpp) writes it and [`Graph::parse`] reads it; this is
//! the contract between them. The text is ASCII lines ending in `\n`; a line is a tag and its
//! fields, separated by single spaces. No field is empty or holds whitespace: names (submodule
//! paths, parameters, buffers, attributes) are TorchScript identifiers joined by `.`, and the
//! two free texts, class names and string constants, are written as *tokens*: each space, tab,
//! `\r` or `\n` replaced by `_`, and an empty text written `_` (lossy; the analysis compares
//! class names and never reads a string constant). Numbers are decimal; value ids are the
//! graph's `Value::unique()` numbers. A module path is `.` for the root.
//!
//! ```text
//! M <path> <class-token> [<name>=<int>]...   a submodule (the root first), with the int constants
//!                                            of its class
//! A <name> param | A <name> buffer           a parameter or buffer, by dotted name
//! V <id> <value>                             a value of the top-level block, see below
//! I [<id>]...                                the graph's inputs: `self`, then forward's arguments
//! N <kind> <attr> <n> <id>{n} <m> <id>{m} [B]
//!                                            a top-level node, in execution order: its kind
//!                                            (`aten::conv2d`), the dotted name a `prim::GetAttr`
//!                                            reads (`?<token>` when not from a submodule, `-` for
//!                                            other kinds), its n inputs, its m outputs; `B` when
//!                                            it keeps sub-blocks (an `if` or loop), whose inputs
//!                                            then include every top-level value its blocks use
//!                                            (except through metadata reads like `dim()`)
//! O [<id>]...                                the graph's outputs
//! ```
//!
//! A `V` value is one of
//!
//! ```text
//! m <path>                 a submodule
//! t <rank> <dim>{rank}     a tensor with its shape measured on the example input (or a tensor
//!                          constant's shape)
//! t ?                      a tensor whose shape was not measured
//! c b 0 | c b 1            a bool constant
//! c i <int>                an int constant
//! c f <float>              a float constant, with 17 significant digits (`1.0000000000000001e-05`,
//!                          `inf`, `nan`): read back exactly
//! c n                      None
//! c il <int>,<int>...      an int list constant; `c il -` for the empty list
//! c s <token>              a string constant
//! c o                      another constant
//! o                        anything else (a list, a tuple, an optional tensor not measured)
//! ```
//!
//! The writer emits the `M` lines, the `A` lines (parameters, then buffers), a `V` line for each
//! graph input and each output of each top-level node, in order, then `I`, the `N` lines and
//! `O`. Every id in `I` and `O` and every node output has its `V` line; a node's inputs may
//! name a value without one (a parameter of a sub-block that a `B` node's blocks use), which
//! reads as `o`. The reader takes the lines in any order, skips empty ones, refuses an unknown
//! tag or a line it cannot read (saying which), and reads an unknown value or constant kind as
//! `o`.
//!
//! A second writer, src/model/shrink/export/front.rs, writes the same format from a
//! `torch.export` program: no `M` lines (a depthwise convolution's `groups` is an argument of
//! its own node there, shared with no other), each parameter and buffer read by a
//! `prim::GetAttr` node without inputs, shapes from the program's `tensor_values`, the graph's
//! user inputs in `I` (there is no `self`).

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

    /// Multiply-accumulates of the convolutions, linear layers and matrix products (`matmul`,
    /// `mm`, `addmm`: Hugging Face's `Conv1D`) for the measured input: per output element, one
    /// per weight it reads (`in_channels / groups × kernel`, `in_features`, or the contracted
    /// dimension).
    pub(crate) fn macs(&self) -> i64 {
        let mut total = 0i64;
        for n in &self.nodes {
            let conv = matches!(
                n.kind.as_str(),
                "aten::conv1d" | "aten::conv2d" | "aten::conv3d"
            );
            // The product's left matrix: `addmm(bias, a, b)` reads it second.
            let left = match n.kind.as_str() {
                "aten::matmul" | "aten::mm" => 0,
                "aten::addmm" => 1,
                _ => usize::MAX,
            };
            if !(conv || n.kind == "aten::linear" || left != usize::MAX) {
                continue;
            }
            let (Some(out), Some(w)) = (
                n.outputs.first().and_then(|&o| self.shape(o)),
                n.inputs.get(1).and_then(|&w| self.shape(w)),
            ) else {
                continue;
            };
            // Saturating: a `torch.export` program's recorded sizes are not measured, and may lie.
            let out_numel: i64 = out.iter().fold(1i64, |n, &d| n.saturating_mul(d));
            let per = if conv {
                w[1..].iter().product::<i64>()
            } else if n.kind == "aten::linear" {
                *w.last().unwrap_or(&1)
            } else {
                // A product: the contracted dimension is the left matrix's last.
                n.inputs
                    .get(left)
                    .and_then(|&a| self.shape(a))
                    .and_then(|a| a.last().copied())
                    .unwrap_or(0)
            };
            total = total.saturating_add(out_numel.saturating_mul(per));
        }
        total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every line kind and every value kind of the format, as the writer lays them out.
    const SPEC_TEXT: &str = "\
M . __torch__.Net
M conv __torch__.Conv2d out_channels=8 groups=1
A conv.weight param
A conv.running_mean buffer
V 0 m .
V 1 t 4 1 3 8 8
V 2 m conv
V 3 t 4 8 3 3 3
V 4 t 4 1 8 8 8
V 5 c b 1
V 6 c i -2
V 7 c f 1.0000000000000001e-05
V 8 c n
V 9 c il 1,-1
V 10 c il -
V 11 c s a_b
V 12 c o
V 13 o
V 14 t 0
V 15 t ?
I 0 1
N prim::GetAttr conv 1 0 1 2
N prim::GetAttr conv.weight 1 2 1 3
N prim::GetAttr ?_flag 1 0 1 13
N aten::conv2d - 2 1 3 1 4
N prim::If - 2 5 4 0 B
O 4
";

    #[test]
    fn reads_a_text_written_to_the_spec() {
        let g = Graph::parse(SPEC_TEXT).unwrap();
        assert_eq!(g.modules.len(), 2);
        assert_eq!(g.modules[""].class, "__torch__.Net");
        assert!(g.modules[""].int_constants.is_empty());
        let conv = &g.modules["conv"];
        assert_eq!(conv.class, "__torch__.Conv2d");
        assert_eq!(
            conv.int_constants,
            HashMap::from([("out_channels".into(), 8), ("groups".into(), 1)])
        );
        assert_eq!(
            g.tensors,
            HashMap::from([
                ("conv.weight".into(), true),
                ("conv.running_mean".into(), false)
            ])
        );
        assert_eq!(g.kind(0), &ValueKind::Module(String::new()));
        assert_eq!(g.shape(1), Some(&[1, 3, 8, 8][..]));
        assert_eq!(g.kind(2), &ValueKind::Module("conv".into()));
        assert_eq!(g.shape(4), Some(&[1, 8, 8, 8][..]));
        assert_eq!(g.kind(15), &ValueKind::Tensor(None));
        assert_eq!(g.kind(5), &ValueKind::Const(Const::Bool(true)));
        assert_eq!(g.int(6), Some(-2));
        assert_eq!(g.kind(7), &ValueKind::Const(Const::Float(1e-5)));
        assert!(g.is_none(8));
        assert_eq!(g.ints(9), Some(&[1, -1][..]));
        assert_eq!(g.ints(10), Some(&[][..]));
        assert_eq!(g.kind(11), &ValueKind::Const(Const::Str("a_b".into())));
        assert_eq!(g.kind(12), &ValueKind::Const(Const::Other));
        assert_eq!(g.kind(13), &ValueKind::Other);
        assert_eq!(g.shape(14), Some(&[][..]));
        // An id without a V line.
        assert_eq!(g.kind(99), &ValueKind::Other);
        assert_eq!(g.inputs, [0, 1]);
        assert_eq!(g.outputs, [4]);
        let nodes: Vec<_> = g
            .nodes
            .iter()
            .map(|n| {
                (
                    n.kind.as_str(),
                    n.attr.as_deref(),
                    n.inputs.clone(),
                    n.outputs.clone(),
                    n.has_blocks,
                )
            })
            .collect();
        assert_eq!(
            nodes,
            [
                ("prim::GetAttr", Some("conv"), vec![0], vec![2], false),
                (
                    "prim::GetAttr",
                    Some("conv.weight"),
                    vec![2],
                    vec![3],
                    false
                ),
                ("prim::GetAttr", Some("?_flag"), vec![0], vec![13], false),
                ("aten::conv2d", None, vec![1, 3], vec![4], false),
                ("prim::If", None, vec![5, 4], vec![], true),
            ]
        );
        // 8 output channels x 64 positions, 27 weights each.
        assert_eq!(g.macs(), 8 * 64 * 27);
    }

    #[test]
    fn refuses_a_line_it_cannot_read_saying_which() {
        for (text, line) in [
            ("M .\n", 1),
            ("V 0 m .\nN aten::relu - 2 0\n", 2),
            ("V x t 1 3\n", 1),
            ("V 0 t 1 three\n", 1),
            ("V 0 c il 1,,2\n", 1),
            ("I 0\nX 1\n", 2),
            ("A\n", 1),
        ] {
            let Err(PruneError::Shrink(message)) = Graph::parse(text) else {
                panic!("{text:?} was read");
            };
            assert!(
                message.starts_with(&format!("graph description line {line}: cannot read")),
                "{text:?}: {message}"
            );
        }
    }

    /// What the C++ writer emits for a scripted `nn.Sequential(nn.Linear(4, 3),
    /// nn.BatchNorm1d(3))` (the committed fixture tests/fixtures/formats/script.pt), read back.
    #[test]
    fn reads_back_what_the_cpp_side_writes() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/formats/script.pt");
        let module = tch::CModule::load(&path).unwrap();
        let x = tch::Tensor::randn([5, 4], (tch::Kind::Float, tch::Device::Cpu));
        let text = crate::ffi::describe(&module, &x).unwrap();
        let g = Graph::parse(&text).unwrap();

        // Every line has the tag and field count of the spec.
        for line in text.lines() {
            let fields: Vec<&str> = line.split(' ').collect();
            assert!(fields.iter().all(|f| !f.is_empty()), "{line:?}");
            assert!(
                ["M", "A", "V", "I", "N", "O"].contains(&fields[0]),
                "{line:?}"
            );
        }
        let class = |path: &str| g.modules[path].class.as_str();
        assert_eq!(g.modules.len(), 3);
        assert_eq!(class(""), "__torch__.torch.nn.modules.container.Sequential");
        assert_eq!(class("0"), "__torch__.torch.nn.modules.linear.Linear");
        assert_eq!(
            class("1"),
            "__torch__.torch.nn.modules.batchnorm.BatchNorm1d"
        );
        assert_eq!(g.modules["1"].int_constants["num_features"], 3);
        let params: Vec<_> = ["0.weight", "0.bias", "1.weight", "1.bias"]
            .map(|n| (n.to_string(), true))
            .into();
        let buffers: Vec<_> = ["1.running_mean", "1.running_var", "1.num_batches_tracked"]
            .map(|n| (n.to_string(), false))
            .into();
        assert_eq!(
            g.tensors,
            params.into_iter().chain(buffers).collect::<HashMap<_, _>>()
        );

        // `self` and the input, measured.
        assert_eq!(g.inputs.len(), 2);
        assert_eq!(g.kind(g.inputs[0]), &ValueKind::Module(String::new()));
        assert_eq!(g.shape(g.inputs[1]), Some(&[5, 4][..]));
        // Every value the writer names has its V line (no node here has sub-blocks' own
        // parameters), and the one output is measured.
        for id in g.inputs.iter().chain(&g.outputs).chain(
            g.nodes
                .iter()
                .flat_map(|n| n.inputs.iter().chain(&n.outputs)),
        ) {
            assert!(g.values.contains_key(id), "no V line for {id}");
        }
        assert_eq!(g.outputs.len(), 1);
        assert_eq!(g.shape(g.outputs[0]), Some(&[5, 3][..]));

        let node = |kind: &str| g.nodes.iter().find(|n| n.kind == kind).unwrap();
        let linear = node("aten::linear");
        let weight = g
            .nodes
            .iter()
            .find(|n| n.attr.as_deref() == Some("0.weight"));
        assert_eq!(linear.inputs[1], weight.unwrap().outputs[0]);
        assert_eq!(g.shape(linear.inputs[1]), Some(&[3, 4][..]));
        assert_eq!(g.shape(linear.outputs[0]), Some(&[5, 3][..]));
        // batch_norm(input, weight, bias, mean, var, training, momentum, eps, cudnn): folded in
        // evaluation mode, its floats read back exactly.
        let norm = node("aten::batch_norm");
        assert_eq!(norm.inputs[0], linear.outputs[0]);
        assert_eq!(
            g.kind(norm.inputs[5]),
            &ValueKind::Const(Const::Bool(false))
        );
        assert_eq!(g.kind(norm.inputs[6]), &ValueKind::Const(Const::Float(0.1)));
        assert_eq!(
            g.kind(norm.inputs[7]),
            &ValueKind::Const(Const::Float(1e-5))
        );
        // BatchNorm1d's input check stays as `if` nodes that use the measured input.
        assert!(g.nodes.iter().any(|n| n.kind == "prim::If" && n.has_blocks));
        // The error message string constant, its spaces written as `_`.
        assert!(g.values.values().any(|v| matches!(
            v,
            ValueKind::Const(Const::Str(s)) if s.starts_with("expected_2D_or_3D_input")
        )));
        assert_eq!(g.macs(), 5 * 3 * 4);
    }
}
