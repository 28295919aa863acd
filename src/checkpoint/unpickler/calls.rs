//! The globals a pickle names, resolved against the allow-list (see [`globals`](super::globals)),
//! and called: each one interpreted here, nothing run.

use super::{Dict, Global, Obj, TensorProblem, Unpickler, Value, VmResult};
use crate::checkpoint::error::{shown, CheckpointError};

impl Unpickler<'_> {
    pub(super) fn resolve(&self, module: &str, name: &str) -> VmResult<Global> {
        // Quantized tensors and packed quantized parameters are PyTorch's own, not a risk: say
        // what they are.
        let quantized = (module == "torch._utils" && name == "_rebuild_qtensor")
            || module.starts_with("__torch__.torch.classes.quantized");
        if quantized {
            return Err(CheckpointError::Unsupported {
                path: self.path.to_path_buf(),
                reason: "quantized tensors are not supported: save the float model (before quantization, or dequantized) instead".into(),
            });
        }
        Global::resolve(module, name, self.mode).ok_or_else(|| CheckpointError::ForbiddenGlobal {
            path: self.path.to_path_buf(),
            global: shown(&format!("{module}.{name}")),
        })
    }

    pub(super) fn call(&mut self, at: usize, callable: Value, args: Value) -> VmResult<Value> {
        let Value::Global(global) = callable else {
            let what = self.type_name(&callable);
            return Err(self.malformed(at, format!("cannot call {what}")));
        };
        if let Global::ScriptClass(class) = &global {
            // NEWOBJ with `()` is `cls.__new__(cls)`: an empty object, given its state by a later
            // BUILD. TorchScript pickles an enum value as its class REDUCE'd with the value itself
            // (not a tuple): an inert object that keeps it.
            let empty = matches!(&args, Value::Obj(i) if matches!(self.arena.get(*i), Some(Obj::Tuple(items)) if items.is_empty()));
            let state = (!empty).then_some(args);
            let class = class.clone();
            return Ok(self.alloc(Obj::Object { class, state }));
        }
        let args = self.tuple_items(at, &args, "the arguments of a call")?;
        match global {
            Global::OrderedDict => {
                if !args.is_empty() {
                    return Err(self.malformed(at, "collections.OrderedDict called with arguments"));
                }
                Ok(self.alloc(Obj::Dict(Dict::default())))
            }
            Global::Device => Ok(self.alloc(Obj::Device)),
            Global::CodecsEncode => Ok(Value::Bytes),
            Global::Set => {
                let items = match args.as_slice() {
                    [] => Vec::new(),
                    [Value::Obj(i)] => match self.arena.get(*i) {
                        Some(Obj::List(items) | Obj::Tuple(items)) => items.clone(),
                        _ => {
                            return Err(self.malformed(at, "set() of something that is not a list"))
                        }
                    },
                    _ => return Err(self.malformed(at, "set() with unexpected arguments")),
                };
                Ok(self.alloc(Obj::List(items)))
            }
            Global::RebuildTensorV2 => {
                let obj = self.rebuild_tensor(&args).unwrap_or_else(Obj::BadTensor);
                // One tensor over the copy budget is reported under its name, if it is part of
                // the state dict; more are the file asking for copies without end (a million
                // views of a few bytes of pickle each): refused at once.
                if let (Obj::BadTensor(TensorProblem::Invalid(reason)), true) =
                    (&obj, self.over_budget > 1)
                {
                    return Err(CheckpointError::Unsupported {
                        path: self.path.to_path_buf(),
                        reason: reason.clone(),
                    });
                }
                Ok(self.alloc(obj))
            }
            // Parameter(data, requires_grad, hooks[, state]): the data is the tensor.
            Global::RebuildParameter | Global::RebuildParameterWithState => match args.first() {
                Some(data) if self.is_tensor(data) => Ok(data.clone()),
                _ => Ok(self.alloc(Obj::BadTensor(TensorProblem::Invalid(
                    "a parameter whose data is not a tensor".into(),
                )))),
            },
            Global::Storage(_) => {
                let what = global.describe();
                Err(self.malformed(at, format!("cannot call {what}")))
            }
            // Handled above, before the arguments are unpacked.
            Global::ScriptClass(class) => Ok(self.alloc(Obj::Object { class, state: None })),
            Global::ScriptIdentity(name) => match args.first() {
                Some(value) if (1..=2).contains(&args.len()) => Ok(value.clone()),
                _ => Err(self.malformed(
                    at,
                    format!("torch.jit._pickle.{name} called with unexpected arguments"),
                )),
            },
            Global::Complex => Ok(Value::Float),
        }
    }
}
