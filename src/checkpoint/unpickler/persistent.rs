//! Persistent ids: the storages a pickle declares (`BINPERSID`), each checked, loaded or located
//! through the [`StorageSource`](crate::checkpoint::archive::StorageSource) once, and counted
//! for the copy budget.

use super::Global;
use super::{StorageRef, Unpickler, Value, VmResult};
use crate::checkpoint::dtype::kind_name;
use crate::checkpoint::error::shown;
use std::rc::Rc;
use tch::Kind;

impl Unpickler<'_> {
    /// `('storage', storage_type, key, location, numel)`, as torch.save's `persistent_id` writes.
    pub(super) fn persistent_load(&mut self, at: usize, pid: Value) -> VmResult<Value> {
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
}
