// Saves a TorchScript module with its tensors on a chosen device (the CPU by default), the one
// piece of `ScriptModel::save` that needs libtorch's C++ module API, which tch does not expose.
//
// `torch.jit.load` restores every tensor to the device it was saved from and fails where that
// device does not exist (no GPU, or no `cuda:1`), unless the caller passes `map_location`. A
// module that ran on a GPU is therefore saved from a copy on the CPU: `Module::deepcopy(device)`
// copies the module's object tree (code and types shared, aliasing between tensors kept) with
// each tensor moved by `Tensor::to`, one at a time, so the GPU needs no extra memory beyond a
// tensor's transfer and the module being trained is left as it was.
#include <torch/csrc/jit/api/module.h>

#include <string>

#include "tch_prune.h"

namespace {

// Whether any tensor held by the module (parameters, buffers, other attributes, tensors in
// lists, tuples and dicts, submodules) is on another device than `device`.
bool holds_tensor_elsewhere(const torch::jit::Module& module, const at::Device& device) {
  bool elsewhere = false;
  c10::IValue(module._ivalue()).visit([&](const c10::IValue& value) {
    if (value.isTensor()) {
      const at::Tensor& t = value.toTensor();
      if (t.defined() && t.device() != device) elsewhere = true;
    }
    return elsewhere;  // true stops the walk
  });
  return elsewhere;
}

}  // namespace

extern "C" {

// With `always_copy`, the copy is made even when every tensor is on `device` already (the path a
// GPU module takes, run on the CPU by the tests).
char* tp_module_save(const torch::jit::Module* module, const char* path, int device,
                     int always_copy) noexcept {
  return tp::protect([&] {
    const auto& m = *module;
    const at::Device target = device < 0 ? at::Device(at::kCPU)
                                         : at::Device(at::kCUDA, static_cast<c10::DeviceIndex>(device));
    if (always_copy != 0 || holds_tensor_elsewhere(m, target)) {
      m.deepcopy(target).save(std::string(path));
    } else {
      m.save(std::string(path));
    }
  });
}

}  // extern "C"
