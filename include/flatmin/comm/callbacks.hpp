#pragma once
/// @file callbacks.hpp
/// `comm::callbacks`: a communicator over two callables the caller supplies, so that libtorch's
/// c10d (ProcessGroup::allgather / alltoall_base), Gloo, a NCCL wrapper of the caller's, or any other
/// engine plugs in without flatmin depending on it:
///
///     flatmin::comm::callbacks c(rank, world,
///         [&](const void* send, void* recv, std::size_t n) { ... all-gather n bytes per rank ... },
///         [&](const void* send, void* recv, std::size_t n) { ... all-to-all, n bytes per pair ... });
///
/// The semantics are those of comm/communicator.hpp (blocks in rank order, host memory). The
/// all-to-all may be left empty: it is then done with the all-gather (each rank gathers every
/// rank's whole send buffer and keeps its own column), P times the traffic. There is no all-reduce
/// callable on purpose: its summation order is the engine's, and flatmin's results would stop
/// being bitwise reproducible (flatmin adds the gathered values itself, in rank order).

#include <cstddef>
#include <cstring>
#include <functional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "communicator.hpp"

namespace flatmin::comm {

class callbacks {
 public:
  static constexpr const char* name = "callbacks";
  using collective = std::function<void(const void* send, void* recv, std::size_t bytes)>;

  /// Throws std::invalid_argument for a size below 1, a rank outside [0, size) or no all-gather.
  callbacks(int rank, int size, collective all_gather, collective all_to_all = {})
      : rank_(rank), size_(size), gather_(std::move(all_gather)), to_all_(std::move(all_to_all)) {
    if (size < 1)
      throw std::invalid_argument("flatmin::comm::callbacks: size = " + std::to_string(size) + " < 1");
    if (rank < 0 || rank >= size)
      throw std::invalid_argument("flatmin::comm::callbacks: rank = " + std::to_string(rank) +
                                  " is not in [0, " + std::to_string(size) + ")");
    if (!gather_) throw std::invalid_argument("flatmin::comm::callbacks: all_gather is empty");
  }

  int rank() const { return rank_; }
  int size() const { return size_; }

  void all_gather(const void* send, void* recv, std::size_t n) const { gather_(send, recv, n); }

  void all_to_all(const void* send, void* recv, std::size_t n) const {
    if (to_all_) return to_all_(send, recv, n);
    if (n == 0) return;
    const std::size_t p = static_cast<std::size_t>(size_);
    std::vector<unsigned char> all(p * p * n);
    gather_(send, all.data(), p * n);
    auto* out = static_cast<unsigned char*>(recv);
    for (std::size_t i = 0; i < p; ++i)
      std::memcpy(out + i * n, all.data() + i * p * n + static_cast<std::size_t>(rank_) * n, n);
  }

 private:
  int rank_;
  int size_;
  collective gather_;
  collective to_all_;
};

static_assert(communicator<callbacks>);

}  // namespace flatmin::comm
