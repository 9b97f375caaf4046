#pragma once
// The distributed tests' problem (tests/mpi, tests/nccl): rank r's loss is ½ Σ a (w − c)² over four
// tensors, with coefficients that hash rank, tensor and index, so that every rank can compute every
// rank's gradient (and so the one-process reference) in-process.
#include <cstddef>
#include <cstdint>
#include <vector>

namespace flatmin_test::rank_quadratic {

// 7 segments of 4096 (5000 → 2, 300 → 1, 9000 → 3, 7 → 1): a shard each for up to 7 ranks, and
// tensors split across shards inside (9000) and at their ends.
inline const std::vector<std::size_t> sizes = {5000, 300, 9000, 7};
inline const char* const names[] = {"w1", "b1", "w2", "b2"};

inline std::uint64_t mix(std::uint64_t x) {  // splitmix64
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}
inline double unit(std::uint64_t k) { return static_cast<double>(mix(k) >> 11) * 0x1p-53; }  // [0, 1)
inline std::uint64_t key(int r, std::size_t t, std::size_t i, int what) {
  return (static_cast<std::uint64_t>(r) << 56) ^ (static_cast<std::uint64_t>(t) << 48) ^ (i << 4) ^
         static_cast<std::uint64_t>(what);
}
// Rank r's loss: ½ Σ a (w − c)², a in [0.5, 1.5), c in [-1, 1); its gradient in float.
inline float coef_a(int r, std::size_t t, std::size_t i) { return static_cast<float>(0.5 + unit(key(r, t, i, 1))); }
inline float coef_c(int r, std::size_t t, std::size_t i) {
  return static_cast<float>(2 * unit(key(r, t, i, 2)) - 1);
}
inline float grad_of(int r, std::size_t t, std::size_t i, float w) {
  return coef_a(r, t, i) * (w - coef_c(r, t, i));
}

}  // namespace flatmin_test::rank_quadratic
