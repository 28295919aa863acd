//! The hook registry: pruning reparametrizes VarStore tensors, and the masks are reapplied
//! before every forward pass (what PyTorch does with forward pre-hooks, which tch lacks).
//!
//! The registry's core is here: the [`Pruner`] handle and its state, planning a prune before
//! anything changes and committing it (`_orig`, `_mask`), the accessors, and the names PyTorch
//! gives the reparametrization. Beside it, one idea a file: [`pruned_tensor`] (one pruned
//! tensor: its masked values written before a forward pass, what PyTorch's hook does),
//! [`functions`] (PyTorch's `prune.<method>` functions as methods), [`permanent`] (`remove`,
//! and pruning made permanent at once) and [`placement`] (the registry following its store to
//! another device or dtype).

mod functions;
mod permanent;
mod placement;
mod pruned_tensor;

use crate::error::{PruneError, Result};
use crate::ffi::GradRedirect;
use crate::prune::container::combine_masks;
use crate::prune::custom::CustomFromMask;
use crate::prune::method::{
    all_ones, check_shape, same_device, scores_for, PruningMethod, PruningType,
};
use crate::prune::unstructured::L1Unstructured;
use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use tch::nn::{VarStore, Variables};
use tch::{Device, Kind, Tensor};

use pruned_tensor::PrunedTensor;
pub(crate) use pruned_tensor::MASK_PIECE;

/// Prunes the tensors of a [`VarStore`] the way `torch.nn.utils.prune` prunes a module's, and
/// keeps every mask applied.
///
/// Pruning `fc1.weight` leaves in the store a trainable `fc1.weight_orig` (the values before
/// masking) and a non-trainable `fc1.weight_mask` (same dtype and device as the weight), so a
/// saved store has PyTorch's state-dict keys. The tensor that the model computes with (the one
/// `nn::linear` or a TorchScript module holds) keeps its identity and holds
/// `weight_orig * weight_mask`: modules built on the store need no rewiring, even inside a
/// `Sequential` or a closure.
///
/// The masks must be reapplied before each forward pass once `_orig` may have changed (after an
/// optimizer step, or a `VarStore::load`): wrap the model with [`Pruner::wrap`] /
/// [`Pruner::wrap_t`], run the forward pass through [`Pruner::forward`], or call
/// [`Pruner::apply_masks`] yourself. In backward, `_orig` receives the gradient times the mask
/// (the gradient PyTorch gives it) and the masked tensor itself receives none, so pruned
/// positions never move under SGD/Adam, whether the optimizer was built before or after pruning.
///
/// `Pruner` is a cheap handle: clones share the same registry.
///
/// ```
/// use tch::{nn, nn::Module, nn::OptimizerConfig, Device, Kind, Tensor};
/// use tch_prune::Pruner;
///
/// let vs = nn::VarStore::new(Device::Cpu);
/// let net = nn::seq()
///     .add(nn::linear(vs.root() / "fc1", 8, 16, Default::default()))
///     .add_fn(|x| x.relu())
///     .add(nn::linear(vs.root() / "fc2", 16, 2, Default::default()));
/// let pruner = Pruner::new(&vs);
/// pruner.l1_unstructured("fc1.weight", 0.5, None)?;       // a fraction: half of the entries
/// pruner.ln_structured("fc2.weight", 1, 2.0, 0, None)?;   // a count: one output row
/// assert!(vs.variables().contains_key("fc1.weight_orig"));
/// assert!(vs.variables().contains_key("fc1.weight_mask"));
///
/// let model = pruner.wrap(net);                            // reapplies the masks on each forward
/// let mut opt = nn::Sgd::default().build(&vs, 0.1)?;
/// let (x, y) = (Tensor::randn([32, 8], (Kind::Float, Device::Cpu)), Tensor::zeros([32], (Kind::Int64, Device::Cpu)));
/// for _ in 0..3 {
///     let loss = model.forward(&x).cross_entropy_for_logits(&y);
///     opt.backward_step(&loss);
/// }
/// pruner.remove("fc1.weight")?;                            // permanent: a plain variable again
/// assert!(vs.variables().contains_key("fc1.weight"));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug)]
pub struct Pruner {
    state: Arc<Mutex<State>>,
}

#[derive(Debug)]
pub(crate) struct State {
    variables: Arc<Mutex<Variables>>,
    tensors: Vec<PrunedTensor>,
    /// Store masks as booleans (a quarter of f32's memory) instead of the weight's dtype.
    pub(crate) bool_masks: bool,
    /// See [`State::trainable_of`].
    trainable_index: RefCell<TrainableIndex>,
}

/// The index of the first trainable variable of each identity (memory, shape and strides, what
/// [`same_tensor`] compares), as the store was when it was built.
#[derive(Debug, Default)]
struct TrainableIndex {
    first: HashMap<(usize, Vec<i64>, Vec<i64>), usize>,
}

impl TrainableIndex {
    fn key(t: &Tensor) -> (usize, Vec<i64>, Vec<i64>) {
        (t.data_ptr() as usize, t.size(), t.stride())
    }
}

/// What a successful prune will change, computed before anything is changed.
pub(crate) struct Plan {
    name: String,
    mask: Tensor,
    method: String,
    first: Option<FirstPrune>,
}

/// What pruning a tensor for the first time needs beyond its mask.
struct FirstPrune {
    target: Tensor,
    group: usize,
    trainable: bool,
}

impl Pruner {
    /// A registry for the tensors of `vs`. It shares the store's variables, so the `VarStore`
    /// can keep being used (saved, loaded, handed to optimizers) as usual.
    pub fn new(vs: &VarStore) -> Self {
        Self::with_state(vs, false)
    }

    /// Like [`Pruner::new`], but masks are stored as `Kind::Bool`: a quarter of the memory of
    /// f32 masks (an eighth of f64's), same pruned values. They hold only 0 and 1, so a custom
    /// mask with other values is refused (unless the pruning is made permanent at once, see
    /// [`Pruner::prune_and_remove`]). Files written by this crate for PyTorch (the CLI's
    /// `--state-out`, [`ModelFile::reparametrized_state`](crate::model::ModelFile::reparametrized_state))
    /// hold them as float masks of the weight's dtype, as PyTorch has them.
    pub fn with_bool_masks(vs: &VarStore) -> Self {
        Self::with_state(vs, true)
    }

    fn with_state(vs: &VarStore, bool_masks: bool) -> Self {
        Self {
            state: Arc::new(Mutex::new(State {
                variables: vs.variables_.clone(),
                tensors: Vec::new(),
                bool_masks,
                trainable_index: RefCell::default(),
            })),
        }
    }

    /// Prunes the variable `name` (e.g. `"fc1.weight"`) with any method, your own included.
    ///
    /// `importance_scores` (same shape as the tensor, on any device: they are moved to the
    /// tensor's) replace its values when the method ranks entries; they default to the
    /// tensor's current masked values. Pruning a tensor again
    /// composes with its mask like PyTorch's `PruningContainer` (see [`combine_masks`]).
    ///
    /// On error nothing has changed: not the store, not the registry.
    pub fn prune(
        &self,
        name: &str,
        method: &dyn PruningMethod,
        importance_scores: Option<&Tensor>,
    ) -> Result<()> {
        let mut state = self.state()?;
        let plan = state.plan(name, method, importance_scores, false)?;
        state.commit(plan)
    }

    /// Whether `name` is currently pruned (has `_orig` and `_mask`).
    pub fn is_pruned(&self, name: &str) -> bool {
        self.lock().index_of(name).is_some()
    }

    /// The pruned tensors' names, in the order they were first pruned.
    pub fn pruned_names(&self) -> Vec<String> {
        self.lock().tensors.iter().map(|t| t.name.clone()).collect()
    }

    /// The mask of `name` (the `_mask` buffer itself, not a copy).
    pub fn mask(&self, name: &str) -> Option<Tensor> {
        self.with_entry(name, |t| t.mask.shallow_clone())
    }

    /// The unmasked values of `name` (the trainable `_orig` variable itself).
    pub fn orig(&self, name: &str) -> Option<Tensor> {
        self.with_entry(name, |t| t.orig.shallow_clone())
    }

    /// The tensor that modules compute with for `name`: `orig * mask` as of the last time the
    /// masks were applied (PyTorch's `module.<name>` attribute of a pruned module).
    pub fn tensor(&self, name: &str) -> Option<Tensor> {
        self.with_entry(name, |t| t.target.shallow_clone())
    }

    /// The methods applied to `name`, oldest first.
    pub fn history(&self, name: &str) -> Vec<String> {
        self.with_entry(name, |t| t.history.clone())
            .unwrap_or_default()
    }

    /// Writes `orig * mask` into every pruned tensor that modules compute with, where `_orig` or
    /// `_mask` changed since the last write (after an optimizer step, a load, an in-place edit):
    /// call it before a forward pass, or let [`Pruner::forward`] and the wrappers do it. When
    /// nothing changed (evaluation, inference) it costs a few version checks.
    pub fn apply_masks(&self) -> Result<()> {
        self.state()?
            .tensors
            .iter_mut()
            .try_for_each(PrunedTensor::refresh)
    }

    /// Runs `forward` with every mask applied: [`apply_masks`](Self::apply_masks), then the
    /// closure.
    pub fn forward<T>(&self, forward: impl FnOnce() -> T) -> Result<T> {
        self.apply_masks()?;
        Ok(forward())
    }

    /// Shallow copies of all the store's variables.
    pub(crate) fn variables(&self) -> std::collections::HashMap<String, Tensor> {
        let state = self.lock();
        let vars = state.variables.lock().expect("VarStore lock poisoned");
        vars.named_variables
            .iter()
            .map(|(n, t)| (n.clone(), t.shallow_clone()))
            .collect()
    }

    /// The current (masked) values of `name` and its mask if pruned.
    pub(crate) fn current(&self, name: &str) -> Result<(Tensor, Option<Tensor>)> {
        self.state()?.current(name)
    }

    /// Gives `name` exactly `mask` (its dtype included), as a loaded `_mask` buffer replaces
    /// PyTorch's: a tensor not pruned yet is pruned first (a [`CustomFromMask`] step, with its
    /// checks). The masked values are written once.
    pub(crate) fn set_exact_mask(&self, name: &str, mask: &Tensor) -> Result<()> {
        let mut state = self.state()?;
        let Some(i) = state.index_of(name) else {
            let mut plan = state.plan(name, &CustomFromMask::new(mask), None, false)?;
            plan.mask = mask.f_to_device(plan.mask.device())?;
            return state.commit(plan);
        };
        let entry = &mut state.tensors[i];
        check_shape("mask", name, &entry.mask, mask)?;
        entry.set_mask(&mask.f_to_device(entry.mask.device())?)?;
        entry.write_target()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().expect("pruner lock poisoned")
    }

    /// The registry, every pruned tensor placed where its `_orig` is now (see
    /// [`State::follow_store`]): what every call that computes or writes goes through.
    fn state(&self) -> Result<MutexGuard<'_, State>> {
        let mut state = self.lock();
        state.follow_store()?;
        Ok(state)
    }

    /// For the accessors, which cannot fail: the registry placed as [`Pruner::state`] places
    /// it, or as it was if libtorch cannot allocate the moved tensor (the next call that can
    /// fail reports that).
    fn with_entry<T>(&self, name: &str, f: impl FnOnce(&PrunedTensor) -> T) -> Option<T> {
        let mut state = self.lock();
        let _ = state.follow_store();
        state.index_of(name).map(|i| f(&state.tensors[i]))
    }

    /// Prunes several tensors atomically: every plan is made before any is committed. With
    /// `permanent`, each pruning is made permanent at once (see [`Pruner::prune_and_remove`]).
    pub(crate) fn prune_all(
        &self,
        permanent: bool,
        plans: impl FnOnce(&State) -> Result<Vec<Plan>>,
    ) -> Result<()> {
        let mut state = self.state()?;
        let plans = plans(&state)?;
        plans.into_iter().try_for_each(|plan| {
            if permanent {
                state.commit_permanent(plan)
            } else {
                state.commit(plan)
            }
        })
    }
}

impl State {
    fn index_of(&self, name: &str) -> Option<usize> {
        self.tensors.iter().position(|t| t.name == name)
    }

    /// The values `name` has now (masked, and fresh even if `_orig` changed since the last
    /// forward pass), and its mask if it is pruned.
    pub(crate) fn current(&self, name: &str) -> Result<(Tensor, Option<Tensor>)> {
        if let Some(i) = self.index_of(name) {
            let t = &self.tensors[i];
            // The tensor modules use holds exactly these values when it is up to date.
            let values = if t.is_written() {
                t.target.detach()
            } else {
                tch::no_grad(|| t.masked_orig())?
            };
            return Ok((values, Some(t.mask.shallow_clone())));
        }
        let vars = self.variables.lock().expect("VarStore lock poisoned");
        let tensor = vars
            .named_variables
            .get(name)
            .ok_or_else(|| PruneError::UnknownTensor(name.to_string()))?;
        Ok((tensor.detach(), None))
    }

    /// Works out the new mask of `name`, changing nothing. `permanent`: the pruning is to be made
    /// permanent at once, so a first prune's mask is never stored (see [`State::commit_permanent`]).
    pub(crate) fn plan(
        &self,
        name: &str,
        method: &dyn PruningMethod,
        importance_scores: Option<&Tensor>,
        permanent: bool,
    ) -> Result<Plan> {
        let (values, mask) = self.current(name)?;
        let first = match mask {
            Some(_) => None,
            None => Some(self.first_prune(name)?),
        };
        let scores = scores_for(name, &values, importance_scores)?;
        let mask = tch::no_grad(|| match (mask, method.smallest_magnitudes()) {
            (Some(mask), _) => combine_masks(method, &scores, &mask),
            // A mask that ends up boolean (or nowhere) is selected as one: a quarter of the
            // memory written, the same entries.
            (None, Some(amount))
                if (permanent || self.bool_masks)
                    && method.pruning_type() == PruningType::Unstructured =>
            {
                L1Unstructured::new(amount)?.compute_mask(&scores, &all_ones(&values, Kind::Bool)?)
            }
            (None, _) => method.compute_mask(&scores, &all_ones(&values, values.kind())?),
        })
        .map_err(|e| e.for_tensor(name))?;
        check_shape("mask returned by the method", name, &values, &mask)?;
        // A method that returns its mask on another device (the scores were moved to the
        // tensor's) would fail only once the tensor is half reparametrized.
        same_device(&[(name, values.device()), ("its new mask", mask.device())])?;
        self.finish_plan(name, mask, format!("{method:?}"), first, permanent)
    }

    /// A plan for a first prune whose mask is already known (global pruning selects in place:
    /// on an unpruned tensor its combined mask is the final one, PyTorch's `ones * mask`).
    pub(crate) fn plan_first(
        &self,
        name: &str,
        mask: Tensor,
        method: String,
        permanent: bool,
    ) -> Result<Plan> {
        let first = Some(self.first_prune(name)?);
        self.finish_plan(name, mask, method, first, permanent)
    }

    /// Puts the mask in the form the registry stores: boolean if so asked, and a tensor of its
    /// own (structured methods return a broadcast view of one value per channel, which
    /// `VarStore::load` could not copy into). A first prune made permanent stores nothing, so
    /// its mask is applied as it is (a custom mask's values other than 0 and 1 included).
    fn finish_plan(
        &self,
        name: &str,
        mask: Tensor,
        method: String,
        first: Option<FirstPrune>,
        permanent: bool,
    ) -> Result<Plan> {
        let mask = match (permanent && first.is_some(), self.bool_masks) {
            (true, _) => mask,
            (false, true) => to_bool_mask(name, &mask)?.f_contiguous()?,
            (false, false) => mask.f_contiguous()?,
        };
        Ok(Plan {
            name: name.to_string(),
            mask,
            method,
            first,
        })
    }

    /// Checks that `name` can be pruned for the first time.
    fn first_prune(&self, name: &str) -> Result<FirstPrune> {
        let vars = self.variables.lock().expect("VarStore lock poisoned");
        for taken in [orig_name(name), mask_name(name)] {
            if vars.named_variables.contains_key(&taken) {
                return Err(PruneError::NameTaken {
                    name: name.to_string(),
                    taken,
                });
            }
        }
        let target = &vars.named_variables[name];
        let var = self
            .trainable_of(&vars, target)
            .map(|i| &vars.trainable_variables[i])
            .filter(|_| target.is_floating_point())
            .ok_or_else(|| PruneError::NotAParameter(name.to_string()))?;
        Ok(FirstPrune {
            target: target.shallow_clone(),
            group: var.group,
            trainable: target.requires_grad(),
        })
    }

    /// The index of the trainable variable of the store that is `target` (the first one, in the
    /// store's order), through [`TrainableIndex`]: one lookup, where a scan of the store per tensor
    /// made pruning n tensors cost n² libtorch calls (minutes for 20,000 tensors).
    fn trainable_of(&self, vars: &Variables, target: &Tensor) -> Option<usize> {
        let vars = &vars.trainable_variables;
        let key = TrainableIndex::key(target);
        let mut index = self.trainable_index.borrow_mut();
        // A hit is checked against the store, which may have changed since the index was
        // built (variables added, or given new memory): a stale or missing entry rebuilds it.
        let hit = |index: &TrainableIndex| {
            index
                .first
                .get(&key)
                .copied()
                .filter(|&i| vars.get(i).is_some_and(|v| same_tensor(&v.tensor, target)))
        };
        if let Some(i) = hit(&index) {
            return Some(i);
        }
        index.first.clear();
        for (i, v) in vars.iter().enumerate() {
            index
                .first
                .entry(TrainableIndex::key(&v.tensor))
                .or_insert(i);
        }
        hit(&index)
    }

    /// Applies a plan. Nothing in here depends on user input, so it does not fail in practice
    /// (only on an allocation failure of libtorch).
    fn commit(&mut self, plan: Plan) -> Result<()> {
        let Plan {
            name,
            mask,
            method,
            first,
        } = plan;
        match first {
            None => {
                let i = self.index_of(&name).expect("planned as a re-prune");
                let entry = &mut self.tensors[i];
                entry.set_mask(&mask)?;
                entry.history.push(method);
                entry.write_target()
            }
            Some(FirstPrune {
                target,
                group,
                trainable,
            }) => {
                let orig = take_storage(&target)?;
                // tch does not export the type of the store's trainable-variable entries, so
                // one is made by a scratch store (with the right group) and moved over.
                let scratch = VarStore::new(Device::Cpu);
                let _ = scratch
                    .root()
                    .set_group(group)
                    .add("v", orig.shallow_clone(), true);
                let orig_var = scratch
                    .variables_
                    .lock()
                    .expect("fresh lock")
                    .trainable_variables
                    .pop()
                    .expect("just added");
                let _ = orig.set_requires_grad(trainable);
                {
                    let mut vars = self.variables.lock().expect("VarStore lock poisoned");
                    vars.named_variables.remove(&name);
                    vars.named_variables
                        .insert(orig_name(&name), orig.shallow_clone());
                    vars.named_variables
                        .insert(mask_name(&name), mask.shallow_clone());
                    vars.trainable_variables.push(orig_var);
                }
                // The old variable stays a leaf where modules and optimizers hold it; from now
                // on it carries `orig * mask` and passes its gradient on to `orig`.
                let redirect = GradRedirect::new(&target, &orig, &mask)?;
                let mut entry = PrunedTensor {
                    name,
                    target,
                    bool_mask: mask.kind() == Kind::Bool,
                    orig,
                    mask,
                    history: vec![method],
                    written_at: None,
                    redirect,
                };
                entry.write_target()?;
                self.tensors.push(entry);
                Ok(())
            }
        }
    }
}

/// A new tensor that takes over `target`'s values without copying them: it gets `target`'s
/// storage, and `target` (the tensor modules hold, which keeps its identity) a fresh one, filled
/// with the masked values right after. Saves reading and writing the whole tensor once.
fn take_storage(target: &Tensor) -> Result<Tensor> {
    let mut orig = Tensor::f_empty([0], (target.kind(), target.device()))?;
    orig.f_set_data(&target.detach())?;
    let mut target = target.shallow_clone();
    target.f_set_data(&Tensor::f_empty_like(&target)?)?;
    Ok(orig)
}

/// A mask as booleans, refusing values other than 0 and 1 (which a boolean cannot scale by).
fn to_bool_mask(name: &str, mask: &Tensor) -> Result<Tensor> {
    if mask.kind() == Kind::Bool {
        return Ok(mask.shallow_clone());
    }
    let binary = mask
        .f_eq(0)?
        .f_logical_or(&mask.f_eq(1)?)?
        .f_all()?
        .f_int64_value(&[])?
        == 1;
    if !binary {
        return Err(PruneError::NotBinary(name.to_string()));
    }
    Ok(mask.f_ne(0)?)
}

/// The name of the trainable unmasked values, as in PyTorch's state dicts.
pub fn orig_name(name: &str) -> String {
    format!("{name}_orig")
}

/// The name of the mask buffer, as in PyTorch's state dicts.
pub fn mask_name(name: &str) -> String {
    format!("{name}_mask")
}

/// Two handles on the same variable (tch has no identity test for tensors).
fn same_tensor(a: &Tensor, b: &Tensor) -> bool {
    a.data_ptr() == b.data_ptr() && a.size() == b.size() && a.stride() == b.stride()
}
