#pragma once
// Comparing a library trajectory with a float64 re-derivation of an official implementation
// (tests/unit/test_official*.cpp): the largest elementwise error in units of a relative tolerance.

#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <vector>

namespace flatmin_test {

/// The weights after each step.
using trajectory = std::vector<std::vector<double>>;

/// Largest elementwise error over a trajectory in units of tol · max(|want|, rms(want)) (≤ 1:
/// within the tolerance; a NaN counts as infinitely far).
inline double trajectory_error(const trajectory& got, const trajectory& want, double tol) {
  REQUIRE(got.size() == want.size());
  double w = 0;
  for (std::size_t s = 0; s < got.size(); ++s) {
    REQUIRE(got[s].size() == want[s].size());
    double rms = 0;
    for (double v : want[s]) rms += v * v;
    rms = std::sqrt(rms / static_cast<double>(want[s].size()));
    for (std::size_t j = 0; j < got[s].size(); ++j) {
      const double e = std::fabs(got[s][j] - want[s][j]) / (tol * std::max(std::fabs(want[s][j]), rms));
      w = std::isnan(e) ? HUGE_VAL : std::max(w, e);
    }
  }
  return w;
}

}  // namespace flatmin_test

/// The library's trajectory matches the re-derivation to `RTOL_` relative.
#define CHECK_TRAJECTORY_WITHIN(GOT_, WANT_, RTOL_)                                    \
  do {                                                                                 \
    const double fm_worst_ = flatmin_test::trajectory_error((GOT_), (WANT_), (RTOL_)); \
    INFO("worst error / (" << (RTOL_) << " relative): " << fm_worst_);                 \
    CHECK(fm_worst_ <= 1.0);                                                           \
  } while (0)
/// The library's default departs: its trajectory is off by far more than the tolerance.
#define CHECK_DEPARTS_BEYOND(GOT_, WANT_, RTOL_)                                             \
  do {                                                                                       \
    const double fm_worst_ = flatmin_test::trajectory_error((GOT_), (WANT_), (RTOL_));       \
    INFO("default composition's worst error / (" << (RTOL_) << " relative): " << fm_worst_); \
    CHECK(fm_worst_ > 100.0);                                                                \
  } while (0)
