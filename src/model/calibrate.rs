//! Calibrated pruning (Wanda, SparseGPT) of a TorchScript model: its linear layers' inputs seen
//! through a copy of its forward graph ([`ScriptCalibrator`]), and the calibration inputs read
//! and checked from a safetensors file ([`CalibrationInputs`]).

use crate::error::{PruneError, Result};
use crate::ffi::CalibrationProbe;
use crate::model::script_model::ScriptModel;
use crate::prune::calibrated::{CalibratedMethod, LayerReport, Order};
use crate::prune::calibration::Calibration;
use std::path::Path;
use tch::{Device, Kind, Tensor};

/// The inputs of a model's `forward` for calibration, their first dimension the samples: read
/// from a safetensors file holding one tensor named `input` (a one-argument forward) or
/// `input.0`, `input.1`, ... (one per argument), of any dtype the model takes (token ids as
/// int64 included). Checked when read: the names, at least one sample, the same number of
/// samples in each, and no NaN or infinity in floating-point inputs.
#[derive(Debug)]
pub struct CalibrationInputs {
    inputs: Vec<Tensor>,
}

impl CalibrationInputs {
    /// Reads and checks a calibration file (see the type's docs). Reading runs no code: a
    /// safetensors file is a header and raw data.
    pub fn read(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let bad = |why: String| PruneError::Calibration(format!("{}: {why}", path.display()));
        let mut tensors = crate::checkpoint::read_safetensors(path)?;
        tensors.sort_by(|a, b| a.0.cmp(&b.0));
        let names: Vec<&str> = tensors.iter().map(|(n, _)| n.as_str()).collect();
        let expected: Vec<String> = if names == ["input"] {
            vec!["input".into()]
        } else {
            (0..names.len()).map(|i| format!("input.{i}")).collect()
        };
        // By name through a map: a file of a million tensors is looked up in linear time, not
        // searched once for each name.
        let index: std::collections::HashMap<&str, &Tensor> =
            tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
        let mut by_name: Vec<Tensor> = Vec::new();
        for name in &expected {
            match index.get(name.as_str()) {
                Some(t) => by_name.push(t.shallow_clone()),
                None => {
                    return Err(bad(format!(
                        "a calibration file holds one tensor named 'input' (or input.0, \
                         input.1, ... for a forward of several arguments), but this one holds \
                         {:?}",
                        names.iter().take(8).collect::<Vec<_>>()
                    )))
                }
            }
        }
        Self::new(by_name).map_err(|e| match e {
            PruneError::Calibration(why) => bad(why),
            other => other,
        })
    }

    /// Calibration inputs from tensors (one per argument of `forward`), checked as
    /// [`read`](Self::read) checks a file's.
    pub fn new(inputs: Vec<Tensor>) -> Result<Self> {
        let Some(first) = inputs.first() else {
            return Err(PruneError::Calibration(
                "no calibration input: give one tensor per argument of forward".into(),
            ));
        };
        let samples = first.size().first().copied().unwrap_or(0);
        for (i, t) in inputs.iter().enumerate() {
            let size = t.size();
            if size.is_empty() || size[0] == 0 || t.numel() == 0 {
                return Err(PruneError::Calibration(format!(
                    "calibration input {i} has shape {size:?}: it needs a first dimension of \
                     samples, at least one, and no empty dimension"
                )));
            }
            if size[0] != samples {
                return Err(PruneError::Calibration(format!(
                    "calibration input {i} has {} samples but input 0 has {samples}: every \
                     input needs the same number of samples (its first dimension)",
                    size[0]
                )));
            }
            if t.is_floating_point() && t.f_isfinite()?.f_all()?.f_int64_value(&[])? != 1 {
                return Err(PruneError::Calibration(format!(
                    "calibration input {i} holds NaN or infinite values"
                )));
            }
            if t.kind() == Kind::Bool || t.is_complex() {
                return Err(PruneError::Calibration(format!(
                    "calibration input {i} is {:?}: give the dtype the model's forward takes \
                     (floating point, or integer token ids)",
                    t.kind()
                )));
            }
        }
        Ok(Self { inputs })
    }

    /// The number of samples.
    pub fn samples(&self) -> i64 {
        self.inputs[0].size()[0]
    }

    /// The inputs, one per argument of `forward`.
    pub fn tensors(&self) -> &[Tensor] {
        &self.inputs
    }

    /// Batches of at most `batch_size` samples, in order, on `device`.
    pub fn batches(&self, batch_size: i64, device: Device) -> Result<Vec<Vec<Tensor>>> {
        if batch_size < 1 {
            return Err(PruneError::InvalidArgument(format!(
                "invalid batch size {batch_size}: it must be at least 1"
            )));
        }
        let samples = self.samples();
        (0..samples)
            .step_by(batch_size as usize)
            .map(|start| {
                let len = batch_size.min(samples - start);
                self.inputs
                    .iter()
                    .map(|t| Ok(t.f_narrow(0, start, len)?.f_to_device(device)?))
                    .collect()
            })
            .collect()
    }
}

/// A TorchScript model's `forward` that also hands the inputs of chosen linear layers to a
/// [`Calibration`] (made by [`ScriptModel::calibrator`]). It runs a compiled copy of the
/// module's inlined forward graph that returns those inputs too; the module and its code are
/// not changed. Only linear layers (`aten::linear`) called at the top level of the inlined
/// forward (not inside a loop or a branch) can be seen.
///
/// Each batch's layer inputs are held until its forward returns (the graph returns them), then
/// reduced into the statistics and freed: memory for one batch's activations of the layers
/// seen, beyond the statistics.
#[derive(Debug)]
pub struct ScriptCalibrator<'a> {
    model: &'a ScriptModel,
    probe: CalibrationProbe,
    /// forward's arguments, read from its schema on the first run (`None` inside: forward
    /// needs none, or its schema could not be read).
    arguments: std::sync::OnceLock<Option<Vec<String>>>,
}

impl ScriptModel {
    /// A calibrator of the linear layers whose weights are among `weights` (dotted names). The
    /// layers it sees are [`ScriptCalibrator::layers`]; names that are not the weight of a
    /// linear layer forward calls at its top level are left out.
    pub fn calibrator(&self, weights: &[String]) -> Result<ScriptCalibrator<'_>> {
        Ok(ScriptCalibrator {
            model: self,
            probe: CalibrationProbe::new(self.module(), weights)?,
            arguments: std::sync::OnceLock::new(),
        })
    }
}

impl ScriptCalibrator<'_> {
    /// The weights of the layers seen, each once, in the order forward calls them.
    pub fn layers(&self) -> Vec<String> {
        let mut seen = std::collections::HashSet::new();
        self.probe
            .taps()
            .iter()
            .filter(|n| seen.insert(n.as_str()))
            .cloned()
            .collect()
    }

    /// The layers seen, grouped into the model's blocks: consecutive layers whose names share
    /// the path up to the first numeric component (`layers.3.mlp.fc1.weight` is in block
    /// `layers.3`); a layer outside any numbered container is a block of its own.
    pub fn blocks(&self) -> Vec<Vec<String>> {
        let key = |name: &str| -> Option<String> {
            let parts: Vec<&str> = name.split('.').collect();
            let i = parts.iter().position(|p| p.parse::<u64>().is_ok())?;
            Some(parts[..=i].join("."))
        };
        let mut blocks: Vec<(Option<String>, Vec<String>)> = Vec::new();
        for name in self.layers() {
            let k = key(&name);
            match blocks.last_mut() {
                Some((last, names)) if k.is_some() && *last == k => names.push(name),
                _ => blocks.push((k, vec![name])),
            }
        }
        blocks.into_iter().map(|(_, names)| names).collect()
    }

    /// Runs one batch (one tensor per argument of forward) through the model, adding each
    /// seen layer's input to `calibration`.
    pub fn run(&self, calibration: &Calibration, inputs: &[Tensor]) -> Result<()> {
        // Checked by forward's schema first: the instrumented graph runs without it, and more
        // inputs than it takes fail inside libtorch with an internal assertion's message.
        use super::shrink::checks::{forward_arguments, required};
        let arguments = self
            .arguments
            .get_or_init(|| forward_arguments(self.model.module()).ok().flatten());
        if let Some(arguments) = arguments {
            if inputs.len() < required(arguments) || inputs.len() > arguments.len() {
                let plural = |n: usize| if n == 1 { "" } else { "s" };
                let needs = required(arguments);
                return Err(PruneError::Calibration(format!(
                    "the model's forward takes {needs} input{} (forward({})) and the calibration \
                     file holds {}: give one tensor per argument (input, or input.0, input.1, ...)",
                    plural(needs),
                    arguments.join(", "),
                    inputs.len()
                )));
            }
        }
        let taps = self.probe.run(self.model.module(), inputs).map_err(|e| {
            PruneError::Calibration(format!(
                "the model's forward failed on the calibration inputs (check their shape \
                     and dtype against what forward takes): {}",
                crate::error::first_line(&e.to_string())
            ))
        })?;
        for (name, input) in self.probe.taps().iter().zip(&taps) {
            calibration.observe(name, input)?;
        }
        Ok(())
    }

    /// Prunes the layers seen with Wanda or SparseGPT: [`Pruner::prune_calibrated`]
    /// over [`blocks`](Self::blocks), each calibration pass running every batch of `inputs`.
    /// `H` is gathered for Wanda too (`columns²` floats per layer calibrated at once), for the
    /// reports' reconstruction errors.
    ///
    /// [`Pruner::prune_calibrated`]: crate::Pruner::prune_calibrated
    pub fn prune(
        &self,
        pruner: &crate::Pruner,
        method: &CalibratedMethod,
        order: Order,
        inputs: &CalibrationInputs,
        batch_size: i64,
        progress: impl FnMut(&LayerReport),
    ) -> Result<Vec<LayerReport>> {
        // H for Wanda too: the reports' reconstruction errors are computed from it.
        let calibration = Calibration::with_hessian();
        let batches = inputs.batches(batch_size, self.model.var_store().device())?;
        pruner.prune_calibrated(
            &calibration,
            &self.blocks(),
            method,
            order,
            || {
                pruner.apply_masks()?;
                batches.iter().try_for_each(|b| self.run(&calibration, b))
            },
            progress,
        )
    }
}
