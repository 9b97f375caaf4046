// 16-bit storage types (flatmin::bfloat16, flatmin::half) and the three mixed-precision modes
// (params/precision.hpp). The conversions are checked against a reference built here from the
// formats' definitions (every finite 16-bit value decoded by ldexp into a sorted table; a value is
// rounded by searching it), and against the F16C instructions where the CPU has them. The
// optimizer runs against a float64 re-derivation of each update rule that rounds where the
// optimizer writes (the table's rounding, not the library's), in each mode; then restores, the
// fp16 overflow skip, stochastic rounding's bias, checkpoints, options, and Eigen vs Thrust.
#include <doctest/doctest.h>
#include <flatmin/flatmin.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "support/backends.hpp"
#include "support/buffers.hpp"
#include "support/streaming.hpp"

// The F16C comparison with GCC (clang 14 knows no "f16c" for __builtin_cpu_supports, and its
// _cvtss_sh is a compound literal that -Wpedantic flags).
#if (defined(__x86_64__) || defined(__i386__)) && defined(__GNUC__) && !defined(__clang__)
#include <immintrin.h>
#define FLATMIN_TEST_F16C 1
#endif

namespace {

namespace fm = flatmin;
using flatmin_test::buffer;
using flatmin_test::buffer_of;

// ---------------------------------------------------------------------------------------------
// The formats by their definitions.

template <class E>
constexpr bool is_bf16 = std::is_same_v<E, fm::bfloat16>;

// The value of a 16-bit pattern (NaN for NaNs), from sign, exponent and fraction fields.
template <class E>
double decode(std::uint16_t b) {
  const int fbits = is_bf16<E> ? 7 : 10, ebits = is_bf16<E> ? 8 : 5, bias = is_bf16<E> ? 127 : 15;
  const int e = (b >> fbits) & ((1 << ebits) - 1), m = b & ((1 << fbits) - 1);
  const double s = (b & 0x8000) ? -1.0 : 1.0;
  if (e == (1 << ebits) - 1) return m ? std::numeric_limits<double>::quiet_NaN() : s * INFINITY;
  if (e == 0) return s * std::ldexp(double(m), 1 - bias - fbits);
  return s * std::ldexp(double(m + (1 << fbits)), e - bias - fbits);
}

// Every finite non-negative value, indexed by its bits (increasing with them).
template <class E>
const std::vector<double>& finite_values() {
  static const std::vector<double> v = [] {
    std::vector<double> r;
    for (std::uint32_t b = 0; b < 0x8000; ++b) {
      const double x = decode<E>(static_cast<std::uint16_t>(b));
      if (!std::isfinite(x)) break;
      r.push_back(x);
    }
    return r;
  }();
  return v;
}

// x (not a NaN) rounded to nearest, ties to the even pattern, ±inf from max + half a spacing.
template <class E>
std::uint16_t ref_round(double x) {
  const auto& v = finite_values<E>();
  const std::uint16_t sign = std::signbit(x) ? 0x8000 : 0;
  const double a = std::fabs(x), top = v.back(), overflow = top + (top - v[v.size() - 2]) / 2;
  if (a >= overflow) return static_cast<std::uint16_t>(sign | v.size());  // the inf pattern
  if (a >= top) return static_cast<std::uint16_t>(sign | (v.size() - 1));
  const auto hi = static_cast<std::size_t>(std::upper_bound(v.begin(), v.end(), a) - v.begin());
  const std::size_t lo = hi - 1;
  const double d1 = a - v[lo], d2 = v[hi] - a;
  const std::size_t k = d1 < d2 ? lo : d2 < d1 ? hi : (lo % 2 == 0 ? lo : hi);
  return static_cast<std::uint16_t>(sign | k);
}

// Stochastic rounding by the documented rule: neighbours a (nearest) and b, b with probability
// (x − a) / (b − a), u from the top 24 bits of the hash.
template <class E>
std::uint16_t ref_stochastic(double x, std::uint64_t hash) {
  const std::uint16_t a = ref_round<E>(x);
  const double ad = decode<E>(a);
  if (!std::isfinite(ad) || ad == x) return a;
  const std::uint16_t b = static_cast<std::uint16_t>(std::fabs(x) > std::fabs(ad) ? a + 1 : a - 1);
  const double p = (x - ad) / (decode<E>(b) - ad);
  const double u = std::ldexp(double(hash >> 40), -24);
  return u < p ? b : a;
}

template <class E>
std::uint16_t bits(E x) {
  std::uint16_t b;
  std::memcpy(&b, &x, 2);
  return b;
}
std::uint32_t fbits(float f) {
  std::uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
float from_fbits(std::uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// Comparisons in loops over millions of values: counted, the first failure kept for the message
// (one doctest assertion per loop rather than per value keeps the run short).
struct tally {
  std::size_t failed = 0;
  std::string first;
  void operator()(bool ok, const char* what) {
    if (!ok && failed++ == 0) first = what;
  }
};
#define TALLY(t, ...) t(static_cast<bool>(__VA_ARGS__), #__VA_ARGS__)

#if defined(FLATMIN_TEST_F16C)
__attribute__((target("f16c"))) std::uint16_t hw_half_from_float(float f) {
  return static_cast<std::uint16_t>(_cvtss_sh(f, _MM_FROUND_TO_NEAREST_INT));
}
__attribute__((target("f16c"))) float hw_half_to_float(std::uint16_t h) { return _cvtsh_ss(h); }
bool have_f16c() { return __builtin_cpu_supports("f16c"); }
#endif

// The floats a conversion to E is checked on: every pattern's float, its float neighbours, the
// midpoints to the next pattern (ties) and their neighbours, NaNs with many payloads, and random
// floats of every magnitude.
template <class E>
std::vector<float> sample_floats() {
  std::vector<float> s;
  const auto& v = finite_values<E>();
  for (std::size_t k = 0; k < v.size(); ++k) {
    const float x = static_cast<float>(v[k]);  // exact
    for (int d = -2; d <= 2; ++d) s.push_back(std::nextafter(x, d < 0 ? -INFINITY : INFINITY));
    s.push_back(x);
    if (k + 1 < v.size()) {
      const float mid = static_cast<float>((v[k] + v[k + 1]) / 2);  // exact: a float has the bits
      s.push_back(mid);
      s.push_back(std::nextafter(mid, 0.0f));
      s.push_back(std::nextafter(mid, INFINITY));
    }
  }
  const double top = v.back(), overflow = top + (top - v[v.size() - 2]) / 2;
  for (double x : {overflow, top, 65520.0, 65519.99, 3.4e38, 1e-45, 1e-40, 2.9802322387695312e-08})
    for (float f : {static_cast<float>(x), std::nextafter(static_cast<float>(x), 0.0f),
                    std::nextafter(static_cast<float>(x), INFINITY)})
      s.push_back(f);
  s.push_back(INFINITY);
  s.push_back(std::numeric_limits<float>::max());
  s.push_back(std::numeric_limits<float>::denorm_min());
  s.push_back(0.0f);
  std::mt19937_64 gen(42);
  for (int i = 0; i < 1 << 20; ++i) s.push_back(from_fbits(static_cast<std::uint32_t>(gen())));
  for (std::uint32_t p = 1; p < (1u << 23); p = p * 3 + 1) {  // NaN payloads, quiet and signalling
    s.push_back(from_fbits(0x7f800000u | p));
    s.push_back(from_fbits(0xff800000u | (p & 0x3fffffu)));
  }
  const std::size_t n = s.size();
  for (std::size_t i = 0; i < n; ++i) s.push_back(-s[i]);
  return s;
}

}  // namespace

TEST_CASE_TEMPLATE("numeric: every 16-bit pattern converts to float exactly, NaNs quieted", E, fm::bfloat16,
                   fm::half) {
  tally t;
  std::size_t nans = 0;
  for (std::uint32_t b = 0; b < 0x10000; ++b) {
    const auto x = E::from_bits(static_cast<std::uint16_t>(b));
    const float f = static_cast<float>(x);
    const double want = decode<E>(static_cast<std::uint16_t>(b));
    if (std::isnan(want)) {
      ++nans;
      TALLY(t, std::isnan(f));
      // sign and payload kept (the pattern's fraction is the top of float's); a half NaN is
      // quieted as vcvtph2ps does, a bfloat16 is binary32's high half as it is
      const std::uint32_t frac = (b & (is_bf16<E> ? 0x7fu : 0x3ffu)) << (is_bf16<E> ? 16 : 13);
      TALLY(t, fbits(f) == ((b & 0x8000u) << 16 | 0x7f800000u | (is_bf16<E> ? 0u : 0x400000u) | frac));
    } else {
      TALLY(t, double(f) == want);
      TALLY(t, std::signbit(f) == bool(b & 0x8000));
      TALLY(t, static_cast<double>(x) == want);
      // and back: the same bits
      TALLY(t, bits(E(f)) == b);
      TALLY(t, bits(E(double(f))) == b);
    }
#if defined(FLATMIN_TEST_F16C)
    if constexpr (!is_bf16<E>)
      if (have_f16c()) TALLY(t, fbits(hw_half_to_float(static_cast<std::uint16_t>(b))) == fbits(f));
#endif
  }
  CAPTURE(t.first);
  CHECK(t.failed == 0);
  CHECK(nans == (is_bf16<E> ? 2u * 127 : 2u * 1023));
}

TEST_CASE_TEMPLATE("numeric: float and double round to nearest even, once", E, fm::bfloat16, fm::half) {
  const auto s = sample_floats<E>();
#if defined(FLATMIN_TEST_F16C)
  const bool hw = !is_bf16<E> && have_f16c();
  if (!is_bf16<E> && !hw) MESSAGE("no F16C on this CPU: the hardware comparison is skipped");
#endif
  tally t;
  std::size_t checked = 0;
  for (const float f : s) {
    const std::uint16_t got = bits(E(f));
    if (std::isnan(f)) {
      // quieted, sign and top payload bits kept
      const std::uint32_t u = fbits(f);
      const std::uint16_t want = is_bf16<E> ? static_cast<std::uint16_t>((u >> 16) | 0x40u)
                                            : static_cast<std::uint16_t>(((u >> 16) & 0x8000u) | 0x7e00u |
                                                                         ((u >> 13) & 0x3ffu));
      TALLY(t, got == want);
      TALLY(t, bits(E(double(f))) == want);  // double NaN: what float(d) keeps
    } else {
      TALLY(t, got == ref_round<E>(f));
      TALLY(t, bits(E(double(f))) == got);
    }
#if defined(FLATMIN_TEST_F16C)
    if constexpr (!is_bf16<E>)
      if (hw) TALLY(t, hw_half_from_float(f) == got);
#endif
    ++checked;
  }
  CHECK(checked > (1u << 21));
  // Doubles: one rounding. Just above (below) a midpoint of two patterns rounds up (down), where
  // rounding to float first would land on the midpoint and then on the even pattern.
  const auto& v = finite_values<E>();
  std::mt19937_64 gen(7);
  for (std::size_t k = 0; k + 1 < v.size(); ++k) {
    const double mid = (v[k] + v[k + 1]) / 2;
    for (double x : {mid, mid * (1 + 0x1p-40), mid * (1 - 0x1p-40), std::nextafter(mid, 0.0),
                     std::nextafter(mid, 1e300)}) {
      TALLY(t, bits(E(x)) == ref_round<E>(x));
      TALLY(t, bits(E(-x)) == ref_round<E>(-x));
    }
  }
  for (int i = 0; i < 1 << 18; ++i) {
    double x;
    const std::uint64_t u = gen();
    std::memcpy(&x, &u, 8);
    if (std::isnan(x)) continue;
    TALLY(t, bits(E(x)) == ref_round<E>(x));
  }
  CAPTURE(t.first);
  CHECK(t.failed == 0);
  CHECK(bits(E(1e300)) == ref_round<E>(INFINITY));
  CHECK(bits(E(-1e-300)) == 0x8000);
}

TEST_CASE("numeric: storage_cast reinterprets 2-byte types and keeps the bits") {
  struct user_bf16 {  // a stand-in for Eigen::bfloat16 / c10::BFloat16: 16 bits and nothing else
    std::uint16_t x;
  };
  user_bf16 u[3] = {{0x3f80}, {0xc000}, {0x0001}};
  fm::bfloat16* p = fm::storage_cast<fm::bfloat16>(u);
  CHECK(static_cast<float>(p[0]) == 1.0f);
  CHECK(static_cast<float>(p[1]) == -2.0f);
  p[2] = fm::bfloat16(0.5f);
  CHECK(u[2].x == 0x3f00);
  const user_bf16* cu = u;
  const fm::half* h = fm::storage_cast<const fm::half>(cu);
  CHECK(static_cast<float>(h[0]) == 1.875f);  // 0x3f80 read as binary16: 2^0 · (1 + 896/1024)
}

TEST_CASE_TEMPLATE("numeric: stochastic rounding is unbiased and takes only the two neighbours", E,
                   fm::bfloat16, fm::half) {
  const double sp = is_bf16<E> ? 0x1p-7 : 0x1p-10;  // spacing at [1, 2)
  const double tiny = is_bf16<E> ? 0x1p-133 : 0x1p-24;
  for (double x : {1.0 + 0.3 * sp, -(1.5 + 0.9 * sp), 1.0 + sp / 1024, 0.4 * tiny, 5.7 * tiny, 1.0}) {
    CAPTURE(x);
    const std::uint16_t a = ref_round<E>(x);
    const std::size_t n = 200000;
    tally t;
    double sum = 0;
    for (std::size_t i = 0; i < n; ++i) {
      const std::uint64_t h = fm::kernels::counter_hash(3, fm::kernels::rounding_stream(i % 97), i);
      const E r = fm::kernels::stochastic_round<E>(static_cast<float>(x), h);
      const std::uint16_t rb = bits(r);
      TALLY(t, (rb == a || rb == static_cast<std::uint16_t>(a + 1) || rb == static_cast<std::uint16_t>(a - 1)));
      TALLY(t, rb == ref_stochastic<E>(static_cast<float>(x), h));
      sum += static_cast<double>(r);
    }
    CAPTURE(t.first);
    CHECK(t.failed == 0);
    // mean within 5 standard errors: per draw the spread is gap · √(p (1 − p)) ≤ gap / 2
    const double ad = decode<E>(a);
    const double gap = std::fabs(decode<E>(static_cast<std::uint16_t>(a + 1)) - ad);
    const double mean = sum / double(n);
    CHECK(std::fabs(mean - static_cast<float>(x)) <= 5 * (gap / 2) / std::sqrt(double(n)) + 1e-300);
  }
}

// ---------------------------------------------------------------------------------------------
// The optimizer in each mode against a float64 reference.

namespace {

struct tensor_spec {
  std::size_t n;
  fm::tensor_options o;
};
// Sizes straddle the segment size (4096); one tensor without weight decay, one not perturbed, one
// not adaptive (ASAM's T_w = 1 there).
const std::vector<tensor_spec> specs{{7, {}},
                                     {300, {.weight_decay = false}},
                                     {4097, {}},
                                     {33, {.perturb = false}},
                                     {90, {.adaptive = false}},
                                     {1, {}}};

std::uint32_t flags_at(std::size_t i) {
  for (const auto& s : specs) {
    if (i < s.n) return fm::to_flags(s.o);
    i -= s.n;
  }
  return 0;
}

// g_i = a_i (w_i − c_i) + b_i sin(3 w_i), in double from the weights as stored; `big` scales it
// (an fp16 overflow).
struct problem {
  std::vector<double> a, c, b;
  explicit problem(std::size_t n) {
    std::uint64_t s = 0x9e3779b97f4a7c15ull;
    auto u = [&] {  // xorshift64*, uniform in [−1, 1)
      s ^= s >> 12, s ^= s << 25, s ^= s >> 27;
      return static_cast<double>((s * 0x2545f4914f6cdd1dull) >> 11) * 0x1.0p-52 - 1.0;
    };
    for (std::size_t i = 0; i < n; ++i) {
      a.push_back(1.5 + u());
      c.push_back(0.5 * u());
      b.push_back(0.3 * u());
    }
  }
  double grad(std::size_t i, double w) const { return a[i] * (w - c[i]) + b[i] * std::sin(3 * w); }
};

// A value stored as E, by the reference's rounding (float and double: the compiler's).
template <class E>
double store_as(double x) {
  if constexpr (fm::detail::is_storage16<E>)
    return decode<E>(ref_round<E>(x));
  else
    return static_cast<double>(static_cast<E>(x));
}

template <class B, class W, class G>
struct model {
  std::vector<buffer<B, W>> w;
  std::vector<buffer<B, G>> g;
  fm::param_set<W, G> params;
  std::size_t numel = 0;
  explicit model(const std::vector<double>& w0) {
    std::size_t off = 0;
    for (const auto& s : specs) {
      std::vector<W> hw(s.n);
      for (std::size_t j = 0; j < s.n; ++j) hw[j] = static_cast<W>(w0[off + j]);
      w.push_back(buffer_of<B, W>::make(hw));
      g.push_back(buffer_of<B, G>::make(std::vector<G>(s.n, G(0.0))));
      off += s.n;
    }
    for (std::size_t t = 0; t < specs.size(); ++t)
      params.add("t" + std::to_string(t), w[t], g[t], specs[t].o);
    numel = off;
  }
  std::vector<W> raw() const {
    std::vector<W> r;
    for (const auto& b : w)
      for (W x : buffer_of<B, W>::host(b)) r.push_back(x);
    return r;
  }
  std::vector<double> weights() const {
    std::vector<double> r;
    for (W x : raw()) r.push_back(static_cast<double>(x));
    return r;
  }
  // g ← ∇L(w) · scale, stored in G; `poison` ≥ 0: that entry gets `poison_value`.
  void eval(const problem& p, double scale = 1, std::size_t poison = SIZE_MAX, double poison_value = 0) {
    const auto x = weights();
    std::size_t off = 0;
    for (std::size_t t = 0; t < specs.size(); ++t) {
      std::vector<G> h(specs[t].n);
      for (std::size_t j = 0; j < h.size(); ++j)
        h[j] = static_cast<G>(off + j == poison ? poison_value : scale * p.grad(off + j, x[off + j]));
      buffer_of<B, G>::assign(g[t], h);
      off += specs[t].n;
    }
  }
};

enum class mode { nearest, stochastic, master };

// The float64 reference: state and master in double, weights rounded (store_as / ref_stochastic)
// where the optimizer writes them.
struct reference {
  bool adam = false, decoupled = false;
  double lr = 0.05, momentum = 0, dampening = 0, weight_decay = 0, beta1 = 0.9, beta2 = 0.999, eps = 1e-8;
  bool asam = false;
  double eta = 0.01, rho = 0.05, xi = 1e-12;
  std::vector<std::uint8_t> mask;  // empty: dense; else per entry, with radius scale 1/beta
  double beta = 1;
  mode how = mode::nearest;
  std::uint64_t seed = 0;
  std::vector<double> buf, m, v, master;
  int t = 0;

  // One SAM step from the stored weights w (updated); returns the perturbed weights.
  template <class W, class G>
  std::vector<double> step(std::vector<double>& w, const problem& p) {
    const std::size_t n = w.size();
    if (buf.empty()) buf.assign(n, 0.0), m.assign(n, 0.0), v.assign(n, 0.0);
    if (how == mode::master && master.empty()) master = w;
    const std::vector<double>& from = how == mode::master ? master : w;
    auto in = [&](std::size_t i) {
      return (flags_at(i) & fm::tensor_flags::perturb) && (mask.empty() || mask[i]);
    };
    auto tw = [&](std::size_t i) {
      return asam && (flags_at(i) & fm::tensor_flags::adaptive) ? std::fabs(w[i]) + eta : 1.0;
    };
    std::vector<double> g(n);
    for (std::size_t i = 0; i < n; ++i) g[i] = store_as<G>(p.grad(i, w[i]));
    double n2 = 0;
    for (std::size_t i = 0; i < n; ++i)
      if (in(i)) n2 += tw(i) * g[i] * tw(i) * g[i];
    const double scale = rho / beta / (std::sqrt(n2) + xi);
    std::vector<double> pert = w;
    for (std::size_t i = 0; i < n; ++i)
      if (in(i)) pert[i] = store_as<W>(from[i] + scale * tw(i) * tw(i) * g[i]);
    for (std::size_t i = 0; i < n; ++i) g[i] = store_as<G>(p.grad(i, pert[i]));
    ++t;
    const double step_size = lr / (1.0 - std::pow(beta1, double(t)));
    const double bc2_sqrt = std::sqrt(1.0 - std::pow(beta2, double(t)));
    for (std::size_t i = 0; i < n; ++i) {
      const bool wd = flags_at(i) & fm::tensor_flags::weight_decay;
      double x = from[i], d = g[i];
      if (!adam) {  // torch.optim.SGD
        d = d + (wd ? weight_decay : 0.0) * x;
        if (momentum > 0) {
          buf[i] = t == 1 ? d : momentum * buf[i] + (1 - dampening) * d;
          d = buf[i];
        }
        x = x - lr * d;
      } else {  // torch.optim.Adam / AdamW
        if (wd && !decoupled) d = d + weight_decay * x;
        if (wd && decoupled) x = x * (1 - lr * weight_decay);
        m[i] = beta1 * m[i] + (1 - beta1) * d;
        v[i] = beta2 * v[i] + (1 - beta2) * d * d;
        x = x - step_size * m[i] / (std::sqrt(v[i]) / bc2_sqrt + eps);
      }
      if (how == mode::master) {
        master[i] = x;
        w[i] = store_as<W>(x);
      } else if (how == mode::stochastic) {
        if constexpr (fm::detail::is_storage16<W>) {
          const std::uint64_t h = fm::kernels::counter_hash(seed, std::uint64_t(t) | (1ull << 63), i);
          w[i] = decode<W>(ref_stochastic<W>(x, h));
        }
      } else {
        w[i] = store_as<W>(x);
      }
    }
    return pert;
  }
};

// How far two weight vectors are, in spacings of W at each reference value, and how many differ.
template <class W>
std::pair<double, std::size_t> spacing_diff(const std::vector<double>& got, const std::vector<double>& want) {
  REQUIRE(got.size() == want.size());
  double worst = 0;
  std::size_t differ = 0;
  const double rel = std::is_same_v<W, fm::bfloat16> ? 0x1p-7 : std::is_same_v<W, fm::half> ? 0x1p-10 : 0x1p-23;
  const double floor = std::is_same_v<W, fm::bfloat16> ? 0x1p-133 : std::is_same_v<W, fm::half> ? 0x1p-24 : 0x1p-149;
  for (std::size_t i = 0; i < got.size(); ++i) {
    if (got[i] == want[i]) continue;
    ++differ;
    const double sp = std::max(floor, std::ldexp(rel, std::ilogb(std::max(std::fabs(want[i]), floor))));
    worst = std::max(worst, std::fabs(got[i] - want[i]) / sp);
  }
  return {worst, differ};
}

template <class P, class B, class Perturb, class Mask, class Base>
auto make_opt(fm::param_set<typename P::weight_type, typename P::grad_type>& ps, Base base, Perturb pert,
              Mask mask, fm::optimizer_options o = {}) {
  return fm::sharpness_aware<P, B, Perturb, Mask, Base>(
      ps, {.base = std::move(base), .perturb = pert, .mask = std::move(mask), .options = o});
}

// Runs `steps` SAM steps of precision P against the reference and compares the weights after each
// ascent and descent: with S = double every entry equals the reference but for a rare tie decided
// the other way by a last-bit difference of the arithmetic's order (at most 1 spacing, ≤ 0.2 % of
// the entries); with S = float, float's own rounding moves more entries, by a few spacings.
template <class P, class B, class Perturb, class Mask, class Base>
void against_reference(reference r, Base base, Perturb pert, Mask mask, fm::optimizer_options o, int steps) {
  using W = typename P::weight_type;
  using G = typename P::grad_type;
  using S = typename P::state_type;
  CAPTURE(steps);
  const problem p(6000);
  std::vector<double> w0(p.a.size());
  for (std::size_t i = 0; i < w0.size(); ++i) w0[i] = store_as<W>(0.8 * p.c[i] + 0.2);
  model<B, W, G> md(w0);
  w0.resize(md.numel);
  auto opt = make_opt<P, B>(md.params, base, pert, mask, o);
  if (!r.mask.empty()) {  // the sparse mask: the reference's entries, set on the optimizer
    r.mask.resize(md.numel);
    std::size_t off = 0;
    for (std::size_t t = 0; t < specs.size(); ++t) {
      if (specs[t].o.perturb)
        opt.set_mask(t, std::vector<std::uint8_t>(r.mask.begin() + static_cast<std::ptrdiff_t>(off),
                                                r.mask.begin() + static_cast<std::ptrdiff_t>(off + specs[t].n)));
      off += specs[t].n;
    }
  }
  // S = float: float's rounding of the master or the moments moves a weight near 0 (where a
  // spacing is small) by a few spacings after 20 Adam steps (3.5 seen).
  const double max_spacing = std::is_same_v<S, double> ? 1.0 : 4.0;
  const std::size_t max_differ = std::is_same_v<S, double> ? md.numel / 500 : md.numel / 50;
  std::vector<double> w = w0;
  for (int s = 1; s <= steps; ++s) {
    CAPTURE(s);
    const auto pert_w = r.template step<W, G>(w, p);
    md.eval(p);
    REQUIRE_FALSE(opt.ascend().skipped);
    auto [a_worst, a_differ] = spacing_diff<W>(md.weights(), pert_w);
    CHECK(a_worst <= max_spacing);
    CHECK(a_differ <= max_differ);
    md.eval(p);
    REQUIRE_FALSE(opt.descend().skipped);
    auto [d_worst, d_differ] = spacing_diff<W>(md.weights(), w);
    CHECK(d_worst <= max_spacing);
    CHECK(d_differ <= max_differ);
    if (s == steps) MESSAGE("max spacings " << d_worst << ", entries differing " << d_differ);
  }
}

std::vector<std::uint8_t> sparse_mask(std::size_t n) {
  std::vector<std::uint8_t> m(n);
  for (std::size_t i = 0; i < n; ++i) m[i] = static_cast<std::uint8_t>(fm::kernels::counter_hash(9, 1, i) % 3 == 0);
  return m;
}

template <class B, class P>
void every_rule(fm::optimizer_options o, mode how, int steps) {
  reference r;
  r.how = how;
  r.seed = o.rounding_seed;
  // One composition per base optimizer (compile time): ASAM over SGD, with η = 1e3 (T_w ≈ η:
  // SAM's direction, scaled) and plain, then with η = 0.01 (ASAM) and momentum and dampening.
  {
    reference q = r;
    q.lr = 0.05, q.weight_decay = 0.01, q.asam = true, q.eta = 1e3, q.rho = 5e-5;
    against_reference<P, B>(q, fm::base::sgd{.lr = 0.05, .weight_decay = 0.01},
                            fm::perturb::adaptive{.rho = 5e-5, .eta = 1e3}, fm::mask::dense{}, o, steps);
  }
  {
    reference q = r;
    q.lr = 0.05, q.momentum = 0.9, q.dampening = 0.1, q.weight_decay = 0.01, q.asam = true, q.rho = 0.5;
    against_reference<P, B>(q, fm::base::sgd{.lr = 0.05, .momentum = 0.9, .dampening = 0.1, .weight_decay = 0.01},
                            fm::perturb::adaptive{.rho = 0.5, .eta = 0.01}, fm::mask::dense{}, o, steps);
  }
  for (bool decoupled : {false, true}) {  // Adam, AdamW; a sparse mask (ESAM's, set, ρ / β)
    CAPTURE(decoupled);
    reference q = r;
    q.adam = true, q.lr = 0.01, q.beta1 = 0.8, q.beta2 = 0.99, q.weight_decay = 0.1, q.decoupled = decoupled;
    q.rho = 0.1, q.mask = sparse_mask(6000), q.beta = 0.5;
    against_reference<P, B>(q,
                            fm::base::adam{.lr = 0.01, .beta1 = 0.8, .beta2 = 0.99, .eps = 1e-8,
                                           .weight_decay = 0.1,
                                           .decay = decoupled ? fm::base::weight_decay_mode::decoupled
                                                              : fm::base::weight_decay_mode::coupled},
                            fm::perturb::l2{.rho = 0.1},
                            fm::mask::random{.beta = 0.5, .unit = fm::mask::granularity::element}, o, steps);
  }
}

}  // namespace

TEST_CASE_TEMPLATE("mixed: mode 1, 16-bit weights rounded to nearest, every rule against float64", B,
                   FLATMIN_TEST_BACKENDS) {
  for (int steps : {1, 20}) {
    every_rule<B, fm::precision<fm::bfloat16, fm::bfloat16, double>>({}, mode::nearest, steps);
    every_rule<B, fm::precision<fm::half, fm::half, double>>({}, mode::nearest, steps);
  }
}

TEST_CASE_TEMPLATE("mixed: mode 1 with stochastic rounding, every rule against float64", B,
                   FLATMIN_TEST_BACKENDS) {
  const fm::optimizer_options o{.weight_rounding = fm::rounding::stochastic, .rounding_seed = 1234};
  for (int steps : {1, 20}) {
    every_rule<B, fm::precision<fm::bfloat16, fm::bfloat16, double>>(o, mode::stochastic, steps);
    every_rule<B, fm::precision<fm::half, fm::half, double>>(o, mode::stochastic, steps);
  }
}

TEST_CASE_TEMPLATE("mixed: mode 2, master weights, every rule against float64", B, FLATMIN_TEST_BACKENDS) {
  const fm::optimizer_options o{.master_weights = true};
  for (int steps : {1, 20}) {
    every_rule<B, fm::precision<fm::bfloat16, fm::bfloat16, double>>(o, mode::master, steps);
    every_rule<B, fm::precision<fm::half, fm::half, double>>(o, mode::master, steps);
  }
  every_rule<B, fm::precision<fm::bfloat16>>(o, mode::master, 20);
}

TEST_CASE_TEMPLATE("mixed: mode 3, float weights with 16-bit gradients, every rule against float64", B,
                   FLATMIN_TEST_BACKENDS) {
  for (int steps : {1, 20}) {
    every_rule<B, fm::precision<float, fm::bfloat16, double>>({}, mode::nearest, steps);
    every_rule<B, fm::precision<float, fm::half, double>>({}, mode::nearest, steps);
  }
  static_assert(std::is_same_v<fm::precision<float, fm::half>::state_type, float>);
  static_assert(std::is_same_v<fm::precision<fm::half>::state_type, float>);
  static_assert(std::is_same_v<fm::precision<fm::half, fm::half, double>::state_type, double>);
}

TEST_CASE_TEMPLATE("mixed: ascend() then cancel() restores 16-bit weights bit-exactly; master unchanged", B,
                   FLATMIN_TEST_BACKENDS) {
  const problem p(6000);
  std::vector<double> w0(p.a.size());
  for (std::size_t i = 0; i < w0.size(); ++i) w0[i] = 0.8 * p.c[i] + 0.2 + 1e-5 * double(i);
  auto check = [&](auto& md, auto opt) {
    for (int i = 0; i < 3; ++i) {  // also after steps, with state and a refreshed mask
      const auto before = md.raw();
      md.eval(p);
      REQUIRE_FALSE(opt.ascend().skipped);
      CHECK(md.raw().size() == before.size());
      CHECK(std::memcmp(md.raw().data(), before.data(), before.size() * 2) != 0);
      opt.cancel();
      CHECK(std::memcmp(md.raw().data(), before.data(), before.size() * 2) == 0);
      md.eval(p);
      REQUIRE_FALSE(opt.step([&] {
                          md.eval(p);
                          return 0.0;
                        }).skipped);
    }
  };
  {
    model<B, fm::bfloat16, fm::bfloat16> md(w0);
    check(md, make_opt<fm::precision<fm::bfloat16>, B>(md.params, fm::base::sgd{.lr = 0.1, .momentum = 0.9},
                                                        fm::perturb::l2{.rho = 0.5}, fm::mask::dense{}));
  }
  {
    model<B, fm::half, fm::half> md(w0);
    check(md, make_opt<fm::precision<fm::half>, B>(md.params, fm::base::adam{.lr = 0.01},
                                                    fm::perturb::adaptive{.rho = 0.5},
                                                    fm::mask::fisher{.keep = 0.3, .refresh_every = 1, .block = 64},
                                                    {.master_weights = true}));
  }
  {
    model<B, fm::half, fm::bfloat16> md(w0);
    check(md, make_opt<fm::precision<fm::half, fm::bfloat16>, B>(
                  md.params, fm::base::sgd{.lr = 0.1}, fm::perturb::l2{.rho = 0.5},
                  fm::mask::random{.beta = 0.5, .unit = fm::mask::granularity::element},
                  {.weight_rounding = fm::rounding::stochastic}));
  }
}

TEST_CASE_TEMPLATE("mixed: an fp16 gradient that overflows skips the step, weights and master as before", B,
                   FLATMIN_TEST_BACKENDS) {
  const problem p(6000);
  std::vector<double> w0(p.a.size());
  for (std::size_t i = 0; i < w0.size(); ++i) w0[i] = 0.8 * p.c[i] + 0.2;
  // Two runs of one model: b skips a step whose g_adv overflowed (×1e6 at one entry: > 65504 → inf
  // in fp16); after it both apply the same steps, so they must stay bitwise equal: a skipped step
  // leaves the weights, the master copy and the moments as they were.
  model<B, fm::half, fm::half> a(w0), b(w0);
  auto make = [](auto& md) {
    return make_opt<fm::precision<fm::half>, B>(md.params, fm::base::adam{.lr = 0.01}, fm::perturb::l2{.rho = 0.1},
                                                 fm::mask::dense{}, {.master_weights = true});
  };
  auto oa = make(a), ob = make(b);
  for (int s = 0; s < 2; ++s)
    for (auto* md : {&a, &b}) {
      auto& o = md == &a ? oa : ob;
      md->eval(p);
      REQUIRE_FALSE(o.ascend().skipped);
      md->eval(p);
      REQUIRE_FALSE(o.descend().skipped);
    }
  const auto before = b.raw();
  b.eval(p);
  REQUIRE_FALSE(ob.ascend().skipped);
  b.eval(p, 1.0, 1234, 1e6);
  const auto r = ob.descend();
  CHECK(r.skipped);
  CHECK(r.reason == fm::skip_reason::nonfinite_perturbed_gradient);
  CHECK(std::memcmp(b.raw().data(), before.data(), before.size() * 2) == 0);
  // at w: the ascent's statistics catch it
  b.eval(p, 1.0, 77, -7e4);
  const auto r2 = ob.ascend();
  CHECK(r2.skipped);
  CHECK(r2.reason == fm::skip_reason::nonfinite_gradient);
  CHECK(ob.descend().skipped);
  CHECK(std::memcmp(b.raw().data(), before.data(), before.size() * 2) == 0);
  for (int s = 0; s < 3; ++s)
    for (auto* md : {&a, &b}) {
      auto& o = md == &a ? oa : ob;
      md->eval(p);
      REQUIRE_FALSE(o.ascend().skipped);
      md->eval(p);
      REQUIRE_FALSE(o.descend().skipped);
    }
  CHECK(std::memcmp(a.raw().data(), b.raw().data(), before.size() * 2) == 0);
  CHECK(oa.steps() == ob.steps());
}

TEST_CASE_TEMPLATE("mixed: checkpoints record the 16-bit types, round-trip the master, refuse the other type",
                   B, FLATMIN_TEST_BACKENDS) {
  const problem p(6000);
  std::vector<double> w0(p.a.size());
  for (std::size_t i = 0; i < w0.size(); ++i) w0[i] = 0.8 * p.c[i] + 0.2;
  auto make = [](auto& md, bool master) {
    using W = typename std::remove_reference_t<decltype(md.params)>::value_type;
    return make_opt<fm::precision<W>, B>(md.params, fm::base::adamw{.lr = 0.01}, fm::perturb::l2{.rho = 0.1},
                                          fm::mask::dense{}, {.master_weights = master});
  };
  model<B, fm::bfloat16, fm::bfloat16> a(w0), b(w0);
  auto oa = make(a, true);
  auto obj = [&](auto& md) {
    return [&] {
      md.eval(p);
      return 0.0;
    };
  };
  for (int i = 0; i < 3; ++i) REQUIRE_FALSE(oa.step(obj(a)).skipped);
  std::ostringstream os;
  oa.save(os);
  const std::string blob = os.str();
  CHECK(blob.substr(12, 4) == std::string("f\x04\x82\x82", 4));  // state float, weights and grads bf16
  CHECK(blob.find("master_weights") != std::string::npos);
  CHECK(oa.extra_state_bytes() == a.numel * 2 + a.numel * 4);  // saved w16 + master float

  // b: a's weights, a fresh optimizer (its master from b's weights), then a's state: the master
  // comes from the checkpoint, and the runs continue bit for bit.
  {
    const auto wa = a.raw();
    std::size_t off = 0;
    for (std::size_t t = 0; t < specs.size(); ++t) {
      const auto first = wa.begin() + static_cast<std::ptrdiff_t>(off);
      buffer_of<B, fm::bfloat16>::assign(b.w[t], std::vector<fm::bfloat16>(first, first + specs[t].n));
      off += specs[t].n;
    }
  }
  auto ob = make(b, true);
  std::istringstream is(blob);
  ob.load(is);
  std::ostringstream os2;
  ob.save(os2);
  CHECK(os2.str() == blob);
  for (int i = 0; i < 4; ++i) {
    REQUIRE_FALSE(oa.step(obj(a)).skipped);
    REQUIRE_FALSE(ob.step(obj(b)).skipped);
  }
  CHECK(std::memcmp(a.raw().data(), b.raw().data(), a.numel * 2) == 0);

  // bf16 and fp16 are both 2 bytes: the header's codes tell them apart.
  model<B, fm::half, fm::half> h(w0);
  auto oh = make(h, true);
  std::istringstream is2(blob);
  CHECK_THROWS_WITH_AS(oh.load(is2),
                       doctest::Contains("element type differs: saved weights bfloat16, gradients bfloat16, state "
                                         "float, this optimizer uses weights half, gradients half, state float"),
                       std::invalid_argument);
  CHECK(oh.steps() == 0);
  std::ostringstream os3;
  oh.save(os3);
  CHECK(os3.str().substr(12, 4) == std::string("f\x04\x02\x02", 4));
  // without master weights the entry is absent, and a file with it is refused
  model<B, fm::bfloat16, fm::bfloat16> c(w0);
  auto oc = make(c, false);
  std::istringstream is3(blob);
  CHECK_THROWS_AS(oc.load(is3), std::invalid_argument);
  CHECK(oc.extra_state_bytes() == c.numel * 2);

  // reload_master(): the user overwrote the model's weights; the next step starts from them
  model<B, fm::bfloat16, fm::bfloat16> d(w0), e(std::vector<double>(w0.size(), 0.25));
  auto od = make(d, true);
  auto oe = make(e, true);
  for (std::size_t t = 0; t < specs.size(); ++t)
    buffer_of<B, fm::bfloat16>::assign(d.w[t], buffer_of<B, fm::bfloat16>::host(e.w[t]));
  od.reload_master();
  REQUIRE_FALSE(od.step(obj(d)).skipped);
  REQUIRE_FALSE(oe.step(obj(e)).skipped);
  CHECK(std::memcmp(d.raw().data(), e.raw().data(), d.numel * 2) == 0);
}

TEST_CASE("mixed: precision options are checked against the weight type") {
  std::vector<float> w(8, 1.0f), g(8, 0.5f);
  fm::param_set<float> ps;
  ps.add("w", w, g);
  using F = fm::sharpness_aware<float, fm::backend::eigen, fm::perturb::l2, fm::mask::dense, fm::base::sgd>;
  CHECK_THROWS_WITH_AS(F(ps, {.base = {.lr = 0.1}, .options = {.master_weights = true}}),
                       doctest::Contains("master_weights must be false unless the weights are bfloat16 or half"),
                       std::invalid_argument);
  CHECK_THROWS_WITH_AS(F(ps, {.base = {.lr = 0.1}, .options = {.weight_rounding = fm::rounding::stochastic}}),
                       doctest::Contains("weight_rounding must be rounding::nearest unless"), std::invalid_argument);
  std::vector<fm::bfloat16> wb(8, fm::bfloat16(1.0f)), gb(8, fm::bfloat16(0.5f));
  fm::param_set<fm::bfloat16> pb;
  pb.add("w", wb, gb);
  using H = fm::sharpness_aware<fm::bfloat16, fm::backend::eigen, fm::perturb::l2, fm::mask::dense, fm::base::sgd>;
  CHECK_THROWS_WITH_AS(
      H(pb, {.base = {.lr = 0.1},
             .options = {.master_weights = true, .weight_rounding = fm::rounding::stochastic}}),
      doctest::Contains("weight_rounding (with master_weights) must be rounding::nearest"), std::invalid_argument);
  // Master weights switched on after construction (what a factory's optimizer does): the same
  // bits as an optimizer built with them; switched off, the copy is dropped.
  H opt(pb, {.base = {.lr = 0.1}});
  opt.options().master_weights = true;
  std::vector<fm::bfloat16> wc = wb, gc = gb;
  fm::param_set<fm::bfloat16> pc;
  pc.add("w", wc, gc);
  H twin(pc, {.base = {.lr = 0.001}, .options = {.master_weights = true}});
  opt.base().lr = 0.001;  // updates under half a bf16 spacing: only a master copy keeps them
  for (int k = 0; k < 5; ++k) {
    CHECK_FALSE(opt.step([] { return 0.0; }).skipped);
    CHECK_FALSE(twin.step([] { return 0.0; }).skipped);
  }
  CHECK(std::memcmp(wb.data(), wc.data(), 16) == 0);
  CHECK(static_cast<float>(wb[0]) < 1.0f);  // master 1 − 5 · 0.001 · 0.5 = 0.9975 → 0.99609375 in bf16
  CHECK(opt.extra_state_bytes() == twin.extra_state_bytes());
  opt.options().master_weights = false;
  opt.options().weight_rounding = fm::rounding::stochastic;
  CHECK_FALSE(opt.step([] { return 0.0; }).skipped);
  CHECK(opt.extra_state_bytes() < twin.extra_state_bytes());
}

#if defined(FLATMIN_TEST_WITH_THRUST)
// The same 16-bit runs on backend::eigen and backend::thrust: weights and every state entry
// (through save()) bitwise equal; with stochastic rounding, the same seed draws the same bits.
template <class P, class Mask, class Base, class Perturb = fm::perturb::l2>
void differential(Base base, Mask mask, fm::optimizer_options o, Perturb pert = {.rho = 0.2}) {
  using W = typename P::weight_type;
  using G = typename P::grad_type;
  const problem p(6000);
  std::vector<double> w0(p.a.size());
  for (std::size_t i = 0; i < w0.size(); ++i) w0[i] = 0.8 * p.c[i] + 0.2;
  model<fm::backend::eigen, W, G> e(w0);
  model<fm::backend::thrust, W, G> t(w0);
  auto oe = make_opt<P, fm::backend::eigen>(e.params, base, pert, mask, o);
  auto ot = make_opt<P, fm::backend::thrust>(t.params, base, pert, mask, o);
  for (int s = 0; s < 6; ++s) {
    CAPTURE(s);
    e.eval(p);
    t.eval(p);
    const auto re = oe.ascend(), rt = ot.ascend();
    CHECK(re.grad_norm == rt.grad_norm);
    CHECK(re.perturbation_norm == rt.perturbation_norm);
    e.eval(p);
    t.eval(p);
    const auto de = oe.descend(), dt = ot.descend();
    CHECK(de.perturbed_grad_norm == dt.perturbed_grad_norm);
    const auto we = e.raw(), wt = t.raw();
    CHECK(std::memcmp(we.data(), wt.data(), we.size() * sizeof(W)) == 0);
  }
  std::ostringstream se, st;
  oe.save(se), ot.save(st);
  CHECK(se.str() == st.str());
}

void all_16_bit_differentials() {
  differential<fm::precision<fm::bfloat16>>(fm::base::sgd{.lr = 0.05, .momentum = 0.9},
                                            fm::mask::random{.beta = 0.5, .unit = fm::mask::granularity::element},
                                            {});
  differential<fm::precision<fm::bfloat16>>(fm::base::sgd{.lr = 0.05, .momentum = 0.9}, fm::mask::dense{}, {});
  differential<fm::precision<fm::half>>(fm::base::adamw{.lr = 0.01}, fm::mask::dense{},
                                        {.weight_rounding = fm::rounding::stochastic, .rounding_seed = 99});
  differential<fm::precision<fm::bfloat16>>(fm::base::adam{.lr = 0.01}, fm::mask::fisher{.keep = 0.3, .refresh_every = 2},
                                            {.master_weights = true}, fm::perturb::adaptive{.rho = 0.5});
  differential<fm::precision<float, fm::half>>(fm::base::adam{.lr = 0.01, .weight_decay = 0.1},
                                               fm::mask::dynamic{.refresh_every = 2}, {});
}

TEST_CASE("mixed: backend::eigen and backend::thrust agree bitwise for 16-bit types") {
  // backend::eigen with streaming stores forced (backend/host/stream_stores.hpp: the saved copy and
  // the restored 16-bit weights by non-temporal stores), then by size (at 6000 entries: plain)
  for (const auto how : {fm::backend::host::stream_stores::on, fm::backend::host::stream_stores::automatic}) {
    CAPTURE(static_cast<int>(how));
    const flatmin_test::forced_streaming streaming(how);
    all_16_bit_differentials();
  }
}
#endif
