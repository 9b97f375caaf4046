// Tests of the examples' shared code: the digits loader, split and label noise, and the MLP's
// gradients and hooks against a float64 central-difference reference.

#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <set>
#include <vector>

#include "common/digits.hpp"
#include "common/mlp.hpp"

namespace {
const examples::dataset& digits() {
  static const examples::dataset d = examples::load_digits(FLATMIN_DIGITS_CSV);
  return d;
}
std::vector<int> class_counts(const std::vector<int>& y) {
  std::vector<int> c(10, 0);
  for (int k : y) ++c.at(static_cast<std::size_t>(k));
  return c;
}
}  // namespace

TEST_CASE("digits: the file has the documented shape and value ranges") {
  const auto& d = digits();
  REQUIRE(d.size() == 1797);
  CHECK(d.features() == 64);
  CHECK(d.x.minCoeff() == 0.0f);
  CHECK(d.x.maxCoeff() == 1.0f);
  // Class sizes of the UCI test set (as in its documentation: 178, 182, 177, 183, 181, 182, 181, 179, 174, 180).
  CHECK(class_counts(d.y) == std::vector<int>{178, 182, 177, 183, 181, 182, 181, 179, 174, 180});
  // Every pixel is an integer in 0..16 before scaling.
  for (Eigen::Index k = 0; k < d.x.size(); ++k) {
    const float p = d.x.data()[k] * 16.0f;
    REQUIRE(p == std::round(p));
  }
}

TEST_CASE("digits: a malformed or missing file is rejected") {
  CHECK_THROWS_AS(examples::load_digits("/nonexistent/digits.csv.gz"), std::runtime_error);
  const std::string path = "flatmin_test_bad_digits.csv";
  {
    std::ofstream f(path);
    f << "0,1,2\n";
  }
  CHECK_THROWS_AS(examples::load_digits(path), std::runtime_error);
  {
    std::ofstream f(path);
    for (int k = 0; k < 64; ++k) f << (k == 5 ? 17 : 3) << ',';  // pixel out of range
    f << "4\n";
  }
  CHECK_THROWS_AS(examples::load_digits(path), std::runtime_error);
  std::remove(path.c_str());
}

TEST_CASE("digits: the split is stratified, disjoint, complete and seeded") {
  const auto& d = digits();
  const auto s = examples::stratified_split(d, 0.3, 7);
  CHECK(s.train.size() + s.test.size() == d.size());
  const auto all = class_counts(d.y), te = class_counts(s.test.y);
  for (std::size_t c = 0; c < 10; ++c) CHECK(te[c] == std::lround(0.3 * all[c]));
  // Disjoint and complete: the multiset of columns is preserved (images are compared exactly).
  auto key = [](const examples::dataset& ds, Eigen::Index j) {
    std::vector<float> v(ds.x.col(j).data(), ds.x.col(j).data() + ds.x.rows());
    v.push_back(static_cast<float>(ds.y[static_cast<std::size_t>(j)]));
    return v;
  };
  std::multiset<std::vector<float>> a, b;
  for (Eigen::Index j = 0; j < static_cast<Eigen::Index>(d.size()); ++j) a.insert(key(d, j));
  for (Eigen::Index j = 0; j < static_cast<Eigen::Index>(s.train.size()); ++j) b.insert(key(s.train, j));
  for (Eigen::Index j = 0; j < static_cast<Eigen::Index>(s.test.size()); ++j) b.insert(key(s.test, j));
  CHECK(a == b);
  const auto again = examples::stratified_split(d, 0.3, 7), other = examples::stratified_split(d, 0.3, 8);
  CHECK(again.test.y == s.test.y);
  CHECK(again.test.x == s.test.x);
  CHECK_FALSE(other.test.x == s.test.x);
}

TEST_CASE("digits: symmetric label noise changes exactly round(p·n) labels, each to another class") {
  const auto& d = digits();
  for (double p : {0.0, 0.3, 1.0}) {
    std::vector<int> y = d.y;
    const std::size_t n = examples::add_symmetric_label_noise(y, p, 10, 3);
    std::size_t changed = 0;
    for (std::size_t j = 0; j < y.size(); ++j) {
      CHECK(y[j] >= 0);
      CHECK(y[j] < 10);
      changed += y[j] != d.y[j];
    }
    CHECK(n == static_cast<std::size_t>(std::lround(p * static_cast<double>(y.size()))));
    CHECK(changed == n);
  }
  // The new label is uniform over the 9 other classes: with p = 1, each (true, new) cell gets
  // about n_c / 9 ≈ 20; a bias toward one class (e.g. off-by-one in skipping the true class) would
  // leave some cells empty or double others.
  std::vector<int> y = d.y;
  examples::add_symmetric_label_noise(y, 1.0, 10, 11);
  std::vector<std::vector<int>> cells(10, std::vector<int>(10, 0));
  for (std::size_t j = 0; j < y.size(); ++j) ++cells[static_cast<std::size_t>(d.y[j])][static_cast<std::size_t>(y[j])];
  for (std::size_t t = 0; t < 10; ++t)
    for (std::size_t k = 0; k < 10; ++k) {
      if (t == k) CHECK(cells[t][k] == 0);
      else {
        CHECK(cells[t][k] >= 5);
        CHECK(cells[t][k] <= 40);
      }
    }
  CHECK_THROWS_AS(examples::add_symmetric_label_noise(y, 1.5, 10, 0), std::invalid_argument);
}

namespace {
// Plain float64 reference loss, written independently of the MLP's own code.
template <class Net>
double reference_loss(const Net& net, const Eigen::MatrixXd& x, const std::vector<int>& y, bool relu) {
  double total = 0;
  for (Eigen::Index j = 0; j < x.cols(); ++j) {
    Eigen::VectorXd a = x.col(j);
    for (std::size_t l = 0; l < net.layers.size(); ++l) {
      Eigen::VectorXd z = net.layers[l].weight * a + net.layers[l].bias;
      if (l + 1 < net.layers.size())
        for (Eigen::Index i = 0; i < z.size(); ++i) z[i] = relu ? std::max(0.0, z[i]) : std::tanh(z[i]);
      a = z;
    }
    double s = 0;
    for (Eigen::Index i = 0; i < a.size(); ++i) s += std::exp(a[i]);
    total += std::log(s) - a[y[static_cast<std::size_t>(j)]];
  }
  return total / static_cast<double>(x.cols());
}
}  // namespace

TEST_CASE("mlp: gradients match float64 central differences (ReLU and tanh, 2 hidden layers)") {
  for (auto act : {examples::activation::relu, examples::activation::tanh}) {
    const bool relu = act == examples::activation::relu;
    examples::basic_mlp<double> net({6, 5, 4, 3}, act, 42);
    examples::rng r(9);
    for (auto& l : net.layers)  // non-zero biases so that the bias path is exercised
      for (Eigen::Index i = 0; i < l.bias.size(); ++i) l.bias[i] = 0.3 * (2 * r.uniform() - 1);
    Eigen::MatrixXd x(6, 7);
    for (Eigen::Index k = 0; k < x.size(); ++k) x.data()[k] = 2 * r.uniform() - 1;
    const std::vector<int> y{0, 2, 1, 1, 0, 2, 2};
    const double loss = net.loss_and_gradient(x, y);
    CHECK(loss == doctest::Approx(reference_loss(net, x, y, relu)).epsilon(1e-12));
    const double h = 1e-6;
    for (auto& l : net.layers) {
      auto check = [&](auto& p, const auto& g) {
        for (Eigen::Index i = 0; i < p.size(); ++i) {
          const double keep = p.data()[i];
          p.data()[i] = keep + h;
          const double up = reference_loss(net, x, y, relu);
          p.data()[i] = keep - h;
          const double down = reference_loss(net, x, y, relu);
          p.data()[i] = keep;
          CHECK(g.data()[i] == doctest::Approx((up - down) / (2 * h)).epsilon(1e-6).scale(1e-3));
        }
      };
      check(l.weight, l.weight_grad);
      check(l.bias, l.bias_grad);
    }
  }
}

TEST_CASE("mlp: per-sample losses, output cotangent and its back-propagation agree with the loss") {
  examples::basic_mlp<double> net({6, 8, 3}, examples::activation::tanh, 5);
  examples::rng r(2);
  Eigen::MatrixXd x(6, 5);
  for (Eigen::Index k = 0; k < x.size(); ++k) x.data()[k] = 2 * r.uniform() - 1;
  const std::vector<int> y{2, 0, 1, 2, 1};
  const double loss = net.loss_and_gradient(x, y);
  std::vector<Eigen::MatrixXd> g;
  for (const auto& l : net.layers) g.push_back(l.weight_grad);
  CHECK(net.per_sample_losses(x, y).mean() == doctest::Approx(loss).epsilon(1e-12));
  for (Eigen::Index j = 0; j < x.cols(); ++j)
    CHECK(net.per_sample_losses(x.col(j), {y[static_cast<std::size_t>(j)]})[0] ==
          doctest::Approx(reference_loss(net, x.col(j), {y[static_cast<std::size_t>(j)]}, false)).epsilon(1e-12));
  // Jᵀc with the loss's own cotangent is the loss gradient ...
  const Eigen::MatrixXd c = net.output_cotangent(x, y);
  CHECK(c.colwise().sum().cwiseAbs().maxCoeff() < 1e-12);  // softmax − onehot sums to zero per sample
  net.backprop_cotangent(x, c);
  for (std::size_t l = 0; l < g.size(); ++l) CHECK((net.layers[l].weight_grad - g[l]).cwiseAbs().maxCoeff() < 1e-14);
  // ... and Jᵀc is linear in c: 2c gives twice the gradient.
  net.backprop_cotangent(x, 2 * c);
  for (std::size_t l = 0; l < g.size(); ++l)
    CHECK((net.layers[l].weight_grad - 2 * g[l]).cwiseAbs().maxCoeff() < 1e-13);
}

TEST_CASE("mlp: registration views the Eigen buffers with the documented options") {
  examples::mlp net({64, 16, 10}, examples::activation::relu, 1);
  flatmin::param_set<float> ps;
  net.register_params(ps, "net.");
  REQUIRE(ps.size() == 4);
  CHECK(ps.numel() == net.numel());
  CHECK(ps[0].name == "net.fc1.weight");
  CHECK(ps[0].value == net.layers[0].weight.data());
  CHECK(ps[0].grad == net.layers[0].weight_grad.data());
  CHECK(ps[0].options.weight_decay);
  CHECK(ps[0].options.adaptive);
  CHECK(ps[1].name == "net.fc1.bias");
  CHECK_FALSE(ps[1].options.weight_decay);
  CHECK_FALSE(ps[1].options.adaptive);
  CHECK(ps[1].options.perturb);
}
