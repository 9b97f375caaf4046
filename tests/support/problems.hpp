#pragma once
/// @file problems.hpp
/// What the tests share: tensor layouts, a model that owns the user's buffers and exposes them as a
/// `param_set`, deterministic random inputs, the test problems (a noisy convex quadratic, an
/// ill-conditioned one) evaluated both in the library's element type and in float64, and
/// comparison helpers (relative tolerance, bitwise).

#include <doctest/doctest.h>

#include <flatmin/flatmin.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <numeric>
#include <random>
#include <string>
#include <type_traits>
#include <vector>

#include "reference.hpp"

namespace flatmin_test {

// ---------------------------------------------------------------------------------------------
// Random inputs
// ---------------------------------------------------------------------------------------------

inline std::uint64_t splitmix64(std::uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

/// A uniform number in [lo, hi) that depends only on (seed, a, b), rounded to a float so that the
/// library's float and double runs and the float64 reference all see exactly the same input.
inline double uniform(std::uint64_t seed, std::uint64_t a, std::uint64_t b, double lo = -1, double hi = 1) {
  const std::uint64_t h = splitmix64(splitmix64(seed ^ splitmix64(a)) ^ (b * 0x632be59bd9b4e019ull));
  const double u = static_cast<double>(h >> 11) * 0x1.0p-53;
  return static_cast<double>(static_cast<float>(lo + (hi - lo) * u));
}

/// n numbers uniform in [lo, hi), each exactly representable as a float.
inline ref::vec random_vec(std::size_t n, std::uint64_t seed, double lo = -1, double hi = 1) {
  ref::vec v(n);
  for (std::size_t i = 0; i < n; ++i) v[i] = uniform(seed, 0x5eed, i, lo, hi);
  return v;
}

// ---------------------------------------------------------------------------------------------
// Layouts and the model that owns the buffers
// ---------------------------------------------------------------------------------------------

struct tensor_spec {
  std::string name;
  std::vector<std::size_t> shape;
  flatmin::tensor_options options{};
  std::size_t numel() const {
    return std::accumulate(shape.begin(), shape.end(), std::size_t{1}, std::multiplies<>{});
  }
};
using layout_spec = std::vector<tensor_spec>;

/// Layouts the unit tests run on: one tensor; an MLP-like set with a bias excluded from weight
/// decay and from ASAM's scaling; a mix with tensors excluded from perturbation, a one-element
/// tensor and a tensor longer than one backend segment (4096).
inline std::vector<layout_spec> unit_layouts() {
  return {
      {{"w", {7}}},
      {{"fc1.weight", {5, 3}}, {"fc1.bias", {5}, {.weight_decay = false, .adaptive = false}}, {"fc2.weight", {2, 5}}},
      {{"emb", {4, 6}, {.perturb = false}},
       {"w", {33}},
       {"norm", {6}, {.weight_decay = false, .perturb = false, .adaptive = false}},
       {"b", {1}, {.weight_decay = false, .adaptive = false}},
       {"big", {4100}, {.adaptive = true}}},
  };
}

inline std::string describe(const layout_spec& l) {
  std::string s;
  for (const auto& t : l) {
    s += t.name + "[" + std::to_string(t.numel()) + "]";
    if (!t.options.perturb) s += "/noperturb";
    if (!t.options.weight_decay) s += "/nowd";
    if (!t.options.adaptive) s += "/noadapt";
    s += " ";
  }
  return s;
}

inline ref::opts_vec expand_opts(const layout_spec& l) {
  ref::opts_vec o;
  for (const auto& t : l)
    for (std::size_t i = 0; i < t.numel(); ++i) o.push_back({t.options.weight_decay, t.options.perturb, t.options.adaptive});
  return o;
}

/// Where a test registers its host buffers for `Backend`. A backend whose "device" memory is host
/// addressable (Thrust on OMP / CPP) may specialise this to memory_space::device.
template <class Backend>
inline constexpr flatmin::memory_space test_space = flatmin::memory_space::host;

/// The user's side of a training program: one value and one gradient buffer per tensor, and the
/// `param_set` viewing them. Not movable (the views point into it).
template <class T>
class model {
 public:
  explicit model(layout_spec spec, flatmin::memory_space space = flatmin::memory_space::host)
      : spec_(std::move(spec)), opts(expand_opts(spec_)) {
    w.resize(spec_.size());
    g.resize(spec_.size());
    for (std::size_t t = 0; t < spec_.size(); ++t) {
      w[t].assign(spec_[t].numel(), T{});
      g[t].assign(spec_[t].numel(), T{});
      offset.push_back(numel);
      numel += spec_[t].numel();
    }
    for (std::size_t t = 0; t < spec_.size(); ++t)
      params.add(spec_[t].name, w[t].data(), g[t].data(), spec_[t].shape, spec_[t].options, space);
  }
  model(const model&) = delete;
  model& operator=(const model&) = delete;

  const layout_spec& spec() const { return spec_; }

  T& wat(std::size_t i) { return w[locate(i).first][locate(i).second]; }
  T& gat(std::size_t i) { return g[locate(i).first][locate(i).second]; }

  /// Weights as float64 (exact).
  ref::vec weights() const {
    ref::vec r;
    r.reserve(numel);
    for (const auto& t : w)
      for (T x : t) r.push_back(static_cast<double>(x));
    return r;
  }
  void set_weights(const ref::vec& v) { scatter(w, v); }
  void set_grads(const ref::vec& v) { scatter(g, v); }
  ref::vec grads() const {
    ref::vec r;
    for (const auto& t : g)
      for (T x : t) r.push_back(static_cast<double>(x));
    return r;
  }
  /// The weights as stored, for bitwise comparisons.
  std::vector<T> raw_weights() const {
    std::vector<T> r;
    r.reserve(numel);
    for (const auto& t : w) r.insert(r.end(), t.begin(), t.end());
    return r;
  }
  std::vector<T> raw_grads() const {
    std::vector<T> r;
    for (const auto& t : g) r.insert(r.end(), t.begin(), t.end());
    return r;
  }
  void set_raw_weights(const std::vector<T>& v) { scatter_raw(w, v); }
  void set_raw_grads(const std::vector<T>& v) { scatter_raw(g, v); }

  flatmin::param_set<T> params;
  std::vector<std::vector<T>> w, g;
  std::vector<std::size_t> offset;
  std::size_t numel = 0;

 private:
  std::pair<std::size_t, std::size_t> locate(std::size_t i) const {
    const auto it = std::upper_bound(offset.begin(), offset.end(), i);
    const std::size_t t = static_cast<std::size_t>(it - offset.begin()) - 1;
    return {t, i - offset[t]};
  }
  static void scatter(std::vector<std::vector<T>>& dst, const ref::vec& v) {
    std::size_t k = 0;
    for (auto& t : dst)
      for (T& x : t) x = static_cast<T>(v.at(k++));
  }
  static void scatter_raw(std::vector<std::vector<T>>& dst, const std::vector<T>& v) {
    std::size_t k = 0;
    for (auto& t : dst)
      for (T& x : t) x = v.at(k++);
  }

  layout_spec spec_;

 public:
  ref::opts_vec opts;
};

// ---------------------------------------------------------------------------------------------
// Test problems
// ---------------------------------------------------------------------------------------------

/// L(w) = ½ Σ a_i (w_i − c_i)² + Σ ν_k,i w_i, with a fresh noise vector ν_k for the k-th gradient
/// evaluation (k counts calls on this instance). Copy an instance to give the library and the
/// reference the same sequence. a, c, ν are floats, so both see the same data.
struct quadratic {
  ref::vec a, c;
  double noise = 0;
  std::uint64_t seed = 1;
  std::size_t calls = 0;

  /// a uniform in [a_lo, a_hi), c uniform in [−1, 1).
  static quadratic random(std::size_t n, std::uint64_t seed, double a_lo = 0.5, double a_hi = 2.0, double noise = 0.1) {
    quadratic q;
    q.a = random_vec(n, seed * 3 + 1, a_lo, a_hi);
    q.c = random_vec(n, seed * 3 + 2);
    q.noise = noise;
    q.seed = seed;
    return q;
  }

  /// Curvatures log-spaced over [1, kappa] (condition number kappa), in a shuffled order so that
  /// every tensor gets stiff and soft directions. No noise.
  static quadratic ill_conditioned(std::size_t n, double kappa, std::uint64_t seed) {
    quadratic q;
    q.a.resize(n);
    for (std::size_t i = 0; i < n; ++i)
      q.a[i] = static_cast<double>(static_cast<float>(std::pow(kappa, n > 1 ? double(i) / double(n - 1) : 0.0)));
    std::mt19937_64 rng(seed);
    std::shuffle(q.a.begin(), q.a.end(), rng);
    q.c = random_vec(n, seed * 7 + 5);
    q.seed = seed;
    return q;
  }

  double nu(std::size_t k, std::size_t i) const { return noise == 0 ? 0.0 : noise * uniform(seed, 1000 + k, i); }

  double loss(const ref::vec& w) const {
    double s = 0;
    for (std::size_t i = 0; i < w.size(); ++i) s += 0.5 * a[i] * (w[i] - c[i]) * (w[i] - c[i]);
    return s;
  }

  /// The float64 gradient (advances the noise).
  ref::vec grad(const ref::vec& w) {
    ref::vec g(w.size());
    for (std::size_t i = 0; i < w.size(); ++i) g[i] = a[i] * (w[i] - c[i]) + nu(calls, i);
    ++calls;
    return g;
  }

  /// The same gradient computed in T at the model's weights, written into its gradient buffers
  /// (advances the noise). Returns the clean loss (without the noise term), in float64.
  template <class T>
  double eval(model<T>& m) {
    double l = 0;
    std::size_t i = 0;
    for (std::size_t t = 0; t < m.w.size(); ++t)
      for (std::size_t j = 0; j < m.w[t].size(); ++j, ++i) {
        const T wi = m.w[t][j];
        if constexpr (std::is_floating_point_v<T>) {
          m.g[t][j] = static_cast<T>(a[i]) * (wi - static_cast<T>(c[i])) + static_cast<T>(nu(calls, i));
        } else {  // 16-bit storage: computed in float, stored rounded (a backward pass in bf16 / fp16)
          const float x = static_cast<float>(wi);
          m.g[t][j] = static_cast<T>(static_cast<float>(a[i]) * (x - static_cast<float>(c[i])) +
                                     static_cast<float>(nu(calls, i)));
        }
        const double d = double(wi) - c[i];
        l += 0.5 * a[i] * d * d;
      }
    ++calls;
    return l;
  }

  template <class T>
  auto objective(model<T>& m) {
    return [this, &m] { return eval(m); };
  }
};

// ---------------------------------------------------------------------------------------------
// Comparisons
// ---------------------------------------------------------------------------------------------

template <class T>
inline constexpr double rtol = std::is_same_v<T, float> ? 1e-5 : 1e-12;

struct mismatch {
  bool ok = true;
  std::size_t index = 0;
  double got = 0, want = 0, tol = 0;
};

/// Elementwise |got − want| ≤ rtol · max(|want|, rms(want)): relative for the bulk of the entries,
/// and not demanding more than the float format gives for entries that cancel to near zero.
inline mismatch compare(const ref::vec& got, const ref::vec& want, double rtol) {
  mismatch m;
  if (got.size() != want.size()) {
    m.ok = false;
    m.index = static_cast<std::size_t>(-1);
    return m;
  }
  double rms = 0;
  for (double x : want) rms += x * x;
  rms = want.empty() ? 0 : std::sqrt(rms / double(want.size()));
  double worst = -1;
  for (std::size_t i = 0; i < got.size(); ++i) {
    const double tol = rtol * std::max(std::fabs(want[i]), rms);
    const double err = std::fabs(got[i] - want[i]);
    const double r = tol > 0 ? err / tol : (err > 0 ? 1e300 : 0.0);
    if (!(err <= tol) || std::isnan(got[i])) m.ok = false;
    if (r > worst || std::isnan(got[i])) {
      worst = std::isnan(got[i]) ? 1e300 : r;
      m.index = i;
      m.got = got[i];
      m.want = want[i];
      m.tol = tol;
    }
  }
  return m;
}

inline bool close(double got, double want, double rtol) {
  return std::fabs(got - want) <= rtol * std::max(std::fabs(want), 1e-300) || got == want;
}

template <class T>
bool bitwise_equal(const std::vector<T>& a, const std::vector<T>& b) {
  return a.size() == b.size() && (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0);
}

inline bool bitwise_equal(double a, double b) { return std::memcmp(&a, &b, sizeof(double)) == 0; }

template <class T>
bool all_finite(const std::vector<T>& v) {
  for (T x : v)
    if (!std::isfinite(static_cast<double>(x))) return false;
  return true;
}

}  // namespace flatmin_test

/// CHECKs that two float64 vectors agree to a relative tolerance, naming the worst entry.
#define FLATMIN_CHECK_CLOSE(GOT_, WANT_, TOL_)                                                          \
  do {                                                                                               \
    const auto fm_mm_ = ::flatmin_test::compare((GOT_), (WANT_), (TOL_));                               \
    INFO("worst entry " << fm_mm_.index << ": got " << fm_mm_.got << ", want " << fm_mm_.want        \
                        << ", tolerance " << fm_mm_.tol);                                            \
    CHECK(fm_mm_.ok);                                                                                \
  } while (0)

/// CHECKs that a scalar agrees with its reference to a relative tolerance.
#define FLATMIN_CHECK_CLOSE1(GOT_, WANT_, TOL_)                                                    \
  do {                                                                                          \
    const double fm_g_ = (GOT_), fm_w_ = (WANT_);                                                 \
    INFO(#GOT_ " = " << fm_g_ << ", reference " << fm_w_);                                       \
    CHECK(::flatmin_test::close(fm_g_, fm_w_, (TOL_)));                                          \
  } while (0)
