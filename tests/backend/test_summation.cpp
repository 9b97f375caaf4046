// The one summation order (backend/summation.hpp) against a re-derivation written here from its
// documented definition: K strands, element j of the first ⌊len/K⌋·K to strand j mod K, the tail
// to strand 0, each strand in order, the strands combined as a balanced pairwise tree, segment
// partials in segment order. Checked bitwise in float (where the order shows in the rounding) on
// every length that hits a tail, for the scalar path of each backend and for each host fast form
// of backend::eigen (backend/host/) against the scalar path.
#include <doctest/doctest.h>
#include <flatmin/flatmin.hpp>

#include <cmath>
#include <cstring>
#include <random>
#include <type_traits>
#include <utility>
#include <vector>

#include "support/backends.hpp"

namespace {

namespace fb = flatmin::backend;

// lengths around the strand count, a block of eight mask bits and the segment size
std::vector<std::uint32_t> lengths() {
  std::vector<std::uint32_t> l;
  for (std::uint32_t n = 0; n <= 41; ++n) l.push_back(n);
  for (std::uint32_t n : {63u, 64u, 65u, 1001u, 2047u, 4093u, 4094u, 4095u, 4096u}) l.push_back(n);
  return l;
}

// values of mixed magnitudes (2^±spread), so that a float sum in another order rounds
// differently; squares of floats are exact in double, and their sums in double round in another
// order only once a strand is long, which spread 0 (similar magnitudes) makes likely
template <class R>
std::vector<R> mixed(std::size_t n, unsigned seed, int spread = 12) {
  std::mt19937 rng(seed);
  std::normal_distribution<double> nd(0.0, 1.0);
  std::uniform_int_distribution<int> ex(-spread, spread);
  std::vector<R> v(n);
  for (auto& x : v) x = static_cast<R>(std::ldexp(nd(rng), ex(rng)));
  return v;
}

// The balanced pairwise tree over a[lo, hi), written as recursion on halves.
template <class R>
R tree(const std::vector<R>& a, std::size_t lo, std::size_t hi) {
  if (hi - lo == 1) return a[lo];
  const std::size_t mid = lo + (hi - lo) / 2;
  return tree(a, lo, mid) + tree(a, mid, hi);
}

// The documented order over x[0, len), x(j) the j-th term.
template <class R, class X>
R reference(std::uint32_t len, std::uint32_t k, const X& x) {
  std::vector<R> strand(k, R(0));
  const std::uint32_t body = len / k * k;
  for (std::uint32_t j = 0; j < body; ++j) strand[j % k] = strand[j % k] + x(j);
  for (std::uint32_t j = body; j < len; ++j) strand[0] = strand[0] + x(j);
  return tree(strand, 0, k);
}

template <class R>
bool same_bits(R a, R b) {
  return std::memcmp(&a, &b, sizeof a) == 0;
}

// Σ e.g over a pass, summed in R = float: the backends' scalar reduction path
struct sum_g {
  FLATMIN_HD float operator()(const fb::elem<float>& e) const { return e.g; }
};

}  // namespace

TEST_CASE("summation order: strand_sum and strand_partial are the documented order") {
  for (std::uint32_t len : lengths()) {
    CAPTURE(len);
    const auto v = mixed<float>(len, 3 + len);
    const auto x = [&](std::uint32_t j) { return v[j]; };
    const float want = reference<float>(len, fb::reduction_strands, x);
    CHECK(same_bits(fb::strand_sum<float>(len, x), want));
    // one strand at a time (backend::thrust: one thread per strand), then the same combine
    float a[fb::reduction_strands];
    for (std::uint32_t r = 0; r < fb::reduction_strands; ++r) a[r] = fb::strand_partial<float>(len, r, x);
    CHECK(same_bits(fb::combine_strands<fb::reduction_strands>(a), want));
    // another strand count (FLATMIN_THRUST_STRANDS=32 on a GPU): the same order with K = 32
    float b[32];
    for (std::uint32_t r = 0; r < 32; ++r) b[r] = fb::strand_partial<float, 32>(len, r, x);
    CHECK(same_bits(fb::combine_strands<32>(b), reference<float>(len, 32, x)));
    CHECK(same_bits(fb::strand_sum<float, 32>(len, x), reference<float>(len, 32, x)));
    // terms read U at a time before they are added (backend::thrust, U = 32): the same order, also
    // for U that does not divide a strand's length, and with K = 32
    float c[fb::reduction_strands], d[fb::reduction_strands], e[32];
    for (std::uint32_t r = 0; r < fb::reduction_strands; ++r) {
      c[r] = fb::strand_partial<float, fb::reduction_strands, 32>(len, r, x);
      d[r] = fb::strand_partial<float, fb::reduction_strands, 3>(len, r, x);
    }
    for (std::uint32_t r = 0; r < 32; ++r) e[r] = fb::strand_partial<float, 32, 5>(len, r, x);
    CHECK(same_bits(fb::combine_strands<fb::reduction_strands>(c), want));
    CHECK(same_bits(fb::combine_strands<fb::reduction_strands>(d), want));
    CHECK(same_bits(fb::combine_strands<32>(e), reference<float>(len, 32, x)));
  }
}

TEST_CASE("summation order: index blocks of segment_size, each in order") {
  const std::size_t n = 2 * fb::segment_size + 37;
  const auto v = mixed<float>(n, 9);
  for (std::size_t b = 0; b < 3; ++b) {
    float want = 0;
    for (std::size_t i = b * 4096; i < std::min(n, (b + 1) * 4096); ++i) want += v[i];
    CHECK(same_bits(fb::index_block_sum<float>(n, b, [&](std::size_t i) { return v[i]; }), want));
  }
  CHECK(fb::segment_size == 4096);  // the size test_differential's and the masks' tests were written for
}

TEST_CASE_TEMPLATE("summation order: each backend's reduction over a layout", Backend, FLATMIN_TEST_BACKENDS) {
  // one segment per layout: the backend's result is that segment's sum, nothing rounds it after
  for (std::uint32_t len : lengths()) {
    CAPTURE(len);
    if (len == 0) continue;  // a tensor has at least one entry
    std::vector<float> w1(len, 0.f), g1 = mixed<float>(len, 500 + len);
    flatmin::param_set<float> one;
    one.add("t", w1, g1);
    const fb::layout<float, Backend> l1(one);
    const float want = reference<float>(len, fb::reduction_strands, [&](std::uint32_t j) { return g1[j]; });
    CHECK(same_bits(Backend::template reduce<float>(l1.full(), sum_g{}), want));
  }
  // tensors cut into segments of segment_size, most of them with a tail; over 2^16 elements in
  // all, so that both backends take their parallel paths too
  const std::vector<std::uint32_t> sizes = {1, 3, 8, 9, 13, 21, 4095, 4096, 4099, 5003, 8195, 12285, 70001};
  std::vector<std::vector<float>> w, g;
  flatmin::param_set<float> ps;
  for (std::size_t t = 0; t < sizes.size(); ++t) {
    w.emplace_back(sizes[t], 0.f);
    g.push_back(mixed<float>(sizes[t], 40 + unsigned(t)));
  }
  for (std::size_t t = 0; t < sizes.size(); ++t)
    ps.add(std::to_string(t), w[t], g[t]);
  const fb::layout<float, Backend> l(ps);
  float want = 0;
  for (const auto& t : g)
    for (std::size_t lo = 0; lo < t.size(); lo += fb::segment_size) {
      const auto len = static_cast<std::uint32_t>(std::min<std::size_t>(fb::segment_size, t.size() - lo));
      want += reference<float>(len, fb::reduction_strands, [&](std::uint32_t j) { return t[lo + j]; });
    }
  CHECK(same_bits(Backend::template reduce<float>(l.full(), sum_g{}), want));
}

namespace {

using be = fb::eigen;
using flatmin::kernels::grad_stats;
namespace md = flatmin::mask::detail;

// the scalar path of a pass: no type backend/host has a form for
template <class P>
struct element_only {
  P p;
  grad_stats operator()(const fb::elem<float>& e) const { return p(e); }
};

template <class T>
double square(T g, T s) {
  const double y = double(g * s);
  return y * y;
}

}  // namespace

// Every gradient type (first) with every compute type (second) an optimizer has: the lanes form
// under GCC and Clang (strands.hpp), and the written-out form nvcc's host pass takes, each against
// the documented order. s = 0.75 is not a power of two, so a product taken in the wrong type, or a
// gradient not first converted to T, changes bits; s = 1 takes the lanes' path without the product
// (block_values' Scaled = false), which must give the product's bits.
TEST_CASE_TEMPLATE("host fast forms: Σ(s·g)² of runs read side by side, each run in the documented order", P,
                   std::pair<float, float>, std::pair<double, double>, std::pair<flatmin::bfloat16, float>,
                   std::pair<flatmin::half, float>, std::pair<float, double>, std::pair<flatmin::bfloat16, double>,
                   std::pair<flatmin::half, double>, std::pair<double, float>) {
  using G = typename P::first_type;
  using T = typename P::second_type;
  using V = std::conditional_t<std::is_same_v<G, double>, double, float>;  // the values' source type
  for (const T s : {T(0.75), T(1)}) {
  CAPTURE(s);
  // four runs of unequal lengths: the common part read side by side, then each run's own rest
  std::vector<std::vector<std::uint32_t>> groups = {
      {17, 3, 64, 9},         {8, 8, 8, 8},           {0, 5, 13, 41},         {4096, 4095, 1, 23},
      {40, 41, 39, 38},       {0, 0, 0, 0},           {4093, 4094, 4095, 4089}, {1001, 2047, 4091, 517},
      {4090, 4096, 3001, 4092}, {2045, 4087, 4085, 1003}};
  std::mt19937 pick(29);  // and long runs of random lengths: a wrong strand shows in double only there
  const auto len = [&pick] { return static_cast<std::uint32_t>(pick() % 4097); };
  for (int q = 0; q < 24; ++q) groups.push_back({len(), len(), len(), len()});
  for (const auto& lens : groups) {
    CAPTURE(lens[0]);
    CAPTURE(lens[3]);
    std::vector<std::vector<G>> runs;
    const G* g[4];
    std::uint32_t len[4];
    for (std::uint32_t m = 0; m < 4; ++m) {
      const auto v = mixed<V>(lens[m], 100 + m + lens[m], 0);
      runs.emplace_back(v.begin(), v.end());
      g[m] = runs[m].data();
      len[m] = lens[m];
    }
    double out[4], written[4];
    fb::host::sum_squares_strands(g, len, s, out);
    fb::host::sum_squares_written_out(g, len, s, written);
    for (std::uint32_t m = 0; m < 4; ++m) {
      const double want = reference<double>(len[m], fb::reduction_strands, [&](std::uint32_t j) {
        return square(static_cast<T>(g[m][j]), s);
      });
      CHECK(same_bits(out[m], want));
      CHECK(same_bits(written[m], want));
    }
  }
  }
}

#if FLATMIN_STRAND_LANES
TEST_CASE_TEMPLATE("host fast forms: the lanes' 16-bit conversion is static_cast<float>'s, every bit pattern", G,
                   flatmin::bfloat16, flatmin::half) {
  std::vector<G> all(65536);
  for (std::uint32_t b = 0; b < 65536; ++b) all[b].bits = static_cast<std::uint16_t>(b);
  std::size_t wrong = 0;
  for (std::uint32_t b = 0; b < 65536; b += 8) {
    fb::host::lanes::f32x8 x;
    fb::host::lanes::to_float(all.data() + b, x);
    for (std::uint32_t r = 0; r < 8; ++r) wrong += !same_bits(x[r], static_cast<float>(all[b + r]));
  }
  CHECK(wrong == 0);
}
#endif

TEST_CASE("host fast forms: masked Σ(s·g)², count and unmasked Σ(s·g)² in one sweep, the documented order") {
  const float s = 0.5f;
  for (std::uint32_t len : lengths()) {
    CAPTURE(len);
    const auto v = mixed<float>(len, 200 + len, 0);
    std::mt19937 rng(len);
    std::vector<std::uint8_t> in(len + 8);
    for (auto& b : in) b = static_cast<std::uint8_t>(rng() % 3 == 0);
    const auto bits8 = [&](std::uint32_t j) {
      std::uint32_t b = 0;
      for (std::uint32_t r = 0; r < 8; ++r) b |= std::uint32_t{in[j + r]} << r;
      return b;
    };
    double kept = -1, all = -1;
    const double got = fb::host::masked_sum_squares_strands(
        v.data(), len, s, bits8, [&](std::uint32_t j) { return in[j] != 0; }, kept, all);
    // the element path adds +0 for an entry the mask leaves out
    CHECK(same_bits(got, reference<double>(len, fb::reduction_strands,
                                           [&](std::uint32_t j) { return in[j] ? square(v[j], s) : 0.0; })));
    // every entry, as sum_squares_strands sums one run
    CHECK(same_bits(all, reference<double>(len, fb::reduction_strands, [&](std::uint32_t j) { return square(v[j], s); })));
    std::size_t count = 0;
    for (std::uint32_t j = 0; j < len; ++j) count += in[j];
    CHECK(kept == double(count));
  }
}

TEST_CASE("host fast forms: SAM statistics under a bit mask of blocks fall back to the element path's sums") {
  // a bit_view over block units cannot hand out eight entries' bits at once: the group form sums
  // those segments element by element, which must be the scalar path's bits
  const std::vector<std::size_t> sizes = {5, 300, 4095, 4097, 70000};
  std::vector<std::vector<float>> w, g;
  flatmin::param_set<float> ps;
  for (std::size_t t = 0; t < sizes.size(); ++t) {
    w.push_back(mixed<float>(sizes[t], 300 + unsigned(t)));
    g.push_back(mixed<float>(sizes[t], 400 + unsigned(t)));
  }
  for (std::size_t t = 0; t < sizes.size(); ++t)
    ps.add(std::to_string(t), w[t], g[t],
           flatmin::tensor_options{.perturb = t != 1, .mask_eligible = t != 2});
  const fb::layout<float, be> l(ps);
  md::units<float, be> units(l, md::unit_kind::block, 128);
  std::vector<std::uint32_t> bits(units.words());
  std::mt19937 rng(17);
  for (auto& b : bits) b = static_cast<std::uint32_t>(rng());
  const md::bit_view<float> view{units.view(l), bits.data()};
  REQUIRE(!view.element_units());
  const float inv = 0.5f;
  for (bool over_mask : {false, true}) {
    CAPTURE(over_mask);
    using pass_t = flatmin::kernels::stats_pass<float, flatmin::kernels::l2_term<float>, md::bit_view<float>>;
    static_assert(fb::host::has_group_form<pass_t, grad_stats, float, float, be::reduction_group>);
    const pass_t pass{{}, view, inv, over_mask};
    const grad_stats got = be::reduce<grad_stats>(l.full(), pass);
    const grad_stats want = be::reduce<grad_stats>(l.full(), element_only<pass_t>{pass});
    CHECK(std::memcmp(&got, &want, sizeof got) == 0);
    // and the masked sums are the masked entries' (a float64 re-derivation, the mask as oracle)
    double d2 = 0, kept = 0;
    for (std::size_t t = 0, i = 0; t < sizes.size(); ++t)
      for (std::size_t j = 0; j < sizes[t]; ++j, ++i)
        if (t != 1 && view(i, l.host_tensors()[t].flags)) {
          d2 += square(g[t][j], inv);
          kept += 1;
        }
    CHECK(got.kept == kept);
    CHECK(got.d2 == doctest::Approx(d2).epsilon(1e-12));
  }
}

TEST_CASE("host fast forms: the sparse masks' element scores, every branch, as the element path and by hand") {
  namespace fk = flatmin::kernels;
  using scores_t = fk::element_scores<float>;
  static_assert(fb::host::has_group_form<scores_t, double, float, float, be::reduction_group>);
  struct element_path {  // the same functor without a type the group forms know
    scores_t p;
    double operator()(const fb::elem<float>& e) const { return p(e); }
  };
  // candidates (0, 3, 4), not eligible (1), not perturbed (2); NaN and Inf in some of each
  const std::vector<std::size_t> sizes = {4099, 300, 77, 70000, 9};
  std::vector<std::vector<float>> w, g;
  flatmin::param_set<float> ps;
  for (std::size_t t = 0; t < sizes.size(); ++t) {
    w.emplace_back(sizes[t], 0.f);
    g.push_back(mixed<float>(sizes[t], 700 + unsigned(t)));
  }
  g[0][17] = std::nanf("");
  g[3][4096 * 5 + 3] = -INFINITY;
  g[3][69999] = INFINITY;
  g[1][5] = std::nanf("");
  g[2][76] = INFINITY;
  for (std::size_t t = 0; t < sizes.size(); ++t)
    ps.add(std::to_string(t), w[t], g[t], flatmin::tensor_options{.perturb = t != 2, .mask_eligible = t != 1});
  const fb::layout<float, be> l(ps);
  const std::size_t n = l.numel();
  const float inv = 0.75f;
  const auto before = mixed<float>(n, 808);  // a previous sum (any values: the scores add to it)
  for (auto what : {fk::score_of::square, fk::score_of::magnitude, fk::score_of::zero})
    for (int from : {0, 1, 2})  // none, in place, another buffer
      for (bool check_all : {false, true}) {
        CAPTURE(static_cast<int>(what));
        CAPTURE(from);
        CAPTURE(check_all);
        std::vector<float> a = before, b = before, other = before;
        auto with = [&](std::vector<float>& out) {
          const float* f = from == 0 ? nullptr : from == 1 ? out.data() : other.data();
          return scores_t{out.data(), f, inv, what, check_all};
        };
        const double got = be::reduce<double>(l.full(), with(a));
        const double path = be::reduce<double>(l.full(), element_path{with(b)});
        CHECK(got == path);
        CHECK(std::memcmp(a.data(), b.data(), n * sizeof(float)) == 0);
        // by hand: h in float, −1 off the candidates, counts of non-finite terms
        double bad = 0;
        bool same = true;
        for (std::size_t t = 0, i = 0; t < sizes.size(); ++t)
          for (std::size_t j = 0; j < sizes[t]; ++j, ++i) {
            const float x = g[t][j] * inv;
            float want = -1.f;
            if (t == 1 || t == 2) {
              bad += check_all && !std::isfinite(x) ? 1 : 0;
            } else if (what == fk::score_of::zero) {
              want = 0.f;
            } else {
              const float h = what == fk::score_of::square ? x * x : std::fabs(x);
              want = from == 0 ? h : before[i] + h;
              bad += std::isfinite(h) ? 0 : 1;
            }
            same = same && std::memcmp(&want, &a[i], sizeof want) == 0;
          }
        CHECK(same);
        CHECK(got == bad);
        const bool expect_bad = what != fk::score_of::zero || check_all;  // the cases hit something
        CHECK((bad > 0) == expect_bad);
      }
}
