//! Parity with PyTorch, measured by PyTorch itself: generated cases are pruned here and by
//! `torch.nn.utils.prune` (the provisioned torch 2.13), and masks and pruned values must agree
//! bit for bit (-0.0 counted as 0.0), dtypes included. The cases and the comparison are in
//! tests/common/parity.rs (tests/cuda.rs runs them on a GPU).

use crate::common;

use tch::Device;

#[test]
fn masks_and_pruned_values_equal_pytorchs() {
    let _generator = common::generator();
    if let Some(n) = common::parity::check_against_pytorch(Device::Cpu) {
        eprintln!("{n} cases equal to PyTorch's, twice");
    }
}
