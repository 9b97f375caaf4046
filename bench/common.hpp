#pragma once
// Shared by the benchmark programs: a problem of N parameters over K tensors, the copy baseline
// measured in the same binary, and the bytes/s counters.
#include <benchmark/benchmark.h>
#include <flatmin/flatmin.hpp>

#include <cstring>
#include <random>
#include <vector>

namespace flatmin_bench {

/// N float parameters and gradients split into K tensors of (nearly) equal size, each tensor its
/// own allocation (as in a real model), with random values.
struct problem {
  std::vector<std::vector<float>> w, g;
  flatmin::param_set<float> params;
  problem(std::size_t n, std::size_t k, unsigned seed = 1) {
    std::mt19937 rng(seed);
    std::normal_distribution<float> nd(0.f, 1.f);
    w.resize(k);
    g.resize(k);
    for (std::size_t t = 0; t < k; ++t) {
      const std::size_t sz = n / k + (t < n % k ? 1 : 0);
      w[t].resize(sz);
      g[t].resize(sz);
      for (auto& x : w[t]) x = nd(rng);
      for (auto& x : g[t]) x = nd(rng);
      params.add("t" + std::to_string(t), w[t].data(), g[t].data(), {sz});
    }
  }
};

/// Sets bytes/s from the minimal traffic per iteration (DESIGN.md §5), and the parameter count.
inline void set_traffic(benchmark::State& st, double bytes_per_iter, std::size_t n) {
  st.SetBytesProcessed(static_cast<int64_t>(bytes_per_iter * static_cast<double>(st.iterations())));
  st.counters["N"] = static_cast<double>(n);
  st.counters["B_per_param"] = bytes_per_iter / static_cast<double>(n);
}

}  // namespace flatmin_bench
