// NCCL for the process groups' CUDA tensors: c10d's ProcessGroupNCCL, which lives in
// libtorch_cuda.so.
//
// This file is built on its own, as a shared library (build.rs), and loaded only when a program
// asks for NCCL (src/distributed/nccl.rs). Compiled into the crate's static library, it would
// tie every binary of the crate to libtorch_cuda.so at start-up, which the `tch-prune` binary
// avoids on purpose (CPU runs do not pay the CUDA backend's start-up). It is only ever called from
// distributed.cpp, inside tp::protect: it throws instead of returning a message, since the
// string channel's functions live in the static library, out of this library's reach.
#define USE_C10D_NCCL 1

#include <c10/cuda/CUDAFunctions.h>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>

#include <chrono>
#include <stdexcept>

#include "tch_prune.h"

extern "C" void* tp_nccl_backend_new(void* store, int rank, int size, int64_t timeout_ms) {
  if (c10::cuda::device_count() == 0) {
    throw std::runtime_error(
        "NCCL needs CUDA devices and this process sees none (no GPU, no driver, or "
        "CUDA_VISIBLE_DEVICES empty): join with the Gloo backend for CPU tensors");
  }
  auto shared = c10::intrusive_ptr<c10d::Store>::unsafe_reclaim_from_nonowning(
      static_cast<c10d::Store*>(store));
  // NCCL's keys (its communicators' unique ids) apart from Gloo's, on the same store.
  auto prefixed = c10::make_intrusive<c10d::PrefixStore>("nccl/", shared);
  auto options = c10d::ProcessGroupNCCL::Options::create();
  options->timeout = std::chrono::milliseconds(timeout_ms);
  c10::intrusive_ptr<c10d::Backend> backend = c10::make_intrusive<c10d::ProcessGroupNCCL>(
      c10::static_intrusive_pointer_cast<c10d::Store>(prefixed), rank, size, options);
  return backend.release();
}
