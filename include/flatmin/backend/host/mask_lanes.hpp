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

/// body(j, lane) for j in [0, len) of a run starting at global index `index` of a mask-eligible
/// tensor: lane is entry j's mask as an all-ones / zero integer of T's width, eight entries per
/// `bits8` and their lanes from `nibble_table`, the tail entry by entry.
template <class T, class Mask, class Body>
FLATMIN_SUM_INLINE void for_each_mask_lane(std::uint32_t len, std::uint64_t index, std::uint32_t flags,
                                           const Mask& mask, const Body& body) {
  using U = kernels::lane_t<T>;
  std::uint32_t j = 0;
  for (; j + 8 <= len; j += 8) {
    const std::uint32_t b = mask.bits8(index + j);
    const U* lo = nibble_table<U>.lane[b & 15u];
    const U* hi = nibble_table<U>.lane[b >> 4];
    for (std::uint32_t r = 0; r < 4; ++r) body(j + r, lo[r]);
    for (std::uint32_t r = 0; r < 4; ++r) body(j + 4 + r, hi[r]);
  }
  for (; j < len; ++j) body(j, U(0) - static_cast<U>(mask(index + j, flags)));
}

}  // namespace flatmin::backend::host
