#pragma once
/// @file communicator.hpp
/// The `flatmin::comm::communicator` concept: what a distributed run (optimizer/data_parallel.hpp)
/// needs of a process group. Two collectives over raw bytes, both with a fixed block per rank:
///
///     c.rank(), c.size()                       this process's index in [0, size) and the group size
///     c.all_gather(send, recv, n)              recv[i·n, (i+1)·n) ← rank i's send[0, n)
///     c.all_to_all(send, recv, n)              recv[i·n, (i+1)·n) ← rank i's send[rank()·n, …+n)
///
/// Every rank calls the same collectives in the same order with the same n (SPMD); a collective
/// that fails throws (std::runtime_error). There is deliberately no all-reduce: the order in which
/// an MPI_SUM or NCCL sum adds the ranks' values is unspecified, so its floating-point result may
/// differ between runs and rank counts. flatmin moves the ranks' values instead and adds them
/// itself, in rank order (`rank_ordered_mean`), which makes a distributed run bitwise reproducible.
///
/// Implementations: comm::none (one process, the default), comm::mpi (comm/mpi.hpp, MPI-3, CMake
/// target flatmin::mpi), comm::callbacks (comm/callbacks.hpp, any engine through two callables).

#include <concepts>
#include <cstddef>
#include <cstdint>

namespace flatmin::comm {

template <class C>
concept communicator = requires(C& c, const void* send, void* recv, std::size_t n) {
  { c.rank() } -> std::convertible_to<int>;
  { c.size() } -> std::convertible_to<int>;
  c.all_gather(send, recv, n);
  c.all_to_all(send, recv, n);
};

/// Σ_r x_r / P over the ranks' values x_0, …, x_{P-1} (`at(r)`), added in rank order in double and
/// rounded once to E: the definition of "the average over ranks" everywhere in flatmin (a
/// one-process run fed this average reproduces a distributed one bit for bit).
template <class E, class At>
E rank_ordered_mean(int ranks, const At& at) {
  double s = static_cast<double>(at(0));
  for (int r = 1; r < ranks; ++r) s += static_cast<double>(at(r));
  return static_cast<E>(s / ranks);
}

}  // namespace flatmin::comm
