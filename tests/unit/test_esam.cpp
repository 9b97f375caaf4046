// ESAM: sharpness-sensitive data selection (exactly ⌈γ|B|⌉ samples with the largest loss increase,
// ties to the lower index) and the gradient on that subset, against a float64 reference of a
// linear least-squares model written here; the two-call protocol; the compile-time capability check.
#include <doctest/doctest.h>

#include <random>

#include "support/backends.hpp"
#include "support/sparse_model.hpp"

namespace {
/// ℓ_i(w) = ½ (x_i · w − y_i)², one tensor w of size d; batch of n samples (with duplicates).
struct least_squares {
  std::vector<double>& w;
  std::vector<double>& g;
  std::vector<std::vector<double>> x;
  std::vector<double> y;
  std::vector<std::size_t> last_subset;

  double loss(std::size_t i) const {
    double r = -y[i];
    for (std::size_t j = 0; j < w.size(); ++j) r += x[i][j] * w[j];
    return 0.5 * r * r;
  }
  void grad_over(std::span<const std::size_t> idx) {
    std::fill(g.begin(), g.end(), 0.0);
    for (std::size_t i : idx) {
      double r = -y[i];
      for (std::size_t j = 0; j < w.size(); ++j) r += x[i][j] * w[j];
      for (std::size_t j = 0; j < w.size(); ++j) g[j] += r * x[i][j] / static_cast<double>(idx.size());
    }
  }
  std::size_t batch_size() const { return y.size(); }
  double losses_and_gradient(std::span<double> l) {
    double s = 0;
    for (std::size_t i = 0; i < y.size(); ++i) s += (l[i] = loss(i));
    std::vector<std::size_t> all(y.size());
    std::iota(all.begin(), all.end(), std::size_t{0});
    grad_over(all);
    return s / static_cast<double>(y.size());
  }
  void losses(std::span<double> l) {
    for (std::size_t i = 0; i < y.size(); ++i) l[i] = loss(i);
  }
  void subset_gradient(std::span<const std::size_t> idx) {
    last_subset.assign(idx.begin(), idx.end());
    grad_over(idx);
  }
};
static_assert(flatmin::sample_objective<least_squares>);
static_assert(!flatmin::sample_objective<double (*)()>, "a plain closure is not a sample_objective");
}  // namespace

TEST_CASE_TEMPLATE("esam: exactly ceil(gamma |B|) samples by loss increase, gradient on that subset", B,
                   FLATMIN_TEST_BACKENDS) {
  const std::size_t d = 6, n = 13;
  std::mt19937_64 rng(5);
  std::normal_distribution<double> nd(0, 1);
  for (double gamma : {0.1, 0.5, 0.62, 0.99, 1.0}) {
    CAPTURE(gamma);
    std::vector<double> w(d), g(d);
    for (auto& v : w) v = nd(rng);
    least_squares obj{w, g, {}, {}, {}};
    for (std::size_t i = 0; i < n; ++i) {
      if (i % 4 == 3) {  // duplicates: tied increases
        obj.x.push_back(obj.x[i - 1]);
        obj.y.push_back(obj.y[i - 1]);
        continue;
      }
      std::vector<double> xi(d);
      for (auto& v : xi) v = nd(rng);
      obj.x.push_back(xi);
      obj.y.push_back(nd(rng));
    }
    flatmin::param_set<double> ps;
    ps.add("w", w, g);
    const double rho = 0.3, lr = 0.2;
    auto opt = flatmin::esam<B>(ps, flatmin::base::sgd{.lr = lr}, {.rho = rho, .beta = 1.0, .gamma = gamma});

    // reference
    const std::vector<double> w0 = w;
    std::vector<double> g0(d, 0.0), l0(n), l1(n);
    for (std::size_t i = 0; i < n; ++i) {
      double r = -obj.y[i];
      for (std::size_t j = 0; j < d; ++j) r += obj.x[i][j] * w0[j];
      l0[i] = 0.5 * r * r;
      for (std::size_t j = 0; j < d; ++j) g0[j] += r * obj.x[i][j] / n;
    }
    double gn = 0;
    for (double v : g0) gn += v * v;
    std::vector<double> we(d);
    for (std::size_t j = 0; j < d; ++j) we[j] = w0[j] + rho * g0[j] / (std::sqrt(gn) + 1e-12);
    std::vector<std::pair<double, std::size_t>> inc;
    for (std::size_t i = 0; i < n; ++i) {
      double r = -obj.y[i];
      for (std::size_t j = 0; j < d; ++j) r += obj.x[i][j] * we[j];
      l1[i] = 0.5 * r * r;
      inc.push_back({l1[i] - l0[i], i});
    }
    const std::size_t k = gamma >= 0.99 ? n : static_cast<std::size_t>(std::ceil(gamma * n));
    const auto chosen = sparse_test::top_k_ref(inc, k);
    std::vector<double> gs(d, 0.0);
    for (std::size_t i : chosen) {
      double r = -obj.y[i];
      for (std::size_t j = 0; j < d; ++j) r += obj.x[i][j] * we[j];
      for (std::size_t j = 0; j < d; ++j) gs[j] += r * obj.x[i][j] / static_cast<double>(k);
    }

    const auto rep = opt.step(obj);
    CHECK(std::set<std::size_t>(obj.last_subset.begin(), obj.last_subset.end()) == chosen);
    CHECK(obj.last_subset.size() == k);
    CHECK(opt.descent().selected() == obj.last_subset);
    for (std::size_t j = 0; j < d; ++j) CHECK(w[j] == doctest::Approx(w0[j] - lr * gs[j]).epsilon(1e-12));
    double mean = 0;
    for (double v : l0) mean += v / n;
    CHECK(rep.loss == doctest::Approx(mean));
  }
}

TEST_CASE("esam: select() by hand — ties to the lower index, NaN first, gamma >= 0.99 keeps all") {
  flatmin::select::sharpness_sensitive s{.gamma = 0.5};
  const std::vector<double> before{1, 1, 1, 1, 1, 1};
  const std::vector<double> after{1.5, 2, 1.5, 1.5, 0, 2};  // increases .5 1 .5 .5 −1 1
  CHECK(s.select(before, after) == std::vector<std::size_t>{0, 1, 5});
  s.gamma = 0.6;  // k = ⌈3.6⌉ = 4
  CHECK(s.select(before, after) == std::vector<std::size_t>{0, 1, 2, 5});
  s.gamma = 0.1;  // k = 1: the lower index of the tie at 1
  CHECK(s.select(before, after) == std::vector<std::size_t>{1});
  s.gamma = 0.99;
  CHECK(s.select(before, after).size() == 6);
  const std::vector<double> nan_after{0, 0, std::nan(""), 0, 0, 0};
  s.gamma = 0.1;
  CHECK(s.select(before, nan_after) == std::vector<std::size_t>{2});
  CHECK_THROWS_AS(s.select(before, std::vector<double>{1.0}), std::invalid_argument);
  s.gamma = 0;
  CHECK_THROWS_WITH_AS(s.select(before, after), doctest::Contains("gamma"), std::invalid_argument);
}
