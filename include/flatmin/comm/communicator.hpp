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
/// Memory: a communicator moves host memory unless it declares `static constexpr memory_space
/// space = memory_space::device` (comm::nccl): then every buffer it is handed is device memory, and
/// data_parallel stages its small host messages (votes, statistics) through device buffers.
/// `space_of<C>` reads the declaration.
///
/// Implementations: comm::none (one process, the default), comm::mpi (comm/mpi.hpp, MPI-3, CMake
/// target flatmin::mpi), comm::callbacks (comm/callbacks.hpp, any engine through two callables),
/// comm::nccl (comm/nccl.hpp, CUDA device memory, CMake target flatmin::nccl).

#include <concepts>
#include <cstddef>
#include <cstdint>

#include "../config.hpp"

namespace flatmin::comm {

template <class C>
concept communicator = requires(C& c, const void* send, void* recv, std::size_t n) {
  { c.rank() } -> std::convertible_to<int>;
  { c.size() } -> std::convertible_to<int>;
  c.all_gather(send, recv, n);
  c.all_to_all(send, recv, n);
};

/// The memory a communicator's collectives move: C::space when declared, else host.
template <class C>
inline constexpr memory_space space_of = [] {
  if constexpr (requires { C::space; })
    return static_cast<memory_space>(C::space);
  else
    return memory_space::host;
}();

/// Σ_r x_r / P over the ranks' values x_0, …, x_{P-1} (`at(r)`), added in rank order in double and
/// rounded once to E: the definition of "the average over ranks" everywhere in flatmin (a
/// one-process run fed this average reproduces a distributed one bit for bit).
template <class E, class At>
E rank_ordered_mean(int ranks, const At& at) {
  double s = static_cast<double>(at(0));
  for (int r = 1; r < ranks; ++r) s += static_cast<double>(at(r));
  return static_cast<E>(s / ranks);
}

/// The rank holding all `total` samples (k[q] == total), or -1 (also when there are no counts).
inline int sole_rank(const double* k, int ranks, double total) {
  if (k)
    for (int q = 0; q < ranks; ++q)
      if (k[q] == total) return q;
  return -1;
}

/// `rank_ordered_mean` of n entries, or with counts `k` the count-weighted mean: Σ_r k_r x_r / K
/// with K = `total` = Σ_r k_r > 0, over the ranks with k_r > 0 (a rank with k_r = 0 adds nothing,
/// whatever its x_r), added in rank order in double from 0 and rounded once to E. That is the mean
/// over every rank's samples when rank r's value is a mean over its k_r samples (ESAM's subset
/// gradients); when one rank holds all K samples, its values pass unchanged (the products would
/// round for E = double). Rank r's values are recv[r·stride, r·stride + n), and out[i] ← the mean
/// of entry i (out may be the caller's gradient view). Worked in chunks that stay in cache, rank
/// by rank inside a chunk so that the loops vectorise: the same additions in the same order as the
/// definitions, hence the same bits, and no pass over a buffer of doubles in memory.
/// `rank_mean_entry` is the same mean entry by entry, for a backend that runs one thread per entry
/// (data_parallel over backend::thrust): the same additions in the same order, hence the same bits.
template <class E>
void rank_ordered_mean_into(E* out, const E* recv, int ranks, std::size_t n, std::size_t stride,
                            const double* k = nullptr, double total = 0) {
  if (const int q = sole_rank(k, ranks, total); q >= 0) {  // one rank's mean is the mean
    const E* r = recv + static_cast<std::size_t>(q) * stride;
    for (std::size_t i = 0; i < n; ++i) out[i] = r[i];
    return;
  }
  constexpr std::size_t chunk = 512;
  double sum[chunk];
  const double divisor = k ? total : static_cast<double>(ranks);
  for (std::size_t a = 0; a < n; a += chunk) {
    const std::size_t m = n - a < chunk ? n - a : chunk;
    if (!k) {
      for (std::size_t i = 0; i < m; ++i) sum[i] = static_cast<double>(recv[a + i]);
      for (int q = 1; q < ranks; ++q) {
        const E* r = recv + static_cast<std::size_t>(q) * stride + a;
        for (std::size_t i = 0; i < m; ++i) sum[i] += static_cast<double>(r[i]);
      }
    } else {
      for (std::size_t i = 0; i < m; ++i) sum[i] = 0;
      for (int q = 0; q < ranks; ++q) {
        if (!(k[q] > 0)) continue;
        const E* r = recv + static_cast<std::size_t>(q) * stride + a;
        const double w = k[q];
        for (std::size_t i = 0; i < m; ++i) sum[i] += w * static_cast<double>(r[i]);
      }
    }
    for (std::size_t i = 0; i < m; ++i) out[a + i] = static_cast<E>(sum[i] / divisor);
  }
}

/// out[i] ← rank_ordered_mean_into's entry i, one call per entry (a backend's for_each_index): `k`
/// (the counts, or null) in the backend's memory and `sole` = sole_rank(counts, ranks, total).
template <class E>
struct rank_mean_entry {
  E* out;
  const E* recv;
  const double* k;
  std::size_t stride;
  double total;
  int ranks;
  int sole;
  FLATMIN_HD void operator()(std::size_t i) const {
    if (sole >= 0) {
      out[i] = recv[static_cast<std::size_t>(sole) * stride + i];
      return;
    }
    double s;
    if (!k) {
      s = at(0, i);
      for (int q = 1; q < ranks; ++q) s += at(q, i);
      out[i] = static_cast<E>(s / static_cast<double>(ranks));
      return;
    }
    s = 0;
    for (int q = 0; q < ranks; ++q)
      if (k[q] > 0) s += k[q] * at(q, i);
    out[i] = static_cast<E>(s / total);
  }
  FLATMIN_HD double at(int q, std::size_t i) const {
    return static_cast<double>(recv[static_cast<std::size_t>(q) * stride + i]);
  }
};

}  // namespace flatmin::comm
