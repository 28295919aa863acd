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
//! `opcode` the opcodes (byte and name), `value` the values it builds, `read` the operands it
//! reads after an opcode, `stack` its stack, memo and arena, `calls` the globals it resolves
//! and calls, `persistent` the storages a pickle declares. Turning what it built into tensors and state dicts is
//! [`state_dict`](super::state_dict)'s job, and the module tree walk of TorchScript archives
//! [`script_archive`](super::script_archive)'s.
//!
//! Containers live in an arena and values refer to them by index, so that deeply nested or cyclic
//! pickles (which a hostile file can build with a few bytes per level) are dropped as one flat
//! vector instead of by recursion, and mutations through the memo are seen by every reference,
//! as in Python.

mod calls;
mod globals;
mod opcode;
mod persistent;
mod read;
mod stack;
#[cfg(test)]
pub(super) mod tests;
mod value;

pub(super) use self::globals::{Global, Mode};
use self::opcode::OpCode;
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
            let byte = self.data[at];
            self.pos += 1;
            let Some(op) = OpCode::from_byte(byte) else {
                return Err(self.unsupported_opcode(at, byte, "not used by torch.save"));
            };
            match op {
                OpCode::Proto => {
                    let version = self.take_u8(op.name())?;
                    if version > 5 {
                        return Err(
                            self.malformed(at, format!("unsupported pickle protocol {version}"))
                        );
                    }
                }
                // Only a hint for buffered readers.
                OpCode::Frame => {
                    self.take_array::<8>(op.name())?;
                }
                OpCode::Stop => {
                    let value = self.pop(at)?;
                    return Ok(value);
                }
                OpCode::Mark => self.marks.push(self.stack.len()),
                OpCode::Pop => {
                    self.pop(at)?;
                }
                OpCode::PopMark => {
                    self.pop_mark(at)?;
                }
                OpCode::Dup => {
                    let top = self.top(at)?.clone();
                    self.stack.push(top);
                }
                OpCode::None => self.stack.push(Value::None),
                OpCode::NewTrue => self.stack.push(Value::Bool(true)),
                OpCode::NewFalse => self.stack.push(Value::Bool(false)),
                OpCode::BinInt => {
                    let v = i32::from_le_bytes(self.take_array(op.name())?);
                    self.stack.push(Value::Int(i64::from(v)));
                }
                OpCode::BinInt1 => {
                    let v = self.take_u8(op.name())?;
                    self.stack.push(Value::Int(i64::from(v)));
                }
                OpCode::BinInt2 => {
                    let v = u16::from_le_bytes(self.take_array(op.name())?);
                    self.stack.push(Value::Int(i64::from(v)));
                }
                OpCode::Long1 => {
                    let n = usize::from(self.take_u8(op.name())?);
                    let bytes = self.take(n, op.name())?;
                    self.stack.push(decode_long(bytes));
                }
                OpCode::Long4 => {
                    let n = i32::from_le_bytes(self.take_array(op.name())?);
                    let n = usize::try_from(n)
                        .map_err(|_| self.malformed(at, "LONG4 with a negative length"))?;
                    let bytes = self.take(n, op.name())?;
                    self.stack.push(decode_long(bytes));
                }
                // Big-endian, unlike everything else.
                OpCode::BinFloat => {
                    self.take_array::<8>(op.name())?;
                    self.stack.push(Value::Float);
                }
                OpCode::ShortBinUnicode => {
                    let n = usize::from(self.take_u8(op.name())?);
                    let s = self.take_str(n, op.name())?;
                    self.stack.push(s);
                }
                OpCode::BinUnicode => {
                    let n = self.take_u32(op.name())? as usize;
                    let s = self.take_str(n, op.name())?;
                    self.stack.push(s);
                }
                OpCode::BinUnicode8 => {
                    let n = self.take_len64(op.name())?;
                    let s = self.take_str(n, op.name())?;
                    self.stack.push(s);
                }
                // Python 2 str, which Python 3 decodes as ASCII.
                OpCode::ShortBinString => {
                    let n = usize::from(self.take_u8(op.name())?);
                    let s = self.take_str(n, op.name())?;
                    self.stack.push(s);
                }
                OpCode::BinString => {
                    let n = i32::from_le_bytes(self.take_array(op.name())?);
                    let n = usize::try_from(n)
                        .map_err(|_| self.malformed(at, "BINSTRING with a negative length"))?;
                    let s = self.take_str(n, op.name())?;
                    self.stack.push(s);
                }
                OpCode::ShortBinBytes => {
                    let n = usize::from(self.take_u8(op.name())?);
                    let b = self.take_bytes(n, op.name())?;
                    self.stack.push(b);
                }
                OpCode::BinBytes => {
                    let n = self.take_u32(op.name())? as usize;
                    let b = self.take_bytes(n, op.name())?;
                    self.stack.push(b);
                }
                OpCode::BinBytes8 | OpCode::ByteArray8 => {
                    let n = self.take_len64("BINBYTES8")?;
                    let b = self.take_bytes(n, "BINBYTES8")?;
                    self.stack.push(b);
                }
                OpCode::EmptyTuple => self.push_obj(Obj::Tuple(Vec::new())),
                OpCode::Tuple => {
                    let items = self.pop_mark(at)?;
                    self.push_obj(Obj::Tuple(items));
                }
                OpCode::Tuple1 | OpCode::Tuple2 | OpCode::Tuple3 => {
                    let n = match op {
                        OpCode::Tuple1 => 1,
                        OpCode::Tuple2 => 2,
                        _ => 3,
                    };
                    let mut items = Vec::with_capacity(n);
                    for _ in 0..n {
                        items.push(self.pop(at)?);
                    }
                    items.reverse();
                    self.push_obj(Obj::Tuple(items));
                }
                OpCode::EmptyList | OpCode::EmptySet => self.push_obj(Obj::List(Vec::new())),
                OpCode::List | OpCode::FrozenSet => {
                    let items = self.pop_mark(at)?;
                    self.push_obj(Obj::List(items));
                }
                OpCode::Append => {
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
                OpCode::Appends | OpCode::AddItems => {
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
                OpCode::EmptyDict => self.push_obj(Obj::Dict(Dict::default())),
                OpCode::Dict => {
                    let items = self.pop_mark(at)?;
                    for value in items.iter().skip(1).step_by(2) {
                        self.charge_name(at, value)?;
                    }
                    let dict = self.dict_from_pairs(at, items)?;
                    self.push_obj(Obj::Dict(dict));
                }
                OpCode::SetItem => {
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
                OpCode::SetItems => {
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
                OpCode::BinPut => {
                    let index = u32::from(self.take_u8(op.name())?);
                    self.memo_put(at, index)?;
                }
                OpCode::LongBinPut => {
                    let index = self.take_u32(op.name())?;
                    self.memo_put(at, index)?;
                }
                OpCode::Memoize => {
                    let index = u32::try_from(self.memo.len())
                        .map_err(|_| self.malformed(at, "memo overflow"))?;
                    self.memo_put(at, index)?;
                }
                OpCode::BinGet => {
                    let index = u32::from(self.take_u8(op.name())?);
                    let value = self.memo_get(at, index)?;
                    self.stack.push(value);
                }
                OpCode::LongBinGet => {
                    let index = self.take_u32(op.name())?;
                    let value = self.memo_get(at, index)?;
                    self.stack.push(value);
                }
                OpCode::Global => {
                    let module = self.take_line("GLOBAL module")?;
                    let name = self.take_line("GLOBAL name")?;
                    let global = self.resolve(module, name)?;
                    self.stack.push(Value::Global(global));
                }
                OpCode::StackGlobal => {
                    let name = self.pop(at)?;
                    let module = self.pop(at)?;
                    let (Value::Str(module), Value::Str(name)) = (module, name) else {
                        return Err(self.malformed(at, "STACK_GLOBAL needs two strings"));
                    };
                    let global = self.resolve(&module, &name)?;
                    self.stack.push(Value::Global(global));
                }
                // Both only ever call one of the allow-listed globals.
                OpCode::Reduce | OpCode::NewObj => {
                    let args = self.pop(at)?;
                    let callable = self.pop(at)?;
                    let result = self.call(at, callable, args)?;
                    self.stack.push(result);
                }
                // Sets an object's attributes. A TorchScript object keeps them (a module's
                // attributes are its parameters, buffers and submodules); anything else's (e.g. a
                // state dict's `_metadata`) carry nothing a tensor list needs.
                OpCode::Build => {
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
                OpCode::BinPersId => {
                    let pid = self.pop(at)?;
                    let storage = self.persistent_load(at, pid)?;
                    self.stack.push(storage);
                }
                // Opcodes torch.save never writes: refused by name.
                OpCode::Float
                | OpCode::Int
                | OpCode::Long
                | OpCode::PersId
                | OpCode::String
                | OpCode::Unicode
                | OpCode::Get
                | OpCode::Inst
                | OpCode::Obj
                | OpCode::Put
                | OpCode::Ext1
                | OpCode::Ext2
                | OpCode::Ext4
                | OpCode::NewObjEx
                | OpCode::NextBuffer
                | OpCode::ReadOnlyBuffer => {
                    return Err(self.unsupported_opcode(at, byte, op.name()));
                }
            }
        }
    }

    fn unsupported_opcode(&self, at: usize, byte: u8, name: &str) -> CheckpointError {
        self.malformed(
            at,
            format!("unsupported pickle opcode 0x{byte:02x} ({name})"),
        )
    }
}
