// The one interface between the crate's C++ (src/ffi/*.cpp) and its Rust (src/ffi/mod.rs, which
// declares every function below once, in the same order). Every .cpp file includes this header,
// and the build's -Wmissing-declarations refuses an exported function that is not declared here.
//
// One error convention. A function that can fail returns `char*`: null when it succeeded, else
// the message of what failed, which the caller frees with tp_free_string. Its results come back
// through out-parameters, written only on success. Its body runs inside tp::protect, so that no
// exception crosses into Rust (where unwinding through a foreign frame is undefined behaviour).
// A function that cannot fail returns its result and is `noexcept`.
//
// One string channel. Every string handed to Rust (results, messages, reasons) is a malloc'd copy
// made by tp::copy_string, and freed by Rust with tp_free_string. When memory runs out while a
// failure is reported, the message is the static tp::kOutOfMemory, which tp_free_string knows not
// to free: a failure is therefore never mistaken for a success.
//
// Handles: `torch::jit::Module*` is tch's `CModule` (torch-sys's `CModule_`), `at::Tensor*` is
// tch's `Tensor` (torch-sys's `C_tensor`); both stay owned by the Rust side unless said otherwise.
#ifndef TCH_PRUNE_FFI_H
#define TCH_PRUNE_FFI_H

#include <cstddef>
#include <cstdint>
#include <exception>
#include <string>

namespace at {
class Tensor;
}
namespace torch {
namespace jit {
struct Module;
}
}  // namespace torch

// A pruned tensor's gradient route (grad_redirect.cpp); owned by the Rust side's `GradRedirect`.
struct TpRedirect;
// A TorchScript forward graph that also returns its linear layers' inputs
// (calibration_graph.cpp); owned by the Rust side's `CalibrationProbe`.
struct TpCalibrationProbe;

// A c10d store and Gloo process group (distributed.cpp); owned by the Rust side's `Group`.
struct TpGroup;

namespace tp {

// The message returned when not even the copy of a failure's message could be allocated.
extern char kOutOfMemory[];

// A malloc'd copy of `text` for the Rust side to free with tp_free_string. Throws std::bad_alloc
// when malloc fails, so that inside tp::protect a lost result becomes a reported failure.
char* copy_string(const std::string& text);

// The message a failing function returns: a copy of `what`, or kOutOfMemory.
char* error_message(const char* what) noexcept;

// Runs `body` (a callable taking nothing) under the error convention: null when it returned,
// the exception's message when it threw.
template <typename Body>
char* protect(Body&& body) noexcept {
  try {
    body();
    return nullptr;
  } catch (const std::exception& e) {
    return error_message(e.what());
  } catch (...) {
    return error_message("C++ exception of an unknown type");
  }
}

}  // namespace tp

extern "C" {

// Strings (tch_prune.cpp)

// Frees a string the C++ side handed over (a result or a failure's message); null is allowed.
void tp_free_string(char* s) noexcept;

// The backend report (backend.cpp). A missing CUDA backend is an answer, not a failure: the three
// numbers never fail, and the count fails only when memory runs out.

// The libtorch version of the headers this crate was compiled against (static, not to be freed).
const char* tp_libtorch_version() noexcept;
// The CUDA runtime version libtorch's CUDA part was built with, or -1 when that part is not
// loaded in this process.
int64_t tp_cudart_version() noexcept;
// The cuDNN version libtorch's CUDA part was built with, or -1 without one.
int64_t tp_cudnn_version() noexcept;
// The number of CUDA devices into `*count`, and into `*why` what libtorch said while counting
// them (its warning on the first count in a process, or the exception it threw), or null when
// it said nothing.
char* tp_cuda_device_count(int64_t* count, char** why) noexcept;

// TorchScript save (script_save.cpp)

// Saves `module` to `path` with its tensors on `device` (-1: the CPU, N: `cuda:N`), from a copy
// of the module when a tensor is elsewhere or when `always_copy` is non-zero.
char* tp_module_save(const torch::jit::Module* module, const char* path, int device,
                     int always_copy) noexcept;

// The gradient route of a pruned tensor (grad_redirect.cpp)

// Installs the hook on `target`'s gradient accumulator; `*redirect` receives the owned handle.
char* tp_redirect_new(const at::Tensor* target, const at::Tensor* orig, const at::Tensor* mask,
                      TpRedirect** redirect) noexcept;
// Makes sure the hook sits on the tensor's current accumulator.
char* tp_redirect_refresh(TpRedirect* redirect) noexcept;
// How many gradients have been handed to `orig` so far.
uint64_t tp_redirect_deliveries(const TpRedirect* redirect) noexcept;
// Records the storages `orig` and `mask` have now.
void tp_redirect_mark_placed(TpRedirect* redirect) noexcept;
// 1 if `orig` or `mask` has another storage than at the last tp_redirect_mark_placed (or none
// was recorded), else 0.
int tp_redirect_moved(const TpRedirect* redirect) noexcept;
// Removes the hook and frees the handle.
void tp_redirect_free(TpRedirect* redirect) noexcept;

// The TorchScript graph for channel removal (shrink_graph.cpp)

// The description of `module`'s forward graph measured on `input`, into `*text` (the line format
// written down in src/model/shrink/graph.rs; free it with tp_free_string).
char* tp_shrink_describe(torch::jit::Module* module, const at::Tensor* input,
                         char** text) noexcept;
// The parameter or buffer `dotted` into `*tensor` (a new handle to the same tensor, owned by the
// caller).
char* tp_shrink_get_tensor(torch::jit::Module* module, const char* dotted,
                           at::Tensor** tensor) noexcept;
// Replaces the parameter or buffer `dotted` by a copy of `value` (same kind, same requires_grad).
char* tp_shrink_set_tensor(torch::jit::Module* module, const char* dotted,
                           const at::Tensor* value) noexcept;
// Sets the int `name` of the submodule at `path` ("" for the root); `*slot` receives 1 for an
// attribute of that instance, 2 for a class constant (shared by every instance of the class), 0
// when the module has neither.
char* tp_shrink_set_int(torch::jit::Module* module, const char* path, const char* name,
                        int64_t value, int* slot) noexcept;
// Rewrites the `groups` constant of the convolutions in the methods of the class of the
// submodule at `path` from `old_groups` to `new_groups`; `*changed` receives how many calls
// changed.
char* tp_shrink_set_groups(torch::jit::Module* module, const char* path, int64_t old_groups,
                           int64_t new_groups, int64_t* changed) noexcept;
// Drops the optimized execution plans every method of every submodule caches.
char* tp_shrink_reset_plans(torch::jit::Module* module) noexcept;


// The calibration probe (calibration_graph.cpp)

// Compiles a copy of `module`'s inlined forward that also returns the input of each top-level
// `aten::linear` whose weight is one of `names` (dotted, one a line); `*taps` receives the
// weight of each returned input, in order, one a line (free it with tp_free_string), `*probe`
// the owned handle.
char* tp_calibration_probe_new(torch::jit::Module* module, const char* names,
                               TpCalibrationProbe** probe, char** taps) noexcept;
// Runs the probe on `count` inputs; `taps` (as many slots as lines in the probe's `taps`)
// receives a new handle to each layer input, owned by the caller.
char* tp_calibration_probe_run(const TpCalibrationProbe* probe, torch::jit::Module* module,
                               at::Tensor* const* inputs, size_t count,
                               at::Tensor** taps) noexcept;
// Frees the probe.
void tp_calibration_probe_free(TpCalibrationProbe* probe) noexcept;

// Operators called by name (op_call.cpp).

// The kinds of TpOpArg, one per kind of argument an exported node gives.
enum TpArgKind {
  TP_ARG_NONE = 0,
  TP_ARG_BOOL = 1,           // i
  TP_ARG_INT = 2,            // i
  TP_ARG_FLOAT = 3,          // f
  TP_ARG_INTS = 4,           // ints[0..len]
  TP_ARG_FLOATS = 5,         // floats[0..len]
  TP_ARG_TENSOR = 6,         // tensors[0]
  TP_ARG_TENSORS = 7,        // tensors[0..len], null for None in a `Tensor?[]`
  TP_ARG_SCALAR_TYPE = 8,    // i: c10::ScalarType
  TP_ARG_MEMORY_FORMAT = 9,  // i: c10::MemoryFormat
  TP_ARG_LAYOUT = 10,        // i: c10::Layout
  TP_ARG_DEVICE = 11,        // text: "cpu", "cuda:0"
  TP_ARG_STRING = 12,        // text
};

// One named argument of an operator call; the fields its kind does not use are ignored.
struct TpOpArg {
  const char* name;
  int kind;
  int64_t i;
  double f;
  const int64_t* ints;
  const double* floats;
  at::Tensor* const* tensors;
  size_t len;
  const char* text;
};

// Calls the operator `name` (`aten::conv2d`) of overload `overload` (`` for the default one)
// through libtorch's dispatcher, with the `count` arguments `args` matched to its schema by name
// and the others at the schema's defaults. `*outputs` receives a malloc'd array of
// `*outputs_count` new handles, each returned tensor in order (a returned list flattened, an
// undefined tensor for a returned non-tensor); the caller frees the array with free().
char* tp_op_call(const char* name, const char* overload, const TpOpArg* args, size_t count,
                 at::Tensor*** outputs, size_t* outputs_count) noexcept;

// Process groups (distributed.cpp). Every collective is called in the same order on every rank
// and waits for its result within the group's timeout.

// Joins the group of `world_size` ranks as `rank`: a TCPStore client of `host:port` (its server
// too when `host_store` is non-zero), keys under `prefix`, then Gloo's rendezvous, which waits for
// every rank up to `timeout_ms`. Gloo's sockets bind to the comma-separated network `interfaces`
// when there are any, else to the loopback address when `host` is one, else to the address this
// machine's hostname resolves to. `*group` receives the owned handle.
char* tp_group_new(const char* host, int port, int rank, int world_size, int host_store,
                   int64_t timeout_ms, const char* prefix, const char* interfaces,
                   TpGroup** group) noexcept;
// Adds NCCL to the group, for its CUDA tensors: `factory` is tp_nccl_backend_new of the NCCL
// library (nccl.cpp), which the Rust side loaded. Its communicators are made by the first
// collective on each device, on every rank.
char* tp_group_use_nccl(TpGroup* group, void* factory) noexcept;
// The collectives below run on Gloo (a dense contiguous CPU tensor) when `nccl` is 0, on the
// group's NCCL (a dense contiguous CUDA tensor) when it is 1.
//
// In place, on every rank: the element-wise sum (`op` 0) or maximum (`op` 1) of `tensor` over
// the ranks.
char* tp_group_all_reduce(TpGroup* group, const at::Tensor* tensor, int op, int nccl) noexcept;
// In place: `tensor` of rank `root` copied into `tensor` of every rank.
char* tp_group_broadcast(TpGroup* group, const at::Tensor* tensor, int root, int nccl) noexcept;
// Every rank's `tensor` (same shape and dtype on all), stacked in rank order into `*gathered`
// (a new handle owned by the caller).
char* tp_group_all_gather(TpGroup* group, const at::Tensor* tensor, int nccl,
                          at::Tensor** gathered) noexcept;
// Returns when every rank has called it.
char* tp_group_barrier(TpGroup* group) noexcept;
// Tears down the group's Gloo connections, keeping its store: after a failed collective, so that
// the ranks still waiting in it fail at once instead of at their timeout. Collectives fail after it.
void tp_group_abort(TpGroup* group) noexcept;
// Sets `key` of the group's store to the `len` bytes at `value`.
char* tp_group_store_set(TpGroup* group, const char* key, const char* value,
                         size_t len) noexcept;
// `*present` receives 1 when `key` is set in the group's store, else 0; does not wait.
char* tp_group_store_check(TpGroup* group, const char* key, int* present) noexcept;
// The value of `key` (text without NUL bytes) into `*value`, waiting for it up to the timeout.
char* tp_group_store_get(TpGroup* group, const char* key, char** value) noexcept;
// Leaves the group and frees the handle.
void tp_group_free(TpGroup* group) noexcept;

// The NCCL library (nccl.cpp, a shared library of its own, loaded by the Rust side when NCCL is
// asked for). The one function outside the error convention: it throws, and is called only by
// tp_group_use_nccl, inside tp::protect. A new c10d::ProcessGroupNCCL of `rank` among `size`
// over the c10d::Store `store` (shared, not taken), as an owned c10d::Backend*.
void* tp_nccl_backend_new(void* store, int rank, int size, int64_t timeout_ms);

}  // extern "C"

#endif  // TCH_PRUNE_FFI_H
