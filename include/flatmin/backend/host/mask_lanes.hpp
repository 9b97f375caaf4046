#pragma once
/// @file mask_lanes.hpp
/// Host reading of an element bit mask eight entries at a time: each nibble of mask bits becomes
/// four all-ones / zero integer lanes by one table lookup, so that the blends of a pass's body
/// vectorise instead of looking a unit and a bit up per entry (a mispredicted branch per entry
/// costs more than the pass's memory traffic: bench_masks, element masks).

#include <concepts>
#include <cstddef>
#include <cstdint>

#include "../../kernels/math.hpp"
#include "../summation.hpp"

namespace flatmin::backend::host {

/// A mask view that can hand out the bits of eight consecutive entries at once
/// (mask::detail::bit_view): `bits8(i)` for entries i … i + 7, valid where `element_units()`.
template <class Mask>
concept element_bit_mask = requires(const Mask& m) {
  { m.element_units() } -> std::same_as<bool>;
  { m.bits8(std::size_t{}) } -> std::same_as<std::uint32_t>;
};

/// All-ones lanes for the set bits of a nibble: lane r of entry n is ~0 when bit r of n is set
/// (U: 32-bit lanes for float, 64-bit for double).
template <class U>
struct nibble_lanes {
  U lane[16][4];
};
template <class U>
inline constexpr nibble_lanes<U> make_nibble_lanes() {
  nibble_lanes<U> t{};
  for (unsigned n = 0; n < 16; ++n)
    for (unsigned r = 0; r < 4; ++r) t.lane[n][r] = ((n >> r) & 1u) ? ~U{0} : U{0};
  return t;
}
template <class U>
inline constexpr nibble_lanes<U> nibble_table = make_nibble_lanes<U>();

/// Entries per run of `for_each_mask_run` (its lanes live on the stack: 1 KiB for float).
inline constexpr std::uint32_t mask_run = 256;

/// The lanes of a run of `for_each_mask_run`.
template <class T>
using lanes_of = const kernels::lane_t<T>*;

/// run(j0, n, lanes) for the runs [j0, j0 + n) of at most `mask_run` entries of a segment that
/// starts at global index `index` in a mask-eligible tensor: lanes[k] is entry j0 + k's mask as an
/// all-ones / zero integer of T's width, eight entries per `bits8` and their lanes from
/// `nibble_table`, the run's tail entry by entry, all written before the run's body. The body's
/// loop over k is then a plain loop over arrays, which vectorises (a body called per lane of a
/// nibble did not, once it was more than a blend: a descent's base update; nor the ascent's).
template <class T, class Mask, class Run>
FLATMIN_SUM_INLINE void for_each_mask_run(std::uint32_t len, std::uint64_t index, std::uint32_t flags,
                                          const Mask& mask, const Run& run) {
  using U = kernels::lane_t<T>;
  U lanes[mask_run];
  for (std::uint32_t j0 = 0; j0 < len; j0 += mask_run) {
    const std::uint32_t n = len - j0 < mask_run ? len - j0 : mask_run;
    std::uint32_t k = 0;
    for (; k + 8 <= n; k += 8) {
      const std::uint32_t b = mask.bits8(index + j0 + k);
      const U* lo = nibble_table<U>.lane[b & 15u];
      const U* hi = nibble_table<U>.lane[b >> 4];
      for (std::uint32_t r = 0; r < 4; ++r) lanes[k + r] = lo[r];
      for (std::uint32_t r = 0; r < 4; ++r) lanes[k + 4 + r] = hi[r];
    }
    for (; k < n; ++k) lanes[k] = U(0) - static_cast<U>(mask(index + j0 + k, flags));
    run(j0, n, static_cast<const U*>(lanes));
  }
}

}  // namespace flatmin::backend::host
