#pragma once
/// @file top_k.hpp
/// Exact top-k in O(n) by radix selection on the bit pattern of the keys, over any backend.
///
/// The k largest keys among the candidates, ties broken by the lower index first, with exactly k
/// selected (all candidates when k ≥ their count, none when k = 0). The search runs 8 bits at a
/// time from the most significant digit: one `Backend::histogram` pass of 256 bins per digit over
/// the candidates that still match the prefix found so far, then a host scan of the 256 counts.
/// After `key_bits / 8` passes the k-th largest key (the threshold) is known exactly; if more
/// candidates share it than are still needed, the same search over the index bits of the tied
/// candidates finds the index of the last tie to keep (the ties with the lowest indices win).
/// Cost: key_bits/8 passes, plus ⌈log₂₅₆ n⌉ passes when ties straddle the boundary; never a sort.
///
/// A key functor is `FLATMIN_HD bool operator()(std::size_t u, std::uint64_t& key) const`,
/// returning false for a non-candidate. Keys compare as unsigned integers: for non-negative
/// floating-point scores use `float_key`, whose order equals the order of the values.

#include <cstdint>
#include <cstring>
#include <vector>

#include "../../config.hpp"

namespace flatmin::mask::detail {

/// The unsigned integer whose order is the order of a non-negative float / double
/// (the sign bit is dropped so that −0 equals +0).
FLATMIN_HD inline std::uint64_t float_key(float x) {
  std::uint32_t b;
  std::memcpy(&b, &x, sizeof b);
  return b & 0x7fffffffu;
}
FLATMIN_HD inline std::uint64_t float_key(double x) {
  std::uint64_t b;
  std::memcpy(&b, &x, sizeof b);
  return b & 0x7fffffffffffffffull;
}

/// The outcome of a selection: a predicate that is true for exactly the selected candidates.
template <class Key>
struct selection {
  Key key;
  std::uint64_t threshold = 0;  ///< the k-th largest key
  std::uint64_t last_tie = 0;   ///< the largest index kept among the candidates equal to threshold
  bool none = true;             ///< k = 0 (or no candidate)
  bool all = false;             ///< k ≥ number of candidates

  FLATMIN_HD bool operator()(std::size_t u) const {
    if (none) return false;
    std::uint64_t k;
    if (!key(u, k)) return false;
    if (all) return true;
    return k > threshold || (k == threshold && u <= last_tie);
  }
};

namespace topk_detail {
template <class Key>
struct digit_of_key {
  Key key;
  std::uint64_t prefix, high;  ///< the bits above `shift` must equal prefix (under mask `high`)
  unsigned shift;
  FLATMIN_HD std::size_t operator()(std::size_t u) const {
    std::uint64_t k;
    if (!key(u, k) || (k & high) != prefix) return 256;
    return static_cast<std::size_t>((k >> shift) & 0xffu);
  }
};
template <class Key>
struct digit_of_tied_index {
  Key key;
  std::uint64_t threshold, prefix, high;
  unsigned shift;
  FLATMIN_HD std::size_t operator()(std::size_t u) const {
    std::uint64_t k;
    if (!key(u, k) || k != threshold || (u & high) != prefix) return 256;
    return static_cast<std::size_t>((u >> shift) & 0xffu);
  }
};
inline std::uint64_t high_mask(unsigned shift) { return shift >= 64 ? 0 : ~std::uint64_t{0} << shift; }
}  // namespace topk_detail

/// Selects the k largest keys among units [0, n); `key_bits` (a multiple of 8, ≤ 64) bounds the keys.
template <class Backend, class Key>
selection<Key> top_k(std::size_t n, std::size_t k, const Key& key, unsigned key_bits) {
  selection<Key> sel{key};
  if (k == 0 || n == 0) return sel;
  std::uint64_t prefix = 0;
  std::size_t need = k;
  std::uint64_t tied = 0;
  for (int shift = static_cast<int>(key_bits) - 8; shift >= 0; shift -= 8) {
    const auto s = static_cast<unsigned>(shift);
    const auto h = Backend::histogram(
        n, 256, topk_detail::digit_of_key<Key>{key, prefix, topk_detail::high_mask(s + 8), s});
    if (shift == static_cast<int>(key_bits) - 8) {
      std::uint64_t total = 0;
      for (auto c : h) total += c;
      if (total == 0) return sel;
      sel.none = false;
      if (k >= total) {
        sel.all = true;
        return sel;
      }
    }
    std::uint64_t above = 0;
    int d = 255;
    for (; d > 0; --d) {
      if (above + h[static_cast<std::size_t>(d)] >= need) break;
      above += h[static_cast<std::size_t>(d)];
    }
    need -= static_cast<std::size_t>(above);
    prefix |= static_cast<std::uint64_t>(d) << s;
    tied = h[static_cast<std::size_t>(d)];
  }
  sel.threshold = prefix;
  if (tied == need) {
    sel.last_tie = ~std::uint64_t{0};
    return sel;
  }
  // More ties than places: the need-th smallest index among the tied candidates.
  unsigned index_bits = 8;
  while (index_bits < 64 && ((n - 1) >> index_bits) != 0) index_bits += 8;
  std::uint64_t iprefix = 0;
  for (int shift = static_cast<int>(index_bits) - 8; shift >= 0; shift -= 8) {
    const auto s = static_cast<unsigned>(shift);
    const auto h = Backend::histogram(
        n, 256, topk_detail::digit_of_tied_index<Key>{key, prefix, iprefix, topk_detail::high_mask(s + 8), s});
    std::uint64_t below = 0;
    int d = 0;
    for (; d < 255; ++d) {
      if (below + h[static_cast<std::size_t>(d)] >= need) break;
      below += h[static_cast<std::size_t>(d)];
    }
    need -= static_cast<std::size_t>(below);
    iprefix |= static_cast<std::uint64_t>(d) << s;
  }
  sel.last_tie = iprefix;
  return sel;
}

}  // namespace flatmin::mask::detail
