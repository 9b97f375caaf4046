#pragma once
/// @file top_k.hpp
/// Exact top-k in O(n) by radix selection on the bit pattern of the keys, over any backend.
///
/// The k largest keys among the candidates, ties broken by the lower index first, with exactly k
/// selected (all candidates when k ≥ their count, none when k = 0). The search runs 8 bits at a
/// time from the most significant digit: one `Backend::histogram` pass of 256 bins per digit over
/// the candidates that still match the prefix found so far, then a host scan of the counts.
/// After ⌈key_bits / 11⌉ passes the k-th largest key (the threshold) is known exactly; if more
/// candidates share it than are still needed, the same search over the index bits of the tied
/// candidates finds the index of the last tie to keep (the ties with the lowest indices win).
/// Cost: ⌈key_bits/11⌉ passes (3 for float scores), plus ⌈log₂ n / 11⌉ passes when ties straddle
/// the boundary; never a sort.
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
/// Keys of float are below 2^31, of double below 2^63.
template <class T>
inline constexpr unsigned float_key_bits = 8 * sizeof(T) - 1;
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
    std::uint64_t k = 0;
    const bool cand = key(u, k);
    return !none && cand && (all || k > threshold || (k == threshold && u <= last_tie));
  }
};

namespace topk_detail {
/// Digits of at most 11 bits (2048 bins): 31-bit float keys take 3 passes, 63-bit double keys 6.
inline constexpr unsigned digit_bits = 11;

template <class Key>
struct digit_of_key {
  Key key;
  std::uint64_t prefix, high;  ///< the bits above the digit must equal prefix (under mask `high`)
  unsigned shift;
  std::uint32_t bins;  ///< digit mask + 1; also the "left out" answer
  FLATMIN_HD std::size_t operator()(std::size_t u) const {
    std::uint64_t k;
    if (!key(u, k) || (k & high) != prefix) return bins;
    return static_cast<std::size_t>((k >> shift) & (bins - 1));
  }
};
template <class Key>
struct digit_of_tied_index {
  Key key;
  std::uint64_t threshold, prefix, high;
  unsigned shift;
  std::uint32_t bins;
  FLATMIN_HD std::size_t operator()(std::size_t u) const {
    std::uint64_t k;
    if (!key(u, k) || k != threshold || (u & high) != prefix) return bins;
    return static_cast<std::size_t>((u >> shift) & (bins - 1));
  }
};
inline std::uint64_t high_mask(unsigned shift) { return shift >= 64 ? 0 : ~std::uint64_t{0} << shift; }
}  // namespace topk_detail

/// Selects the k largest keys among units [0, n); keys are below 2^key_bits (key_bits ≤ 64).
template <class Backend, class Key>
selection<Key> top_k(std::size_t n, std::size_t k, const Key& key, unsigned key_bits) {
  using namespace topk_detail;
  selection<Key> sel{key};
  if (k == 0 || n == 0) return sel;
  std::uint64_t prefix = 0;
  std::size_t need = k;
  std::uint64_t tied = 0;
  bool first = true;
  for (unsigned rest = key_bits; rest > 0;) {
    const unsigned width = rest < digit_bits ? rest : digit_bits, shift = rest - width;
    const std::uint32_t bins = 1u << width;
    const auto h = Backend::histogram(n, bins, digit_of_key<Key>{key, prefix, high_mask(rest), shift, bins});
    if (first) {
      first = false;
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
    std::uint32_t d = bins - 1;
    for (; d > 0; --d) {
      if (above + h[d] >= need) break;
      above += h[d];
    }
    need -= static_cast<std::size_t>(above);
    prefix |= static_cast<std::uint64_t>(d) << shift;
    tied = h[d];
    rest = shift;
  }
  sel.threshold = prefix;
  if (tied == need) {
    sel.last_tie = ~std::uint64_t{0};
    return sel;
  }
  // More ties than places: the need-th smallest index among the tied candidates.
  unsigned index_bits = 1;
  while (index_bits < 64 && ((n - 1) >> index_bits) != 0) ++index_bits;
  std::uint64_t iprefix = 0;
  for (unsigned rest = index_bits; rest > 0;) {
    const unsigned width = rest < digit_bits ? rest : digit_bits, shift = rest - width;
    const std::uint32_t bins = 1u << width;
    const auto h = Backend::histogram(
        n, bins, digit_of_tied_index<Key>{key, prefix, iprefix, high_mask(rest), shift, bins});
    std::uint64_t below = 0;
    std::uint32_t d = 0;
    for (; d + 1 < bins; ++d) {
      if (below + h[d] >= need) break;
      below += h[d];
    }
    need -= static_cast<std::size_t>(below);
    iprefix |= static_cast<std::uint64_t>(d) << shift;
    rest = shift;
  }
  sel.last_tie = iprefix;
  return sel;
}

}  // namespace flatmin::mask::detail
