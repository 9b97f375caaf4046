#pragma once
/// @file rows.hpp
/// The rows of a tensor along its first dimension (a filter: an output channel of a convolution,
/// an output row of a linear layer's weight), as the row-wise perturbations read them
/// (perturb::gaussian's norms, perturb::centralized's means): the table entry of each tensor, the
/// row of a global index, and a row's sum in a fixed order.

#include <cstddef>
#include <cstdint>

#include "../config.hpp"
#include "../numeric/bits.hpp"

namespace flatmin::kernels {

/// Where a tensor's rows are: its global offset, the length of one row and the index of its
/// first row in a per-row buffer. A tensor of one dimension is one row (`row_length` = its size).
struct row_table_entry {
  std::uint64_t offset;
  std::uint64_t row_length;
  std::uint64_t first_row;
};

/// One tensor's entry, resolved for its elements: `row(i)` is first_row + (i − offset) /
/// row_length, the quotient from a double reciprocal corrected to the exact one (x < 2⁵²: x and
/// the rounded quotient go through doubles by their bits, which the host vectorises).
struct row_locator {
  std::uint64_t offset = 0, row_length = 1, first_row = 0;
  double inv_length = 1;

  FLATMIN_HD static row_locator of(const row_table_entry& e) {
    return {e.offset, e.row_length, e.first_row, 1.0 / static_cast<double>(e.row_length)};
  }
  FLATMIN_HD std::uint64_t row(std::size_t i) const {
    using numeric::detail::bits_of;
    using numeric::detail::double_of;
    const std::uint64_t x = i - offset;
    constexpr std::uint64_t two52 = 0x4330000000000000ull;  // the bits of 2⁵²
    const double xd = double_of(x | two52) - 4503599627370496.0;
    std::uint64_t q = bits_of(xd * inv_length + 4503599627370496.0) - two52;
    q = q * row_length > x ? q - 1 : q;
    q = (q + 1) * row_length <= x ? q + 1 : q;
    return first_row + q;
  }
};

/// Σ f(j) for j < len in double over eight strands (entry j into strand j mod 8, then the strands
/// pairwise): a fixed order the host vectorises and every backend repeats.
template <class F>
FLATMIN_HD double row_sum(std::uint64_t len, const F& f) {
  double a[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  std::uint64_t j = 0;
  for (; j + 8 <= len; j += 8)
    for (int k = 0; k < 8; ++k) a[k] = a[k] + f(j + k);
  for (; j < len; ++j) a[0] = a[0] + f(j);
  return ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]));
}

}  // namespace flatmin::kernels
