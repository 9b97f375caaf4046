#pragma once
/// @file official.hpp
/// `flatmin::official`: the tag that selects an algorithm's *official preset*, the configuration
/// that reproduces the authors' public implementation where the library departs from it by
/// default (for example `flatmin::fsam(params, base, flatmin::official)`). Each algorithm header
/// lists what its preset changes; README's "Departures from the official code" table lists them all.

namespace flatmin {

/// Tag type of the official presets.
struct official_t {
  explicit constexpr official_t() = default;
};
/// Pass as the third argument of a named composition to get its official preset.
inline constexpr official_t official{};

}  // namespace flatmin
