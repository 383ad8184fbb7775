// C shim over libtorch's c10d for `tch_rpo::dist` (compiled by build.rs with the `dist` feature).
//
// Every function returns nullptr on success, or a heap-allocated error message (free it with
// `tch_rpo_dist_free_error`) and sets `*kind` to one of the TCH_RPO_DIST_* codes below. No C++ exception
// crosses this boundary. Tensors are tch's `at::Tensor*` (torch-sys's `tensor` type).
//
// Built with -DUSE_C10D_GLOO (gloo's headers come from Debian's libgloo-dev, see scripts/setup.sh) and,
// when NCCL's and CUDA's headers are found, -DUSE_C10D_NCCL -DTCH_RPO_NCCL.
#include <torch/csrc/distributed/c10d/Backend.hpp>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#include <torch/csrc/distributed/c10d/Types.hpp>
#ifdef TCH_RPO_NCCL
#include <c10/cuda/CUDAFunctions.h>
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

namespace {

// Error kinds, mirrored in src/dist/ffi.rs.
constexpr int KIND_OTHER = 1;    // any other c10d / libtorch failure
constexpr int KIND_TIMEOUT = 2;  // a bounded wait ran out
constexpr int KIND_PEER = 3;     // a connection to a peer (or the store) was closed, reset or refused

struct Group {
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<c10d::Backend> backend;
  int rank;
  int world;
  bool agent_store;
  std::chrono::milliseconds timeout;
};

bool contains(const std::string& s, const char* needle) {
  return s.find(needle) != std::string::npos;
}

int classify(const std::string& what) {
  if (contains(what, "imed out") || contains(what, "imeout") || contains(what, "TIMEOUT")) {
    return KIND_TIMEOUT;
  }
  if (contains(what, "onnection closed") || contains(what, "onnection reset") ||
      contains(what, "onnection refused") || contains(what, "roken pipe") ||
      contains(what, "ead: ") || contains(what, "peer")) {
    return KIND_PEER;
  }
  return KIND_OTHER;
}

char* dup(const std::string& s) {
  char* out = static_cast<char*>(std::malloc(s.size() + 1));
  if (out != nullptr) {
    std::memcpy(out, s.c_str(), s.size() + 1);
  }
  return out;
}

// The first line of c10's messages holds the reason; the rest is a C++ backtrace.
std::string first_lines(const char* what) {
  std::string s(what == nullptr ? "" : what);
  auto pos = s.find("\nException raised from");
  if (pos != std::string::npos) {
    s.resize(pos);
  }
  return s;
}

template <typename F>
char* guarded(int* kind, F&& body) {
  try {
    body();
    *kind = 0;
    return nullptr;
  } catch (const c10::DistNetworkError& e) {
    std::string what = first_lines(e.what_without_backtrace());
    *kind = classify(what) == KIND_TIMEOUT ? KIND_TIMEOUT : KIND_PEER;
    return dup(what);
  } catch (const c10::Error& e) {
    std::string what = first_lines(e.what_without_backtrace());
    *kind = classify(what);
    return dup(what);
  } catch (const std::exception& e) {
    std::string what = first_lines(e.what());
    *kind = classify(what);
    return dup(what);
  } catch (...) {
    *kind = KIND_OTHER;
    return dup("unknown C++ exception");
  }
}

c10d::ReduceOp reduce_op(int op) {
  switch (op) {
    case 0:
      return c10d::ReduceOp(c10d::ReduceOp::SUM);
    case 1:
      return c10d::ReduceOp(c10d::ReduceOp::MAX);
    case 2:
      return c10d::ReduceOp(c10d::ReduceOp::MIN);
    default:
      throw std::invalid_argument("unknown reduce op " + std::to_string(op));
  }
}

void wait(Group* g, const c10::intrusive_ptr<c10d::Work>& work) {
  // Gloo's own operations time out after the group's timeout; the extra bound makes sure the wait
  // itself never outlives it.
  if (!work->wait(g->timeout)) {
    throw std::runtime_error("Timed out after " + std::to_string(g->timeout.count()) + " ms");
  }
}

// The network device Gloo binds to, as torch.distributed picks it: the interface named by
// GLOO_SOCKET_IFNAME if set; the loopback when MASTER_ADDR is a loopback address (a one-host job); else the
// address this host's name resolves to (falling back to the loopback).
std::shared_ptr<::gloo::transport::Device> gloo_device(const std::string& host) {
  const char* iface = std::getenv("GLOO_SOCKET_IFNAME");
  if (iface != nullptr && iface[0] != '\0') {
    return c10d::ProcessGroupGloo::createDeviceForInterface(std::string(iface));
  }
  if (host == "localhost" || host.rfind("127.", 0) == 0 || host == "::1") {
    return c10d::ProcessGroupGloo::createDeviceForHostname(host);
  }
  return c10d::ProcessGroupGloo::createDefaultDevice();
}

}  // namespace

extern "C" {

void tch_rpo_dist_free_error(char* message) { std::free(message); }

int tch_rpo_dist_nccl_compiled() {
#ifdef TCH_RPO_NCCL
  return 1;
#else
  return 0;
#endif
}

// Connects to (rank 0 without the agent store: hosts) the TCPStore at host:port, then builds a Gloo
// (device_index < 0) or NCCL (CUDA device device_index) process group.
char* tch_rpo_dist_new(const char* host, int port, int rank, int world, int agent_store,
                       int device_index, int64_t timeout_ms, void** out, int* kind) {
  *out = nullptr;
  return guarded(kind, [&] {
    auto timeout = std::chrono::milliseconds(timeout_ms);
    c10d::TCPStoreOptions opts;
    opts.port = static_cast<std::uint16_t>(port);
    opts.isServer = rank == 0 && agent_store == 0;
    opts.numWorkers = static_cast<std::size_t>(world);
    opts.waitWorkers = agent_store == 0;
    opts.timeout = timeout;
    auto tcp = c10::make_intrusive<c10d::TCPStore>(std::string(host), opts);
    // The agent's store also holds torchrun's own keys: keep ours under a prefix.
    auto store = c10::make_intrusive<c10d::PrefixStore>("tch_rpo_dist", tcp);
    auto g = std::make_unique<Group>();
    g->store = store;
    g->rank = rank;
    g->world = world;
    g->agent_store = agent_store != 0;
    g->timeout = timeout;
    if (device_index < 0) {
      auto options = c10d::ProcessGroupGloo::Options::create(timeout);
      options->devices.push_back(gloo_device(std::string(host)));
      g->backend = c10::make_intrusive<c10d::ProcessGroupGloo>(store, rank, world, options);
    } else {
#ifdef TCH_RPO_NCCL
      c10::cuda::set_device(static_cast<c10::DeviceIndex>(device_index));
      auto options = c10d::ProcessGroupNCCL::Options::create();
      options->timeout = timeout;
      g->backend = c10::make_intrusive<c10d::ProcessGroupNCCL>(store, rank, world, options);
#else
      throw std::runtime_error(
          "this build of tch-rpo has no NCCL process group (NCCL's or CUDA's headers were not found "
          "when it was compiled)");
#endif
    }
    *out = g.release();
  });
}

// Shuts the backend down (abort() after a failed collective: no waiting on peers), then frees the group.
void tch_rpo_dist_free(void* group, int failed) {
  auto* g = static_cast<Group*>(group);
  try {
    if (failed != 0) {
      g->backend->abort();
    } else {
      g->backend->shutdown();
    }
  } catch (...) {
    // Nothing to report to: the group is being dropped.
  }
  delete g;
}

// In place: tensor = op over ranks of tensor.
char* tch_rpo_dist_all_reduce(void* group, at::Tensor* tensor, int op, int* kind) {
  return guarded(kind, [&] {
    auto* g = static_cast<Group*>(group);
    std::vector<at::Tensor> tensors{*tensor};
    c10d::AllreduceOptions opts;
    opts.reduceOp = reduce_op(op);
    opts.timeout = g->timeout;
    wait(g, g->backend->allreduce(tensors, opts));
  });
}

// In place: tensor = root's tensor.
char* tch_rpo_dist_broadcast(void* group, at::Tensor* tensor, int root, int* kind) {
  return guarded(kind, [&] {
    auto* g = static_cast<Group*>(group);
    std::vector<at::Tensor> tensors{*tensor};
    c10d::BroadcastOptions opts;
    opts.rootRank = root;
    opts.rootTensor = 0;
    opts.timeout = g->timeout;
    wait(g, g->backend->broadcast(tensors, opts));
  });
}

char* tch_rpo_dist_barrier(void* group, int* kind) {
  return guarded(kind, [&] {
    auto* g = static_cast<Group*>(group);
    c10d::BarrierOptions opts;
    opts.timeout = g->timeout;
    wait(g, g->backend->barrier(opts));
  });
}

// After collective number `seq` failed: reports this rank's failure in the store, then waits up to
// window_ms for every other rank to report the same. Writes the ranks that did not (dead, hung, or still
// blocked elsewhere) to missing[0..*n_missing] (missing holds world entries). When the store itself is
// unreachable and rank 0 hosts it, reports rank 0.
char* tch_rpo_dist_unresponsive(void* group, int64_t seq, int64_t window_ms, int* missing,
                                int* n_missing, int* kind) {
  *n_missing = 0;
  return guarded(kind, [&] {
    auto* g = static_cast<Group*>(group);
    auto key = [&](int r) {
      return "failed/" + std::to_string(seq) + "/" + std::to_string(r);
    };
    std::vector<bool> seen(static_cast<std::size_t>(g->world), false);
    seen[static_cast<std::size_t>(g->rank)] = true;
    try {
      g->store->set(key(g->rank), std::vector<uint8_t>{1});
      auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(window_ms);
      while (true) {
        bool all = true;
        for (int r = 0; r < g->world; ++r) {
          if (!seen[static_cast<std::size_t>(r)]) {
            seen[static_cast<std::size_t>(r)] = g->store->check({key(r)});
            all = all && seen[static_cast<std::size_t>(r)];
          }
        }
        if (all || std::chrono::steady_clock::now() >= deadline) {
          break;
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
      }
    } catch (const std::exception&) {
      if (!g->agent_store && g->rank != 0) {
        missing[0] = 0;
        *n_missing = 1;
        return;
      }
      throw;
    }
    for (int r = 0; r < g->world; ++r) {
      if (!seen[static_cast<std::size_t>(r)]) {
        missing[(*n_missing)++] = r;
      }
    }
  });
}

}  // extern "C"
