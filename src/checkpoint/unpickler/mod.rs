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
//! The machine, one part a file: this one holds its state, its memory budget and the opcode loop;
//! `value` the values it builds, `read` the operands it reads after an opcode, `stack` its
//! stack, memo and arena, `calls` the globals it resolves and calls, `persistent` the storages
//! a pickle declares. Turning what it built into tensors and state dicts is
//! [`state_dict`](super::state_dict)'s job, and the module tree walk of TorchScript archives
//! [`script_archive`](super::script_archive)'s.
//!
//! Containers live in an arena and values refer to them by index, so that deeply nested or cyclic
//! pickles (which a hostile file can build with a few bytes per level) are dropped as one flat
//! vector instead of by recursion, and mutations through the memo are seen by every reference,
//! as in Python.

mod calls;
mod globals;
mod persistent;
mod read;
mod stack;
#[cfg(test)]
pub(super) mod tests;
mod value;

pub(super) use self::globals::{Global, Mode};
use self::value::{decode_long, Dict};
pub(super) use self::value::{Obj, StorageRef, TensorProblem, Value, ViewKey};
use super::archive::StorageSource;
use super::error::CheckpointError;
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::rc::Rc;
use tch::{Kind, Tensor};

/// The unpickler's own memory (its stack, memo, objects and their items) may take this many
/// times the size of `data.pkl`, plus [`VM_MEMORY_FLOOR`]. A real state dict's pickle takes
/// several times its size; one byte of pickle (`)`, an empty tuple) can ask for a hundred.
const VM_MEMORY_FACTOR: usize = 16;
const VM_MEMORY_FLOOR: usize = 128 << 20;

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
