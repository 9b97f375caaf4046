#pragma once
/// @file sine_problem.hpp
/// A smooth non-quadratic test loss over tensors of given sizes, drawn from one seed:
///   L = Σ a_i (w_i − c_i)² / 2 + b_i sin(w_i),   g_i = a_i (w_i − c_i) + b_i cos(w_i),
/// with the starting point w0, a ∈ [0.5, 2.5), c ∈ [−0.5, 0.5), b ∈ [−0.3, 0.3), each rounded to T.
/// The tests that compare two implementations bit for bit (backends, instruction sets) evaluate g
/// on the host in T from it.

#include <cstddef>
#include <random>
#include <vector>

namespace flatmin_test {

template <class T>
struct sine_problem {
  std::vector<std::vector<T>> w0, a, c, b;
  sine_problem(const std::vector<std::size_t>& sizes, unsigned seed) {
    std::mt19937 rng(seed);
    std::uniform_real_distribution<double> u(-1, 1);
    for (std::size_t n : sizes) {
      std::vector<T> w(n), aa(n), cc(n), bb(n);
      for (std::size_t j = 0; j < n; ++j) {
        w[j] = T(u(rng));
        aa[j] = T(1.5 + u(rng));
        cc[j] = T(0.5 * u(rng));
        bb[j] = T(0.3 * u(rng));
      }
      w0.push_back(w), a.push_back(aa), c.push_back(cc), b.push_back(bb);
    }
  }
};

}  // namespace flatmin_test
