//! The hook registry: pruning reparametrizes VarStore tensors, and the masks are reapplied
//! before every forward pass (what PyTorch does with forward pre-hooks, which tch lacks).

use crate::error::{PruneError, Result};
use crate::prune::amount::Amount;
use crate::prune::container::combine_masks;
use crate::prune::custom::CustomFromMask;
use crate::prune::grad_redirect::GradRedirect;
use crate::prune::method::{
    all_ones, check_shape, same_device, scores_for, PruningMethod, PruningType,
};
use crate::prune::structured::{LnStructured, Norm, RandomStructured};
use crate::prune::unstructured::{Identity, L1Unstructured, RandomUnstructured};
use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use tch::nn::{VarStore, Variables};
use tch::{Device, Kind, Tensor};

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

/// One pruned tensor: the registry's equivalent of a PyTorch pruning hook.
#[derive(Debug)]
struct PrunedTensor {
    name: String,
    /// The tensor modules compute with; its identity never changes.
    target: Tensor,
    orig: Tensor,
    mask: Tensor,
    /// The methods applied so far, oldest first (what PyTorch's `PruningContainer` lists).
    history: Vec<String>,
    /// What `target` was last written from (see [`PrunedTensor::stamp`]): while it is
    /// unchanged, reapplying the mask would write the same values.
    written_at: Option<Stamp>,
    /// Routes the gradient of `target` to `orig`, times the mask.
    redirect: GradRedirect,
    /// Whether the mask is kept as booleans: `VarStore::set_kind` casts every variable, the
    /// mask included, and a boolean mask is put back as one (see [`PrunedTensor::follow_orig`]).
    bool_mask: bool,
}

/// See [`PrunedTensor::stamp`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    versions: (i64, i64, i64),
    deliveries: u64,
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
    /// `--state-out`, [`ModelFile::reparametrized_state`](crate::ModelFile::reparametrized_state))
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

    /// Prunes `name` and makes it permanent at once: [`Pruner::prune`] then [`Pruner::remove`]
    /// (PyTorch's `prune.<method>(...)` then `prune.remove(...)`), for one-shot pruning before
    /// export. The result is the same, bit for bit; but a tensor not pruned before is simply
    /// multiplied by its mask in place: no `_orig` copy, no stored mask, and for structured
    /// methods (scores of the tensor's dtype) no mask of the tensor's size at all. A tensor
    /// already pruned is pruned again as usual (amounts relative to what is still unpruned),
    /// then made permanent.
    ///
    /// Being in place, it differs from `prune` then `remove` in three ways: tensors that share
    /// the variable's memory (views of it) see the pruned values too; a variable whose entries
    /// overlap in memory (an expanded tensor) is refused; and no frozen `_orig` is left in the
    /// store's trainable list. With [`Pruner::with_bool_masks`], a custom mask's values other
    /// than 0 and 1 scale the weights as in PyTorch, since no boolean mask is stored.
    ///
    /// On error nothing has changed.
    ///
    /// ```
    /// use tch::{nn, Device, Tensor};
    /// use tch_prune::{LnStructured, Pruner};
    /// let vs = nn::VarStore::new(Device::Cpu);
    /// vs.root().var_copy("w", &Tensor::from_slice(&[1f32, 1., 5., 5., -2., 2.]).view([3, 2]));
    /// let pruner = Pruner::new(&vs);
    /// pruner.prune_and_remove("w", &LnStructured::new(1, 2.0, 0)?, None)?; // the row of smallest 2-norm
    /// let w = vs.root().get("w").unwrap();
    /// assert_eq!(Vec::<f32>::try_from(&w.view([-1]))?, [0., 0., 5., 5., -2., 2.]);
    /// assert!(!pruner.is_pruned("w") && vs.root().get("w_orig").is_none());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn prune_and_remove(
        &self,
        name: &str,
        method: &dyn PruningMethod,
        importance_scores: Option<&Tensor>,
    ) -> Result<()> {
        let mut state = self.state()?;
        let plan = state.plan(name, method, importance_scores, true)?;
        state.commit_permanent(plan)
    }

    /// Reparametrizes `name` with an all-ones mask (`prune.identity`).
    pub fn identity(&self, name: &str) -> Result<()> {
        self.prune(name, &Identity, None)
    }

    /// Prunes `amount` random entries (`prune.random_unstructured`).
    pub fn random_unstructured(&self, name: &str, amount: impl Into<Amount>) -> Result<()> {
        self.prune(name, &RandomUnstructured::new(amount)?, None)
    }

    /// Prunes the `amount` entries of smallest magnitude (`prune.l1_unstructured`).
    pub fn l1_unstructured(
        &self,
        name: &str,
        amount: impl Into<Amount>,
        importance_scores: Option<&Tensor>,
    ) -> Result<()> {
        self.prune(name, &L1Unstructured::new(amount)?, importance_scores)
    }

    /// Prunes `amount` random channels along `dim` (`prune.random_structured`).
    pub fn random_structured(&self, name: &str, amount: impl Into<Amount>, dim: i64) -> Result<()> {
        self.prune(name, &RandomStructured::new(amount, dim)?, None)
    }

    /// Prunes the `amount` channels along `dim` of smallest `n`-norm (`prune.ln_structured`).
    pub fn ln_structured(
        &self,
        name: &str,
        amount: impl Into<Amount>,
        n: impl Into<Norm>,
        dim: i64,
        importance_scores: Option<&Tensor>,
    ) -> Result<()> {
        self.prune(name, &LnStructured::new(amount, n, dim)?, importance_scores)
    }

    /// Prunes where `mask` is 0 (`prune.custom_from_mask`).
    pub fn custom_from_mask(&self, name: &str, mask: &Tensor) -> Result<()> {
        self.prune(name, &CustomFromMask::new(mask), None)
    }

    /// Makes the pruning of `name` permanent (`prune.remove`): the variable `name` is back in the
    /// store, trainable, holding the masked values; `_orig` and `_mask` are gone.
    ///
    /// The `_orig` tensor stays in the store's list of trainable tensors (optimizers count on
    /// that list's order) but is frozen and its storage released.
    pub fn remove(&self, name: &str) -> Result<()> {
        self.state()?.remove(name)
    }

    /// Makes every pruning permanent, in the order the tensors were first pruned.
    pub fn remove_all(&self) -> Result<()> {
        for name in self.pruned_names() {
            self.remove(&name)?;
        }
        Ok(())
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

    /// Moves the store to `device` (`VarStore::set_device`) and every pruned tensor with it:
    /// `_orig`, the mask, the tensor modules compute with and the gradient route end up on
    /// `device`, and the memory they had before is released now. Calling `vs.set_device`
    /// directly works too (the pruner notices at its next use, e.g. the next forward pass
    /// through [`Pruner::wrap`]), but holds the old copy of each pruned tensor until then.
    ///
    /// As with any tch store, build the optimizer after moving: tch does not move optimizer
    /// state. Fails if `vs` is not the store this pruner was made for.
    ///
    /// ```
    /// use tch::{nn, Device, Kind};
    /// use tch_prune::Pruner;
    /// let mut vs = nn::VarStore::new(Device::Cpu);
    /// let fc = nn::linear(vs.root() / "fc", 4, 3, Default::default());
    /// let pruner = Pruner::new(&vs);
    /// pruner.l1_unstructured("fc.weight", 0.5, None)?;
    /// pruner.set_device(&mut vs, Device::cuda_if_available())?; // prune on CPU, train on the GPU
    /// pruner.set_kind(&mut vs, Kind::Double)?;
    /// assert_eq!(fc.ws.kind(), Kind::Double);
    /// assert_eq!(fc.ws.device(), vs.device());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn set_device(&self, vs: &mut VarStore, device: Device) -> Result<()> {
        self.check_store(vs)?;
        vs.set_device(device);
        self.state().map(drop)
    }

    /// Casts the store to `kind` (`VarStore::set_kind`, which casts every variable, as tch
    /// does) and every pruned tensor with it, as [`Pruner::set_device`] moves them. Boolean
    /// masks stay boolean; float masks take `kind`, as PyTorch's `model.to(dtype)` casts its
    /// mask buffers. `vs.set_kind`, `vs.half()`, `vs.float()`, `vs.bfloat16()` and
    /// `vs.double()` called directly are followed at the pruner's next use.
    pub fn set_kind(&self, vs: &mut VarStore, kind: Kind) -> Result<()> {
        self.check_store(vs)?;
        vs.set_kind(kind);
        self.state().map(drop)
    }

    fn check_store(&self, vs: &VarStore) -> Result<()> {
        if !Arc::ptr_eq(&self.lock().variables, &vs.variables_) {
            return Err(PruneError::InvalidArgument(
                "this VarStore is not the one the pruner was made for: move the pruner's own store"
                    .into(),
            ));
        }
        Ok(())
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

    /// Every pruned tensor placed where its `_orig` is now, after the store was moved to
    /// another device or dtype (see [`PrunedTensor::follow_orig`]); written masked at once, so
    /// that a module's forward pass outside the pruner's wrappers sees the right values too.
    /// A few device and dtype checks when nothing moved.
    pub(crate) fn follow_store(&mut self) -> Result<()> {
        for entry in &mut self.tensors {
            if entry.follow_orig()? {
                entry.refresh()?;
            }
        }
        Ok(())
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

    /// Applies a plan and makes it permanent: `commit` then `remove`. A tensor pruned for the
    /// first time is simply multiplied by its mask in place; it never gets `_orig` or `_mask`.
    pub(crate) fn commit_permanent(&mut self, plan: Plan) -> Result<()> {
        match &plan.first {
            Some(first) => tch::no_grad(|| write_masked(&first.target, &first.target, &plan.mask)),
            // `remove` writes the masked values, once.
            None => {
                let i = self.index_of(&plan.name).expect("planned as a re-prune");
                self.tensors[i].set_mask(&plan.mask)?;
                self.remove(&plan.name)
            }
        }
    }

    /// `prune.remove`: see [`Pruner::remove`].
    fn remove(&mut self, name: &str) -> Result<()> {
        let index = self
            .index_of(name)
            .ok_or_else(|| PruneError::NotPruned(name.to_string()))?;
        self.tensors[index].write_target()?;
        // Dropping the entry removes the gradient route: `target` is a plain parameter again.
        let PrunedTensor {
            target, mut orig, ..
        } = self.tensors.remove(index);
        {
            let mut vars = self.variables.lock().expect("VarStore lock poisoned");
            vars.named_variables.remove(&orig_name(name));
            vars.named_variables.remove(&mask_name(name));
            vars.named_variables.insert(name.to_string(), target);
        }
        let _ = orig.set_requires_grad(false);
        orig.f_set_data(&Tensor::f_empty([0], (orig.kind(), orig.device()))?)?;
        Ok(())
    }
}

impl PrunedTensor {
    /// `mask * orig` as PyTorch's `apply_mask` computes it, in a new tensor.
    fn masked_orig(&self) -> Result<Tensor> {
        let out = Tensor::f_empty_like(&self.orig)?;
        write_masked(&out, &self.orig, &self.mask)?;
        Ok(out)
    }

    /// Replaces the mask's values (the buffer keeps its identity); `target` is stale until the
    /// next [`write_target`](Self::write_target).
    fn set_mask(&mut self, mask: &Tensor) -> Result<()> {
        self.mask.f_set_data(mask)?;
        self.bool_mask = mask.kind() == Kind::Bool;
        self.written_at = None;
        Ok(())
    }

    /// Puts `target` where `_orig` is now. `VarStore::set_device`, `set_kind`, `half`, `float`,
    /// `bfloat16` and `double` convert the store's variables in place (`set_data`): `_orig` and
    /// `_mask` are among them, but `target`, which pruning took out of the store, is not. So
    /// `target` gets fresh memory of `_orig`'s device and dtype (the old memory is released),
    /// to be written from `_orig` and the mask at once; the mask follows `_orig`'s device if it
    /// was left behind, and a boolean mask that `set_kind` cast is a boolean again. The
    /// gradient hook holds `_orig` and the mask themselves, so it sees them moved; libtorch
    /// gives `target` a new gradient accumulator, which [`PrunedTensor::refresh`] hooks.
    /// Returns whether anything moved.
    fn follow_orig(&mut self) -> Result<bool> {
        let (device, kind) = (self.orig.device(), self.orig.kind());
        let mut moved = false;
        if self.mask.device() != device {
            self.mask.f_set_data(&self.mask.f_to_device(device)?)?;
            moved = true;
        }
        if self.bool_mask && self.mask.kind() != Kind::Bool {
            self.mask.f_set_data(&self.mask.f_ne(0)?)?;
            moved = true;
        }
        if self.target.device() != device || self.target.kind() != kind {
            // `_orig` was `target`'s memory (same strides), so this is `target`'s layout.
            self.target.f_set_data(&Tensor::f_empty_like(&self.orig)?)?;
            moved = true;
        }
        // Moved and back (`half()` then `float()`): same place, values rounded on the way.
        moved |= self.written_at.is_some() && self.redirect.moved();
        if moved {
            self.written_at = None;
        }
        Ok(moved)
    }

    /// Whether `target` holds `orig * mask` as they are now.
    fn is_written(&self) -> bool {
        self.written_at.is_some() && self.written_at == self.stamp() && !self.redirect.moved()
    }

    /// What `target`'s values depend on. In-place edits bump version counters, but optimizers
    /// update `orig` through `.data()`, which does not: they only update it when it has a
    /// gradient, so a gradient delivered since the last write, or one still pending, counts as
    /// a change too.
    fn stamp(&self) -> Option<Stamp> {
        if self.orig.grad().defined() {
            return None;
        }
        Some(Stamp {
            versions: (
                self.orig.internal_version(),
                self.mask.internal_version(),
                self.target.internal_version(),
            ),
            deliveries: self.redirect.deliveries(),
        })
    }

    /// Writes the masked values into `target`, unless they are there already.
    fn write_target(&mut self) -> Result<()> {
        if self.is_written() {
            return Ok(());
        }
        tch::no_grad(|| write_masked(&self.target, &self.orig, &self.mask))?;
        self.written_at = self.stamp();
        self.redirect.mark_placed();
        Ok(())
    }

    /// Before a forward pass: the masked values in place, and the gradient route on the
    /// tensor's current accumulator.
    fn refresh(&mut self) -> Result<()> {
        if self.target.requires_grad() {
            self.redirect.refresh()?;
        }
        self.write_target()
    }
}

/// Entries per piece of a masked multiply by a boolean mask. The streaming path multiplies the
/// same pieces where it needs libtorch's products (NaN, infinities), so that both paths make
/// each product in the same call of the same kernel (vectorized or not alike).
pub(crate) const MASK_PIECE: usize = 1 << 18;

/// `orig * mask` straight into `out` (which may be `orig` itself). A float mask of another dtype
/// is cast first, as PyTorch's `mask.to(orig.dtype) * orig` does; a boolean one multiplies
/// exactly.
fn write_masked(out: &Tensor, orig: &Tensor, mask: &Tensor) -> Result<()> {
    // Same shapes (checked when planned): contiguous means one flat run of entries each.
    let flat = [out, orig, mask].iter().all(|t| t.is_contiguous());
    if mask.kind() == Kind::Bool && orig.device() == Device::Cpu && flat {
        // libtorch multiplies a float by a bool without vectorizing (8x slower than two floats
        // on this project's machine): cast the mask a cache-sized piece at a time instead.
        const PIECE: i64 = MASK_PIECE as i64;
        let (out, orig, mask) = (out.f_view([-1])?, orig.f_view([-1])?, mask.f_view([-1])?);
        let n = orig.numel() as i64;
        for start in (0..n).step_by(PIECE as usize) {
            let len = PIECE.min(n - start);
            let piece = mask.f_narrow(0, start, len)?.f_to_kind(orig.kind())?;
            let _ = orig
                .f_narrow(0, start, len)?
                .f_mul_out(&out.f_narrow(0, start, len)?, &piece)?;
        }
        return Ok(());
    }
    let mask = match mask.kind() {
        k if k == orig.kind() || k == Kind::Bool => mask.shallow_clone(),
        _ => mask.f_to_kind(orig.kind())?,
    };
    let _ = orig.f_mul_out(out, &mask)?;
    Ok(())
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
        return Err(PruneError::InvalidArgument(format!(
            "the new mask of '{name}' has values other than 0 and 1, which boolean masks cannot hold"
        )));
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
