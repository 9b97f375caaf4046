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
///
/// Across processes (a sharded run, optimizer/data_parallel.hpp): with a `span`, this process
/// holds units [offset, offset + n) of `total` units numbered across the processes in order, and
/// every histogram is summed over the processes (`span::sum`, collective) before its scan. Every
/// process then takes the same decisions and finds the same threshold and last tie (in the global
/// numbering): the selection is the one-process selection over the concatenated units, and each
/// process's predicate is true on its part of it. Integer counts add exactly, so the result does
/// not depend on the order of the sum. The passes are the same; each adds one all-reduce of its
/// bins (2048 counts).

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <functional>
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

/// A selection over the units of several processes: this one holds units [offset, offset + n) of
/// `total`; `sum` replaces a vector of counts by its sum over the processes (collective: every
/// process calls it at the same point). The default (`total` = 0) is this process alone.
struct span {
  std::uint64_t offset = 0;
  std::uint64_t total = 0;
  std::uint64_t eligible = 0;  ///< candidate units over the processes (a mask's k is a fraction of it)
  std::function<void(std::vector<std::uint64_t>&)> sum;

  bool spans() const { return total != 0; }
};

/// The span of `units` units (`eligible` of them candidates) held by process `position`, from
/// `gather(mine, n)`: every process's n counts in process order (collective). Its `sum` adds a
/// vector of counts over the processes through the same gather.
template <class Gather>
span make_span(std::uint64_t units, std::uint64_t eligible, std::size_t position, const Gather& gather) {
  const std::uint64_t mine[2] = {units, eligible};
  const std::vector<std::uint64_t> all = gather(mine, std::size_t{2});
  span s;
  for (std::size_t q = 0; 2 * q + 1 < all.size(); ++q) {
    if (q < position) s.offset += all[2 * q];
    s.total += all[2 * q];
    s.eligible += all[2 * q + 1];
  }
  s.sum = [gather](std::vector<std::uint64_t>& h) {
    if (h.empty()) return;
    const std::vector<std::uint64_t> every = gather(h.data(), h.size());
    std::fill(h.begin(), h.end(), std::uint64_t{0});
    for (std::size_t i = 0; i < every.size(); ++i) h[i % h.size()] += every[i];
  };
  return s;
}

/// The outcome of a selection: a predicate that is true for exactly the selected candidates.
template <class Key>
struct selection {
  Key key;
  std::uint64_t threshold = 0;  ///< the k-th largest key
  std::uint64_t last_tie = 0;   ///< the largest index kept among the candidates equal to threshold
  bool none = true;             ///< k = 0 (or no candidate)
  bool all = false;             ///< k ≥ number of candidates
  std::uint64_t offset = 0;     ///< global index of local unit 0 (`span`), for the ties

  FLATMIN_HD bool operator()(std::size_t u) const {
    std::uint64_t k = 0;
    const bool cand = key(u, k);
    return !none && cand && (all || k > threshold || (k == threshold && u + offset <= last_tie));
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
  std::uint64_t offset;  ///< the digits are of the global index u + offset
  FLATMIN_HD std::size_t operator()(std::size_t u) const {
    std::uint64_t k;
    const std::uint64_t g = u + offset;
    if (!key(u, k) || k != threshold || (g & high) != prefix) return bins;
    return static_cast<std::size_t>((g >> shift) & (bins - 1));
  }
};
inline std::uint64_t high_mask(unsigned shift) { return shift >= 64 ? 0 : ~std::uint64_t{0} << shift; }
}  // namespace topk_detail

/// Selects the k largest keys among units [0, n); keys are below 2^key_bits (key_bits ≤ 64).
/// With a span: the k largest over every process's units (k is global; see the file comment).
/// Every process must call it with the same k, key_bits and span totals.
template <class Backend, class Key>
selection<Key> top_k(std::size_t n, std::size_t k, const Key& key, unsigned key_bits, const span& sp = {}) {
  using namespace topk_detail;
  selection<Key> sel{key};
  sel.offset = sp.offset;
  const std::uint64_t units = sp.spans() ? sp.total : n;
  if (k == 0 || units == 0) return sel;
  std::uint64_t prefix = 0;
  std::size_t need = k;
  std::uint64_t tied = 0;
  bool first = true;
  for (unsigned rest = key_bits; rest > 0;) {
    const unsigned width = rest < digit_bits ? rest : digit_bits, shift = rest - width;
    const std::uint32_t bins = 1u << width;
    auto h = Backend::histogram(n, bins, digit_of_key<Key>{key, prefix, high_mask(rest), shift, bins});
    if (sp.sum) sp.sum(h);
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
  while (index_bits < 64 && ((units - 1) >> index_bits) != 0) ++index_bits;
  std::uint64_t iprefix = 0;
  for (unsigned rest = index_bits; rest > 0;) {
    const unsigned width = rest < digit_bits ? rest : digit_bits, shift = rest - width;
    const std::uint32_t bins = 1u << width;
    auto h = Backend::histogram(
        n, bins, digit_of_tied_index<Key>{key, prefix, iprefix, high_mask(rest), shift, bins, sp.offset});
    if (sp.sum) sp.sum(h);
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
