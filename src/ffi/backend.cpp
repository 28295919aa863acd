// What this process has of libtorch's CUDA backend, asked without throwing: tch's own calls
// (`tch::utils::version_cudart` ...) panic when the backend is missing, and libtorch gives the
// reason it finds no GPU only as a warning printed on stderr.
#include <ATen/detail/CUDAHooksInterface.h>
#include <c10/util/Exception.h>
#include <torch/headeronly/version.h>

#include <dlfcn.h>

#include <cstdint>
#include <cstring>
#include <exception>
#include <string>

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

void copy_out(const std::string& text, char* out, size_t len) {
  if (out == nullptr || len == 0) {
    return;
  }
  size_t n = text.size() < len - 1 ? text.size() : len - 1;
  std::memcpy(out, text.data(), n);
  out[n] = '\0';
}

}  // namespace

extern "C" {

// The libtorch version of the headers this crate was compiled against.
const char* tp_libtorch_version() {
  return TORCH_VERSION;
}

// The CUDA runtime version libtorch's CUDA part was built with, or -1 when that part is not
// loaded in this process (the default hooks then answer with an error).
int64_t tp_cudart_version() {
  try {
    return at::detail::getCUDAHooks().versionCUDART();
  } catch (...) {
    return -1;
  }
}

// The cuDNN version libtorch's CUDA part was built with, or -1 without one.
int64_t tp_cudnn_version() {
  try {
    const auto& hooks = at::detail::getCUDAHooks();
    return hooks.hasCuDNN() ? hooks.versionCuDNN() : -1;
  } catch (...) {
    return -1;
  }
}

// The number of CUDA devices. When it is 0, `why` receives what libtorch said about it (its
// warning on the first count in the process, e.g. "Found no NVIDIA driver on your system"),
// or an empty string.
int64_t tp_cuda_device_count(char* why, size_t why_len) {
  CollectWarnings collect;
  int64_t count = 0;
  {
    c10::WarningUtils::WarningHandlerGuard guard(&collect);
    try {
      count = at::detail::getCUDAHooks().deviceCount();
    } catch (const std::exception& e) {
      collect.text = e.what();
    }
  }
  copy_out(collect.text, why, why_len);
  return count;
}

// Whether a shared library can be loaded; when not, `why` receives the loader's reason.
int tp_can_load(const char* name, char* why, size_t why_len) {
  void* handle = dlopen(name, RTLD_LAZY | RTLD_LOCAL);
  if (handle == nullptr) {
    const char* error = dlerror();
    copy_out(error == nullptr ? "" : error, why, why_len);
    return 0;
  }
  dlclose(handle);
  return 1;
}

}  // extern "C"
