#pragma once
/// @file none.hpp
/// `comm::none`: one process, the default communicator. Its collectives copy the caller's block
/// (a group of one), so a distributed composition run with it is the plain optimizer's step; the
/// optimizer itself (optimizer/sharpness_aware.hpp) never communicates.

#include <cstddef>
#include <cstring>

#include "communicator.hpp"

namespace flatmin::comm {

struct none {
  static constexpr const char* name = "none";
  int rank() const { return 0; }
  int size() const { return 1; }
  void all_gather(const void* send, void* recv, std::size_t n) const {
    if (n && send != recv) std::memmove(recv, send, n);
  }
  void all_to_all(const void* send, void* recv, std::size_t n) const { all_gather(send, recv, n); }
};

static_assert(communicator<none>);

}  // namespace flatmin::comm
