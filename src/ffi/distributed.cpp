// Process groups: PyTorch's own c10d (the `TCPStore` rendezvous torchrun hosts, and Gloo for CPU
// tensors), which libtorch_cpu.so ships and tch does not expose.
//
// ProcessGroupGloo.hpp includes Gloo's headers, which PyTorch's wheels do not ship: the ones it
// needs are vendored under src/ffi/vendor/gloo/ (with Gloo's licence; vendor/README.md says from
// which commit and why the layout cannot differ). Gloo's types appear in ProcessGroupGloo only
// behind shared_ptr / unique_ptr, this file calls no Gloo function (only c10d's exported
// constructor, `Options::create_default` and the virtual collectives of c10d::Backend), so the
// object compiled here references no Gloo symbol.
#define USE_C10D_GLOO 1

#include <c10/util/Exception.h>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <sstream>
#include <thread>
#include <stdexcept>
#include <string>
#include <vector>

#include "tch_prune.h"

struct TpGroup {
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<c10d::Backend> backend;
  // For CUDA tensors, when the program asked for NCCL (nccl.cpp).
  c10::intrusive_ptr<c10d::Backend> nccl;
  std::chrono::milliseconds timeout;
  // The heartbeat: a thread that counts up the key `alive/<rank>` twice a second, on a store
  // connection of its own, so that a rank whose collective broke can tell a rank that is gone
  // from one still at work.
  std::thread heartbeat;
  std::mutex mutex;
  std::condition_variable wake;
  bool stop = false;

  ~TpGroup() {
    if (nccl) {
      try {
        // ProcessGroupNCCL warns when destroyed without it, and its watchdog stops here.
        nccl->shutdown();
      } catch (...) {
        // Leaving anyway.
      }
    }
    {
      std::lock_guard<std::mutex> lock(mutex);
      stop = true;
    }
    wake.notify_all();
    if (heartbeat.joinable()) heartbeat.join();
  }
};

namespace {

// Waits for a collective, within the group's timeout; Gloo rethrows a peer's failure (a closed
// connection, a timeout) here.
void finish(TpGroup* group, const c10::intrusive_ptr<c10d::Work>& work) {
  if (!work->wait(group->timeout)) {
    throw std::runtime_error("the collective did not complete within the timeout");
  }
}

// The group's Gloo backend, or its NCCL one when `nccl` is non-zero; an error once
// tp_group_abort has torn them down.
c10d::Backend& backend(TpGroup* group, int nccl = 0) {
  if (!group->backend) {
    throw std::runtime_error("the process group failed earlier and was torn down");
  }
  if (nccl == 0) return *group->backend;
  if (!group->nccl) throw std::logic_error("the group has no NCCL backend");
  return *group->nccl;
}

std::vector<uint8_t> bytes_of(const char* value, size_t len) {
  return std::vector<uint8_t>(value, value + len);
}

// Where Gloo's sockets listen. Python's torch.distributed honours GLOO_SOCKET_IFNAME (a list of
// interfaces, one device each); c10d's own default resolves this machine's hostname, which
// fails or picks an unreachable address on machines whose hostname is not in /etc/hosts. When
// the store is on a loopback address every rank is on this machine, so loopback is always right.
c10::intrusive_ptr<c10d::ProcessGroupGloo::Options> gloo_devices(
    const std::string& host, const std::string& interfaces, std::chrono::milliseconds timeout) {
  auto options = c10d::ProcessGroupGloo::Options::create(timeout);
  std::stringstream names(interfaces);
  for (std::string name; std::getline(names, name, ',');) {
    if (name.empty()) {
      continue;
    }
    try {
      options->devices.push_back(c10d::ProcessGroupGloo::createDeviceForInterface(name));
    } catch (const std::exception&) {
      // Gloo's own message is an assertion's ("ifa != nullptr").
      throw std::invalid_argument("GLOO_SOCKET_IFNAME names '" + name +
                                  "', which is no network interface of this machine with an "
                                  "address: name one that `ip addr` lists, or unset it");
    }
  }
  if (options->devices.empty()) {
    const bool loopback = host == "localhost" || host == "::1" || host.rfind("127.", 0) == 0;
    options->devices.push_back(loopback
                                   ? c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1")
                                   : c10d::ProcessGroupGloo::createDefaultDevice());
  }
  return options;
}

}  // namespace

extern "C" {

char* tp_group_new(const char* host, int port, int rank, int world_size, int host_store,
                   int64_t timeout_ms, const char* prefix, const char* interfaces,
                   TpGroup** group) noexcept {
  return tp::protect([&] {
    const std::chrono::milliseconds timeout(timeout_ms);
    // Before the store: an interface that does not exist fails every rank at once, naming it,
    // instead of rank 0 leaving and the others timing out on its store.
    auto gloo_options = gloo_devices(host, interfaces, timeout);
    c10d::TCPStoreOptions options;
    options.port = static_cast<std::uint16_t>(port);
    options.isServer = host_store != 0;
    options.numWorkers = static_cast<std::size_t>(world_size);
    // The server does not wait for the workers here: the process group's rendezvous below
    // waits for every rank, with the same timeout and a clearer failure.
    options.waitWorkers = false;
    options.timeout = timeout;
    // Several stores may share the launcher's address (torchrun's agent holds one there).
    options.multiTenant = true;
    auto tcp = c10::make_intrusive<c10d::TCPStore>(host, options);
    auto store = c10::make_intrusive<c10d::PrefixStore>(prefix, tcp);
    auto backend = c10::make_intrusive<c10d::ProcessGroupGloo>(
        c10::static_intrusive_pointer_cast<c10d::Store>(store), rank, world_size, gloo_options);
    auto owned = std::make_unique<TpGroup>();
    TpGroup* made = owned.get();
    made->store = c10::static_intrusive_pointer_cast<c10d::Store>(store);
    made->backend = c10::static_intrusive_pointer_cast<c10d::Backend>(backend);
    made->timeout = timeout;
    c10::intrusive_ptr<c10d::Store> beat_store = made->store->clone();
    const std::string key = "alive/" + std::to_string(rank);
    made->heartbeat = std::thread([made, beat_store, key] {
      std::unique_lock<std::mutex> lock(made->mutex);
      for (uint64_t beat = 1; !made->stop; ++beat) {
        lock.unlock();
        try {
          const std::string text = std::to_string(beat);
          beat_store->set(key, std::vector<uint8_t>(text.begin(), text.end()));
        } catch (...) {
          // The store is gone: the collectives will say so.
        }
        lock.lock();
        made->wake.wait_for(lock, std::chrono::milliseconds(500), [made] { return made->stop; });
      }
    });
    *group = owned.release();
  });
}

char* tp_group_use_nccl(TpGroup* group, void* factory) noexcept {
  return tp::protect([&] {
    using Factory = decltype(&tp_nccl_backend_new);
    auto made = reinterpret_cast<Factory>(factory)(group->store.get(), backend(group).getRank(),
                                                   backend(group).getSize(),
                                                   group->timeout.count());
    group->nccl = c10::intrusive_ptr<c10d::Backend>::reclaim(static_cast<c10d::Backend*>(made));
  });
}

char* tp_group_all_reduce(TpGroup* group, const at::Tensor* tensor, int op, int nccl) noexcept {
  return tp::protect([&] {
    std::vector<at::Tensor> tensors{*tensor};
    c10d::AllreduceOptions options;
    options.reduceOp = op == 1 ? c10d::ReduceOp(c10d::ReduceOp::MAX)
                               : c10d::ReduceOp(c10d::ReduceOp::SUM);
    options.timeout = group->timeout;
    finish(group, backend(group, nccl).allreduce(tensors, options));
  });
}

char* tp_group_broadcast(TpGroup* group, const at::Tensor* tensor, int root, int nccl) noexcept {
  return tp::protect([&] {
    std::vector<at::Tensor> tensors{*tensor};
    c10d::BroadcastOptions options;
    options.rootRank = root;
    options.timeout = group->timeout;
    finish(group, backend(group, nccl).broadcast(tensors, options));
  });
}

char* tp_group_all_gather(TpGroup* group, const at::Tensor* tensor, int nccl,
                          at::Tensor** gathered) noexcept {
  return tp::protect([&] {
    std::vector<at::Tensor> inputs{*tensor};
    std::vector<std::vector<at::Tensor>> outputs(1);
    for (int r = 0; r < backend(group).getSize(); ++r) {
      outputs[0].push_back(at::empty_like(*tensor));
    }
    c10d::AllgatherOptions options;
    options.timeout = group->timeout;
    finish(group, backend(group, nccl).allgather(outputs, inputs, options));
    *gathered = new at::Tensor(at::stack(outputs[0]));
  });
}

char* tp_group_barrier(TpGroup* group) noexcept {
  return tp::protect([&] {
    c10d::BarrierOptions options;
    options.timeout = group->timeout;
    finish(group, backend(group).barrier(options));
  });
}

void tp_group_abort(TpGroup* group) noexcept {
  try {
    if (group->nccl) group->nccl->abort();
    group->nccl.reset();
    group->backend.reset();
  } catch (...) {
    // Tearing down a failed group: its connections close either way.
  }
}

char* tp_group_store_set(TpGroup* group, const char* key, const char* value,
                         size_t len) noexcept {
  return tp::protect([&] { group->store->set(key, bytes_of(value, len)); });
}

char* tp_group_store_check(TpGroup* group, const char* key, int* present) noexcept {
  return tp::protect([&] { *present = group->store->check({key}) ? 1 : 0; });
}

char* tp_group_store_get(TpGroup* group, const char* key, char** value) noexcept {
  return tp::protect([&] {
    const std::vector<uint8_t> bytes = group->store->get(key);
    *value = tp::copy_string(std::string(bytes.begin(), bytes.end()));
  });
}

void tp_group_free(TpGroup* group) noexcept { delete group; }

}  // extern "C"
