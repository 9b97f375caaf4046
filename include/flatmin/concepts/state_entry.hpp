#pragma once
/// @file state_entry.hpp
/// What a policy state may hand to a checkpoint visitor besides a backend vector or a scalar: an
/// entry that exists only in some runs. Bottom layer, so that a state can name it without
/// including the optimizer's checkpoint format.

#include <cstddef>
#include <type_traits>

namespace flatmin {

/// A backend vector saved only when it is not empty, and then with exactly `size` values (e.g. the
/// bits of a mask the user set, where the mask is otherwise drawn and stores nothing). A checkpoint
/// without the entry loads and leaves the vector empty, so files written before the entry existed,
/// or by a run that never filled it, keep loading.
template <class V>
struct optional_entry {
  V& value;
  std::size_t size;
};

template <class V>
inline constexpr bool is_optional_entry_v = false;
template <class V>
inline constexpr bool is_optional_entry_v<optional_entry<V>> = true;

}  // namespace flatmin
