// What this process has of libtorch's CUDA backend, asked without throwing: tch's own calls
// (`tch::utils::version_cudart` ...) panic when the backend is missing, and libtorch gives the
// reason it finds no GPU only as a warning printed on stderr.
#include <ATen/detail/CUDAHooksInterface.h>
#include <c10/util/Exception.h>
#include <torch/headeronly/version.h>

#include <cstdint>
#include <exception>
#include <string>

#include "tch_prune.h"

namespace {

// Collects the warnings libtorch issues while it counts devices, instead of printing them.
struct CollectWarnings final : c10::WarningHandler {
  std::string text;
  void process(const c10::Warning& warning) override {
    if (!text.empty()) {
      text += " ";
    }
    text += warning.msg();
  }
};

}  // namespace

extern "C" {

const char* tp_libtorch_version() noexcept {
  return TORCH_VERSION;
}

// Without the CUDA part, libtorch's default hooks answer with an exception: that is the -1.
int64_t tp_cudart_version() noexcept {
  try {
    return at::detail::getCUDAHooks().versionCUDART();
  } catch (...) {
    return -1;
  }
}

int64_t tp_cudnn_version() noexcept {
  try {
    const auto& hooks = at::detail::getCUDAHooks();
    return hooks.hasCuDNN() ? hooks.versionCuDNN() : -1;
  } catch (...) {
    return -1;
  }
}

char* tp_cuda_device_count(int64_t* count, char** why) noexcept {
  return tp::protect([&] {
    CollectWarnings collect;
    int64_t devices = 0;
    {
      c10::WarningUtils::WarningHandlerGuard guard(&collect);
      // An exception while counting is a reason for no device, not a failure of the report.
      try {
        devices = at::detail::getCUDAHooks().deviceCount();
      } catch (const std::exception& e) {
        collect.text = e.what();
      }
    }
    *why = collect.text.empty() ? nullptr : tp::copy_string(collect.text);
    *count = devices;
  });
}

}  // extern "C"
