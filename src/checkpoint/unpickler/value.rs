//! The values the machine builds: plain values (`Value`), the containers and objects they
//! refer to in the arena (`Obj`, `Dict`), the storages a persistent id names (`StorageRef`),
//! and the integers LONG1 and LONG4 decode to.

use super::globals::Global;
use crate::checkpoint::host_tensor::TensorLayout;
use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::rc::Rc;
use tch::{Kind, Tensor};

#[derive(Debug)]
pub(in crate::checkpoint) struct StorageRef {
    pub(in crate::checkpoint) kind: Result<Kind, Rc<str>>,
    /// The bytes, as a 1-D `Uint8` tensor; `None` for unsupported dtypes, never read, and
    /// for storages only located (see
    /// [`StorageSource::load`](crate::checkpoint::archive::StorageSource::load)).
    pub(in crate::checkpoint) bytes: Option<Tensor>,
    pub(in crate::checkpoint) key: Rc<str>,
    pub(in crate::checkpoint) numel: i64,
}

#[derive(Debug, Clone)]
pub(in crate::checkpoint) enum Value {
    None,
    Bool(bool),
    Int(i64),
    /// An integer beyond 64 bits: never a valid size, offset or dict key here.
    BigInt,
    /// Floats and bytes are only ever skipped over: no state dict part is one.
    Float,
    Str(Rc<str>),
    Bytes,
    Global(Global),
    Storage(Rc<StorageRef>),
    /// An index into the arena.
    Obj(usize),
}

/// Why a `_rebuild_tensor_v2` call did not give a tensor; reported with the key the tensor is
/// stored under, if it turns out to be part of the state dict at all.
#[derive(Debug)]
pub(in crate::checkpoint) enum TensorProblem {
    UnsupportedDtype(String),
    Invalid(String),
}

#[derive(Debug)]
pub(in crate::checkpoint) enum Obj {
    Tuple(Vec<Value>),
    /// Lists and sets alike.
    List(Vec<Value>),
    Dict(Dict),
    Tensor(Tensor),
    /// A tensor described, not built: its storage was only located.
    Layout(TensorLayout),
    BadTensor(TensorProblem),
    Device,
    /// TorchScript only: an instance of a TorchScript class (a module, or a scripted class),
    /// never constructed: its qualified class name and the state BUILD gave it (for modules, a
    /// dict of its attributes in slot order).
    Object {
        class: Rc<str>,
        state: Option<Value>,
    },
}

/// Python's insertion-ordered dict: a later `SETITEM` of an existing key replaces its value in
/// place.
#[derive(Debug, Default)]
pub(in crate::checkpoint) struct Dict {
    pub(in crate::checkpoint) entries: Vec<(Value, Value)>,
    index: HashMap<DictKey, usize>,
}

#[derive(Debug, PartialEq, Eq, Hash)]
enum DictKey {
    Str(Rc<str>),
    Int(i64),
    None,
}

impl Dict {
    pub(super) fn insert(&mut self, key: Value, value: Value) {
        // Python hashes True as 1, so they are one key.
        let hashed = match &key {
            Value::Str(s) => Some(DictKey::Str(s.clone())),
            Value::Int(i) => Some(DictKey::Int(*i)),
            Value::Bool(b) => Some(DictKey::Int(i64::from(*b))),
            Value::None => Some(DictKey::None),
            _ => None,
        };
        match hashed {
            Some(k) => match self.index.entry(k) {
                Entry::Occupied(at) => self.entries[*at.get()].1 = value,
                Entry::Vacant(slot) => {
                    slot.insert(self.entries.len());
                    self.entries.push((key, value));
                }
            },
            // Tuples and the like: no state dict uses them as keys, so they are kept, not merged.
            None => self.entries.push((key, value)),
        }
    }

    pub(in crate::checkpoint) fn get(&self, key: &str) -> Option<&Value> {
        let at = self.index.get(&DictKey::Str(Rc::from(key)))?;
        self.entries.get(*at).map(|(_, v)| v)
    }
}

/// A view of a storage: storage key, dtype, offset, size, stride.
pub(in crate::checkpoint) type ViewKey = (Rc<str>, Kind, i64, Vec<i64>, Vec<i64>);

/// Little-endian two's complement, as LONG1 and LONG4 store it.
pub(in crate::checkpoint) fn decode_long(bytes: &[u8]) -> Value {
    if bytes.is_empty() {
        return Value::Int(0);
    }
    let negative = bytes[bytes.len() - 1] & 0x80 != 0;
    let fill = if negative { 0xff } else { 0x00 };
    let (low, high) = bytes.split_at(bytes.len().min(8));
    let mut buf = [fill; 8];
    buf[..low.len()].copy_from_slice(low);
    let value = i64::from_le_bytes(buf);
    // Beyond 8 bytes the value fits only if the rest is sign extension of the low 8.
    if high.iter().all(|&b| b == fill) && (value < 0) == negative {
        Value::Int(value)
    } else {
        Value::BigInt
    }
}
