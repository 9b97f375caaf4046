// Scalar pieces every backend shares: kernels::blend (the branch-free select of the element-mask
// passes) must be bit-exact, and backend::combine_strands must add the strands in the documented
// pairwise tree (the summation order that keeps backend::eigen and backend::thrust bitwise equal).
#include <doctest/doctest.h>
#include <flatmin/flatmin.hpp>

#include <cstdint>
#include <cstring>
#include <limits>
#include <random>

namespace {

template <class T>
auto bits(T x) {
  using U = std::conditional_t<sizeof(T) == 4, std::uint32_t, std::uint64_t>;
  U u;
  std::memcpy(&u, &x, sizeof u);
  return u;
}

}  // namespace

TEST_CASE_TEMPLATE("blend: selects bit for bit, signed zeros, NaN payloads and infinities included", T, float, double) {
  using flatmin::kernels::blend;
  const T nan = std::numeric_limits<T>::quiet_NaN(), inf = std::numeric_limits<T>::infinity();
  const T values[] = {T(0), -T(0), T(1.5), -T(3), inf, -inf, nan, -nan, std::numeric_limits<T>::denorm_min(),
                      std::numeric_limits<T>::max()};
  for (T a : values)
    for (T b : values) {
      CHECK(bits(blend(true, a, b)) == bits(a));
      CHECK(bits(blend(false, a, b)) == bits(b));
    }
  std::mt19937 rng(3);
  std::normal_distribution<T> nd;
  for (int i = 0; i < 1000; ++i) {
    const T a = nd(rng), b = nd(rng);
    const bool in = (rng() & 1u) != 0;
    CHECK(bits(blend(in, a, b)) == bits(in ? a : b));
  }
}

// Values chosen so that the order shows in the result (doubles, round to nearest):
//   a = {1e16, 1, -1e16, 1, 1, 1, 0.5, 0.25}
//   tree: ((a0 + a1) + (a2 + a3)) + ((a4 + a5) + (a6 + a7))
//     a0 + a1 = 1e16 (the 1 is lost: the spacing of doubles at 1e16 is 2)
//     a2 + a3 = -9999999999999999 is not representable either: it rounds to -1e16
//   so the first half is 0, the second (1 + 1) + (0.5 + 0.25) = 2.75, and the tree gives 2.75;
//   left to right gives ((1e16 + 1) − 1e16) + 1 + 1 + 1 + 0.5 + 0.25 = 3.75.
TEST_CASE("combine_strands: the pairwise tree of the shared summation order") {
  double a[8] = {1e16, 1.0, -1e16, 1.0, 1.0, 1.0, 0.5, 0.25};
  CHECK(flatmin::backend::combine_strands<8>(a) == 2.75);
  double seq = 0;  // left to right: another value, so the check above pins the order
  for (double x : {1e16, 1.0, -1e16, 1.0, 1.0, 1.0, 0.5, 0.25}) seq += x;
  CHECK(seq == 3.75);
  CHECK(flatmin::backend::reduction_strands == 8);
}
