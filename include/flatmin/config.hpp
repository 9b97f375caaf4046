#pragma once
/// @file config.hpp
/// Compile-time configuration, error types and the host/device marker of flatmin.

#include <charconv>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <stdexcept>
#include <string>
#include <type_traits>

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

// FLATMIN_IVDEP before a host loop whose iterations touch disjoint memory (each writes only its
// own entries): the compiler may vectorise it without run-time alias checks. GCC gives up a loop
// that needs more than ten such checks (--param vect-max-version-for-alias-checks), which a
// descent over five or six arrays does. Not under Clang: its `vectorize(assume_safety)` also
// requests vectorisation and warns (-Wpass-failed) wherever the loop is not vectorised, at -O1
// for one; Clang was not measured to need it.
#if defined(__CUDACC__) || defined(_MSC_VER) || defined(__clang__)
#define FLATMIN_IVDEP
#elif defined(__GNUC__)
#define FLATMIN_IVDEP _Pragma("GCC ivdep")
#else
#define FLATMIN_IVDEP
#endif

// FLATMIN_SIMD4 before the last entries (fewer than 16) of such a loop: GCC with OpenMP vectorises
// them four at a time (`omp simd simdlen(4)`), where its vectoriser leaves the remainder of a
// 16-wide AVX-512 loop scalar (a tensor of 100 floats: 4 of its entries, each with a square root
// and two divisions under AdamW). Nothing elsewhere (Clang warns where `simd` does not vectorise).
#if defined(__GNUC__) && !defined(__clang__) && !defined(__CUDACC__) && defined(_OPENMP)
#define FLATMIN_SIMD4 _Pragma("omp simd simdlen(4)")
#else
#define FLATMIN_SIMD4
#endif

// FLATMIN_UNROLL before a loop of a constant trip count: unrolled in full, so that an array it
// indexes stays in registers (nvcc and Clang `unroll`; GCC `unroll 64`).
#if defined(__CUDACC__) || defined(__clang__)
#define FLATMIN_UNROLL _Pragma("unroll")
#elif defined(__GNUC__)
#define FLATMIN_UNROLL _Pragma("GCC unroll 64")
#else
#define FLATMIN_UNROLL
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
inline std::string format_value(double value) {
  char buf[64];
  const auto r = std::to_chars(buf, buf + sizeof(buf), value);  // shortest form that reads back exactly
  return std::string(buf, r.ptr);
}
inline void check_option(bool ok, const char* where, const char* option, double value, const char* rule) {
  if (!ok)
    throw std::invalid_argument(std::string("flatmin::") + where + ": " + option + " must be " + rule +
                                ", got " + format_value(value));
}
inline bool finite(double x) { return x - x == 0.0; }

/// The sets a real option may be required to lie in.
enum class domain : std::uint8_t {
  positive,       ///< (0, ∞)
  non_negative,   ///< [0, ∞)
  unit,           ///< [0, 1]
  unit_open,      ///< [0, 1)  (momenta, Adam's betas)
  unit_positive,  ///< (0, 1]  (probabilities, fractions kept)
};

template <class T>
constexpr const char* type_name() {
  if constexpr (std::is_same_v<T, float>)
    return "float";
  else if constexpr (std::is_same_v<T, double>)
    return "double";
  else
    return "long double";
}

/// Whether x is 0 or a finite magnitude in [smallest normal, largest] of T. Options are given as
/// double and used as T: a value outside that range overflows T (lr = 1e39 in float) or comes out
/// as 0 or a subnormal that flush-to-zero code reads as 0 (Adam's eps = 1e-50 in float: 0/0).
template <class T>
constexpr bool fits(double x) {
  const double a = x < 0 ? -x : x;
  return a == 0 || (a >= static_cast<double>(std::numeric_limits<T>::min()) &&
                    a <= static_cast<double>(std::numeric_limits<T>::max()));
}

/// Whether x, used as a T, lies in d (compared after the conversion: 1 − 1e-10 is 1 in float).
template <class T>
constexpr bool in_domain(double x, domain d) {
  if (!fits<T>(x)) return false;  // NaN too: it fails every comparison
  const T t = static_cast<T>(x);
  switch (d) {
    case domain::positive:
      return t > 0;
    case domain::non_negative:
      return t >= 0;
    case domain::unit:
      return t >= 0 && t <= 1;
    case domain::unit_open:
      return t >= 0 && t < 1;
    case domain::unit_positive:
      return t > 0 && t <= 1;
  }
  return false;
}

/// The one implementation of the option rules of every policy: throws std::invalid_argument
/// naming `where`, `option`, the rule, T and the value unless `value` lies in `d` as a T.
template <class T>
void check_option(const char* where, const char* option, double value, domain d) {
  if (in_domain<T>(value, d)) return;
  static constexpr const char* rules[] = {"finite and > 0", "finite and >= 0", "in [0, 1]", "in [0, 1)",
                                          "in (0, 1]"};
  const double lo = static_cast<double>(std::numeric_limits<T>::min());
  const double hi = static_cast<double>(std::numeric_limits<T>::max());
  const std::string rule = std::string(rules[static_cast<int>(d)]) + " as a " + type_name<T>() +
                           " (0 or |x| in [" + format_value(lo) + ", " + format_value(hi) + "])";
  check_option(false, where, option, value, rule.c_str());
}

/// For a quantity derived from options (lr / (1 − β1), ρ · α, η²): throws std::invalid_argument
/// unless it is finite as a T, so that no value passing the rules above overflows T when combined.
template <class T>
void check_derived(const char* where, const char* quantity, double value) {
  const double top = static_cast<double>(std::numeric_limits<T>::max());
  const bool ok = finite(value) && (value < 0 ? -value : value) <= top;
  const std::string rule = std::string("finite as a ") + type_name<T>();
  if (!ok) check_option(false, where, quantity, value, rule.c_str());
}

/// Validates a policy's options for use in precision T: `validate<T>()` where the policy has it,
/// else its plain `validate()` (policies written outside the library).
template <class T, class P>
void validate_as(const P& p) {
  if constexpr (requires { p.template validate<T>(); })
    p.template validate<T>();
  else
    p.validate();
}
}  // namespace flatmin::detail
