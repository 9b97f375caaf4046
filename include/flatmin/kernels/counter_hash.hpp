#pragma once
/// @file counter_hash.hpp
/// A counter-based random generator: the value for (seed, stream, index) is a pure function of the
/// three numbers, so every backend, thread count and launch order draws the same masks.
///
/// Three rounds of the splitmix64 finaliser (Steele, Lea, Flood, "Fast splittable pseudorandom
/// number generators", OOPSLA 2014), chained over the three inputs. Not cryptographic; its purpose
/// is reproducible, well-mixed Bernoulli draws and random scores.

#include <cstdint>

#include "../config.hpp"

namespace flatmin::kernels {

/// The splitmix64 finaliser (a bijection of 64-bit words with full avalanche).
FLATMIN_HD inline std::uint64_t mix64(std::uint64_t z) {
  z += 0x9e3779b97f4a7c15ull;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

/// A 64-bit random word for (seed, stream, index); `stream` is the step in the masks.
FLATMIN_HD inline std::uint64_t counter_hash(std::uint64_t seed, std::uint64_t stream, std::uint64_t index) {
  return mix64(mix64(mix64(seed) ^ stream) ^ index);
}

/// floor(p · 2³²) clamped to [0, 2³²]: the threshold for `bernoulli`.
inline std::uint64_t bernoulli_threshold(double p) {
  if (!(p > 0)) return 0;
  if (p >= 1) return std::uint64_t{1} << 32;
  return static_cast<std::uint64_t>(p * 4294967296.0);
}

/// True with probability threshold / 2³² (the high 32 bits of the hash against the threshold).
FLATMIN_HD inline bool bernoulli(std::uint64_t hash, std::uint64_t threshold) {
  return (hash >> 32) < threshold;
}

}  // namespace flatmin::kernels
