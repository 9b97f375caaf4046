#pragma once
/// @file rng.hpp
/// A tiny seeded random number generator for the examples. The standard library's distributions
/// and std::shuffle are implementation-defined, so results would differ between libstdc++ and
/// libc++; these few helpers make every run of an example reproducible on any platform.

#include <cmath>
#include <cstdint>
#include <utility>
#include <vector>

namespace examples {

/// SplitMix64 (Steele, Lea, Flood 2014): 64-bit state, passes BigCrush, trivially seedable.
class rng {
 public:
  explicit rng(std::uint64_t seed) : state_(seed) {}

  /// Mixes a seed with a stream id, so that one user seed gives independent streams
  /// (split, noise, initialisation, batch order) that do not shift when one of them changes.
  static rng stream(std::uint64_t seed, std::uint64_t id) {
    rng r(seed ^ (0xd1b54a32d192ed03ull * (id + 1)));
    r.next();
    return r;
  }

  std::uint64_t next() {
    std::uint64_t z = (state_ += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }

  /// Uniform in [0, n), n > 0, without modulo bias (rejection of the short last interval).
  std::uint64_t below(std::uint64_t n) {
    const std::uint64_t limit = ~std::uint64_t{0} - (~std::uint64_t{0} % n);
    std::uint64_t x;
    do x = next();
    while (x >= limit);
    return x % n;
  }

  /// Uniform in [0, 1) with 53 random bits.
  double uniform() { return static_cast<double>(next() >> 11) * 0x1.0p-53; }

  /// Fisher–Yates shuffle.
  template <class V>
  void shuffle(V& v) {
    for (std::size_t i = v.size(); i > 1; --i) std::swap(v[i - 1], v[below(i)]);
  }

 private:
  std::uint64_t state_;
};

}  // namespace examples
