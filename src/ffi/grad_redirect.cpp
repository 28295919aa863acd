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
#include <memory>
#include <optional>

#include "tch_prune.h"

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

  RedirectToOrig(at::Tensor orig_, at::Tensor mask_, std::shared_ptr<std::atomic<uint64_t>> deliveries_)
      : orig(std::move(orig_)), mask(std::move(mask_)), deliveries(std::move(deliveries_)) {}

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

}  // namespace

// Declared in tch_prune.h: the handle Rust holds.
struct TpRedirect {
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

namespace {

void detach_hook(TpRedirect& r) {
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
void attach_hook(TpRedirect& r) {
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

char* tp_redirect_new(const at::Tensor* target, const at::Tensor* orig, const at::Tensor* mask,
                      TpRedirect** redirect) noexcept {
  return tp::protect([&] {
    auto r = std::make_unique<TpRedirect>();
    r->target = *target;
    r->orig = *orig;
    r->mask = *mask;
    attach_hook(*r);
    *redirect = r.release();
  });
}

char* tp_redirect_refresh(TpRedirect* redirect) noexcept {
  return tp::protect([&] { attach_hook(*redirect); });
}

uint64_t tp_redirect_deliveries(const TpRedirect* redirect) noexcept {
  return redirect->deliveries->load(std::memory_order_relaxed);
}

void tp_redirect_mark_placed(TpRedirect* redirect) noexcept {
  auto& r = *redirect;
  r.orig_storage = r.orig.has_storage() ? std::optional(r.orig.storage().getWeakStorageImpl()) : std::nullopt;
  r.mask_storage = r.mask.has_storage() ? std::optional(r.mask.storage().getWeakStorageImpl()) : std::nullopt;
}

int tp_redirect_moved(const TpRedirect* redirect) noexcept {
  const auto& r = *redirect;
  auto same = [](const at::Tensor& t, const std::optional<c10::weak_intrusive_ptr<c10::StorageImpl>>& s) {
    return s.has_value() && t.has_storage() && s->_unsafe_get_target() == t.storage().unsafeGetStorageImpl();
  };
  return same(r.orig, r.orig_storage) && same(r.mask, r.mask_storage) ? 0 : 1;
}

void tp_redirect_free(TpRedirect* redirect) noexcept {
  // The hook is removed if it can be; the handle is freed in any case.
  try {
    detach_hook(*redirect);
  } catch (...) {
  }
  delete redirect;
}

}  // extern "C"
