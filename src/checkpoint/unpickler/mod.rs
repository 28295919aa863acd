//! The pickle virtual machine: reads the `data.pkl` of `torch.save` and `torch.jit.save`
//! archives without running anything it names.
//!
//! Python's unpickler imports and calls whatever globals the pickle names, so loading an untrusted
//! checkpoint with `torch.load(weights_only=False)` can run arbitrary code. This virtual machine
//! only knows the handful of globals a state dict needs (see [`globals`]: `collections.OrderedDict`,
//! `torch._utils._rebuild_tensor_v2`, `torch._utils._rebuild_parameter[_with_state]`, the
//! `torch.*Storage` types), plus `torch.device`, `builtins.set` and `_codecs.encode` (for the
//! other entries of a training checkpoint). It interprets those itself, calls nothing, and
//! refuses any other global by name.
//!
//! In its TorchScript mode (for the `data.pkl` of a `torch.jit.save` archive, see
//! [`script_archive`](super::script_archive)) it also accepts the classes TorchScript compiled
//! (`__torch__.*`), whose instances stay inert objects that record their class name and the state
//! BUILD gives them, the `torch.jit._pickle` list helpers and `builtins.complex`.
//!
//! This file holds the machine itself (values, arena, memo, opcodes, calls); turning what it
//! built into tensors and state dicts is [`state_dict`](super::state_dict)'s job, and the module
//! tree walk of TorchScript archives [`script_archive`](super::script_archive)'s.
//!
//! Containers live in an arena and values refer to them by index, so that deeply nested or cyclic
//! pickles (which a hostile file can build with a few bytes per level) are dropped as one flat
//! vector instead of by recursion, and mutations through the memo are seen by every reference,
//! as in Python.

mod globals;
#[cfg(test)]
pub(super) mod tests;

pub(super) use self::globals::{Global, Mode};
use super::archive::StorageSource;
use super::dtype::kind_name;
use super::error::{shown, CheckpointError};
use super::host_tensor::TensorLayout;
use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::rc::Rc;
use tch::{Kind, Tensor};

/// The unpickler's own memory (its stack, memo, objects and their items) may take this many
/// times the size of `data.pkl`, plus [`VM_MEMORY_FLOOR`]. A real state dict's pickle takes
/// several times its size; one byte of pickle (`)`, an empty tuple) can ask for a hundred.
const VM_MEMORY_FACTOR: usize = 16;
const VM_MEMORY_FLOOR: usize = 128 << 20;

#[derive(Debug)]
pub(super) struct StorageRef {
    pub(super) kind: Result<Kind, Rc<str>>,
    /// The bytes, as a 1-D `Uint8` tensor; `None` for unsupported dtypes, never read, and
    /// for storages only located (see [`StorageSource::load`]).
    pub(super) bytes: Option<Tensor>,
    pub(super) key: Rc<str>,
    pub(super) numel: i64,
}

#[derive(Debug, Clone)]
pub(super) enum Value {
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
pub(super) enum TensorProblem {
    UnsupportedDtype(String),
    Invalid(String),
}

#[derive(Debug)]
pub(super) enum Obj {
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
pub(super) struct Dict {
    pub(super) entries: Vec<(Value, Value)>,
    index: HashMap<DictKey, usize>,
}

#[derive(Debug, PartialEq, Eq, Hash)]
enum DictKey {
    Str(Rc<str>),
    Int(i64),
    None,
}

impl Dict {
    fn insert(&mut self, key: Value, value: Value) {
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

    pub(super) fn get(&self, key: &str) -> Option<&Value> {
        let at = self.index.get(&DictKey::Str(Rc::from(key)))?;
        self.entries.get(*at).map(|(_, v)| v)
    }
}

pub(super) struct Unpickler<'a> {
    data: &'a [u8],
    pos: usize,
    pub(super) path: &'a Path,
    mode: Mode,
    storages: &'a mut dyn StorageSource,
    stack: Vec<Value>,
    marks: Vec<usize>,
    memo: HashMap<u32, Value>,
    pub(super) arena: Vec<Obj>,
    /// Each storage's elements in a dtype (a view of its bytes; booleans normalised), built once.
    pub(super) bases: HashMap<(Rc<str>, Kind), Tensor>,
    /// The storages whose memory a tensor has taken as it is (see [`Unpickler::rebuild_tensor`]).
    pub(super) taken: HashSet<Rc<str>>,
    /// The storages read, and their bytes in all: what the copy budget is relative to.
    read: HashSet<Rc<str>>,
    pub(super) storage_bytes: u64,
    /// Bytes of tensor copies made so far (see [`Unpickler::charge_copy`]).
    pub(super) copied: u64,
    /// Values held inside tuples, lists, dicts and objects, for [`Unpickler::footprint`].
    contained: usize,
    /// Hand out the same tensor for the same view of a storage (tied weights) instead of copies.
    pub(super) keep_ties: bool,
    /// The tensors built so far, by their view, when `keep_ties`.
    pub(super) views: HashMap<ViewKey, Tensor>,
    /// The tensors put into a dict so far, by arena index (see [`Unpickler::charge_name`]).
    pub(super) named: HashSet<usize>,
    /// How many tensors the copy budget refused (see [`Unpickler::charge_copy`]).
    pub(super) over_budget: u32,
    /// Each storage key's first declaration (see [`Unpickler::persistent_load`]).
    declared: HashMap<Rc<str>, Rc<StorageRef>>,
}

/// A view of a storage: storage key, dtype, offset, size, stride.
pub(super) type ViewKey = (Rc<str>, Kind, i64, Vec<i64>, Vec<i64>);

pub(super) type VmResult<T> = Result<T, CheckpointError>;

impl<'a> Unpickler<'a> {
    pub(super) fn new(
        data: &'a [u8],
        path: &'a Path,
        storages: &'a mut dyn StorageSource,
    ) -> Unpickler<'a> {
        Unpickler::with_mode(data, path, storages, Mode::StateDict)
    }

    pub(super) fn with_mode(
        data: &'a [u8],
        path: &'a Path,
        storages: &'a mut dyn StorageSource,
        mode: Mode,
    ) -> Unpickler<'a> {
        Unpickler {
            data,
            pos: 0,
            path,
            mode,
            storages,
            stack: Vec::new(),
            marks: Vec::new(),
            memo: HashMap::new(),
            arena: Vec::new(),
            bases: HashMap::new(),
            taken: HashSet::new(),
            read: HashSet::new(),
            storage_bytes: 0,
            copied: 0,
            contained: 0,
            keep_ties: false,
            views: HashMap::new(),
            named: HashSet::new(),
            over_budget: 0,
            declared: HashMap::new(),
        }
    }

    /// About how much memory the machine's values take (its stack, memo, objects and the items
    /// in them; strings are bounded by the pickle itself).
    fn footprint(&self) -> usize {
        use std::mem::size_of;
        let cell = size_of::<Value>();
        self.arena.len() * size_of::<Obj>()
            + (self.stack.len() + self.contained + self.marks.len()) * cell
            + self.memo.len() * 2 * (cell + size_of::<u32>())
    }

    /// Whether names over the same view of one storage (tied weights) get the same tensor,
    /// rather than each its own copy.
    pub(super) fn keep_ties(&mut self, keep: bool) {
        self.keep_ties = keep;
    }

    fn malformed(&self, offset: usize, reason: impl Into<String>) -> CheckpointError {
        CheckpointError::MalformedPickle {
            path: self.path.to_path_buf(),
            offset,
            reason: reason.into(),
        }
    }

    fn take(&mut self, n: usize, what: &str) -> VmResult<&'a [u8]> {
        let data = self.data;
        let end = self.pos.checked_add(n).filter(|&end| end <= data.len());
        let Some(end) = end else {
            return Err(self.malformed(
                self.pos,
                format!(
                    "truncated: {what} needs {n} more bytes, {} left",
                    data.len() - self.pos
                ),
            ));
        };
        let bytes = &data[self.pos..end];
        self.pos = end;
        Ok(bytes)
    }

    fn take_array<const N: usize>(&mut self, what: &str) -> VmResult<[u8; N]> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N, what)?);
        Ok(out)
    }

    fn take_u8(&mut self, what: &str) -> VmResult<u8> {
        Ok(self.take_array::<1>(what)?[0])
    }

    fn take_u32(&mut self, what: &str) -> VmResult<u32> {
        Ok(u32::from_le_bytes(self.take_array(what)?))
    }

    fn take_len64(&mut self, what: &str) -> VmResult<usize> {
        let at = self.pos;
        let n = u64::from_le_bytes(self.take_array(what)?);
        usize::try_from(n)
            .map_err(|_| self.malformed(at, format!("{what} length {n} is too large")))
    }

    fn take_line(&mut self, what: &str) -> VmResult<&'a str> {
        let data = self.data;
        let start = self.pos;
        let Some(len) = data[start..].iter().position(|&b| b == b'\n') else {
            return Err(self.malformed(start, format!("truncated: {what} has no end of line")));
        };
        self.pos = start + len + 1;
        std::str::from_utf8(&data[start..start + len])
            .map_err(|_| self.malformed(start, format!("{what} is not valid UTF-8")))
    }

    fn take_str(&mut self, n: usize, what: &str) -> VmResult<Value> {
        let at = self.pos;
        let bytes = self.take(n, what)?;
        let s = std::str::from_utf8(bytes)
            .map_err(|_| self.malformed(at, format!("{what} is not valid UTF-8")))?;
        Ok(Value::Str(Rc::from(s)))
    }

    fn take_bytes(&mut self, n: usize, what: &str) -> VmResult<Value> {
        self.take(n, what)?;
        Ok(Value::Bytes)
    }

    fn alloc(&mut self, obj: Obj) -> Value {
        self.arena.push(obj);
        Value::Obj(self.arena.len() - 1)
    }

    fn push_obj(&mut self, obj: Obj) {
        self.contained += match &obj {
            Obj::Tuple(items) | Obj::List(items) => items.len(),
            Obj::Dict(dict) => 2 * dict.entries.len(),
            _ => 0,
        };
        let value = self.alloc(obj);
        self.stack.push(value);
    }

    fn pop(&mut self, at: usize) -> VmResult<Value> {
        // Values above the innermost MARK belong to it: popping past it means a malformed pickle.
        let floor = self.marks.last().copied().unwrap_or(0);
        if self.stack.len() <= floor {
            return Err(self.malformed(at, "stack underflow"));
        }
        self.stack
            .pop()
            .ok_or_else(|| self.malformed(at, "stack underflow"))
    }

    fn top(&self, at: usize) -> VmResult<&Value> {
        self.stack
            .last()
            .ok_or_else(|| self.malformed(at, "stack underflow"))
    }

    fn pop_mark(&mut self, at: usize) -> VmResult<Vec<Value>> {
        let mark = self
            .marks
            .pop()
            .ok_or_else(|| self.malformed(at, "no MARK on the stack"))?;
        if mark > self.stack.len() {
            return Err(self.malformed(at, "MARK above the top of the stack"));
        }
        Ok(self.stack.split_off(mark))
    }

    fn memo_get(&self, at: usize, index: u32) -> VmResult<Value> {
        self.memo.get(&index).cloned().ok_or_else(|| {
            self.malformed(
                at,
                format!("memo entry {index} is read before it is written"),
            )
        })
    }

    fn memo_put(&mut self, at: usize, index: u32) -> VmResult<()> {
        let value = self.top(at)?.clone();
        self.memo.insert(index, value);
        Ok(())
    }

    fn obj_mut(&mut self, at: usize, value: &Value) -> VmResult<&mut Obj> {
        match value {
            Value::Obj(i) if *i < self.arena.len() => Ok(&mut self.arena[*i]),
            other => {
                let what = self.type_name(other);
                Err(self.malformed(at, format!("expected a container, found {what}")))
            }
        }
    }

    pub(super) fn type_name(&self, value: &Value) -> String {
        match value {
            Value::None => "None".into(),
            Value::Bool(_) => "a bool".into(),
            Value::Int(_) | Value::BigInt => "an int".into(),
            Value::Float => "a float".into(),
            Value::Str(_) => "a str".into(),
            Value::Bytes => "a bytes object".into(),
            Value::Global(g) => g.describe(),
            Value::Storage(_) => "a tensor storage".into(),
            Value::Obj(i) => match self.arena.get(*i) {
                Some(Obj::Tuple(_)) => "a tuple".into(),
                Some(Obj::List(_)) => "a list".into(),
                Some(Obj::Dict(_)) => "a dict".into(),
                Some(Obj::Tensor(_) | Obj::Layout(_) | Obj::BadTensor(_)) => "a tensor".into(),
                Some(Obj::Device) => "a torch.device".into(),
                Some(Obj::Object { class, .. }) => format!("an object of class {}", shown(class)),
                None => "an unknown object".into(),
            },
        }
    }

    /// Runs the pickle to its STOP opcode and returns the unpickled object.
    pub(super) fn run(&mut self) -> VmResult<Value> {
        let budget = self
            .data
            .len()
            .saturating_mul(VM_MEMORY_FACTOR)
            .saturating_add(VM_MEMORY_FLOOR);
        loop {
            let at = self.pos;
            if self.footprint() > budget {
                return Err(self.malformed(
                    at,
                    format!(
                        "it builds more objects than a pickle of {} bytes can hold in a state dict (over {budget} bytes of memory); refused",
                        self.data.len()
                    ),
                ));
            }
            if at >= self.data.len() {
                return Err(self.malformed(at, "truncated: the pickle ends before its STOP opcode"));
            }
            let op = self.data[at];
            self.pos += 1;
            match op {
                // PROTO
                0x80 => {
                    let version = self.take_u8("PROTO")?;
                    if version > 5 {
                        return Err(
                            self.malformed(at, format!("unsupported pickle protocol {version}"))
                        );
                    }
                }
                // FRAME: only a hint for buffered readers.
                0x95 => {
                    self.take_array::<8>("FRAME")?;
                }
                // STOP
                b'.' => {
                    let value = self.pop(at)?;
                    return Ok(value);
                }
                // MARK
                b'(' => self.marks.push(self.stack.len()),
                // POP
                b'0' => {
                    self.pop(at)?;
                }
                // POP_MARK
                b'1' => {
                    self.pop_mark(at)?;
                }
                // DUP
                b'2' => {
                    let top = self.top(at)?.clone();
                    self.stack.push(top);
                }
                b'N' => self.stack.push(Value::None),
                0x88 => self.stack.push(Value::Bool(true)),
                0x89 => self.stack.push(Value::Bool(false)),
                // BININT, BININT1, BININT2
                b'J' => {
                    let v = i32::from_le_bytes(self.take_array("BININT")?);
                    self.stack.push(Value::Int(i64::from(v)));
                }
                b'K' => {
                    let v = self.take_u8("BININT1")?;
                    self.stack.push(Value::Int(i64::from(v)));
                }
                b'M' => {
                    let v = u16::from_le_bytes(self.take_array("BININT2")?);
                    self.stack.push(Value::Int(i64::from(v)));
                }
                // LONG1, LONG4
                0x8a => {
                    let n = usize::from(self.take_u8("LONG1")?);
                    let bytes = self.take(n, "LONG1")?;
                    self.stack.push(decode_long(bytes));
                }
                0x8b => {
                    let n = i32::from_le_bytes(self.take_array("LONG4")?);
                    let n = usize::try_from(n)
                        .map_err(|_| self.malformed(at, "LONG4 with a negative length"))?;
                    let bytes = self.take(n, "LONG4")?;
                    self.stack.push(decode_long(bytes));
                }
                // BINFLOAT: big-endian, unlike everything else.
                b'G' => {
                    self.take_array::<8>("BINFLOAT")?;
                    self.stack.push(Value::Float);
                }
                // SHORT_BINUNICODE, BINUNICODE, BINUNICODE8
                0x8c => {
                    let n = usize::from(self.take_u8("SHORT_BINUNICODE")?);
                    let s = self.take_str(n, "SHORT_BINUNICODE")?;
                    self.stack.push(s);
                }
                b'X' => {
                    let n = self.take_u32("BINUNICODE")? as usize;
                    let s = self.take_str(n, "BINUNICODE")?;
                    self.stack.push(s);
                }
                0x8d => {
                    let n = self.take_len64("BINUNICODE8")?;
                    let s = self.take_str(n, "BINUNICODE8")?;
                    self.stack.push(s);
                }
                // SHORT_BINSTRING, BINSTRING: Python 2 str, which Python 3 decodes as ASCII.
                b'U' => {
                    let n = usize::from(self.take_u8("SHORT_BINSTRING")?);
                    let s = self.take_str(n, "SHORT_BINSTRING")?;
                    self.stack.push(s);
                }
                b'T' => {
                    let n = i32::from_le_bytes(self.take_array("BINSTRING")?);
                    let n = usize::try_from(n)
                        .map_err(|_| self.malformed(at, "BINSTRING with a negative length"))?;
                    let s = self.take_str(n, "BINSTRING")?;
                    self.stack.push(s);
                }
                // SHORT_BINBYTES, BINBYTES, BINBYTES8, BYTEARRAY8
                b'C' => {
                    let n = usize::from(self.take_u8("SHORT_BINBYTES")?);
                    let b = self.take_bytes(n, "SHORT_BINBYTES")?;
                    self.stack.push(b);
                }
                b'B' => {
                    let n = self.take_u32("BINBYTES")? as usize;
                    let b = self.take_bytes(n, "BINBYTES")?;
                    self.stack.push(b);
                }
                0x8e | 0x96 => {
                    let n = self.take_len64("BINBYTES8")?;
                    let b = self.take_bytes(n, "BINBYTES8")?;
                    self.stack.push(b);
                }
                // EMPTY_TUPLE, TUPLE, TUPLE1..3
                b')' => self.push_obj(Obj::Tuple(Vec::new())),
                b't' => {
                    let items = self.pop_mark(at)?;
                    self.push_obj(Obj::Tuple(items));
                }
                0x85..=0x87 => {
                    let n = usize::from(op - 0x84);
                    let mut items = Vec::with_capacity(n);
                    for _ in 0..n {
                        items.push(self.pop(at)?);
                    }
                    items.reverse();
                    self.push_obj(Obj::Tuple(items));
                }
                // EMPTY_LIST, LIST, EMPTY_SET, FROZENSET
                b']' | 0x8f => self.push_obj(Obj::List(Vec::new())),
                b'l' | 0x91 => {
                    let items = self.pop_mark(at)?;
                    self.push_obj(Obj::List(items));
                }
                // APPEND
                b'a' => {
                    let item = self.pop(at)?;
                    let list = self.top(at)?.clone();
                    self.contained += 1;
                    match self.obj_mut(at, &list)? {
                        Obj::List(items) => items.push(item),
                        _ => {
                            return Err(self.malformed(at, "APPEND to something that is not a list"))
                        }
                    }
                }
                // APPENDS, ADDITEMS
                b'e' | 0x90 => {
                    let items = self.pop_mark(at)?;
                    let list = self.top(at)?.clone();
                    self.contained += items.len();
                    match self.obj_mut(at, &list)? {
                        Obj::List(existing) => existing.extend(items),
                        _ => {
                            return Err(
                                self.malformed(at, "APPENDS to something that is not a list")
                            )
                        }
                    }
                }
                // EMPTY_DICT, DICT
                b'}' => self.push_obj(Obj::Dict(Dict::default())),
                b'd' => {
                    let items = self.pop_mark(at)?;
                    for value in items.iter().skip(1).step_by(2) {
                        self.charge_name(at, value)?;
                    }
                    let dict = self.dict_from_pairs(at, items)?;
                    self.push_obj(Obj::Dict(dict));
                }
                // SETITEM
                b's' => {
                    let value = self.pop(at)?;
                    let key = self.pop(at)?;
                    self.charge_name(at, &value)?;
                    let dict = self.top(at)?.clone();
                    self.contained += 2;
                    match self.obj_mut(at, &dict)? {
                        Obj::Dict(d) => d.insert(key, value),
                        _ => {
                            return Err(
                                self.malformed(at, "SETITEM on something that is not a dict")
                            )
                        }
                    }
                }
                // SETITEMS
                b'u' => {
                    let items = self.pop_mark(at)?;
                    if items.len() % 2 != 0 {
                        return Err(self.malformed(at, "SETITEMS with an odd number of items"));
                    }
                    let dict = self.top(at)?.clone();
                    self.contained += items.len();
                    for value in items.iter().skip(1).step_by(2) {
                        self.charge_name(at, value)?;
                    }
                    match self.obj_mut(at, &dict)? {
                        Obj::Dict(d) => {
                            let mut items = items.into_iter();
                            while let (Some(k), Some(v)) = (items.next(), items.next()) {
                                d.insert(k, v);
                            }
                        }
                        _ => {
                            return Err(
                                self.malformed(at, "SETITEMS on something that is not a dict")
                            )
                        }
                    }
                }
                // BINPUT, LONG_BINPUT, MEMOIZE
                b'q' => {
                    let index = u32::from(self.take_u8("BINPUT")?);
                    self.memo_put(at, index)?;
                }
                b'r' => {
                    let index = self.take_u32("LONG_BINPUT")?;
                    self.memo_put(at, index)?;
                }
                0x94 => {
                    let index = u32::try_from(self.memo.len())
                        .map_err(|_| self.malformed(at, "memo overflow"))?;
                    self.memo_put(at, index)?;
                }
                // BINGET, LONG_BINGET
                b'h' => {
                    let index = u32::from(self.take_u8("BINGET")?);
                    let value = self.memo_get(at, index)?;
                    self.stack.push(value);
                }
                b'j' => {
                    let index = self.take_u32("LONG_BINGET")?;
                    let value = self.memo_get(at, index)?;
                    self.stack.push(value);
                }
                // GLOBAL
                b'c' => {
                    let module = self.take_line("GLOBAL module")?;
                    let name = self.take_line("GLOBAL name")?;
                    let global = self.resolve(module, name)?;
                    self.stack.push(Value::Global(global));
                }
                // STACK_GLOBAL
                0x93 => {
                    let name = self.pop(at)?;
                    let module = self.pop(at)?;
                    let (Value::Str(module), Value::Str(name)) = (module, name) else {
                        return Err(self.malformed(at, "STACK_GLOBAL needs two strings"));
                    };
                    let global = self.resolve(&module, &name)?;
                    self.stack.push(Value::Global(global));
                }
                // REDUCE, NEWOBJ: both only ever call one of the allow-listed globals.
                b'R' | 0x81 => {
                    let args = self.pop(at)?;
                    let callable = self.pop(at)?;
                    let result = self.call(at, callable, args)?;
                    self.stack.push(result);
                }
                // BUILD: sets an object's attributes. A TorchScript object keeps them (a module's
                // attributes are its parameters, buffers and submodules); anything else's (e.g. a
                // state dict's `_metadata`) carry nothing a tensor list needs.
                b'b' => {
                    let state = self.pop(at)?;
                    let target = self.top(at)?.clone();
                    if let Value::Obj(i) = target {
                        if let Some(Obj::Object { state: slot, .. }) = self.arena.get_mut(i) {
                            if slot.is_some() {
                                return Err(self.malformed(
                                    at,
                                    "BUILD of an object that already has its state",
                                ));
                            }
                            *slot = Some(state);
                            self.contained += 1;
                        }
                    }
                }
                // BINPERSID
                b'Q' => {
                    let pid = self.pop(at)?;
                    let storage = self.persistent_load(at, pid)?;
                    self.stack.push(storage);
                }
                _ => {
                    return Err(self.malformed(
                        at,
                        format!("unsupported pickle opcode 0x{op:02x} ({})", opcode_name(op)),
                    ))
                }
            }
        }
    }

    fn resolve(&self, module: &str, name: &str) -> VmResult<Global> {
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

    fn dict_from_pairs(&self, at: usize, items: Vec<Value>) -> VmResult<Dict> {
        if !items.len().is_multiple_of(2) {
            return Err(self.malformed(at, "DICT with an odd number of items"));
        }
        let mut dict = Dict::default();
        let mut items = items.into_iter();
        while let (Some(k), Some(v)) = (items.next(), items.next()) {
            dict.insert(k, v);
        }
        Ok(dict)
    }

    fn tuple_items(&self, at: usize, value: &Value, what: &str) -> VmResult<Vec<Value>> {
        match value {
            Value::Obj(i) => match self.arena.get(*i) {
                Some(Obj::Tuple(items)) => Ok(items.clone()),
                _ => Err(self.malformed(at, format!("{what} must be a tuple"))),
            },
            _ => Err(self.malformed(at, format!("{what} must be a tuple"))),
        }
    }

    fn call(&mut self, at: usize, callable: Value, args: Value) -> VmResult<Value> {
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

    pub(super) fn is_tensor(&self, value: &Value) -> bool {
        matches!(value, Value::Obj(i) if matches!(self.arena.get(*i), Some(Obj::Tensor(_) | Obj::Layout(_) | Obj::BadTensor(_))))
    }

    /// `('storage', storage_type, key, location, numel)`, as torch.save's `persistent_id` writes.
    fn persistent_load(&mut self, at: usize, pid: Value) -> VmResult<Value> {
        let items = self.tuple_items(at, &pid, "a persistent id")?;
        let [Value::Str(tag), Value::Global(Global::Storage(kind)), Value::Str(key), _location, Value::Int(numel)] =
            items.as_slice()
        else {
            return Err(self.malformed(
                at,
                "a persistent id that is not ('storage', <storage type>, key, location, numel)",
            ));
        };
        if &**tag != "storage" {
            return Err(self.malformed(
                at,
                format!("a persistent id of unknown kind '{}'", shown(tag)),
            ));
        }
        if *numel < 0 {
            return Err(self.malformed(
                at,
                format!("storage '{}' has a negative size {numel}", shown(key)),
            ));
        }
        // A key declared again (torch.save memoizes a storage, so it never does; TorchScript
        // neither) must be declared the same: `torch.load` reads every later declaration as the
        // first one's dtype and size, `torch.jit.load` each as its own, so any other reading
        // would differ from one of them.
        if let Some(first) = self.declared.get(key) {
            if first.kind == *kind && first.numel == *numel {
                return Ok(Value::Storage(first.clone()));
            }
            let describe = |kind: &Result<Kind, Rc<str>>, numel: i64| match kind {
                Ok(kind) => format!("{numel} elements of {}", kind_name(*kind)),
                Err(name) => format!("{numel} elements of {}", shown(name)),
            };
            return Err(self.malformed(
                at,
                format!(
                    "storage '{}' is declared as {} and again as {}: torch.load reads both as the first, torch.jit.load each as itself, so no reading is right; refused (torch.save never writes this)",
                    shown(key),
                    describe(&first.kind, first.numel),
                    describe(kind, *numel)
                ),
            ));
        }
        let bytes = match kind {
            Ok(kind) => {
                let nbytes = (*numel as u64)
                    .checked_mul(kind.elt_size_in_bytes() as u64)
                    .ok_or_else(|| {
                        self.malformed(at, format!("storage '{}' is too large", shown(key)))
                    })?;
                let loaded = self.storages.load(key, nbytes)?;
                if self.read.insert(key.clone()) {
                    self.storage_bytes = self.storage_bytes.saturating_add(nbytes);
                }
                loaded
            }
            Err(_) => None,
        };
        let storage = Rc::new(StorageRef {
            kind: kind.clone(),
            bytes,
            key: key.clone(),
            numel: *numel,
        });
        self.declared.insert(key.clone(), storage.clone());
        Ok(Value::Storage(storage))
    }

    /// A tuple or list of ints, as sizes and strides are pickled.
    pub(super) fn int_tuple(&self, value: &Value) -> Option<Vec<i64>> {
        let Value::Obj(i) = value else { return None };
        let (Obj::Tuple(items) | Obj::List(items)) = self.arena.get(*i)? else {
            return None;
        };
        items
            .iter()
            .map(|v| match v {
                Value::Int(n) => Some(*n),
                _ => None,
            })
            .collect()
    }
}

/// Little-endian two's complement, as LONG1 and LONG4 store it.
pub(super) fn decode_long(bytes: &[u8]) -> Value {
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

fn opcode_name(op: u8) -> &'static str {
    match op {
        b'I' => "INT",
        b'L' => "LONG",
        b'F' => "FLOAT",
        b'S' => "STRING",
        b'V' => "UNICODE",
        b'p' => "PUT",
        b'g' => "GET",
        b'i' => "INST",
        b'o' => "OBJ",
        b'P' => "PERSID",
        0x82..=0x84 => "EXT",
        0x92 => "NEWOBJ_EX",
        0x97 => "NEXT_BUFFER",
        0x98 => "READONLY_BUFFER",
        _ => "not used by torch.save",
    }
}
