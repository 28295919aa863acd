//! The digits CNN of the demo (scripts/make_demo_data.py), built and trained from scratch in
//! Rust: shared by examples/gradual.rs and tests/training/gradual.rs (through `#[path]`).
#![allow(dead_code)]

use std::error::Error;
use std::path::Path;
use tch::nn::{self, ModuleT};
use tch::{Device, Kind, Tensor};
use tch_prune::checkpoint::read_safetensors;
use tch_prune::Pruner;

pub type Res<T> = Result<T, Box<dyn Error>>;

/// The prunable weights: both convolutions and both linear layers.
pub const WEIGHTS: [&str; 4] = ["conv1.weight", "conv2.weight", "fc1.weight", "fc2.weight"];

pub const BATCH: i64 = 64;

/// The 8x8 digits, pixels scaled to [0, 1]: 1437 train / 360 test images.
pub struct Digits {
    pub train_x: Tensor,
    pub train_y: Tensor,
    pub test_x: Tensor,
    pub test_y: Tensor,
}

impl Digits {
    pub fn load(device: Device) -> Res<Self> {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/digits.safetensors");
        let mut tensors: std::collections::HashMap<String, Tensor> =
            read_safetensors(&path)?.into_iter().collect();
        let mut take = |name: &str| -> Res<Tensor> {
            let t = tensors
                .remove(name)
                .ok_or(format!("{}: no tensor {name}", path.display()))?;
            Ok(t.to_device(device))
        };
        Ok(Self {
            train_x: take("train_x")?.to_kind(Kind::Float) / 16.0,
            train_y: take("train_y")?,
            test_x: take("test_x")?.to_kind(Kind::Float) / 16.0,
            test_y: take("test_y")?,
        })
    }

    /// Optimizer steps in one epoch.
    pub fn steps_per_epoch(&self) -> i64 {
        (self.train_y.size()[0] + BATCH - 1) / BATCH
    }
}

/// The demo's architecture: conv-bn-relu twice, max-pool, two linear layers.
pub fn cnn(p: &nn::Path) -> nn::SequentialT {
    let conv = |c| nn::ConvConfig { padding: 1, ..c };
    nn::seq_t()
        .add(nn::conv2d(p / "conv1", 1, 16, 3, conv(Default::default())))
        .add(nn::batch_norm2d(p / "bn1", 16, Default::default()))
        .add_fn(|x| x.relu())
        .add(nn::conv2d(p / "conv2", 16, 32, 3, conv(Default::default())))
        .add(nn::batch_norm2d(p / "bn2", 32, Default::default()))
        .add_fn(|x| x.relu().max_pool2d_default(2).flatten(1, -1))
        .add(nn::linear(p / "fc1", 32 * 4 * 4, 64, Default::default()))
        .add_fn(|x| x.relu())
        .add(nn::linear(p / "fc2", 64, 10, Default::default()))
}

/// Test-set accuracy, a fraction, with the masks applied.
pub fn accuracy(model: &impl ModuleT, pruner: &Pruner, data: &Digits) -> Res<f64> {
    let logits = tch::no_grad(|| pruner.forward(|| model.forward_t(&data.test_x, false)))?;
    Ok(logits
        .argmax(-1, false)
        .eq_tensor(&data.test_y)
        .to_kind(Kind::Double)
        .mean(Kind::Double)
        .double_value(&[]))
}

/// One epoch of minibatch training through the pruner (masks reapplied before each forward
/// pass); `after_step(global_step)` runs after each optimizer step (pruning, rewind points).
/// Returns the mean training loss.
pub fn train_epoch(
    model: &impl ModuleT,
    pruner: &Pruner,
    opt: &mut nn::Optimizer,
    data: &Digits,
    step: &mut i64,
    mut after_step: impl FnMut(i64) -> Res<()>,
) -> Res<f64> {
    let n = data.train_y.size()[0];
    let perm = Tensor::randperm(n, (Kind::Int64, data.train_x.device()));
    let (mut total, mut batches) = (0.0, 0);
    for start in (0..n).step_by(BATCH as usize) {
        let idx = perm.narrow(0, start, BATCH.min(n - start));
        let x = data.train_x.index_select(0, &idx);
        let y = data.train_y.index_select(0, &idx);
        let loss = pruner
            .forward(|| model.forward_t(&x, true))?
            .cross_entropy_for_logits(&y);
        opt.backward_step(&loss);
        total += loss.double_value(&[]);
        batches += 1;
        *step += 1;
        after_step(*step)?;
    }
    Ok(total / batches as f64)
}
