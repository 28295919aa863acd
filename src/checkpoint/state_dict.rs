//! State-dict assembly: the tensors a pickle's `_rebuild_tensor_v2` calls describe, built as
//! checked strided views of their storages (with no copy where a tensor is a whole storage), and
//! the `name -> tensor` list picked out of the unpickled object, each tensor owning its memory.

use super::error::{first_line, shown, CheckpointError};
use super::host_tensor::TensorLayout;
use super::unpickler::{Obj, StorageRef, TensorProblem, Unpickler, Value, ViewKey, VmResult};
use std::collections::hash_map::Entry;
use std::collections::HashSet;
use tch::{Kind, Tensor};

/// Wrapper keys under which training scripts commonly nest the state dict
/// (`torch.save({"state_dict": sd, "epoch": 3}, p)`), tried in this order.
const NESTED_KEYS: [&str; 2] = ["state_dict", "model"];

/// Copies of tensors (views of a storage another tensor has taken, strided views, a tensor
/// under several names) may take this many times the bytes of the storages read, or
/// [`COPY_BUDGET_FLOOR`] if more, so that a few bytes of pickle cannot ask for unbounded copies.
pub(super) const COPY_BUDGET_FACTOR: u64 = 8;
pub(super) const COPY_BUDGET_FLOOR: u64 = 64 << 20;

/// What one more tensor object costs, whatever its size: libtorch's tensor and storage, their
/// allocation, and the entries that name it (here, and in the store a model is loaded into).
/// Every tensor that is not a storage read once (a copy, a view of a shared storage, a name
/// given to a tensor already handed out) is charged at least this much, so that a pickle of a
/// few bytes per view cannot make a million of them.
pub(super) const TENSOR_COST: u64 = 1 << 10;

impl Unpickler<'_> {
    /// Charges `bytes` of tensor copies (`what` says which) to the copy budget, or says why
    /// they are refused, before anything is copied.
    fn charge_copy(&mut self, bytes: u64, what: &str) -> Result<(), String> {
        let budget = self
            .storage_bytes
            .saturating_mul(COPY_BUDGET_FACTOR)
            .max(COPY_BUDGET_FLOOR);
        let copied = self.copied.saturating_add(bytes.max(TENSOR_COST));
        if copied > budget {
            self.over_budget += 1;
            return Err(format!(
                "{what}: copies of tensors over shared storages would take {copied} bytes, more than {COPY_BUDGET_FACTOR} times the {} bytes of the storages read (or {COPY_BUDGET_FLOOR}); refused rather than materialized: save x.contiguous() or x.clone() instead",
                self.storage_bytes
            ));
        }
        self.copied = copied;
        Ok(())
    }

    /// Charges the tensor about to be built over `view` of `storage` to the copy budget, before
    /// anything is built (or, for a storage only located, described): nothing for the first
    /// tensor over a whole storage (it takes the storage's memory), its bytes (at least
    /// [`TENSOR_COST`]) for any other, which is a copy. Whether the tensor takes the storage.
    fn charge_view(
        &mut self,
        storage: &StorageRef,
        kind: Kind,
        view: &StridedView,
        size: &[i64],
        stride: &[i64],
    ) -> Result<bool, String> {
        let elements = match view.contiguous_range() {
            Some((start, end)) => {
                if start == 0
                    && end as i64 == storage.numel
                    && self.taken.insert(storage.key.clone())
                {
                    return Ok(true);
                }
                end - start
            }
            None => view.numel,
        };
        let bytes = (elements * kind.elt_size_in_bytes()) as u64;
        let what = match view.contiguous_range() {
            Some(_) => "a view of part of a storage, or of one another tensor has".to_string(),
            // More elements than the storage holds: an expansion (`x.expand(n, m)`, strides
            // of 0), which PyTorch keeps a view of a few bytes.
            None if view.numel as i64 > storage.numel => format!(
                "an expanded view (size {size:?}, stride {stride:?}) of {} elements over a storage of {}",
                view.numel, storage.numel
            ),
            None => format!("a strided view (size {size:?}, stride {stride:?})"),
        };
        self.charge_copy(bytes, &what).map(|()| false)
    }

    /// `_rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, backward_hooks[, metadata])`:
    /// a tensor ([`Obj::Tensor`]), or over a storage only located, its layout ([`Obj::Layout`]).
    pub(super) fn rebuild_tensor(&mut self, args: &[Value]) -> Result<Obj, TensorProblem> {
        let invalid = |reason: &str| TensorProblem::Invalid(reason.to_string());
        if !(6..=7).contains(&args.len()) {
            return Err(TensorProblem::Invalid(format!(
                "_rebuild_tensor_v2 takes 6 or 7 arguments, the file gives {}",
                args.len()
            )));
        }
        let Value::Storage(storage) = &args[0] else {
            return Err(invalid(
                "the first argument of _rebuild_tensor_v2 is not a storage",
            ));
        };
        let Value::Int(offset) = args[1] else {
            return Err(invalid("the storage offset is not an int"));
        };
        let size = self
            .int_tuple(&args[2])
            .ok_or_else(|| invalid("the size is not a tuple of ints"))?;
        let stride = self
            .int_tuple(&args[3])
            .ok_or_else(|| invalid("the stride is not a tuple of ints"))?;
        let kind = match &storage.kind {
            Ok(kind) => *kind,
            Err(name) => return Err(TensorProblem::UnsupportedDtype(name.to_string())),
        };
        let view = StridedView::new(storage.numel, offset, &size, &stride)
            .map_err(TensorProblem::Invalid)?;
        let key: ViewKey = (
            storage.key.clone(),
            kind,
            offset,
            size.clone(),
            stride.clone(),
        );
        if self.keep_ties {
            if let Some(t) = self.views.get(&key) {
                return Ok(Obj::Tensor(t.shallow_clone()));
            }
        }
        let takes = self
            .charge_view(storage, kind, &view, &size, &stride)
            .map_err(TensorProblem::Invalid)?;
        let Some(bytes) = storage.bytes.as_ref() else {
            return Ok(Obj::Layout(TensorLayout {
                storage: storage.key.to_string(),
                kind,
                offset,
                elements: view.contiguous_range(),
                size,
                stride,
            }));
        };
        let t = self.rebuild_view(storage, kind, bytes, view, takes, offset, &size, &stride)?;
        if self.keep_ties {
            self.views.insert(key, t.shallow_clone());
        }
        Ok(Obj::Tensor(t))
    }

    /// The tensor of one view of a storage: see [`Unpickler::rebuild_tensor`].
    #[allow(clippy::too_many_arguments)]
    fn rebuild_view(
        &mut self,
        storage: &StorageRef,
        kind: Kind,
        bytes: &Tensor,
        view: StridedView,
        takes: bool,
        offset: i64,
        size: &[i64],
        stride: &[i64],
    ) -> Result<Tensor, TensorProblem> {
        let torch = |e: tch::TchError| {
            TensorProblem::Invalid(format!("libtorch: {}", first_line(&e.to_string())))
        };
        let base = match self.bases.entry((storage.key.clone(), kind)) {
            Entry::Occupied(base) => base.into_mut(),
            Entry::Vacant(slot) => slot.insert(typed_storage(bytes, kind).map_err(torch)?),
        };
        if let Some((start, end)) = view.contiguous_range() {
            // In bounds: StridedView checked the view against the storage, and the storage's
            // byte length against its element count when it was loaded.
            let t = base
                .f_narrow(0, start as i64, (end - start) as i64)
                .and_then(|t| t.f_view(size))
                .map_err(torch)?;
            // The first tensor over a whole storage takes its memory, with no copy; any other
            // gets a copy (charged by `charge_view`), so that tensors read never share memory
            // (pruning one in place must not change another, as tied weights loaded into a
            // model do not).
            if takes {
                return Ok(t);
            }
            let mut copy = Tensor::f_empty_like(&t).map_err(torch)?;
            copy.f_copy_(&t).map_err(torch)?;
            return Ok(copy);
        }
        let base = &self.bases[&(storage.key.clone(), kind)];
        base.f_as_strided(size, stride, offset)
            .and_then(|view| view.f_contiguous())
            .map_err(torch)
    }

    /// Charges [`TENSOR_COST`] for a tensor put into a dict once more (one more name for it,
    /// which becomes one more tensor or handle wherever the state dict goes), as the pickle
    /// does it: a million names of one tensor are refused before a million entries are built.
    pub(super) fn charge_name(&mut self, at: usize, value: &Value) -> VmResult<()> {
        let Value::Obj(index) = value else {
            return Ok(());
        };
        if !self.is_tensor(value) || self.named.insert(*index) {
            return Ok(());
        }
        self.charge_copy(0, "tensors given under several names")
            .map_err(|reason| CheckpointError::Unsupported {
                path: self.path.to_path_buf(),
                reason: format!("{reason} (at byte {at} of data.pkl)"),
            })
    }

    /// Charges the copies of tensors given under several names (all but the first name's,
    /// unless `keep_ties`) to the copy budget, by their bytes.
    fn charge_names(&mut self, keys: &[(String, usize)]) -> VmResult<()> {
        let mut copies = 0u64;
        let mut seen = HashSet::new();
        for (_, index) in keys.iter().filter(|_| !self.keep_ties) {
            if let Some(Obj::Tensor(t)) = self.arena.get(*index) {
                if !seen.insert(*index) {
                    let bytes =
                        (t.numel() as u64).saturating_mul(t.kind().elt_size_in_bytes() as u64);
                    copies = copies.saturating_add(bytes);
                }
            }
        }
        if copies == 0 {
            return Ok(());
        }
        self.charge_copy(copies, "tensors given under several names")
            .map_err(|reason| CheckpointError::NotAStateDict {
                path: self.path.to_path_buf(),
                reason,
            })
    }

    /// Picks the state dict out of the unpickled object and hands out its tensors.
    pub(super) fn into_state_dict(mut self, root: Value) -> VmResult<Vec<(String, Tensor)>> {
        let (keys, key_prefix) = self.state_dict_keys(&root)?;
        self.hand_out(keys, &key_prefix)
    }

    /// [`Unpickler::into_state_dict`] for storages only located: the tensors' layouts, with the
    /// key the state dict was found under (`"state_dict."`, `"model."`, or `""` for the root).
    pub(super) fn into_layouts(
        self,
        root: Value,
    ) -> VmResult<(String, Vec<(String, TensorLayout)>)> {
        let (keys, key_prefix) = self.state_dict_keys(&root)?;
        let mut out = Vec::with_capacity(keys.len());
        for (name, index) in keys {
            match &self.arena[index] {
                Obj::Layout(layout) => out.push((name, layout.clone())),
                other => return Err(self.not_handed_out(other, &format!("{key_prefix}{name}"))),
            }
        }
        Ok((key_prefix, out))
    }

    /// Why the arena object `obj`, the value of `key`, is not a tensor to hand out.
    fn not_handed_out(&self, obj: &Obj, key: &str) -> CheckpointError {
        match obj {
            Obj::BadTensor(TensorProblem::UnsupportedDtype(dtype)) => {
                CheckpointError::UnsupportedDtype {
                    path: self.path.to_path_buf(),
                    tensor: shown(key),
                    dtype: dtype.clone(),
                }
            }
            Obj::BadTensor(TensorProblem::Invalid(reason)) => CheckpointError::InvalidTensor {
                path: self.path.to_path_buf(),
                tensor: shown(key),
                reason: reason.clone(),
            },
            _ => CheckpointError::NotAStateDict {
                path: self.path.to_path_buf(),
                reason: format!("the value of '{}' is not a tensor", shown(key)),
            },
        }
    }

    /// The state dict's keys with the arena index of each tensor, and the key it was found
    /// under (see [`Unpickler::select_dict`]).
    fn state_dict_keys(&self, root: &Value) -> VmResult<(Vec<(String, usize)>, String)> {
        let not_a_state_dict = |reason: String| CheckpointError::NotAStateDict {
            path: self.path.to_path_buf(),
            reason,
        };
        let root_index = match root {
            Value::Obj(i) if matches!(self.arena.get(*i), Some(Obj::Dict(_))) => *i,
            other => {
                return Err(not_a_state_dict(format!(
                    "the file holds {}, not a dict of tensors",
                    self.type_name(other)
                )))
            }
        };
        let (dict_index, key_prefix) = self.select_dict(root_index);
        let Some(Obj::Dict(dict)) = self.arena.get(dict_index) else {
            return Err(not_a_state_dict("the selected object is not a dict".into()));
        };

        let mut keys = Vec::with_capacity(dict.entries.len());
        for (key, value) in &dict.entries {
            let name = match key {
                Value::Str(s) => s.to_string(),
                other => {
                    return Err(not_a_state_dict(format!(
                        "it has a key that is {}; state dict keys are strings",
                        self.type_name(other)
                    )))
                }
            };
            let index = match value {
                Value::Obj(i) if self.is_tensor(value) => *i,
                other => {
                    return Err(not_a_state_dict(format!(
                        "the value of '{}' is {}, not a tensor",
                        shown(&format!("{key_prefix}{name}")),
                        self.type_name(other)
                    )))
                }
            };
            keys.push((name, index));
        }
        Ok((keys, key_prefix))
    }

    /// Takes the tensors at arena indices out under their names (`key_prefix` only goes into
    /// error messages). A tensor under several names is copied for all but the first (unless
    /// `keep_ties`), within the copy budget (see [`Unpickler::charge_names`]).
    pub(super) fn hand_out(
        &mut self,
        keys: Vec<(String, usize)>,
        key_prefix: &str,
    ) -> VmResult<Vec<(String, Tensor)>> {
        self.charge_names(&keys)?;
        let mut out = Vec::with_capacity(keys.len());
        let mut handed_out = HashSet::new();
        for (name, index) in keys {
            let tensor = match &self.arena[index] {
                Obj::Tensor(t) if self.keep_ties || handed_out.insert(index) => t.shallow_clone(),
                // The same tensor object under two keys: each key gets its own copy.
                Obj::Tensor(t) => t
                    .f_detach_copy()
                    .map_err(|e| CheckpointError::torch(self.path, e))?,
                other => return Err(self.not_handed_out(other, &format!("{key_prefix}{name}"))),
            };
            out.push((name, tensor));
        }
        // The arena still holds the tensors handed out by shallow clone; dropping it here leaves
        // the returned tensors as the only owners.
        self.arena.clear();
        Ok(out)
    }

    /// The root dict if all its values are tensors, else the first [`NESTED_KEYS`] entry that is
    /// a dict (with the prefix its keys are reported under), else the root, whose first
    /// non-tensor value is then reported.
    fn select_dict(&self, root: usize) -> (usize, String) {
        let Some(Obj::Dict(dict)) = self.arena.get(root) else {
            return (root, String::new());
        };
        if dict.entries.iter().all(|(_, v)| self.is_tensor(v)) {
            return (root, String::new());
        }
        for wrapper in NESTED_KEYS {
            if let Some(Value::Obj(i)) = dict.get(wrapper) {
                if matches!(self.arena.get(*i), Some(Obj::Dict(_))) {
                    return (*i, format!("{wrapper}."));
                }
            }
        }
        (root, String::new())
    }
}

/// An `as_strided` view checked against its storage, all in `i64` with overflow checks, so that
/// neither the byte slicing nor libtorch ever sees an out-of-bounds request.
pub(super) struct StridedView {
    offset: usize,
    pub(super) numel: usize,
    contiguous: bool,
}

impl StridedView {
    pub(super) fn new(
        storage_numel: i64,
        offset: i64,
        size: &[i64],
        stride: &[i64],
    ) -> Result<StridedView, String> {
        let shape = || format!("size {size:?}, stride {stride:?}, storage offset {offset}");
        if size.len() != stride.len() {
            return Err(format!("{}: sizes and strides differ in length", shape()));
        }
        if offset < 0 || size.iter().any(|&s| s < 0) || stride.iter().any(|&s| s < 0) {
            return Err(format!("{}: negative values are not valid", shape()));
        }
        let numel = size
            .iter()
            .try_fold(1i64, |n, &s| n.checked_mul(s))
            .ok_or_else(|| format!("{}: the element count overflows", shape()))?;
        let mut contiguous = true;
        let mut expected = 1i64;
        for (&s, &st) in size.iter().zip(stride).rev() {
            if s != 1 && st != expected {
                contiguous = false;
            }
            expected = expected.saturating_mul(s);
        }
        if numel > 0 {
            let last = size
                .iter()
                .zip(stride)
                .try_fold(offset, |acc, (&s, &st)| {
                    (s - 1).checked_mul(st).and_then(|d| acc.checked_add(d))
                })
                .ok_or_else(|| format!("{}: the extent overflows", shape()))?;
            if last >= storage_numel {
                return Err(format!(
                    "{} reaches element {last}, past the end of its storage of {storage_numel} elements",
                    shape()
                ));
            }
        }
        let to_usize = |v: i64| usize::try_from(v).map_err(|_| format!("{}: too large", shape()));
        Ok(StridedView {
            offset: to_usize(offset)?,
            numel: to_usize(numel)?,
            contiguous,
        })
    }

    /// The element range of a view that is a plain slice of its storage.
    pub(super) fn contiguous_range(&self) -> Option<(usize, usize)> {
        if self.numel == 0 {
            return Some((0, 0));
        }
        self.contiguous
            .then(|| (self.offset, self.offset + self.numel))
    }
}

/// A storage's bytes as its elements, without a copy. Python's `bool` storages hold 0 or 1; any
/// other byte would make a bool tensor whose value depends on the kernel reading it, so those are
/// normalised (a copy, of what is usually a small mask).
pub(super) fn typed_storage(bytes: &Tensor, kind: Kind) -> Result<Tensor, tch::TchError> {
    match kind {
        Kind::Bool => bytes.f_ne(0),
        _ => bytes.f_view_dtype(kind),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strided_views_are_checked_against_their_storage() {
        let view = StridedView::new(6, 0, &[3, 2], &[1, 3]).expect("in bounds");
        assert_eq!(view.contiguous_range(), None);
        let view = StridedView::new(6, 2, &[2, 2], &[2, 1]).expect("in bounds");
        assert_eq!(view.contiguous_range(), Some((2, 6)));
        // Size-1 dims may have any stride; empty views any offset.
        let view = StridedView::new(6, 1, &[1, 5], &[99, 1]).expect("in bounds");
        assert_eq!(view.contiguous_range(), Some((1, 6)));
        let view = StridedView::new(0, 7, &[0, 3], &[3, 1]).expect("empty");
        assert_eq!(view.contiguous_range(), Some((0, 0)));
        // A broadcast (stride 0) view of one element.
        assert!(StridedView::new(1, 0, &[4], &[0]).is_ok());

        let err = |r: Result<StridedView, String>| r.err().expect("rejected");
        assert!(err(StridedView::new(6, 1, &[2, 3], &[3, 1])).contains("reaches element 6"));
        assert!(err(StridedView::new(6, 0, &[2], &[-1])).contains("negative"));
        assert!(err(StridedView::new(6, 0, &[2], &[1, 1])).contains("differ in length"));
        assert!(err(StridedView::new(6, 0, &[i64::MAX, 4], &[1, 1])).contains("overflows"));
        assert!(err(StridedView::new(6, 0, &[2, i64::MAX], &[i64::MAX, 1])).contains("overflows"));
    }
}
