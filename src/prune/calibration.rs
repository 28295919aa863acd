//! Calibration statistics: what each layer to be pruned sees of the calibration inputs, gathered
//! during ordinary forward passes, the way the Wanda and SparseGPT reference code gathers it with
//! forward hooks (`WrappedGPT.add_batch`, `SparseGPT.add_batch`). Only the statistics are kept,
//! per layer (`cols` floats for Wanda, `cols²` for SparseGPT), never the activations.

use crate::error::{PruneError, Result};
use std::collections::HashSet;
use std::sync::{Arc, Mutex, MutexGuard};
use tch::nn::{Module, ModuleT};
use tch::{Device, Kind, Tensor};

/// What one layer has seen of the calibration inputs: the reference implementations' running
/// statistics, on the layer's device, in f32 (as both references keep them, whatever the
/// model's dtype).
///
/// * `scaler_row` (Wanda's `WrappedGPT.scaler_row`): per input column, the squared L2 norm of
///   that column over the calibration tokens, divided by the number of samples;
/// * `hessian` (SparseGPT's `H`, only when asked): `2/n · X Xᵀ` over the same inputs.
///
/// A *sample* is what the references count: the first dimension of the layer's input (a
/// `[batch, tokens, features]` input counts `batch` samples; a `[tokens, features]` input one).
/// Both are updated with the references' arithmetic, operation for operation (the running
/// rescale by `n / (n + batch)` included), so that the masks they lead to are the references'.
#[derive(Debug)]
pub struct LayerStats {
    samples: i64,
    scaler_row: Tensor,
    hessian: Option<Tensor>,
}

impl LayerStats {
    /// Empty statistics for a layer with `columns` input features, on `device`; with
    /// `hessian`, SparseGPT's `X Xᵀ` too.
    pub fn new(columns: i64, device: Device, hessian: bool) -> Result<Self> {
        let options = (Kind::Float, device);
        Ok(Self {
            samples: 0,
            scaler_row: Tensor::f_zeros([columns], options)?,
            hessian: if hessian {
                Some(Tensor::f_zeros([columns, columns], options)?)
            } else {
                None
            },
        })
    }

    /// Adds one batch of the layer's inputs (`[..., columns]`, any floating dtype), as
    /// `add_batch` of the references does.
    pub fn add_batch(&mut self, input: &Tensor) -> Result<()> {
        let columns = self.columns();
        let size = input.size();
        if !input.is_floating_point() || size.last() != Some(&columns) {
            return Err(PruneError::Calibration(format!(
                "a layer with {columns} input features was given an input of shape {size:?} \
                 and dtype {:?}: calibration inputs must be floating-point with {columns} \
                 features in their last dimension",
                input.kind()
            )));
        }
        // The references unsqueeze a 2-D input into one sample, and count the first dimension.
        let batch = if size.len() <= 2 { 1 } else { size[0] };
        if batch == 0 || input.numel() == 0 {
            return Err(PruneError::Calibration(
                "a calibration batch is empty: give the layer at least one token".into(),
            ));
        }
        tch::no_grad(|| -> Result<()> {
            let input = input.f_detach()?.f_to_device(self.scaler_row.device())?;
            let input = input
                .f_reshape([-1, columns])?
                .f_transpose(0, 1)?
                .f_to_kind(Kind::Float)?;
            let (before, after) = (self.samples, self.samples + batch);
            let rescale = before as f64 / after as f64;
            // Wanda: `scaler_row *= n / (n + tmp)`, then `+= norm(inp, p=2, dim=1) ** 2 / n`.
            let _ = self.scaler_row.f_mul_scalar_(rescale)?;
            let norms = input
                .f_linalg_norm(2, [1i64].as_slice(), false, None::<Kind>)?
                .f_pow_tensor_scalar(2)?
                .f_div_scalar(after)?;
            let _ = self.scaler_row.f_add_(&norms)?;
            // SparseGPT: `H *= n / (n + tmp)`, then `inp = sqrt(2 / n) * inp`, `H += inp inpᵀ`.
            if let Some(h) = &mut self.hessian {
                let _ = h.f_mul_scalar_(rescale)?;
                let scaled = input.f_mul_scalar((2.0 / after as f64).sqrt())?;
                let _ = h.f_add_(&scaled.f_matmul(&scaled.f_transpose(0, 1)?)?)?;
            }
            self.samples = after;
            Ok(())
        })
    }

    /// The number of samples added so far (see the type's docs).
    pub fn samples(&self) -> i64 {
        self.samples
    }

    /// The input features of the layer.
    pub fn columns(&self) -> i64 {
        self.scaler_row.size()[0]
    }

    /// Wanda's `scaler_row`: `[columns]`, f32.
    pub fn scaler_row(&self) -> &Tensor {
        &self.scaler_row
    }

    /// SparseGPT's `H = 2/n · X Xᵀ`: `[columns, columns]`, f32; `None` unless asked for.
    pub fn hessian(&self) -> Option<&Tensor> {
        self.hessian.as_ref()
    }

    /// Fails unless the statistics can prune a weight of `shape` (`[rows, columns]`) and have
    /// seen data: what every calibrated method checks first.
    pub(crate) fn check_for(&self, name: &str, shape: &[i64]) -> Result<()> {
        if shape.len() != 2 || shape[1] != self.columns() {
            return Err(PruneError::Calibration(format!(
                "'{name}' has shape {shape:?}, but its calibration statistics are for a layer \
                 with {} input features: calibrated pruning takes the [out, in] weight of a \
                 linear layer",
                self.columns()
            )));
        }
        if self.samples == 0 {
            return Err(PruneError::Calibration(format!(
                "'{name}' has seen no calibration input: run the calibration forward passes \
                 through the model before pruning"
            )));
        }
        let finite =
            |t: &Tensor| -> Result<bool> { Ok(t.f_isfinite()?.f_all()?.f_int64_value(&[])? == 1) };
        let hessian_finite = match &self.hessian {
            Some(h) => finite(h)?,
            None => true,
        };
        if !finite(&self.scaler_row)? || !hessian_finite {
            return Err(PruneError::Calibration(format!(
                "the calibration inputs of '{name}' hold NaN or infinite values (or overflowed \
                 f32): check the calibration data"
            )));
        }
        Ok(())
    }

    fn shallow_clone(&self) -> Self {
        Self {
            samples: self.samples,
            scaler_row: self.scaler_row.shallow_clone(),
            hessian: self.hessian.as_ref().map(Tensor::shallow_clone),
        }
    }
}

/// Gathers the calibration statistics of several layers during ordinary forward passes of a
/// model written with tch: wrap each linear layer to be pruned ([`Calibration::wrap`], or
/// [`Calibration::linear`] to build one), run the calibration inputs through the model, then
/// prune with [`Pruner::wanda`](crate::Pruner::wanda) or
/// [`Pruner::sparsegpt`](crate::Pruner::sparsegpt) (or all at once, block by block if asked,
/// with [`Pruner::prune_calibrated`](crate::Pruner::prune_calibrated)).
///
/// Layers are known by the name of their weight in the `VarStore` (`"h.0.mlp.fc.weight"`), the
/// name they are pruned by. `Calibration` is a cheap handle: clones share the statistics.
///
/// ```
/// use tch::{nn, nn::Module, Device, Kind, Tensor};
/// use tch_prune::{Calibration, Pruner, Sparsity, Wanda};
///
/// let vs = nn::VarStore::new(Device::Cpu);
/// let calibration = Calibration::new();
/// let fc = calibration.linear(&(vs.root() / "fc"), 16, 8, Default::default());
/// tch::no_grad(|| fc.forward(&Tensor::randn([4, 10, 16], (Kind::Float, Device::Cpu))));
///
/// let pruner = Pruner::new(&vs);
/// pruner.wanda("fc.weight", &calibration, &Wanda::new(Sparsity::fraction(0.5)?))?;
/// let mask = pruner.mask("fc.weight").unwrap();
/// assert_eq!(mask.sum(Kind::Float).double_value(&[]), 64.0); // 8 of 16 per row
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug, Default)]
pub struct Calibration {
    state: Arc<Mutex<State>>,
}

#[derive(Debug, Default)]
struct State {
    hessian: bool,
    /// In the order layers first saw an input.
    layers: Vec<(String, LayerStats)>,
    /// The layers that record now (`None`: all).
    recording: Option<HashSet<String>>,
    /// The first error met inside a forward pass (which cannot return one), reported by the
    /// next call that reads the statistics.
    error: Option<String>,
}

impl Calibration {
    /// Statistics for Wanda (`scaler_row` only: `columns` floats per layer).
    pub fn new() -> Self {
        Self::default()
    }

    /// Statistics for SparseGPT too (`X Xᵀ`: `columns²` floats per layer).
    pub fn with_hessian() -> Self {
        let calibration = Self::default();
        calibration.lock().hessian = true;
        calibration
    }

    /// Whether `X Xᵀ` is gathered.
    pub fn has_hessian(&self) -> bool {
        self.lock().hessian
    }

    /// Wraps a layer whose weight is `weight_name` in the store: each forward pass adds its
    /// input to that layer's statistics, then runs it.
    pub fn wrap<M>(&self, weight_name: &str, module: M) -> Observed<M> {
        Observed {
            module,
            name: weight_name.to_string(),
            calibration: self.clone(),
        }
    }

    /// `nn::linear(path, in_dim, out_dim, config)`, wrapped (its weight is `path.weight`).
    pub fn linear<'a>(
        &self,
        path: &tch::nn::Path<'a>,
        in_dim: i64,
        out_dim: i64,
        config: tch::nn::LinearConfig,
    ) -> Observed<tch::nn::Linear> {
        let name = path.path("weight");
        self.wrap(&name, tch::nn::linear(path, in_dim, out_dim, config))
    }

    /// Adds one batch of inputs to the statistics of `weight_name` (what the wrappers call):
    /// for layers the wrappers do not fit. Does nothing for a layer that is not recording (see
    /// [`Calibration::record_only`]).
    pub fn observe(&self, weight_name: &str, input: &Tensor) -> Result<()> {
        let mut state = self.lock();
        if let Some(recording) = &state.recording {
            if !recording.contains(weight_name) {
                return Ok(());
            }
        }
        let hessian = state.hessian;
        let i = match state.layers.iter().position(|(n, _)| n == weight_name) {
            Some(i) => i,
            None => {
                let columns = *input.size().last().unwrap_or(&0);
                let stats = LayerStats::new(columns, input.device(), hessian)?;
                state.layers.push((weight_name.to_string(), stats));
                state.layers.len() - 1
            }
        };
        state.layers[i]
            .1
            .add_batch(input)
            .map_err(|e| PruneError::Calibration(format!("'{weight_name}': {e}")))
    }

    /// Only the layers named here record from now on (`None`: all of them). The block-by-block
    /// order gathers one block at a time so.
    pub fn record_only(&self, weight_names: Option<&[String]>) {
        self.lock().recording = weight_names.map(|names| names.iter().cloned().collect());
    }

    /// The statistics of `weight_name` (sharing the tensors), after checking that no forward
    /// pass failed to add its input.
    pub fn stats(&self, weight_name: &str) -> Result<LayerStats> {
        let state = self.lock();
        if let Some(error) = &state.error {
            return Err(PruneError::Calibration(error.clone()));
        }
        state
            .layers
            .iter()
            .find(|(n, _)| n == weight_name)
            .map(|(_, s)| s.shallow_clone())
            .ok_or_else(|| {
                PruneError::Calibration(format!(
                    "'{weight_name}' has seen no calibration input: wrap its layer with \
                     Calibration::wrap (or call Calibration::observe) and run the calibration \
                     forward passes first"
                ))
            })
    }

    /// The layers that have statistics, in the order they first saw an input.
    pub fn names(&self) -> Vec<String> {
        self.lock().layers.iter().map(|(n, _)| n.clone()).collect()
    }

    /// Forgets the statistics of `weight_names` (all, with `None`) and any error met.
    pub fn reset(&self, weight_names: Option<&[String]>) {
        let mut state = self.lock();
        state.error = None;
        match weight_names {
            Some(names) => state.layers.retain(|(n, _)| !names.contains(n)),
            None => state.layers.clear(),
        }
    }

    /// Records an error met where it cannot be returned (inside `forward`); the first one wins.
    fn defer(&self, error: PruneError) {
        let mut state = self.lock();
        if state.error.is_none() {
            state.error = Some(error.to_string());
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A layer whose forward passes add their input to a [`Calibration`] (made by
/// [`Calibration::wrap`]). An input the statistics cannot take (another feature count, not
/// floating-point) does not stop the forward pass, which cannot return an error: it is
/// reported by the next read of the statistics.
#[derive(Debug)]
pub struct Observed<M> {
    module: M,
    name: String,
    calibration: Calibration,
}

impl<M> Observed<M> {
    /// The wrapped layer.
    pub fn inner(&self) -> &M {
        &self.module
    }

    /// The name of the weight whose statistics it gathers.
    pub fn weight_name(&self) -> &str {
        &self.name
    }

    /// Unwraps the layer.
    pub fn into_inner(self) -> M {
        self.module
    }

    fn observe(&self, xs: &Tensor) {
        if let Err(e) = self.calibration.observe(&self.name, xs) {
            self.calibration.defer(e);
        }
    }
}

impl<M: Module> Module for Observed<M> {
    fn forward(&self, xs: &Tensor) -> Tensor {
        self.observe(xs);
        self.module.forward(xs)
    }
}

// `ModuleT` comes with `Module` through tch's blanket impl; a layer that is only `ModuleT`
// (dropout inside) is wrapped by this one.
impl<M: ModuleT> Observed<M> {
    /// `forward_t` of the wrapped layer, its input added to the statistics first.
    pub fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        self.observe(xs);
        self.module.forward_t(xs, train)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statistics_follow_the_references_running_means() {
        let mut stats = LayerStats::new(3, Device::Cpu, true).unwrap();
        let a = Tensor::from_slice(&[1f32, 2., 3., 4., 5., 6.]).view([1, 2, 3]);
        let b = Tensor::from_slice(&[1f64, 0., 2.]).view([1, 3]);
        stats.add_batch(&a).unwrap();
        stats.add_batch(&b).unwrap();
        assert_eq!(stats.samples(), 2);
        // Column sums of squares over the 3 tokens, over 2 samples.
        let expected = [(1. + 16. + 1.) / 2., (4. + 25.) / 2., (9. + 36. + 4.) / 2.];
        let got = Vec::<f32>::try_from(stats.scaler_row()).unwrap();
        for (g, e) in got.iter().zip(expected) {
            assert!((*g as f64 - e).abs() < 1e-5, "{got:?}");
        }
        // H's diagonal is 2/n · sum of squares = 2 · scaler_row.
        let diag = Vec::<f32>::try_from(stats.hessian().unwrap().diagonal(0, 0, 1)).unwrap();
        for (d, e) in diag.iter().zip(expected) {
            assert!((*d as f64 - 2. * e).abs() < 1e-4, "{diag:?}");
        }
    }

    #[test]
    fn bad_inputs_are_refused() {
        let mut stats = LayerStats::new(3, Device::Cpu, false).unwrap();
        assert!(stats
            .add_batch(&Tensor::zeros([2, 4], (Kind::Float, Device::Cpu)))
            .is_err());
        assert!(stats
            .add_batch(&Tensor::zeros([2, 3], (Kind::Int64, Device::Cpu)))
            .is_err());
        assert!(stats
            .add_batch(&Tensor::zeros([0, 5, 3], (Kind::Float, Device::Cpu)))
            .is_err());
        assert_eq!(stats.samples(), 0);
        assert!(stats.check_for("w", &[4, 3]).is_err());
        stats
            .add_batch(&Tensor::full([1, 3], f64::NAN, (Kind::Float, Device::Cpu)))
            .unwrap();
        let err = stats.check_for("w", &[4, 3]).unwrap_err().to_string();
        assert!(err.contains("NaN"), "{err}");
    }
}
