//! The machine's memory: the stack and its marks, the memo, the arena of containers, and the
//! values read back out of them (tuples' items, ints, type names for messages).

use super::{Dict, Obj, Unpickler, Value, VmResult};
use crate::checkpoint::error::shown;

impl Unpickler<'_> {
    pub(super) fn alloc(&mut self, obj: Obj) -> Value {
        self.arena.push(obj);
        Value::Obj(self.arena.len() - 1)
    }

    pub(super) fn push_obj(&mut self, obj: Obj) {
        self.contained += match &obj {
            Obj::Tuple(items) | Obj::List(items) => items.len(),
            Obj::Dict(dict) => 2 * dict.entries.len(),
            _ => 0,
        };
        let value = self.alloc(obj);
        self.stack.push(value);
    }

    pub(super) fn pop(&mut self, at: usize) -> VmResult<Value> {
        // Values above the innermost MARK belong to it: popping past it means a malformed pickle.
        let floor = self.marks.last().copied().unwrap_or(0);
        if self.stack.len() <= floor {
            return Err(self.malformed(at, "stack underflow"));
        }
        self.stack
            .pop()
            .ok_or_else(|| self.malformed(at, "stack underflow"))
    }

    pub(super) fn top(&self, at: usize) -> VmResult<&Value> {
        self.stack
            .last()
            .ok_or_else(|| self.malformed(at, "stack underflow"))
    }

    pub(super) fn pop_mark(&mut self, at: usize) -> VmResult<Vec<Value>> {
        let mark = self
            .marks
            .pop()
            .ok_or_else(|| self.malformed(at, "no MARK on the stack"))?;
        if mark > self.stack.len() {
            return Err(self.malformed(at, "MARK above the top of the stack"));
        }
        Ok(self.stack.split_off(mark))
    }

    pub(super) fn memo_get(&self, at: usize, index: u32) -> VmResult<Value> {
        self.memo.get(&index).cloned().ok_or_else(|| {
            self.malformed(
                at,
                format!("memo entry {index} is read before it is written"),
            )
        })
    }

    pub(super) fn memo_put(&mut self, at: usize, index: u32) -> VmResult<()> {
        let value = self.top(at)?.clone();
        self.memo.insert(index, value);
        Ok(())
    }

    pub(super) fn obj_mut(&mut self, at: usize, value: &Value) -> VmResult<&mut Obj> {
        match value {
            Value::Obj(i) if *i < self.arena.len() => Ok(&mut self.arena[*i]),
            other => {
                let what = self.type_name(other);
                Err(self.malformed(at, format!("expected a container, found {what}")))
            }
        }
    }

    pub(in crate::checkpoint) fn type_name(&self, value: &Value) -> String {
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

    pub(super) fn dict_from_pairs(&self, at: usize, items: Vec<Value>) -> VmResult<Dict> {
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

    pub(super) fn tuple_items(&self, at: usize, value: &Value, what: &str) -> VmResult<Vec<Value>> {
        match value {
            Value::Obj(i) => match self.arena.get(*i) {
                Some(Obj::Tuple(items)) => Ok(items.clone()),
                _ => Err(self.malformed(at, format!("{what} must be a tuple"))),
            },
            _ => Err(self.malformed(at, format!("{what} must be a tuple"))),
        }
    }

    pub(in crate::checkpoint) fn is_tensor(&self, value: &Value) -> bool {
        matches!(value, Value::Obj(i) if matches!(self.arena.get(*i), Some(Obj::Tensor(_) | Obj::Layout(_) | Obj::BadTensor(_))))
    }

    /// A tuple or list of ints, as sizes and strides are pickled.
    pub(in crate::checkpoint) fn int_tuple(&self, value: &Value) -> Option<Vec<i64>> {
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
