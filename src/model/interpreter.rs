//! A `torch.export` program run from Rust: its nodes called one by one through libtorch's
//! dispatcher, as `torch.export.load(path).module()(*inputs)` computes them, without Python.
//! libtorch 2.13's wheel ships no C++ runner of `.pt2` archives (PyTorch's `nativert` is not in
//! it), and the program is a flat list of ATen calls whose arguments are written out by name,
//! so a small interpreter does it: what `shrink --verify` needs to compare a shrunk program with
//! the original.
//!
//! The program comes from a stranger's file: only operators of libtorch's own `aten` namespace
//! that the code policy allows are called (the list TorchScript code is held to, less the
//! operators that act outside the process's tensors); anything else (a higher-order operator, a
//! Python function, a symbolic size, a custom object) is refused with the node that holds it,
//! before anything runs.

use crate::checkpoint::c10_of_export;
use crate::checkpoint::code_policy::is_allowed_operator;
use crate::error::{PruneError, Result};
use crate::ffi::{op_call, OpArg};
use serde_json::Value;
use std::collections::HashMap;
use tch::Tensor;

/// One operator call of the program.
struct Call<'p> {
    /// The node's name, for errors.
    name: &'p str,
    /// `aten::conv2d` and its overload (`""` for `default`).
    op: String,
    overload: &'p str,
    inputs: Vec<(&'p str, &'p Value)>,
    /// The names its tensor outputs take, `None` where an output is unused.
    outputs: Vec<Option<&'p str>>,
}

/// Runs the program `program` (the archive's `models/<model>.json`, as JSON: a program edited
/// in memory; [`ExportedModel::forward`](crate::model::ExportedModel::forward) runs an
/// archive's own) on `inputs` (its user
/// inputs, in order), its parameters and buffers taken from `weights` by their dotted names:
/// its user outputs, in order. Refused before anything runs: a node this interpreter cannot
/// run (see the module's docs), a parameter or buffer `weights` lacks, a constant (lifted
/// tensors are not read), or a count of inputs other than the program's.
pub fn run_program(
    program: &Value,
    weights: &[(String, Tensor)],
    inputs: &[Tensor],
) -> Result<Vec<Tensor>> {
    let refuse = |why: String| PruneError::Program(why);
    let module = &program["graph_module"];
    let graph = &module["graph"];
    let by_name: HashMap<&str, &Tensor> = weights.iter().map(|(n, t)| (n.as_str(), t)).collect();

    // The placeholders, in the graph's order: parameters, buffers, then the user inputs.
    let mut values: HashMap<&str, Tensor> = HashMap::new();
    let specs = module["signature"]["input_specs"]
        .as_array()
        .ok_or_else(|| refuse("its signature lists no inputs".into()))?;
    let mut user = inputs.iter();
    for spec in specs {
        let (kind, body) =
            single_entry(spec).ok_or_else(|| refuse(format!("an input spec {spec}")))?;
        let placeholder = body["arg"]["name"]
            .as_str()
            .or_else(|| body["arg"]["as_tensor"]["name"].as_str());
        let state_name = match kind {
            "parameter" => body["parameter_name"].as_str(),
            "buffer" => body["buffer_name"].as_str(),
            "user_input" => None,
            other => {
                return Err(refuse(format!(
                    "it takes a {other} input, which tch-prune does not read"
                )))
            }
        };
        let Some(placeholder) = placeholder else {
            return Err(refuse(format!("an input that is not a tensor ({spec})")));
        };
        let value = match state_name {
            Some(state) => by_name
                .get(state)
                .map(|t| t.shallow_clone())
                .ok_or_else(|| refuse(format!("its weights have no {state}")))?,
            None => user
                .next()
                .map(Tensor::shallow_clone)
                .ok_or_else(|| refuse("it takes more inputs than were given".into()))?,
        };
        values.insert(placeholder, value);
    }
    if user.next().is_some() {
        return Err(refuse("it takes fewer inputs than were given".into()));
    }

    let calls = graph["nodes"]
        .as_array()
        .ok_or_else(|| refuse("it has no nodes".into()))?
        .iter()
        .map(call)
        .collect::<Result<Vec<_>>>()?;
    for call in &calls {
        let outputs = {
            let args = call
                .inputs
                .iter()
                .map(|(name, arg)| Ok((*name, argument(arg, &values, call)?)))
                .collect::<Result<Vec<_>>>()?;
            op_call(&call.op, call.overload, &args).map_err(|e| {
                PruneError::Program(format!("its node {} ({}) failed: {e}", call.name, call.op))
            })?
        };
        if outputs.len() < call.outputs.len() {
            return Err(refuse(format!(
                "its node {} expects {} outputs of {}, which returns {}",
                call.name,
                call.outputs.len(),
                call.op,
                outputs.len()
            )));
        }
        for (name, tensor) in call.outputs.iter().zip(outputs) {
            if let Some(name) = name {
                values.insert(name, tensor);
            }
        }
    }

    let specs = module["signature"]["output_specs"]
        .as_array()
        .ok_or_else(|| refuse("its signature lists no outputs".into()))?;
    let mut results = Vec::new();
    for spec in specs {
        let Some(("user_output", body)) = single_entry(spec) else {
            continue;
        };
        let name = body["arg"]["as_tensor"]["name"]
            .as_str()
            .ok_or_else(|| refuse(format!("an output that is not a tensor ({spec})")))?;
        let value = values
            .get(name)
            .ok_or_else(|| refuse(format!("its output {name} is never computed")))?;
        results.push(value.shallow_clone());
    }
    Ok(results)
}

/// The one `"kind": body` entry of a tagged JSON object.
fn single_entry(value: &Value) -> Option<(&str, &Value)> {
    let object = value.as_object()?;
    (object.len() == 1).then(|| object.iter().next().map(|(k, v)| (k.as_str(), v)))?
}

/// A node read as an operator call, or why it cannot be run.
fn call(node: &Value) -> Result<Call<'_>> {
    let name = node["name"].as_str().unwrap_or("?");
    let target = node["target"].as_str().unwrap_or("");
    let refuse = |why: &str| PruneError::Program(format!("its node {name} ({target}) {why}"));
    // torch.ops.aten.<op>.<overload>
    let parts: Vec<&str> = target.split('.').collect();
    let (op, overload) = match parts.as_slice() {
        ["torch", "ops", "aten", op, overload] => (*op, *overload),
        _ => return Err(refuse("is not an operator of libtorch's aten namespace")),
    };
    let qualified = format!("aten::{op}");
    if !is_allowed_operator(&qualified) {
        return Err(refuse("calls an operator the code policy does not allow"));
    }
    let inputs = node["inputs"]
        .as_array()
        .ok_or_else(|| refuse("has no inputs list"))?
        .iter()
        .map(|input| {
            let arg_name = input["name"]
                .as_str()
                .ok_or_else(|| refuse("has an unnamed input"))?;
            Ok((arg_name, &input["arg"]))
        })
        .collect::<Result<Vec<_>>>()?;
    let mut outputs = Vec::new();
    for output in node["outputs"]
        .as_array()
        .ok_or_else(|| refuse("has no outputs list"))?
    {
        match single_entry(output) {
            Some(("as_tensor", t)) => outputs.push(t["name"].as_str()),
            Some(("as_tensors", list)) => {
                for t in list.as_array().into_iter().flatten() {
                    outputs.push(t["name"].as_str());
                }
            }
            Some(("as_none", _)) => outputs.push(None),
            _ => return Err(refuse("returns something other than tensors")),
        }
    }
    Ok(Call {
        name,
        op: qualified,
        overload: if overload == "default" { "" } else { overload },
        inputs,
        outputs,
    })
}

/// One argument of a node, its tensors looked up among the values computed so far.
fn argument<'v>(
    arg: &Value,
    values: &'v HashMap<&str, Tensor>,
    call: &Call<'_>,
) -> Result<OpArg<'v>> {
    let refuse =
        |why: String| PruneError::Program(format!("its node {} ({}) {why}", call.name, call.op));
    let tensor = |t: &Value| -> Result<&'v Tensor> {
        let name = t["name"].as_str().unwrap_or("?");
        values
            .get(name)
            .ok_or_else(|| refuse(format!("reads {name}, which no node before it computes")))
    };
    let ints =
        |v: &Value| -> Option<Vec<i64>> { v.as_array()?.iter().map(Value::as_i64).collect() };
    let (kind, v) = single_entry(arg).ok_or_else(|| refuse(format!("has an argument {arg}")))?;
    Ok(match kind {
        "as_none" => OpArg::None,
        "as_bool" => OpArg::Bool(
            v.as_bool()
                .ok_or_else(|| refuse(format!("has a bool {v}")))?,
        ),
        "as_int" => OpArg::Int(
            v.as_i64()
                .ok_or_else(|| refuse(format!("has an int {v}")))?,
        ),
        "as_float" => OpArg::Float(
            v.as_f64()
                .ok_or_else(|| refuse(format!("has a float {v}")))?,
        ),
        "as_ints" => OpArg::Ints(ints(v).ok_or_else(|| refuse(format!("has an int list {v}")))?),
        "as_floats" => OpArg::Floats(
            v.as_array()
                .and_then(|a| a.iter().map(Value::as_f64).collect())
                .ok_or_else(|| refuse(format!("has a float list {v}")))?,
        ),
        "as_tensor" => OpArg::Tensor(tensor(v)?),
        "as_tensors" => OpArg::Tensors(
            v.as_array()
                .ok_or_else(|| refuse(format!("has a tensor list {v}")))?
                .iter()
                .map(|t| tensor(t).map(Some))
                .collect::<Result<_>>()?,
        ),
        "as_optional_tensors" => OpArg::Tensors(
            v.as_array()
                .ok_or_else(|| refuse(format!("has a tensor list {v}")))?
                .iter()
                .map(|t| match single_entry(t) {
                    Some(("as_tensor", t)) => tensor(t).map(Some),
                    Some(("as_none", _)) => Ok(None),
                    _ => Err(refuse(format!("has an optional tensor {t}"))),
                })
                .collect::<Result<_>>()?,
        ),
        // torch._export.serde.schema's enums: ScalarType, MemoryFormat and Layout are written
        // with their own numbers, which differ from c10's.
        "as_scalar_type" => OpArg::ScalarType(
            v.as_i64()
                .and_then(c10_of_export)
                .ok_or_else(|| refuse(format!("has a dtype {v}")))?,
        ),
        "as_memory_format" => OpArg::MemoryFormat(
            memory_format(v).ok_or_else(|| refuse(format!("has a memory format {v}")))?,
        ),
        "as_layout" => OpArg::Layout(layout(v).ok_or_else(|| refuse(format!("has a layout {v}")))?),
        "as_device" => {
            let kind = v["type"].as_str().unwrap_or("");
            if kind != "cpu" {
                return Err(refuse(format!(
                    "places a tensor on {kind}: tch-prune runs programs on the CPU"
                )));
            }
            OpArg::Device("cpu".into())
        }
        "as_string" => OpArg::Text(v.as_str().unwrap_or("").to_string()),
        other => {
            return Err(refuse(format!(
                "has an argument of kind {other}, which tch-prune does not run"
            )))
        }
    })
}

/// c10::MemoryFormat of torch.export's serialized MemoryFormat.
fn memory_format(v: &Value) -> Option<i64> {
    // schema.py: Unknown 0, ContiguousFormat 1, ChannelsLast 2, ChannelsLast3d 3,
    // PreserveFormat 4; c10: Contiguous 0, Preserve 1, ChannelsLast 2, ChannelsLast3d 3.
    Some(match v.as_i64()? {
        1 => 0,
        2 => 2,
        3 => 3,
        4 => 1,
        _ => return None,
    })
}

/// c10::Layout of torch.export's serialized Layout.
fn layout(v: &Value) -> Option<i64> {
    // schema.py: Unknown 0, SparseCoo 1, SparseCsr 2, SparseCsc 3, SparseBsr 4, SparseBsc 5,
    // _mkldnn 6, Strided 7; only strided tensors are run.
    (v.as_i64()? == 7).then_some(0)
}
