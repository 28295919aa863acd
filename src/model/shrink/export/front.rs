//! The second front end of the channel analysis: a `torch.export` program
//! (`models/<model>.json`) written as the graph description src/model/shrink/graph.rs
//! specifies, as src/ffi/shrink_graph.cpp writes it for TorchScript. Nothing runs: the shapes
//! are the program's own (`tensor_values`, recorded for the input it was exported with).
//!
//! What the program holds, and what it becomes:
//!
//! | program | description |
//! |---|---|
//! | a parameter or buffer placeholder (`graph_signature`: `p_conv1_weight` is `conv1.weight`) | an `A` line and a `prim::GetAttr` of its dotted name |
//! | a lifted tensor constant, a user input | a tensor of fixed channels |
//! | a node with a target of [`schema`](super::schema) | its kind (`aten::conv2d`), its arguments at their schema positions, omitted ones filled with their defaults |
//! | any other node | its full target as the kind (which the analysis does not know: what it touches keeps its channels), its arguments in the program's order |
//! | a list of tensors (`cat`'s) | a `prim::ListConstruct` |
//! | a node returning a list (`split`) | the list, then a `prim::ListUnpack` into its tensors |
//! | every output of the signature (user outputs, mutated buffers) | `O` |
//!
//! A value whose sizes are symbolic (dynamic shapes) is a tensor of unknown shape: what reads
//! it keeps its channels.

use super::schema::{schema, Default};
use crate::error::{PruneError, Result};
use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::fmt::Write;

/// The description and how its value ids map back to the program.
pub(super) struct Described {
    pub text: String,
    /// Tensor name in the program -> value id.
    pub ids: HashMap<String, usize>,
    /// Placeholder name -> dotted parameter or buffer name, for those the archive holds.
    pub placeholders: HashMap<String, String>,
    /// A weight's transpose that a product reads as a linear layer's weight (what
    /// `run_decompositions` makes of `linear`: `addmm(bias, x, permute(weight, [1, 0]))`):
    /// its value's name -> the weight's placeholder. Its recorded sizes follow the weight's.
    pub transposed: HashMap<String, String>,
}

/// `s` as one field of the description: whitespace as `_`, empty as `_`.
fn token(s: &str) -> String {
    let t: String = s
        .chars()
        .map(|c| if c.is_whitespace() { '_' } else { c })
        .collect();
    if t.is_empty() {
        "_".into()
    } else {
        t
    }
}

/// The most elements a recorded tensor may have (2^50: far beyond any real one). The sizes are
/// the program's word, not measured: past this, or with a negative size, a value is of
/// unknown shape, so that no product of sizes in the analysis can overflow.
const MAX_NUMEL: i64 = 1 << 50;

/// The sizes of a `tensor_values` entry, `None` if any is symbolic, unreadable, negative, or
/// they make more than [`MAX_NUMEL`] elements.
pub(super) fn sizes(meta: &Value) -> Option<Vec<i64>> {
    let sizes: Vec<i64> = meta
        .get("sizes")?
        .as_array()?
        .iter()
        .map(|s| s.get("as_int")?.as_i64())
        .collect::<Option<_>>()?;
    let mut numel = 1i64;
    for &d in &sizes {
        // A zero-size dim still bounds the others (their product is checked alone).
        numel = numel
            .checked_mul(d.max(1))
            .filter(|&n| d >= 0 && n <= MAX_NUMEL)?;
    }
    Some(sizes)
}

/// The program's graph, its `tensor_values` and its signature.
pub(super) fn parts(program: &Value) -> Result<(&Value, &serde_json::Map<String, Value>, &Value)> {
    let bad = |what: &str| {
        PruneError::Shrink(format!(
            "the archive's program is not one torch.export wrote: it has no {what}"
        ))
    };
    let module = program
        .get("graph_module")
        .ok_or_else(|| bad("graph_module"))?;
    let graph = module.get("graph").ok_or_else(|| bad("graph"))?;
    let values = graph
        .get("tensor_values")
        .and_then(Value::as_object)
        .ok_or_else(|| bad("tensor_values"))?;
    let signature = module.get("signature").ok_or_else(|| bad("signature"))?;
    Ok((graph, values, signature))
}

struct Writer<'p> {
    tensor_values: &'p serde_json::Map<String, Value>,
    /// The true shapes of the placeholders of parameters and buffers (their weights').
    weight_shapes: HashMap<String, Vec<i64>>,
    ids: HashMap<String, usize>,
    /// The tensors defined so far (inputs, then node outputs), and the first read of one
    /// that is not.
    defined: HashSet<String>,
    undefined: Option<String>,
    /// Transposes of 2-D weights (`permute(w, [1, 0])`, `t(w)`): value -> placeholder.
    transposes: HashMap<String, String>,
    /// Those read by a product as a linear layer's weight.
    linear_weights: HashMap<String, String>,
    /// How many times each tensor is read (by nodes and the signature's outputs).
    uses: HashMap<String, usize>,
    next: usize,
    /// The `V` lines, the `N` lines.
    values: String,
    nodes: String,
}

impl<'p> Writer<'p> {
    fn fresh(&mut self, value: &str) -> usize {
        let id = self.next;
        self.next += 1;
        let _ = writeln!(self.values, "V {id} {value}");
        id
    }

    /// The id of the tensor `name`, its `V` line written the first time.
    fn tensor(&mut self, name: &str) -> usize {
        if let Some(&id) = self.ids.get(name) {
            return id;
        }
        let recorded = self.weight_shapes.get(name).cloned();
        let shape = match recorded.or_else(|| self.tensor_values.get(name).and_then(sizes)) {
            Some(s) => {
                let mut line = format!("t {}", s.len());
                for d in s {
                    let _ = write!(line, " {d}");
                }
                line
            }
            None => "t ?".into(),
        };
        let id = self.fresh(&shape);
        self.ids.insert(name.to_string(), id);
        id
    }

    fn node(&mut self, kind: &str, attr: &str, inputs: &[usize], outputs: &[usize]) {
        let _ = write!(self.nodes, "N {kind} {attr} {}", inputs.len());
        for i in inputs {
            let _ = write!(self.nodes, " {i}");
        }
        let _ = write!(self.nodes, " {}", outputs.len());
        for o in outputs {
            let _ = write!(self.nodes, " {o}");
        }
        self.nodes.push('\n');
    }

    fn constant(&mut self, d: &Default) -> usize {
        let line = match d {
            Default::None => "c n".to_string(),
            Default::Bool(b) => format!("c b {}", u8::from(*b)),
            Default::Int(i) => format!("c i {i}"),
            Default::Float(f) => format!("c f {f:?}"),
            Default::Str(s) => format!("c s {}", token(s)),
            Default::Ints(v) if v.is_empty() => "c il -".into(),
            Default::Ints(v) => format!(
                "c il {}",
                v.iter().map(i64::to_string).collect::<Vec<_>>().join(",")
            ),
            Default::Unread => "o".into(),
        };
        self.fresh(&line)
    }

    /// The value an argument of a node is (`as_tensor`, `as_int`, ...).
    fn argument(&mut self, arg: &Value) -> usize {
        let Some((key, v)) = arg.as_object().and_then(|o| o.iter().next()) else {
            return self.fresh("o");
        };
        let constant = match key.as_str() {
            "as_none" => Some(Default::None),
            "as_bool" => v.as_bool().map(Default::Bool),
            "as_int" => v.as_i64().map(Default::Int),
            "as_float" => v.as_f64().map(Default::Float),
            "as_string" => v.as_str().map(|s| Default::Str(s.to_string())),
            "as_ints" => v
                .as_array()
                .and_then(|a| a.iter().map(Value::as_i64).collect::<Option<Vec<_>>>())
                .map(Default::Ints),
            _ => None,
        };
        if let Some(c) = constant {
            return self.constant(&c);
        }
        match key.as_str() {
            "as_tensor" => match v.get("name").and_then(Value::as_str) {
                Some(name) => self.read(name),
                None => self.fresh("o"),
            },
            "as_tensors" | "as_optional_tensors" => {
                let elements: Vec<usize> = v
                    .as_array()
                    .map(|a| a.iter().map(|e| self.list_element(e)).collect())
                    .unwrap_or_default();
                let list = self.fresh("o");
                self.node("prim::ListConstruct", "-", &elements, &[list]);
                list
            }
            _ => self.fresh("o"),
        }
    }

    /// An element of a tensor list: `{"name": ..}`, or an optional tensor (`{"as_tensor":
    /// {"name": ..}}`, `{"as_none": ..}`).
    fn list_element(&mut self, e: &Value) -> usize {
        if let Some(name) = e.get("name").and_then(Value::as_str) {
            return self.read(name);
        }
        self.argument(e)
    }

    /// The id of a tensor a node reads, noting the first that nothing defined before.
    fn read(&mut self, name: &str) -> usize {
        if !self.defined.contains(name) && self.undefined.is_none() {
            self.undefined = Some(name.to_string());
        }
        self.tensor(name)
    }

    /// The id of a tensor a node or input defines; `Err` names one defined twice.
    fn define(&mut self, name: &str) -> std::result::Result<usize, String> {
        if !self.defined.insert(name.to_string()) {
            return Err(name.to_string());
        }
        Ok(self.tensor(name))
    }

    /// A node's outputs: a tensor each, a list and its unpacking for `as_tensors`; `Err`
    /// names a tensor defined twice.
    #[allow(clippy::type_complexity)]
    fn outputs(
        &mut self,
        outputs: &[Value],
    ) -> std::result::Result<(Vec<usize>, Vec<(usize, Vec<usize>)>), String> {
        let mut ids = Vec::new();
        let mut lists = Vec::new();
        for out in outputs {
            if let Some(name) = out
                .get("as_tensor")
                .and_then(|t| t.get("name"))
                .and_then(Value::as_str)
            {
                ids.push(self.define(name)?);
            } else if let Some(elements) = out.get("as_tensors").and_then(Value::as_array) {
                let list = self.fresh("o");
                let mut items = Vec::with_capacity(elements.len());
                for e in elements {
                    items.push(match e.get("name").and_then(Value::as_str) {
                        Some(name) => self.define(name)?,
                        None => self.fresh("o"),
                    });
                }
                ids.push(list);
                lists.push((list, items));
            } else {
                ids.push(self.fresh("o"));
            }
        }
        Ok((ids, lists))
    }
}

/// The sizes of the program's first user input, as it was exported.
pub(super) fn input_shape(program: &Value) -> Option<Vec<i64>> {
    let (_, tensor_values, sig) = parts(program).ok()?;
    let inputs = signature(sig).inputs;
    let name = inputs.first()?.get("as_tensor")?.get("name")?.as_str()?;
    sizes(tensor_values.get(name)?)
}

/// Counts the tensors an argument reads (`as_tensor`, the elements of `as_tensors`).
fn count_reads(arg: &Value, uses: &mut HashMap<String, usize>) {
    let mut count = |t: &Value| {
        if let Some(name) = t.get("name").and_then(Value::as_str) {
            *uses.entry(name.to_string()).or_default() += 1;
        }
    };
    if let Some(t) = arg.get("as_tensor") {
        count(t);
    }
    for key in ["as_tensors", "as_optional_tensors"] {
        for e in arg.get(key).and_then(Value::as_array).into_iter().flatten() {
            count(e.get("as_tensor").unwrap_or(e));
        }
    }
}

/// Records a node's output that is the transpose of a 2-D weight: `permute(w, [1, 0])` or
/// `t(w)`.
fn note_transpose(w: &mut Writer, target: &str, given: &[(&str, &Value)], outs: &[Value]) {
    let arg = |name: &str| given.iter().find(|(n, _)| *n == name).map(|(_, v)| *v);
    let swaps = match target {
        "torch.ops.aten.t.default" => given.len() == 1,
        "torch.ops.aten.permute.default" => {
            given.len() == 2
                && arg("dims").and_then(|d| d.get("as_ints")) == Some(&serde_json::json!([1, 0]))
        }
        _ => false,
    };
    let weight = arg("self").and_then(|v| v.get("as_tensor")?.get("name")?.as_str());
    let output = outs
        .first()
        .and_then(|o| o.get("as_tensor")?.get("name")?.as_str());
    if let (true, Some(weight), Some(output), 1) = (swaps, weight, output, outs.len()) {
        if w.weight_shapes.get(weight).is_some_and(|s| s.len() == 2) {
            w.transposes.insert(output.to_string(), weight.to_string());
        }
    }
}

/// `addmm(bias, x, wt)` / `mm(x, wt)` where `wt` is a weight's transpose read by nothing else
/// (and `beta`, `alpha` are 1): the `linear(x, weight, bias)` it computes, which is how the
/// analysis reads it.
fn linear_product(
    w: &mut Writer,
    target: &str,
    given: &[(&str, &Value)],
) -> Option<(String, Vec<usize>)> {
    let arg = |name: &str| given.iter().find(|(n, _)| *n == name).map(|(_, v)| *v);
    let (x, bias) = match target {
        "torch.ops.aten.addmm.default" => {
            let one = |v: Option<&Value>| {
                v.is_none_or(|v| {
                    v.get("as_int").and_then(Value::as_i64) == Some(1)
                        || v.get("as_float").and_then(Value::as_f64) == Some(1.0)
                })
            };
            if !(one(arg("beta")) && one(arg("alpha"))) || given.len() > 5 {
                return None;
            }
            (arg("mat1")?, Some(arg("self")?))
        }
        "torch.ops.aten.mm.default" if given.len() == 2 => (arg("self")?, None),
        _ => return None,
    };
    let wt = arg("mat2")?.get("as_tensor")?.get("name")?.as_str()?;
    let weight = w.transposes.get(wt)?.clone();
    if w.uses.get(wt) != Some(&1) {
        return None;
    }
    w.linear_weights.insert(wt.to_string(), weight.clone());
    let x = w.argument(x);
    let weight = w.read(&weight);
    let bias = match bias {
        Some(b) => w.argument(b),
        None => w.constant(&Default::None),
    };
    Some(("aten::linear".into(), vec![x, weight, bias]))
}

/// `convolution(input, weight, bias, stride, padding, dilation, transposed, output_padding,
/// groups)` (what `run_decompositions` makes of every convolution) as the `conv{1,2,3}d(input,
/// weight, bias, stride, padding, dilation, groups)` it computes when it is not transposed (the
/// rank of its weight gives the `d`); a transposed one stays `aten::convolution`, which the
/// analysis does not know.
fn convolution(w: &Writer, given: &[(&str, &Value)], ids: Vec<usize>) -> (String, Vec<usize>) {
    let arg = |name: &str| given.iter().find(|(n, _)| *n == name).map(|(_, v)| *v);
    let plain = arg("transposed").and_then(|t| t.get("as_bool")) == Some(&Value::Bool(false));
    let weight = arg("weight")
        .and_then(|v| v.get("as_tensor")?.get("name")?.as_str())
        .and_then(|name| {
            w.weight_shapes
                .get(name)
                .cloned()
                .or_else(|| w.tensor_values.get(name).and_then(sizes))
        });
    match weight.map(|s| s.len()) {
        Some(rank @ 3..=5) if plain && ids.len() == 9 => (
            format!("aten::conv{}d", rank - 2),
            [0, 1, 2, 3, 4, 5, 8].iter().map(|&i| ids[i]).collect(),
        ),
        _ => ("aten::convolution".into(), ids),
    }
}

/// What the signature says: the `(placeholder, dotted name, is_param)` of every parameter and
/// buffer input, the user inputs, every output, and the names of every input placeholder.
struct Signature {
    weights: Vec<(String, String, bool)>,
    inputs: Vec<Value>,
    outputs: Vec<Value>,
    names: Vec<String>,
}

fn signature(sig: &Value) -> Signature {
    let mut names = Vec::new();
    let mut weights = Vec::new();
    let mut inputs = Vec::new();
    let mut outputs = Vec::new();
    let specs = |key: &str| {
        sig.get(key)
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    };
    for spec in specs("input_specs") {
        let Some((kind, body)) = spec.as_object().and_then(|o| o.iter().next()) else {
            continue;
        };
        let arg = body.get("arg").cloned().unwrap_or(Value::Null);
        let placeholder = arg.get("name").and_then(Value::as_str).map(str::to_string);
        // A parameter's `arg` is a tensor argument (`{"name": ..}`), a user input's an
        // argument (`{"as_tensor": {"name": ..}}`).
        let defined = placeholder.clone().or_else(|| {
            arg.get("as_tensor")
                .and_then(|t| t.get("name"))
                .and_then(Value::as_str)
                .map(str::to_string)
        });
        names.extend(defined);
        match kind.as_str() {
            "parameter" | "buffer" => {
                let field = if kind == "parameter" {
                    "parameter_name"
                } else {
                    "buffer_name"
                };
                if let (Some(p), Some(name)) =
                    (placeholder, body.get(field).and_then(Value::as_str))
                {
                    weights.push((p, name.to_string(), kind == "parameter"));
                }
            }
            "user_input" => inputs.push(arg),
            _ => {}
        }
    }
    for spec in specs("output_specs") {
        if let Some(arg) = spec
            .as_object()
            .and_then(|o| o.values().next())
            .and_then(|b| b.get("arg"))
        {
            outputs.push(arg.clone());
        }
    }
    Signature {
        weights,
        inputs,
        outputs,
        names,
    }
}

/// The description of `program`; `weights` gives the shape of each parameter and buffer the
/// archive's weights config holds (what their placeholders are described with, whatever the
/// program records; a placeholder of another name, a non-persistent buffer kept among the
/// constants, is a tensor of fixed channels). Refused: a program that reads a tensor nothing
/// defined before, or defines one twice.
pub(super) fn describe(
    program: &Value,
    weights: &dyn Fn(&str) -> Option<Vec<i64>>,
) -> Result<Described> {
    let (graph, tensor_values, sig) = parts(program)?;
    let Signature {
        weights: weight_inputs,
        inputs: user_inputs,
        outputs,
        names,
    } = signature(sig);
    let mut w = Writer {
        tensor_values,
        weight_shapes: HashMap::new(),
        ids: HashMap::new(),
        defined: HashSet::new(),
        undefined: None,
        transposes: HashMap::new(),
        linear_weights: HashMap::new(),
        uses: HashMap::new(),
        next: 0,
        values: String::new(),
        nodes: String::new(),
    };
    let twice = |name: String| {
        PruneError::Shrink(format!(
            "the program defines the tensor '{name}' twice: it is not a program torch.export wrote"
        ))
    };
    for (placeholder, name, _) in &weight_inputs {
        if let Some(shape) = weights(name) {
            w.weight_shapes.insert(placeholder.clone(), shape);
        }
    }
    for name in &names {
        w.define(name).map_err(twice)?;
    }
    let mut header = String::new();
    let mut placeholders = HashMap::new();
    for (placeholder, name, is_param) in weight_inputs {
        if weights(&name).is_none() {
            continue;
        }
        if name.is_empty() || name.contains(char::is_whitespace) {
            return Err(PruneError::Shrink(format!(
                "the program names a weight {name:?}, which is not a dotted name"
            )));
        }
        let _ = writeln!(
            header,
            "A {name} {}",
            if is_param { "param" } else { "buffer" }
        );
        let id = w.tensor(&placeholder);
        w.node("prim::GetAttr", &name, &[], &[id]);
        placeholders.insert(placeholder, name);
    }
    let inputs: Vec<usize> = user_inputs.iter().map(|a| w.argument(a)).collect();
    let nodes = graph
        .get("nodes")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    for node in nodes {
        for input in node
            .get("inputs")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            count_reads(input.get("arg").unwrap_or(&Value::Null), &mut w.uses);
        }
    }
    for out in &outputs {
        count_reads(out, &mut w.uses);
    }
    for node in nodes {
        let target = node.get("target").and_then(Value::as_str).unwrap_or("");
        let given: Vec<(&str, &Value)> = node
            .get("inputs")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .map(|i| {
                        (
                            i.get("name").and_then(Value::as_str).unwrap_or(""),
                            i.get("arg").unwrap_or(&Value::Null),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        let schema = schema(target).filter(|s| {
            given
                .iter()
                .all(|(n, _)| s.args.iter().any(|a| a.name == *n))
        });
        let product = linear_product(&mut w, target, &given);
        let (kind, inputs) = match &schema {
            _ if product.is_some() => product.unwrap_or_default(),
            Some(s) => {
                let mut ids = Vec::with_capacity(s.args.len());
                for a in &s.args {
                    let arg = given.iter().find(|(n, _)| *n == a.name).map(|(_, v)| *v);
                    let id = match (arg, &a.default) {
                        // A size literal: read as unknown, rewritten by the rewrite.
                        (Some(_), _) if a.owned => w.fresh("o"),
                        (Some(v), _) => w.argument(v),
                        (None, Some(d)) => w.constant(d),
                        // A required argument missing: an unknown value.
                        (None, None) => w.fresh("o"),
                    };
                    ids.push(id);
                }
                if s.kind == "aten::convolution" {
                    convolution(&w, &given, ids)
                } else {
                    (s.kind.to_string(), ids)
                }
            }
            None => {
                // Not understood: its full target (never an `aten::`/`prim::` kind the analysis
                // knows), its arguments as given.
                let kind = if target.contains("::") || target.is_empty() {
                    format!("export:{}", token(target))
                } else {
                    token(target)
                };
                let ids = given.iter().map(|(_, v)| w.argument(v)).collect();
                (kind, ids)
            }
        };
        let outs = node
            .get("outputs")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default();
        let (out_ids, lists) = w.outputs(outs).map_err(twice)?;
        note_transpose(&mut w, target, &given, outs);
        w.node(&kind, "-", &inputs, &out_ids);
        for (list, items) in lists {
            w.node("prim::ListUnpack", "-", &[list], &items);
        }
    }
    let outputs: Vec<usize> = outputs.iter().map(|a| w.argument(a)).collect();
    if let Some(name) = w.undefined {
        return Err(PruneError::Shrink(format!(
            "the program reads the tensor '{name}' before anything defines it: it is not a program torch.export wrote"
        )));
    }
    let mut text = header;
    text.push_str(&w.values);
    let join = |ids: &[usize]| ids.iter().map(|i| format!(" {i}")).collect::<String>();
    let _ = writeln!(text, "I{}", join(&inputs));
    text.push_str(&w.nodes);
    let _ = writeln!(text, "O{}", join(&outputs));
    Ok(Described {
        text,
        ids: w.ids,
        placeholders,
        transposed: w.linear_weights,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::shrink::graph::{Const, Graph, ValueKind};
    use serde_json::json;

    fn meta(sizes: &[i64]) -> Value {
        let strides = {
            let mut s = vec![1i64; sizes.len()];
            for d in (0..sizes.len().saturating_sub(1)).rev() {
                s[d] = s[d + 1] * sizes[d + 1];
            }
            s
        };
        json!({
            "dtype": 7, "layout": 7, "requires_grad": false,
            "device": {"type": "cpu", "index": null},
            "sizes": sizes.iter().map(|&n| json!({"as_int": n})).collect::<Vec<_>>(),
            "strides": strides.iter().map(|&n| json!({"as_int": n})).collect::<Vec<_>>(),
            "storage_offset": {"as_int": 0},
        })
    }

    fn input(name: &str, arg: Value) -> Value {
        json!({"name": name, "arg": arg, "kind": 1})
    }

    fn tensor(name: &str) -> Value {
        json!({"as_tensor": {"name": name}})
    }

    /// A conv without its default arguments, a chunk into a list, a cat of a list, an op the
    /// table does not have, and one whose target spells a TorchScript kind.
    fn program() -> Value {
        json!({"graph_module": {
            "graph": {
                "tensor_values": {
                    "x": meta(&[1, 3, 8, 8]), "p_c_weight": meta(&[8, 3, 3, 3]),
                    "conv2d": meta(&[1, 8, 8, 8]), "a": meta(&[1, 4, 8, 8]),
                    "b": meta(&[1, 4, 8, 8]), "cat": meta(&[1, 8, 8, 8]),
                    "odd": meta(&[1, 8, 8, 8]), "spoof": meta(&[1, 8, 8, 8]),
                },
                "nodes": [
                    {"target": "torch.ops.aten.conv2d.default", "inputs": [
                        input("input", tensor("x")), input("weight", tensor("p_c_weight")),
                        input("bias", json!({"as_none": true})),
                        input("padding", json!({"as_ints": [1, 1]}))],
                     "outputs": [tensor("conv2d")]},
                    {"target": "torch.ops.aten.chunk.default", "inputs": [
                        input("self", tensor("conv2d")), input("chunks", json!({"as_int": 2})),
                        input("dim", json!({"as_int": 1}))],
                     "outputs": [{"as_tensors": [{"name": "a"}, {"name": "b"}]}]},
                    {"target": "torch.ops.aten.cat.default", "inputs": [
                        input("tensors", json!({"as_tensors": [{"name": "b"}, {"name": "a"}]})),
                        input("dim", json!({"as_int": 1}))],
                     "outputs": [tensor("cat")]},
                    {"target": "torch.ops.aten.fancy.default", "inputs": [
                        input("self", tensor("cat"))], "outputs": [tensor("odd")]},
                    {"target": "aten::relu", "inputs": [
                        input("self", tensor("odd"))], "outputs": [tensor("spoof")]},
                ],
            },
            "signature": {
                "input_specs": [
                    {"parameter": {"arg": {"name": "p_c_weight"}, "parameter_name": "c.weight"}},
                    {"user_input": {"arg": tensor("x")}},
                ],
                "output_specs": [{"user_output": {"arg": tensor("spoof")}}],
            },
        }})
    }

    #[test]
    fn an_exported_graph_is_described_in_schema_order() {
        let p = program();
        let d = describe(&p, &|n| (n == "c.weight").then(|| vec![8, 3, 3, 3])).unwrap();
        let g = Graph::parse(&d.text).unwrap();
        assert_eq!(g.tensors.get("c.weight"), Some(&true));
        let kinds: Vec<&str> = g.nodes.iter().map(|n| n.kind.as_str()).collect();
        assert_eq!(
            kinds,
            [
                "prim::GetAttr",
                "aten::conv2d",
                "aten::chunk",
                "prim::ListUnpack",
                "prim::ListConstruct",
                "aten::cat",
                "torch.ops.aten.fancy.default",
                "export:aten::relu",
            ]
        );
        // conv2d(input, weight, bias, stride, padding, dilation, groups): the omitted ones
        // filled with their defaults.
        let conv = &g.nodes[1];
        assert_eq!(conv.inputs.len(), 7);
        assert!(g.is_none(conv.inputs[2]));
        assert_eq!(g.ints(conv.inputs[3]), Some(&[1, 1][..]));
        assert_eq!(g.ints(conv.inputs[4]), Some(&[1, 1][..]));
        assert_eq!(g.ints(conv.inputs[5]), Some(&[1, 1][..]));
        assert_eq!(g.int(conv.inputs[6]), Some(1));
        assert_eq!(g.nodes[0].attr.as_deref(), Some("c.weight"));
        assert_eq!(g.nodes[0].outputs, [conv.inputs[1]]);
        assert_eq!(g.shape(conv.outputs[0]), Some(&[1, 8, 8, 8][..]));
        // The chunk's list, unpacked into its named tensors.
        let (split, unpack) = (&g.nodes[2], &g.nodes[3]);
        assert_eq!(unpack.inputs, split.outputs);
        assert_eq!(unpack.outputs, [d.ids["a"], d.ids["b"]]);
        assert_eq!(g.kind(split.inputs[2]), &ValueKind::Const(Const::Int(1)));
        // The cat reads the list it is given, in its order.
        assert_eq!(g.nodes[4].inputs, [d.ids["b"], d.ids["a"]]);
        assert_eq!(g.nodes[5].inputs[0], g.nodes[4].outputs[0]);
        assert_eq!(g.outputs, [d.ids["spoof"]]);
        assert_eq!(g.inputs, [d.ids["x"]]);
        assert_eq!(d.placeholders["p_c_weight"], "c.weight");

        // The analysis: the conv's channels go through the chunk (along dim 1, as the named
        // argument says) and the cat, then reach an op it does not know, which keeps them,
        // naming the op.
        let a = crate::model::shrink::groups::analyse(&g);
        assert_eq!(a.groups.len(), 1);
        assert!(a.groups[0].blocked.iter().any(|b| b.contains("fancy")));
    }

    #[test]
    fn undefined_and_twice_defined_tensors_are_refused() {
        let mut p = program();
        p["graph_module"]["graph"]["nodes"][3]["inputs"][0]["arg"] = tensor("nowhere");
        let err = describe(&p, &|_| None).err().unwrap().to_string();
        assert!(
            err.contains("'nowhere' before anything defines it"),
            "{err}"
        );
        let mut p = program();
        p["graph_module"]["graph"]["nodes"][3]["outputs"][0] = tensor("a");
        let err = describe(&p, &|_| None).err().unwrap().to_string();
        assert!(err.contains("defines the tensor 'a' twice"), "{err}");
    }
}
