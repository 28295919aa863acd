//! The allow-list of Python globals: the only names a pickle may refer to. Anything else is
//! refused when the pickle names it, before anything is built from it.

use crate::checkpoint::dtype::{kind_name, DType};
use crate::checkpoint::error::shown;
use std::rc::Rc;
use tch::Kind;

/// Which pickles the virtual machine accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(in crate::checkpoint) enum Mode {
    /// `torch.save` files: tensors, storages and containers.
    StateDict,
    /// `data.pkl` of a `torch.jit.save` archive: also TorchScript class instances (inert
    /// objects) and the `torch.jit._pickle` list helpers.
    TorchScript,
}

/// The globals the virtual machine knows; anything else is refused when the pickle names it.
#[derive(Debug, Clone)]
pub(in crate::checkpoint) enum Global {
    OrderedDict,
    RebuildTensorV2,
    RebuildParameter,
    RebuildParameterWithState,
    Device,
    /// `builtins.set`, which protocol 2 pickles sets with (e.g. in training checkpoints).
    Set,
    /// `_codecs.encode`, which protocol 2 pickles `bytes` with; never called, the result is an
    /// opaque bytes value.
    CodecsEncode,
    /// `torch.FloatStorage` and friends: `Err` holds the name of a storage type of a dtype this
    /// crate does not read, reported against the tensor that uses it.
    Storage(Result<Kind, Rc<str>>),
    /// TorchScript only: a class compiled by TorchScript (`__torch__.<qualified name>`), named by
    /// its qualified name. Instantiating it gives an inert [`Obj::Object`]; no code runs.
    ScriptClass(Rc<str>),
    /// TorchScript only: `torch.jit._pickle.build_{int,double,bool,tensor}list` and
    /// `restore_type_tag`, which give back their first argument with a static type attached.
    ScriptIdentity(&'static str),
    /// TorchScript only: `builtins.complex`, for `complex` attributes; the result is an opaque
    /// number.
    Complex,
}

/// The custom classes (`torch.classes.<namespace>`) whose objects a TorchScript `data.pkl` or
/// `constants.pkl` may hold, besides the quantized ones (unsupported).
const NATIVE_CLASS_NAMESPACES: [&str; 2] = ["xnnpack", "rnn"];

impl Global {
    pub(in crate::checkpoint) fn resolve(module: &str, name: &str, mode: Mode) -> Option<Global> {
        if mode == Mode::TorchScript {
            if (module == "__torch__" || module.starts_with("__torch__.")) && !name.is_empty() {
                let qualified = format!("{module}.{name}");
                // A custom class is C++ registered in libtorch, whose `__setstate__` libtorch
                // runs on the file's state: only its own xnnpack and rnn ones are read
                // (quantized ones are refused as unsupported before this).
                if let Some(class) = qualified.strip_prefix("__torch__.torch.classes.") {
                    let namespace = class.split('.').next().unwrap_or_default();
                    if !NATIVE_CLASS_NAMESPACES.contains(&namespace) {
                        return None;
                    }
                }
                return Some(Global::ScriptClass(Rc::from(qualified)));
            }
            let helper = match (module, name) {
                ("torch.jit._pickle", "build_intlist") => "build_intlist",
                ("torch.jit._pickle", "build_doublelist") => "build_doublelist",
                ("torch.jit._pickle", "build_boollist") => "build_boollist",
                ("torch.jit._pickle", "build_tensorlist") => "build_tensorlist",
                ("torch.jit._pickle", "restore_type_tag") => "restore_type_tag",
                ("builtins", "complex") => return Some(Global::Complex),
                _ => "",
            };
            if !helper.is_empty() {
                return Some(Global::ScriptIdentity(helper));
            }
        }
        match (module, name) {
            ("collections", "OrderedDict") => Some(Global::OrderedDict),
            ("torch._utils", "_rebuild_tensor_v2") => Some(Global::RebuildTensorV2),
            ("torch._utils", "_rebuild_parameter") => Some(Global::RebuildParameter),
            ("torch._utils", "_rebuild_parameter_with_state") => {
                Some(Global::RebuildParameterWithState)
            }
            ("torch", "device") => Some(Global::Device),
            ("builtins" | "__builtin__", "set") => Some(Global::Set),
            ("_codecs", "encode") => Some(Global::CodecsEncode),
            // torch.cuda.*Storage: CUDA tensors saved by PyTorch 1.6 to 1.x.
            ("torch" | "torch.cuda", storage) | ("torch.storage", storage)
                if storage.ends_with("Storage")
                    && storage.len() > "Storage".len()
                    && storage
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_') =>
            {
                Some(Global::Storage(
                    DType::of_storage(storage)
                        .map(|d| d.kind)
                        .ok_or_else(|| Rc::from(format!("{module}.{storage}"))),
                ))
            }
            _ => None,
        }
    }

    pub(in crate::checkpoint) fn describe(&self) -> String {
        match self {
            Global::OrderedDict => "the class collections.OrderedDict".into(),
            Global::RebuildTensorV2 => "the function torch._utils._rebuild_tensor_v2".into(),
            Global::RebuildParameter => "the function torch._utils._rebuild_parameter".into(),
            Global::RebuildParameterWithState => {
                "the function torch._utils._rebuild_parameter_with_state".into()
            }
            Global::Device => "the class torch.device".into(),
            Global::Set => "the class builtins.set".into(),
            Global::CodecsEncode => "the function _codecs.encode".into(),
            Global::Storage(Ok(kind)) => format!("the storage type of {}", kind_name(*kind)),
            Global::Storage(Err(name)) => format!("the storage type {name}"),
            Global::ScriptClass(name) => format!("the TorchScript class {}", shown(name)),
            Global::ScriptIdentity(name) => format!("the function torch.jit._pickle.{name}"),
            Global::Complex => "the class builtins.complex".into(),
        }
    }
}
