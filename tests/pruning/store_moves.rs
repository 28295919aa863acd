//! A pruned store follows `VarStore::set_kind` / `half` / `float` / `bfloat16` / `double` (and
//! `Pruner::set_kind`): the tensor the model computes with, `_orig`, the mask and the gradient
//! route end up in the new dtype, and training goes on with PyTorch's gradients. The device
//! counterparts (`set_device`, both directions) are in tests/cuda.rs.

use crate::common;

use common::moves::{check_moved, pruned_mlp};
use tch::{Device, Kind};

#[test]
fn set_kind_on_the_store_is_followed_at_the_next_use() {
    let _generator = common::generator();
    for bool_masks in [false, true] {
        let (mut vs, net, pruner) = pruned_mlp(Device::Cpu, bool_masks);
        vs.set_kind(Kind::Double);
        check_moved(&vs, net, &pruner, Device::Cpu, Kind::Double, bool_masks);
    }
}

#[test]
fn pruner_set_kind_moves_everything_at_once() {
    let _generator = common::generator();
    for bool_masks in [false, true] {
        let (mut vs, net, pruner) = pruned_mlp(Device::Cpu, bool_masks);
        let held = pruner.tensor("fc1.weight").unwrap(); // as the module holds it
        pruner.set_kind(&mut vs, Kind::Double).unwrap();
        // Moved already, without another call to the pruner.
        assert_eq!(held.kind(), Kind::Double);
        let other = tch::nn::VarStore::new(Device::Cpu);
        let mut other_mut = other;
        assert!(pruner.set_kind(&mut other_mut, Kind::Float).is_err());
        check_moved(&vs, net, &pruner, Device::Cpu, Kind::Double, bool_masks);
    }
}

#[test]
fn half_bfloat16_and_float_helpers_are_followed() {
    let _generator = common::generator();
    for bool_masks in [false, true] {
        let (mut vs, net, pruner) = pruned_mlp(Device::Cpu, bool_masks);
        vs.bfloat16();
        check_moved(&vs, net, &pruner, Device::Cpu, Kind::BFloat16, bool_masks);

        let (mut vs, net, pruner) = pruned_mlp(Device::Cpu, bool_masks);
        vs.half();
        // Back before any use: the pruner follows where the store is now.
        vs.float();
        check_moved(&vs, net, &pruner, Device::Cpu, Kind::Float, bool_masks);

        let (mut vs, net, pruner) = pruned_mlp(Device::Cpu, bool_masks);
        vs.double();
        check_moved(&vs, net, &pruner, Device::Cpu, Kind::Double, bool_masks);
    }
}
