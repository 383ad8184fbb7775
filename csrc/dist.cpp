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

#include <arpa/inet.h>
#include <dirent.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace {

// Error kinds, mirrored in src/dist/ffi.rs.
constexpr int KIND_OTHER = 1;    // any other c10d / libtorch failure
constexpr int KIND_TIMEOUT = 2;  // a bounded wait ran out
constexpr int KIND_PEER = 3;     // a connection to a peer (or the store) was closed, reset or refused
constexpr int KIND_STORE_STALLED = 4;  // a store client's connection stopped answering (watchdog fired)
constexpr int KIND_STORE_CLOSED = 5;   // a store client's connection was closed while setting up

// An error whose kind is known where it is thrown.
struct KindedError : std::runtime_error {
  int kind;
  KindedError(int k, const std::string& what) : std::runtime_error(what), kind(k) {}
};

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
      contains(what, "ead: ") || contains(what, "peer") || contains(what, "likely closed")) {
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
  } catch (const KindedError& e) {
    *kind = e.kind;
    return dup(e.what());
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

// The file descriptors of this process's connected sockets whose peer port is `port`: the connections of
// store clients to a store on that port (the store's own accepted connections have it as local port).
std::set<int> store_sockets(int port) {
  std::set<int> fds;
  DIR* dir = opendir("/proc/self/fd");
  if (dir == nullptr) {
    return fds;
  }
  while (dirent* entry = readdir(dir)) {
    char* end = nullptr;
    long fd = std::strtol(entry->d_name, &end, 10);
    if (end == entry->d_name || *end != '\0' || fd == dirfd(dir)) {
      continue;
    }
    struct stat st {};
    if (fstat(static_cast<int>(fd), &st) != 0 || !S_ISSOCK(st.st_mode)) {
      continue;
    }
    sockaddr_storage peer{};
    socklen_t len = sizeof(peer);
    if (getpeername(static_cast<int>(fd), reinterpret_cast<sockaddr*>(&peer), &len) != 0) {
      continue;
    }
    int peer_port = -1;
    if (peer.ss_family == AF_INET) {
      peer_port = ntohs(reinterpret_cast<sockaddr_in*>(&peer)->sin_port);
    } else if (peer.ss_family == AF_INET6) {
      peer_port = ntohs(reinterpret_cast<sockaddr_in6*>(&peer)->sin6_port);
    }
    if (peer_port == port) {
      fds.insert(static_cast<int>(fd));
    }
  }
  closedir(dir);
  return fds;
}

// Bounds libtorch's TCPStore client while it sets up. Its constructor connects, validates, pings and (for a
// client that is counted as a worker) adds itself to the store's worker count; the ping's and the add's
// receives have no timeout, so a store that stops answering would block it forever. When armed, after
// `timeout` (plus a short grace, so that libtorch's own bounded waits report first) the watchdog shuts down
// the store connections opened since it started, which makes the blocked receive fail at once, and keeps
// doing so (libtorch retries the connect) until the constructor gives up. Afterwards `opened()` names those
// connections so that their later receives and sends can be bounded (bound_socket).
class StoreWatchdog {
 public:
  StoreWatchdog(int port, std::chrono::milliseconds timeout, bool armed)
      : port_(port), before_(store_sockets(port)) {
    if (armed) {
      thread_ = std::thread([this, timeout] { run(timeout + std::chrono::milliseconds(250)); });
    }
  }
  StoreWatchdog(const StoreWatchdog&) = delete;
  StoreWatchdog& operator=(const StoreWatchdog&) = delete;
  ~StoreWatchdog() { finish(); }

  void finish() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      done_ = true;
    }
    cv_.notify_all();
    if (thread_.joinable()) {
      thread_.join();
    }
  }

  // Whether the watchdog shut a connection down.
  bool fired() const { return fired_.load(); }

  std::vector<int> opened() const {
    std::vector<int> fds;
    for (int fd : store_sockets(port_)) {
      if (before_.count(fd) == 0) {
        fds.push_back(fd);
      }
    }
    return fds;
  }

 private:
  void run(std::chrono::milliseconds timeout) {
    std::unique_lock<std::mutex> lock(mutex_);
    if (cv_.wait_for(lock, timeout, [this] { return done_; })) {
      return;
    }
    while (!done_) {
      for (int fd : opened()) {
        if (::shutdown(fd, SHUT_RDWR) == 0) {
          fired_ = true;
        }
      }
      cv_.wait_for(lock, std::chrono::milliseconds(20), [this] { return done_; });
    }
  }

  int port_;
  std::set<int> before_;
  std::mutex mutex_;
  std::condition_variable cv_;
  bool done_ = false;
  std::atomic<bool> fired_{false};
  std::thread thread_;
};

// Every later receive and send on socket `fd` fails after `timeout` without progress (c10d's tcputil turns
// EAGAIN into a "Socket Timeout" error) instead of blocking forever.
void bound_socket(int fd, std::chrono::milliseconds timeout) {
  timeval tv{};
  tv.tv_sec = static_cast<time_t>(timeout.count() / 1000);
  tv.tv_usec = static_cast<suseconds_t>((timeout.count() % 1000) * 1000);
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
}

// libtorch's TCPStore at host:port, set up under a StoreWatchdog (armed for a client of the store) and
// with its connections bounded by `timeout` afterwards. A client's failure is KIND_STORE_STALLED when the
// watchdog cut it, KIND_STORE_CLOSED when the store closed the connection.
c10::intrusive_ptr<c10d::TCPStore> bounded_store(const std::string& host,
                                                  const c10d::TCPStoreOptions& opts) {
  bool client = !opts.isServer;
  StoreWatchdog watchdog(opts.port, opts.timeout, client);
  c10::intrusive_ptr<c10d::TCPStore> store;
  try {
    store = c10::make_intrusive<c10d::TCPStore>(host, opts);
  } catch (const std::exception& e) {
    watchdog.finish();
    if (!client) {
      throw;
    }
    const auto* c10_error = dynamic_cast<const c10::Error*>(&e);
    std::string what = first_lines(c10_error != nullptr ? c10_error->what_without_backtrace() : e.what());
    if (watchdog.fired()) {
      throw KindedError(KIND_STORE_STALLED,
                        "no answer for " + std::to_string(opts.timeout.count()) +
                            " ms; the watchdog closed the connection (" + what + ")");
    }
    if (classify(what) == KIND_PEER) {
      throw KindedError(KIND_STORE_CLOSED, what);
    }
    throw;
  }
  watchdog.finish();
  for (int fd : watchdog.opened()) {
    bound_socket(fd, opts.timeout);
  }
  return store;
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
    auto tcp = bounded_store(std::string(host), opts);
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
