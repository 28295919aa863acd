//! Removing channels from TorchScript models: pruned models that are actually smaller and
//! faster, without the model's Python class.
//!
//! [`ScriptModel::channel_groups`] finds, on the inlined graph of `forward` (src/ffi/
//! shrink_graph.cpp reads it; `groups` couples it), which slices of which parameters and buffers
//! must lose the same channels; [`ScriptModel::shrink`] ranks the channels of each group
//! (`select`), removes the least important from every coupled tensor and sets the layers'
//! channel counts (`rewrite`). The module's code is untouched except for the `groups` constant
//! of depthwise convolutions, which TorchScript bakes into it. [`ScriptModel::zero_channels`]
//! builds the reference the result must equal: the original with the removed channels zeroed
//! in every coupled parameter.
//!
//! `torch.export` archives (`.pt2`) go through the same analysis, selection and slicing from a
//! second front end (`export`: the exported graph written as the same graph description), with
//! their program rewritten for the new widths ([`ExportedModel`]).

pub(in crate::model) mod checks;
mod export;
mod graph;
mod groups;
mod report;
mod rewrite;
mod round_trip;
mod select;

pub use checks::TensorSnapshot;
pub use export::ExportedModel;
pub use groups::{ChannelGroup, Slice};
pub use report::{ChannelAnalysis, GroupChange, Removed, ShrinkReport};
pub use select::ShrinkOptions;

use super::script_model::ScriptModel;
use crate::error::{PruneError, Result};
use crate::ffi;
use tch::{CModule, Kind, Tensor};

fn parameter_count(module: &CModule) -> Result<i64> {
    Ok(module
        .named_parameters()?
        .iter()
        .map(|(_, t)| t.numel() as i64)
        .sum())
}

impl ScriptModel {
    /// Runs `forward` once on `input` and couples its channels. The run is checked: `forward`
    /// must take one tensor, a failure is reported by libtorch's reason with the input's shape,
    /// and the run must leave the module's parameters (and the buffers named in `buffers`) as
    /// they were. Groups that slice a tensor reachable under two names are blocked; the notes
    /// say which.
    fn analyse<'a>(
        &self,
        input: &Tensor,
        buffers: impl Iterator<Item = &'a str>,
    ) -> Result<(graph::Graph, groups::Analysis, Vec<String>)> {
        checks::check_one_input(self.module())?;
        let before = checks::TensorSnapshot::take(self.module(), buffers)?;
        let text = ffi::describe(self.module(), input).map_err(|e| {
            // The describe call keeps only the first line of libtorch's message, the
            // interpreter's "The following operation failed": the reason is at its end, which
            // a plain call of forward (on this error path only) returns whole.
            let reason = match tch::no_grad(|| {
                self.module()
                    .forward_is(&[tch::IValue::Tensor(input.shallow_clone())])
            }) {
                Err(full) => crate::checkpoint::torchscript_whole(&full.to_string()),
                Ok(_) => e.to_string(),
            };
            PruneError::Shrink(format!(
                "the model's forward failed on the example input of shape {:?} (--input-shape): {reason}",
                input.size()
            ))
        })?;
        before.check(self.module())?;
        let g = graph::Graph::parse(&text)?;
        let mut a = groups::analyse(&g);
        let notes = checks::block_aliases(self.module(), g.tensors.keys().cloned(), &mut a)?;
        Ok((g, a, notes))
    }

    /// Copies of the model's parameters and of the tensors `buffers` names (a shrink's
    /// [`ShrinkReport::buffers`]: those its `forward` reads), to check with
    /// [`check_unchanged`](Self::check_unchanged) that later runs of its code (timing, a
    /// comparison) left them as they were before the model is saved.
    pub fn snapshot(&self, buffers: &[String]) -> Result<TensorSnapshot> {
        TensorSnapshot::take(self.module(), buffers.iter().map(String::as_str))
    }

    /// Fails, naming the first tensor, if the model's tensors are not those of `snapshot`.
    pub fn check_unchanged(&self, snapshot: &TensorSnapshot) -> Result<()> {
        snapshot.check(self.module())
    }

    /// The coupled channel groups of the model, found on its `forward` run once on `input`
    /// (an example of the inputs it will see: the analysis needs the shapes).
    pub fn channel_groups(&self, input: &Tensor) -> Result<ChannelAnalysis> {
        let (g, a, _) = self.analyse(input, std::iter::empty())?;
        Ok(ChannelAnalysis {
            groups: a.groups,
            macs: g.macs(),
        })
    }

    /// Removes channels: per group (or globally) the least important ones, from every coupled
    /// parameter and buffer, so that the saved model is smaller and faster. `input` is an
    /// example input (its shape matters, not its values). Make pruning permanent first
    /// ([`Pruner::remove_all`](crate::Pruner::remove_all)): the masks of a pruned tensor are
    /// not shrunk with it.
    ///
    /// This runs the model's code: `forward` on `input`, before and after the rewrite, with no
    /// time or memory limit of its own (`tch-prune shrink` puts each run under
    /// `--time-limit` and `--memory-limit`; a library caller with untrusted models should run
    /// this in a process it can limit). Refused: a `forward` that does not take exactly one
    /// tensor; one that changes the module's parameters while it runs (its buffers too on the
    /// run after the rewrite, once the first has named them): the changed weights would be
    /// the ones shrunk and saved. Groups that would slice a tensor
    /// reachable under two names (one submodule under two attributes, tied weights) keep all
    /// their channels, with a note in the report.
    ///
    /// ```no_run
    /// use tch::{Device, Kind, Tensor};
    /// use tch_prune::model::ScriptModel;
    /// use tch_prune::shrink::ShrinkOptions;
    /// let mut model = ScriptModel::load("resnet18.pt", Device::Cpu)?;
    /// let x = Tensor::randn([1, 3, 224, 224], (Kind::Float, Device::Cpu));
    /// let opts = ShrinkOptions { amount: Some(0.5.into()), ..Default::default() };
    /// let report = model.shrink(&x, &opts)?;
    /// println!("{} -> {} parameters", report.parameters_before, report.parameters_after);
    /// model.save("resnet18-half.pt")?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn shrink(&mut self, input: &Tensor, opts: &ShrinkOptions) -> Result<ShrinkReport> {
        opts.validate()?;
        let extra: Vec<String> = self
            .var_store()
            .variables()
            .into_keys()
            .filter(|k| !self.parameter_names().contains(k))
            .collect();
        if let Some(name) = extra.first() {
            return Err(PruneError::Shrink(format!(
                "the model is being pruned ('{name}' is in its store): make the pruning permanent (Pruner::remove_all) before removing channels"
            )));
        }
        let (g, a, alias_notes) = self.analyse(input, std::iter::empty())?;
        let module = self.module();
        let scores = select::scores(&a, &|name| Ok(ffi::get_tensor(module, name)?), opts.norm)?;
        let kept = select::select(&a, &g, &scores, opts)?;
        let removed: Vec<Removed> = a
            .layouts
            .iter()
            .filter_map(|((name, dim), layout)| {
                let indices = rewrite::removed_indices(layout, &kept, &a);
                (!indices.is_empty()).then(|| Removed {
                    name: name.clone(),
                    dim: *dim,
                    indices,
                    is_parameter: g.tensors.get(name).copied().unwrap_or(false),
                })
            })
            .collect();
        let parameters_before = parameter_count(module)?;
        let mut notes = alias_notes;
        notes.extend(rewrite::rewrite(module, &g, &a, &kept)?);
        // A fresh load: libtorch caches each method's execution plan with the old code inlined.
        let reloaded = round_trip::reload(self.module(), self.var_store().device())?;
        self.replace_module(reloaded)?;
        // The buffers too this time: the first run named them.
        let buffers: Vec<String> = g
            .tensors
            .iter()
            .filter(|(_, p)| !**p)
            .map(|(n, _)| n.clone())
            .collect();
        let (g2, _, _) = self
            .analyse(input, buffers.iter().map(String::as_str))
            .map_err(|e| match e {
                PruneError::Shrink(m) if m.starts_with("the model's forward changed") => {
                    PruneError::Shrink(m)
                }
                e => PruneError::Shrink(format!(
                    "the shrunk model does not run on the example input: {e}"
                )),
            })?;
        let groups = GroupChange::of_all(&a, &kept);
        Ok(ShrinkReport {
            groups,
            parameters_before,
            parameters_after: parameter_count(self.module())?,
            macs_before: g.macs(),
            macs_after: g2.macs(),
            removed,
            notes,
            buffers,
        })
    }

    /// Zeroes, in this (original, unshrunk) model, every removed slice of a parameter: the
    /// model whose outputs the shrunk one reproduces (up to float summation order).
    pub fn zero_channels(&self, removed: &[Removed]) -> Result<()> {
        for r in removed.iter().filter(|r| r.is_parameter) {
            let t = ffi::get_tensor(self.module(), &r.name)?;
            let index = Tensor::from_slice(&r.indices)
                .to_kind(Kind::Int64)
                .to_device(t.device());
            let mut t = t;
            let _ = tch::no_grad(|| t.index_fill_(r.dim as i64, &index, 0.0));
        }
        Ok(())
    }
}
