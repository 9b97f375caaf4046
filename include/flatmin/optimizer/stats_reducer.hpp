#pragma once
/// @file stats_reducer.hpp
/// `stats_reducer`: the one hook through which a sharded run (optimizer/data_parallel.hpp) makes a
/// `sharpness_aware`'s step statistics global. With none set (the default) nothing changes: the
/// optimizer reduces over its own layout as before, bit for bit.
///
/// With one set, the optimizer computes each reduction of a step (the ascent's statistics, the
/// non-finite check of descend()) as one partial per segment of its layout, in segment order, and
/// hands them to `combine`, which returns the sum over the segments of every process. A shard of a
/// sharded run is a run of whole segments of the one-process layout and the shards follow each
/// other in rank order, so a combine that gathers every rank's partials and adds them left to right
/// in rank order from zero repeats the one-process summation (backend/summation.hpp: segment
/// partials added in segment order) exactly: the norms, and so ε and the step, are bitwise those of
/// one process.

#include <cstddef>
#include <cstdint>
#include <vector>

#include "../kernels/math.hpp"

namespace flatmin {

class stats_reducer {
 public:
  /// The global sum of a reduction given this process's `count` segment partials (in order; the
  /// count may differ between processes: a compact mask's range). Collective: every process of the
  /// run calls it at the same point of the step.
  virtual kernels::grad_stats combine(const kernels::grad_stats* partials, std::size_t count) = 0;
  /// Every process's `count` integers, in process order (count · processes values). Collective.
  /// A mask that selects across processes (mask::fisher's global top-k) sums its histograms and
  /// numbers its units through it.
  virtual std::vector<std::uint64_t> gather_counts(const std::uint64_t* mine, std::size_t count) = 0;
  /// This process's position in that order.
  virtual std::size_t position() const = 0;
  /// Where this process's part begins in the one-process layout: the flat index of its first entry
  /// and the index of the tensor that entry belongs to (a tensor may be split between processes).
  /// mask::random hashes the one-process unit numbers through it.
  struct origin_t {
    std::uint64_t index = 0, tensor = 0;
  };
  virtual origin_t origin() const = 0;

 protected:
  stats_reducer() = default;
  stats_reducer(const stats_reducer&) = default;
  stats_reducer& operator=(const stats_reducer&) = default;
  ~stats_reducer() = default;
};

}  // namespace flatmin
