//! What the analysis checks around each run of the model's own code: that `forward` takes the
//! one tensor it is fed, that a failing forward is reported by libtorch's reason (not the first
//! line of its TorchScript traceback), that the run left every parameter and buffer as it was
//! (a forward that rewrites its weights would have its rewritten weights shrunk and saved), and
//! that no tensor is reachable under two names (one conv under two module paths would be
//! sliced once per name, differently).

use super::groups::Analysis;
use crate::error::{first_line, PruneError, Result};
use crate::ffi;
use std::collections::{BTreeMap, HashMap};
use tch::{CModule, IValue, Tensor};

/// The arguments of `forward` besides `self` (`Tensor x`, `Optional[Tensor] y=None`), without
/// running it: called with none, libtorch refuses it by its schema and names every argument
/// ("forward() is missing value for argument 'x'. Declaration: forward(__torch__.M self,
/// Tensor x, Tensor y)"). `Ok(None)` when that call succeeds: forward needs no argument (it
/// then ran once, on none). `Err` holds the first line of libtorch's message when the call
/// failed otherwise.
pub(in crate::model) fn forward_arguments(
    module: &CModule,
) -> std::result::Result<Option<Vec<String>>, String> {
    let none: [IValue; 0] = [];
    let message = match tch::no_grad(|| module.forward_is(&none)) {
        Ok(_) => return Ok(None),
        Err(e) => e.to_string(),
    };
    match message.split("Declaration: forward(").nth(1) {
        Some(declaration) => Ok(Some(arguments(declaration))),
        None => Err(first_line(&message).to_string()),
    }
}

/// How many of `arguments` need a value (no default, not `*args`).
pub(in crate::model) fn required(arguments: &[String]) -> usize {
    arguments
        .iter()
        .filter(|a| !a.contains('=') && !a.starts_with('*'))
        .count()
}

/// Fails unless `forward` takes exactly one argument (besides `self`), without running it
/// ([`forward_arguments`]); arguments with a default need no value.
pub(crate) fn check_one_input(module: &CModule) -> Result<()> {
    let arguments =
        match forward_arguments(module) {
            Ok(Some(arguments)) => arguments,
            Ok(None) => return Err(PruneError::Shrink(
                "the model's forward takes no input; shrink feeds it one tensor (--input-shape)"
                    .into(),
            )),
            Err(message) => {
                return Err(PruneError::Shrink(format!(
                    "cannot call the model's forward: {message}"
                )))
            }
        };
    let required = required(&arguments);
    if required != 1 {
        return Err(PruneError::Shrink(format!(
            "the model's forward takes {required} inputs (forward({})); shrink feeds it one tensor (--input-shape)",
            arguments.join(", ")
        )));
    }
    Ok(())
}

/// The arguments of a declaration's text after `forward(`, `self` left out, split at the commas
/// outside brackets (`Tuple[Tensor, Tensor] x`).
fn arguments(declaration: &str) -> Vec<String> {
    let (mut depth, mut current, mut out) = (0i32, String::new(), Vec::new());
    for ch in declaration.chars() {
        match ch {
            '[' | '(' => depth += 1,
            ']' | ')' if depth == 0 => break,
            ']' | ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(current.trim().to_string());
                current.clear();
                continue;
            }
            _ => {}
        }
        current.push(ch);
    }
    if !current.trim().is_empty() {
        out.push(current.trim().to_string());
    }
    // The first is `self` (`__torch__.M self`).
    out.into_iter().skip(1).collect()
}

/// Copies of a model's parameters and of the buffers its `forward` reads, taken before its
/// code runs and compared after ([`ScriptModel::snapshot`](crate::model::ScriptModel::snapshot)):
/// a forward can leave them alone on its first runs and rewrite them on later ones, and a model
/// saved after such runs would be saved rewritten.
pub struct TensorSnapshot {
    tensors: Vec<(String, Tensor)>,
    parameters: usize,
}

impl TensorSnapshot {
    /// Every parameter of the module, and the further tensors `more` (buffers, by dotted name).
    pub(crate) fn take<'a>(module: &CModule, more: impl Iterator<Item = &'a str>) -> Result<Self> {
        let mut tensors: BTreeMap<String, Tensor> =
            module.named_parameters()?.into_iter().collect();
        let parameters = tensors.len();
        for name in more {
            if !tensors.contains_key(name) {
                tensors.insert(name.to_string(), ffi::get_tensor(module, name)?);
            }
        }
        Ok(Self {
            tensors: tensors
                .into_iter()
                .map(|(n, t)| (n, tch::no_grad(|| t.detach().copy())))
                .collect(),
            parameters,
        })
    }

    /// Fails, naming the first tensor, if the module's tensors are not what they were: other
    /// values (NaN equal to NaN), another shape or another dtype, or parameters come or gone.
    pub(crate) fn check(&self, module: &CModule) -> Result<()> {
        for (name, before) in &self.tensors {
            let now = ffi::get_tensor(module, name)?;
            let same = now.size() == before.size()
                && now.kind() == before.kind()
                && tch::no_grad(|| {
                    if now.is_floating_point() {
                        now.allclose(before, 0.0, 0.0, true)
                    } else {
                        now.equal(before)
                    }
                });
            if !same {
                return Err(PruneError::Shrink(format!(
                    "the model's forward changed its tensor '{name}' while it ran: a model that rewrites its own weights cannot be shrunk (its rewritten weights would be saved)"
                )));
            }
        }
        if module.named_parameters()?.len() != self.parameters {
            return Err(PruneError::Shrink(
                "the model's forward changed its parameters while it ran: a model that rewrites its own weights cannot be shrunk".into(),
            ));
        }
        Ok(())
    }
}

/// Blocks every group that slices a tensor reachable under two names (the same submodule under
/// two attributes, or a weight tied to another): slicing it once per name would cut the one
/// tensor twice, along different channels. Returns one note per shared tensor.
pub(crate) fn block_aliases(
    module: &CModule,
    names: impl Iterator<Item = String>,
    analysis: &mut Analysis,
) -> Result<Vec<String>> {
    let mut by_address: HashMap<usize, Vec<String>> = HashMap::new();
    for name in names {
        let t = ffi::get_tensor(module, &name)?;
        if t.numel() == 0 {
            continue;
        }
        by_address
            .entry(t.data_ptr() as usize)
            .or_default()
            .push(name);
    }
    let mut notes = Vec::new();
    let mut shared: Vec<Vec<String>> = by_address.into_values().filter(|n| n.len() > 1).collect();
    shared.iter_mut().for_each(|n| n.sort());
    shared.sort();
    for names in shared {
        let quoted = names
            .iter()
            .map(|n| format!("'{n}'"))
            .collect::<Vec<_>>()
            .join(", ");
        let why = format!("{quoted} are one tensor (shared under several names)");
        for group in &mut analysis.groups {
            if group.slices.iter().any(|s| names.contains(&s.name)) && !group.blocked.contains(&why)
            {
                group.blocked.push(why.clone());
            }
        }
        notes.push(format!(
            "{quoted} are one tensor: the groups that slice it keep all their channels"
        ));
    }
    Ok(notes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn declarations_are_counted_by_required_arguments() {
        let d = "__torch__.M self, Tensor x, Tensor y) -> Tensor";
        assert_eq!(required(&arguments(d)), 2);
        assert_eq!(arguments(d), ["Tensor x", "Tensor y"]);
        let d = "__torch__.M self, Tuple[Tensor, Tensor] x, Tensor? y=None) -> Tensor";
        assert_eq!(required(&arguments(d)), 1);
        assert_eq!(required(&arguments("__torch__.M self) -> Tensor")), 0);
    }
}
