// Routes the gradient of a pruned tensor to its `_orig`, times the mask: the one piece of the
// registry that needs libtorch's C++ autograd API, which tch does not expose.
//
// The tensor modules compute with (`target`) stays an ordinary leaf that requires grad, holding
// `orig * mask` (written outside autograd before each forward pass). A pre-hook on its gradient
// accumulator hands `grad * mask` to `orig`'s accumulator, exactly the gradient PyTorch's
// `orig * mask` graph gives `weight_orig`, and drops the gradient of `target` itself: it never
// gets a `.grad`, so optimizers holding it skip it, and no tensor in any optimizer is ever an
// autograd non-leaf (libtorch warns when optimizers read `.grad` of one).
#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/function_hook.h>
#include <torch/csrc/autograd/variable.h>

#include <atomic>
#include <cstdint>
#include <cstring>
#include <exception>
#include <memory>
#include <optional>

using torch::autograd::FunctionPreHook;
using torch::autograd::Node;
using torch::autograd::variable_list;

namespace {

struct RedirectToOrig final : FunctionPreHook {
  at::Tensor orig;
  at::Tensor mask;
  // Counts the gradients handed to `orig`: an optimizer step updates `orig` through `.data()`,
  // which libtorch does not count as a new version, so this is how the registry knows that
  // `orig` may have changed.
  std::shared_ptr<std::atomic<uint64_t>> deliveries;

  RedirectToOrig(at::Tensor orig, at::Tensor mask, std::shared_ptr<std::atomic<uint64_t>> deliveries)
      : orig(std::move(orig)), mask(std::move(mask)), deliveries(std::move(deliveries)) {}

  variable_list operator()(const variable_list& grads) override {
    const at::Tensor& grad = grads.at(0);
    if (grad.defined() && orig.requires_grad()) {
      deliveries->fetch_add(1, std::memory_order_relaxed);
      auto accumulate = torch::autograd::impl::grad_accumulator(orig);
      // As MulBackward of `mask.to(orig.dtype) * orig` computes it: `grad * mask`. On a GPU a
      // boolean mask multiplies as it is, with the same bits as its cast (x * true = x,
      // x * false = x * 0.0, NaN and sign of zero included), without a full-size float copy of
      // the mask on every backward pass. On CPU libtorch does not vectorize a float-by-bool
      // multiply (8x slower than the cast and a float multiply, measured), so the cast stays.
      // A float mask of another dtype is cast, as PyTorch casts it.
      const bool as_is = mask.scalar_type() == grad.scalar_type() ||
                         (mask.scalar_type() == at::kBool && !grad.is_cpu());
      variable_list masked{as_is ? grad.mul(mask) : grad.mul(mask.to(grad.scalar_type()))};
      (*accumulate)(std::move(masked));
    }
    // An undefined gradient: the accumulator of `target` does nothing.
    return {at::Tensor()};
  }
};

struct Redirect {
  at::Tensor target;
  at::Tensor orig;
  at::Tensor mask;
  c10::intrusive_ptr<Node> accumulator;  // kept alive: autograd only holds it weakly
  FunctionPreHook* hook = nullptr;
  std::shared_ptr<std::atomic<uint64_t>> deliveries = std::make_shared<std::atomic<uint64_t>>(0);
  // The storages `orig` and `mask` had when `target` was last written (tp_redirect_mark_placed).
  // `set_data` (VarStore::set_device, set_kind, half, ...) replaces a tensor's storage without
  // a new version; these weak references keep the old StorageImpl objects (not their memory)
  // allocated, so a storage made later cannot have the same address and a move is always seen.
  std::optional<c10::weak_intrusive_ptr<c10::StorageImpl>> orig_storage;
  std::optional<c10::weak_intrusive_ptr<c10::StorageImpl>> mask_storage;
};

char* copy_message(const char* message) {
  char* copy = static_cast<char*>(std::malloc(std::strlen(message) + 1));
  if (copy != nullptr) std::strcpy(copy, message);
  return copy;
}

void detach_hook(Redirect& r) {
  if (r.accumulator && r.hook != nullptr) {
    auto& hooks = r.accumulator->pre_hooks();
    for (auto it = hooks.begin(); it != hooks.end(); ++it) {
      if (it->get() == r.hook) {
        hooks.erase(it);
        break;
      }
    }
  }
  r.accumulator.reset();
  r.hook = nullptr;
}

// (Re)installs the hook on the current accumulator of `target`. libtorch replaces a leaf's
// accumulator when `set_data` changes its dtype or device: the registry does that to `target`
// when the store was moved (VarStore::set_device, set_kind; see `PrunedTensor::follow_orig`),
// and calls this before the next forward pass. `orig` and `mask` are held as the store's own
// tensors, so the hook sees them where the store moved them.
void attach_hook(Redirect& r) {
  auto accumulator = torch::autograd::impl::grad_accumulator(r.target);
  if (accumulator.get() == r.accumulator.get() && r.hook != nullptr) return;
  detach_hook(r);
  auto hook = std::make_unique<RedirectToOrig>(r.orig, r.mask, r.deliveries);
  r.hook = hook.get();
  accumulator->add_pre_hook(std::move(hook));
  r.accumulator = std::move(accumulator);
}

}  // namespace

extern "C" {

// Returns an owned handle, or null with `*error` set (free it with tp_free_error).
void* tp_redirect_new(const at::Tensor* target, const at::Tensor* orig, const at::Tensor* mask,
                      char** error) {
  try {
    auto r = std::make_unique<Redirect>();
    r->target = *target;
    r->orig = *orig;
    r->mask = *mask;
    attach_hook(*r);
    return r.release();
  } catch (const std::exception& e) {
    *error = copy_message(e.what());
    return nullptr;
  }
}

// Makes sure the hook sits on the tensor's current accumulator. Returns 0, or 1 with `*error`.
int tp_redirect_refresh(void* handle, char** error) {
  try {
    attach_hook(*static_cast<Redirect*>(handle));
    return 0;
  } catch (const std::exception& e) {
    *error = copy_message(e.what());
    return 1;
  }
}

// How many gradients have been handed to `orig` so far.
uint64_t tp_redirect_deliveries(const void* handle) {
  return static_cast<const Redirect*>(handle)->deliveries->load(std::memory_order_relaxed);
}

// Records the storages `orig` and `mask` have now.
void tp_redirect_mark_placed(void* handle) {
  auto& r = *static_cast<Redirect*>(handle);
  r.orig_storage = r.orig.has_storage() ? std::optional(r.orig.storage().getWeakStorageImpl()) : std::nullopt;
  r.mask_storage = r.mask.has_storage() ? std::optional(r.mask.storage().getWeakStorageImpl()) : std::nullopt;
}

// 1 if `orig` or `mask` has another storage than at the last tp_redirect_mark_placed (or none
// was recorded), else 0.
int tp_redirect_moved(const void* handle) {
  const auto& r = *static_cast<const Redirect*>(handle);
  auto same = [](const at::Tensor& t, const std::optional<c10::weak_intrusive_ptr<c10::StorageImpl>>& s) {
    return s.has_value() && t.has_storage() && s->_unsafe_get_target() == t.storage().unsafeGetStorageImpl();
  };
  return same(r.orig, r.orig_storage) && same(r.mask, r.mask_storage) ? 0 : 1;
}

void tp_redirect_free(void* handle) {
  auto* r = static_cast<Redirect*>(handle);
  try {
    detach_hook(*r);
  } catch (...) {
  }
  delete r;
}

void tp_free_error(char* error) { std::free(error); }
}
