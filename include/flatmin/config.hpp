#pragma once
/// @file config.hpp
/// Compile-time configuration, error types and the host/device marker of flatmin.

#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>

#define FLATMIN_VERSION_MAJOR 0
#define FLATMIN_VERSION_MINOR 1
#define FLATMIN_VERSION_PATCH 0

// FLATMIN_HD marks functions that run on the host and on a CUDA device. It expands to the CUDA
// keywords only under a CUDA compiler: CUDA 13's Thrust no longer blanks them for g++.
#if defined(__CUDACC__)
#define FLATMIN_HD __host__ __device__
#else
#define FLATMIN_HD
#endif

#if defined(_MSC_VER)
#define FLATMIN_RESTRICT __restrict
#else
#define FLATMIN_RESTRICT __restrict__
#endif

namespace flatmin {

/// Thrown when the step protocol is misused (descend without ascend, ascend twice) or a view does
/// not fit the optimizer (size, memory space). Parameters are left untouched.
class usage_error : public std::logic_error {
 public:
  using std::logic_error::logic_error;
};

/// Thrown, when the optimizer is configured with `nonfinite::raise`, for a non-finite gradient.
/// Parameters are restored bit-exactly before it is thrown.
class non_finite_error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/// Where the memory of a view lives.
enum class memory_space : std::uint8_t { host, device };

/// What to do with a non-finite gradient (at w or at w + ε).
enum class nonfinite : std::uint8_t {
  skip,  ///< restore w bit-exactly, leave optimizer state untouched, report `skipped`
  raise  ///< the same, then throw `non_finite_error`
};

namespace detail {
inline std::string quote(const std::string& s) { return "'" + s + "'"; }
}  // namespace detail

}  // namespace flatmin

namespace flatmin::detail {
/// Throws std::invalid_argument("flatmin::<where>: <option> must be <rule>, got <value>") unless ok.
inline void check_option(bool ok, const char* where, const char* option, double value, const char* rule) {
  if (!ok)
    throw std::invalid_argument(std::string("flatmin::") + where + ": " + option + " must be " + rule + ", got " +
                                std::to_string(value));
}
inline bool finite(double x) { return x - x == 0.0; }
}  // namespace flatmin::detail
