// kernels/gaussian.hpp: the arithmetic-only logarithm and cosine against the C library, and the
// standard normal draws' moments and tail fractions against N(0, 1) (independent references: the
// C library's log / cos, the normal distribution's known moments and Φ(1) − Φ(−1) = 0.682689).
#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <vector>

#include <flatmin/kernels/gaussian.hpp>

namespace {

namespace k = flatmin::kernels;

}  // namespace

TEST_CASE("gaussian: log_unit(u) = ln u to a few ulps over (0, 1], at the edges and at random") {
  std::vector<double> us = {1.0,
                            0.5,
                            0.25,
                            0.75,
                            1e-10,
                            std::ldexp(1.0, -52),
                            1.0 - std::ldexp(1.0, -52),
                            0.7071067811865476,
                            0.7071067811865475,
                            0.3535533905932738};
  for (int e = 1; e <= 52; ++e) {  // around every power of two and the √2 split of each octave
    us.push_back(std::ldexp(1.0, -e));
    us.push_back(std::ldexp(1.0, -e) * (1 + std::ldexp(1.0, -52)));
    us.push_back(std::ldexp(1.4142135623730951, -e));
  }
  for (std::uint64_t i = 0; i < 20000; ++i)
    us.push_back(2.0 - k::gaussian_detail::one_to_two(k::counter_hash(7, 1, i)));
  for (double u : us) {
    CAPTURE(u);
    const double want = std::log(u);
    CHECK(std::fabs(k::gaussian_detail::log_unit(u) - want) <= 4e-16 * std::fabs(want) + 1e-300);
  }
  CHECK(k::gaussian_detail::log_unit(1.0) == 0.0);
}

TEST_CASE("gaussian: the uniforms from bits: one_to_two spans [1, 2) with 52 bits") {
  CHECK(k::gaussian_detail::one_to_two(0) == 1.0);
  CHECK(k::gaussian_detail::one_to_two(~0ull) == 2.0 - std::ldexp(1.0, -52));
  CHECK(k::gaussian_detail::one_to_two(1ull << 12) == 1.0 + std::ldexp(1.0, -52));
}

TEST_CASE("gaussian: cos_two_pi(v) = cos(2πv) to 1e-15 over [0, 1), at the fold points and at random") {
  std::vector<double> vs = {0.0, 0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875, 1.0 - 1e-16, 1e-9, 0.5 - 1e-12};
  for (std::uint64_t i = 0; i < 20000; ++i)
    vs.push_back(static_cast<double>(k::counter_hash(9, 2, i) >> 11) * 1.1102230246251565e-16);
  for (double v : vs) {
    CAPTURE(v);
    CHECK(std::fabs(k::gaussian_detail::cos_two_pi(v) - std::cos(6.283185307179586 * v)) <= 1e-15);
  }
}

TEST_CASE("gaussian: standard_normal's draws have N(0, 1)'s moments and tail fractions") {
  const std::size_t n = 1000000;
  double s1 = 0, s2 = 0, s3 = 0, s4 = 0, within1 = 0, beyond3 = 0, max_abs = 0;
  for (std::size_t i = 0; i < n; ++i) {
    const double z = k::standard_normal(k::counter_hash(2024, k::noise_stream(5), i));
    s1 += z;
    s2 += z * z;
    s3 += z * z * z;
    s4 += z * z * z * z;
    within1 += std::fabs(z) < 1 ? 1 : 0;
    beyond3 += std::fabs(z) > 3 ? 1 : 0;
    max_abs = std::fmax(max_abs, std::fabs(z));
  }
  const double dn = static_cast<double>(n);
  // standard errors at n = 10^6: mean 0.001, variance 0.0014, skewness 0.0024, kurtosis 0.005
  CHECK(std::fabs(s1 / dn) < 0.005);
  CHECK(std::fabs(s2 / dn - 1) < 0.007);
  CHECK(std::fabs(s3 / dn) < 0.012);
  CHECK(std::fabs(s4 / dn - 3) < 0.05);
  CHECK(std::fabs(within1 / dn - 0.682689) < 0.0025);   // binomial s.e. 0.00047
  CHECK(std::fabs(beyond3 / dn - 0.0026998) < 0.0003);  // s.e. 0.00005
  CHECK(max_abs <= 8.5);                                // √(−2 ln 2⁻⁵²) = 8.49
  // a different stream draws other numbers (the generator is not stuck on one sequence)
  CHECK(k::standard_normal(k::counter_hash(2024, k::noise_stream(5), 0)) !=
        k::standard_normal(k::counter_hash(2024, k::noise_stream(6), 0)));
}
