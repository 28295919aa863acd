//! The exact route of `ScriptModel::shrink` (`exact: true`): removing channels whose whole group
//! is already zero changes the outputs only through the summation order of the layers that
//! reduce over those channels.
//!
//! Why not bit for bit in general: a removed channel contributes exact zeros (its weights, bias
//! and batch-norm scale and shift are zero, so batch norm gives +-0 and ReLU 0; a residual `add`
//! adds 0 + 0), and every op that acts per channel (batch norm, activations, depthwise
//! convolutions, pooling, `add`) gives the kept channels the same bits as before. What changes is
//! the next convolution or linear layer: it sums fewer terms, and libtorch's kernels (oneDNN,
//! MKL's GEMM) group a reduction by position (SIMD lanes, blocks of input channels or of the
//! K dimension), so taking out interleaved zeros regroups the nonzero terms: a few units in the
//! last place. Whether a given shape regroups depends on the kernel and the CPU.
//!
//! So the test here takes summation order out of the picture: a model whose weights, biases,
//! batch-norm statistics and input are small integers (variance 1 - eps, so that batch norm is
//! `(x - mean) * gamma + beta` exactly), with every partial sum an integer below 2^24, exact in
//! f32 in any order. There, the exact route's outputs are bit-identical to the group-zeroed
//! model's: nothing else but summation order differs. The same model with float weights is
//! checked within 1e-6 (relative). Needs Python's torch (fails without it).

use crate::common;

use std::path::Path;
use tch::{Kind, Tensor};
use tch_prune::model::ScriptModel;
use tch_prune::shrink::ShrinkOptions;

/// A residual block with batch norms, a depthwise convolution, biases, and a flatten of a
/// 8x2x2 map into a linear layer. Worst cases of the integer model, by layer: stem 28, its
/// batch norm 30, `a` 241, `dw` 2188, `b` 35041, the residual sum 35073, `fc` 32 * 35075,
/// `out` 12 * 1.13e6 < 2^24: every partial sum is an exact f32 integer.
const MODEL: &str = r#"
import sys, torch, torch.nn as nn
class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.bn0 = nn.BatchNorm2d(8)
        self.a = nn.Conv2d(8, 16, 1)
        self.bn1 = nn.BatchNorm2d(16)
        self.dw = nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.bn2 = nn.BatchNorm2d(16)
        self.b = nn.Conv2d(16, 8, 1)
        self.bn3 = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8 * 2 * 2, 12)
        self.out = nn.Linear(12, 5)
    def forward(self, x):
        x = torch.relu(self.bn0(self.stem(x)))
        y = torch.relu(self.bn1(self.a(x)))
        y = torch.relu(self.bn2(self.dw(y)))
        x = torch.relu(x + self.bn3(self.b(y)))
        x = nn.functional.max_pool2d(x, 2)
        return self.out(torch.relu(self.fc(torch.flatten(x, 1))))
# One level down, so that the groups are named by nested module paths (body.stem, ...).
class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = Block()
    def forward(self, x):
        return self.body(x)
x = (torch.arange(48) % 3 - 1).float().reshape(1, 3, 4, 4)
for kind in ("integer", "float"):
    torch.manual_seed(0)
    m = Net().eval()
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, nn.BatchNorm2d):
                if kind == "integer":
                    mod.weight.copy_(torch.randint(0, 2, mod.weight.shape) * 2 - 1)
                    mod.bias.copy_(torch.randint(-1, 2, mod.bias.shape))
                    mod.running_mean.copy_(torch.randint(-1, 2, mod.running_mean.shape))
                    mod.running_var.fill_(1 - mod.eps)
                else:
                    mod.weight.uniform_(0.5, 1.5)
                    mod.bias.uniform_(-0.2, 0.2)
                    mod.running_mean.uniform_(-0.5, 0.5)
                    mod.running_var.uniform_(0.5, 1.5)
            elif isinstance(mod, (nn.Conv2d, nn.Linear)):
                for p in (mod.weight, mod.bias):
                    p.copy_(torch.randint(-1, 2, p.shape) if kind == "integer" else torch.randn(p.shape) * 0.5)
    if kind == "integer":
        # The bounds above, checked: f32 equals f64 (exact integers) on the test input.
        with torch.no_grad():
            y32 = m(x)
            m.double()
            for mod in m.modules():
                if isinstance(mod, nn.BatchNorm2d):
                    mod.running_var.fill_(1 - mod.eps)
            y64 = m(x.double())
        assert torch.equal(y32.double(), y64), "the integer model's sums are not exact"
        m.float()
        for mod in m.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.running_var.fill_(1 - mod.eps)
    torch.jit.save(torch.jit.script(m), f"{sys.argv[1]}/{kind}.pt")
print("ok")
"#;

/// The generator's input: small integers.
fn input() -> Tensor {
    (Tensor::arange(48, (Kind::Int64, tch::Device::Cpu)).remainder(3) - 1)
        .to_kind(Kind::Float)
        .reshape([1, 3, 4, 4])
}

fn load(path: &Path) -> ScriptModel {
    let mut m = ScriptModel::load(path, tch::Device::Cpu).expect("load");
    m.set_train(false).unwrap();
    m
}

fn forward(m: &ScriptModel, x: &Tensor) -> Tensor {
    tch::no_grad(|| m.forward(x)).expect("forward")
}

/// Zeroes half of every group of `kind`.pt (the channels `shrink` at 0.5 would remove, in every
/// coupled parameter, biases included), removes them by the exact route, and returns the
/// zeroed model's output and the exact route's, after checking that exactly those went.
fn zeroed_and_exact(dir: &Path, kind: &str) -> (Tensor, Tensor) {
    let original = dir.join(format!("{kind}.pt"));
    let x = input();
    let mut half = load(&original);
    let opts = ShrinkOptions {
        amount: Some(0.5.into()),
        ..Default::default()
    };
    let report = half.shrink(&x, &opts).expect("shrink at 0.5");
    let zeroed = load(&original);
    zeroed.zero_channels(&report.removed).unwrap();
    let zeroed_path = dir.join(format!("{kind}-zeroed.pt"));
    zeroed.save(&zeroed_path).unwrap();

    let mut exact = load(&zeroed_path);
    let exact_opts = ShrinkOptions {
        exact: true,
        ..Default::default()
    };
    let exact_report = exact.shrink(&x, &exact_opts).expect("exact route");
    let afters = |r: &tch_prune::shrink::ShrinkReport| -> Vec<(i64, i64)> {
        r.groups.iter().map(|g| (g.before, g.after)).collect()
    };
    assert_eq!(
        afters(&exact_report),
        afters(&report),
        "{kind}: other channels went"
    );
    // Every group but the output's shrinks: the stem's (batch norm, residual, flatten into
    // `fc`), `a`'s (batch norm, depthwise conv), and `fc`'s.
    for (producer, before) in [("body.stem ", 8), ("body.a ", 16), ("body.fc ", 12)] {
        assert!(
            exact_report
                .groups
                .iter()
                .any(|g| g.producer.starts_with(producer)
                    && g.before == before
                    && g.after == before / 2),
            "{kind}: {producer} did not shrink: {:#?}",
            exact_report.groups
        );
    }
    // Through a file and back, as a user gets it.
    let exact_path = dir.join(format!("{kind}-exact.pt"));
    exact.save(&exact_path).unwrap();
    (forward(&zeroed, &x), forward(&load(&exact_path), &x))
}

#[test]
fn exact_route_is_bit_identical_when_sums_are_exact() {
    let dir = common::tempdir();
    let out = common::run_python(MODEL, &[dir.path()])
        .expect("this test needs TCH_PRUNE_PYTHON with torch (make test provides it)");
    assert_eq!(out.trim(), "ok");

    let (zeroed, exact) = zeroed_and_exact(dir.path(), "integer");
    assert!(
        zeroed.abs().max().double_value(&[]) > 0.0,
        "the integer model's output is all zero: the comparison would prove nothing"
    );
    common::assert_bits(
        &exact,
        &zeroed,
        "exact route vs the group-zeroed model (integer)",
    );

    let (zeroed, exact) = zeroed_and_exact(dir.path(), "float");
    let scale = zeroed.abs().max().double_value(&[]);
    let err = (&exact - &zeroed).abs().max().double_value(&[]) / scale;
    // Whether this is 0 depends on the kernels' blocking for these shapes on this CPU.
    eprintln!("float model: exact route vs group-zeroed, relative error {err:e}");
    assert!(
        err <= 1e-6,
        "exact route vs the group-zeroed model (float): relative error {err:e}"
    );
}
