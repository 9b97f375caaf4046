#pragma once
/// @file reinterpret.hpp
/// `storage_cast<To>(p)`: a pointer to the user's 16-bit values seen as flatmin's storage type of
/// the same bits, for building views (`param_set::add`) over memory a framework owns:
///
///     Eigen::bfloat16 / c10::BFloat16 / __nv_bfloat16  →  flatmin::bfloat16
///     Eigen::half     / c10::Half     / __half         →  flatmin::half
///
///     params.add("fc1.weight", flatmin::storage_cast<flatmin::bfloat16>(w.data_ptr<at::BFloat16>()),
///                flatmin::storage_cast<flatmin::bfloat16>(w.grad().data_ptr<at::BFloat16>()), n);
///
/// Each of those types holds exactly the 16 bits of its format and nothing else (checked here by
/// size, alignment and trivial copyability; the format itself is the caller's claim: a c10::Half
/// is binary16, not bfloat16). It is a reinterpretation of the same bits, not a conversion: no
/// copy, no rounding. flatmin's 16-bit types are declared `may_alias` (GCC, Clang), so the
/// optimizer's reads and writes through them are not reordered against the framework's accesses
/// under strict aliasing. flatmin touches the values only inside its own calls.

#include <type_traits>

#include "bfloat16.hpp"
#include "half.hpp"

namespace flatmin {

template <class To, class From>
To* storage_cast(From* p) {
  static_assert(std::is_same_v<std::remove_cv_t<To>, bfloat16> || std::is_same_v<std::remove_cv_t<To>, half>,
                "flatmin::storage_cast: the target is flatmin::bfloat16 or flatmin::half");
  static_assert(sizeof(From) == 2 && alignof(From) <= alignof(To),
                "flatmin::storage_cast: the source must be a 2-byte value type (a bfloat16 or binary16)");
  static_assert(std::is_trivially_copyable_v<From>,
                "flatmin::storage_cast: the source type must be trivially copyable (its bits are the value)");
  static_assert(!std::is_const_v<From> || std::is_const_v<To>, "flatmin::storage_cast: casts away const");
  return reinterpret_cast<To*>(p);
}

}  // namespace flatmin
