// descent::functional (Functional-SAM) against float64 references written here with Eigen:
// g_fsam = J(w + ε)ᵀ c(w), c the output cotangent of the clean pass.
#include <doctest/doctest.h>
#include <flatmin/flatmin.hpp>

#include <Eigen/Dense>
#include <cmath>
#include <random>
#include <vector>

#include "support/backends.hpp"

namespace {

using mat = Eigen::MatrixXd;

// Mean softmax cross-entropy over the columns of `logits` (k × n), labels y; returns the loss
// and writes the cotangent ∂ℓ/∂logits.
double softmax_ce(const mat& logits, const std::vector<int>& y, mat& cot) {
  const Eigen::Index k = logits.rows(), n = logits.cols();
  cot.resize(k, n);
  double loss = 0;
  for (Eigen::Index j = 0; j < n; ++j) {
    const double mx = logits.col(j).maxCoeff();
    Eigen::VectorXd p = (logits.col(j).array() - mx).exp();
    const double z = p.sum();
    p /= z;
    loss += -(logits(y[j], j) - mx - std::log(z));
    p(y[j]) -= 1.0;
    cot.col(j) = p / double(n);
  }
  return loss / double(n);
}

mat softmax_cols(const mat& logits) {
  mat p(logits.rows(), logits.cols());
  for (Eigen::Index j = 0; j < logits.cols(); ++j) {
    Eigen::VectorXd e = (logits.col(j).array() - logits.col(j).maxCoeff()).exp();
    p.col(j) = e / e.sum();
  }
  return p;
}

mat random_mat(Eigen::Index r, Eigen::Index c, std::mt19937& rng, double s) {
  std::normal_distribution<double> nd(0.0, s);
  mat m(r, c);
  for (Eigen::Index i = 0; i < m.size(); ++i) m.data()[i] = nd(rng);
  return m;
}

// A model linear in w: logits = W X (W is k × d).
struct linear_model {
  mat X;
  std::vector<int> y;
  mat W, gW, saved_cot;
  int clean_calls = 0, functional_calls = 0;
  std::vector<double> w_at_functional;
  double operator()() {
    mat cot;
    const double loss = softmax_ce(W * X, y, cot);
    gW = cot * X.transpose();
    saved_cot = cot;
    ++clean_calls;
    return loss;
  }
  void functional_backward() {
    ++functional_calls;
    w_at_functional.assign(W.data(), W.data() + W.size());
    gW = saved_cot * X.transpose();  // J(w + ε)ᵀ c(w): J does not depend on w here
  }
};

// logits = W2 tanh(W1 X).
struct two_layer {
  mat X;
  std::vector<int> y;
  mat W1, W2, g1, g2, saved_cot;

  // Gradients of ⟨cot, F⟩ at (a, b): the vector-Jacobian product Jᵀ cot.
  static void vjp(const mat& a, const mat& b, const mat& X, const mat& cot, mat& ga, mat& gb) {
    const mat h = (a * X).array().tanh().matrix();
    gb = cot * h.transpose();
    const mat dh = (b.transpose() * cot).array() * (1.0 - h.array().square());
    ga = dh * X.transpose();
  }
  static mat forward(const mat& a, const mat& b, const mat& X) { return b * (a * X).array().tanh().matrix(); }

  double operator()() {
    mat cot;
    const double loss = softmax_ce(forward(W1, W2, X), y, cot);
    vjp(W1, W2, X, cot, g1, g2);
    saved_cot = cot;
    return loss;
  }
  void functional_backward() { vjp(W1, W2, X, saved_cot, g1, g2); }
};

// A plain objective for SAM (no functional_backward).
struct sam_objective {
  two_layer* m;
  double operator()() { return (*m)(); }
};

}  // namespace

TEST_CASE_TEMPLATE("functional_sam: for a model linear in w, g_fsam is the clean gradient exactly", B,
                   FLATMIN_TEST_BACKENDS) {
  std::mt19937 rng(5);
  linear_model lm;
  const int k = 4, d = 6, n = 10;
  lm.X = random_mat(d, n, rng, 1.0);
  for (int j = 0; j < n; ++j) lm.y.push_back(j % k);
  lm.W = random_mat(k, d, rng, 0.5);
  lm.gW = mat::Zero(k, d);
  const mat W0 = lm.W;
  flatmin::param_set<double> ps;
  ps.add("W", lm.W, lm.gW);
  const double lr = 0.5;
  auto opt = flatmin::functional_sam<B>(ps, flatmin::base::sgd{.lr = lr}, {.rho = 0.5});
  // The clean gradient, computed beforehand.
  lm();
  const mat g_clean = lm.gW;
  lm.clean_calls = 0;
  const auto r = opt.step(lm);
  CHECK_FALSE(r.skipped);
  CHECK(lm.clean_calls == 1);
  CHECK(lm.functional_calls == 1);
  // The second call happened at w + ε, ‖ε‖ = ρ.
  double e2 = 0;
  for (Eigen::Index i = 0; i < W0.size(); ++i) e2 += std::pow(lm.w_at_functional[i] - W0.data()[i], 2);
  CHECK(std::sqrt(e2) == doctest::Approx(0.5).epsilon(1e-9));
  // g_fsam equals the clean gradient bit for bit, so the step is the SGD step on g.
  CHECK((lm.gW.array() == g_clean.array()).all());
  for (Eigen::Index i = 0; i < W0.size(); ++i)
    CHECK(lm.W.data()[i] == doctest::Approx(W0.data()[i] - lr * g_clean.data()[i]).epsilon(1e-14));

  // SAM on the same problem does not (the cotangent changes at w + ε): the test can fail.
  linear_model lm2 = lm;
  lm2.W = W0;
  flatmin::param_set<double> ps2;
  ps2.add("W", lm2.W, lm2.gW);
  auto sam = flatmin::sam<B>(ps2, flatmin::base::sgd{.lr = lr}, {.rho = 0.5});
  sam.step([&] { return lm2(); });
  CHECK((lm2.W - lm.W).norm() > 1e-3 * g_clean.norm());
}

TEST_CASE_TEMPLATE("functional_sam: two-layer network, float64 reference and the logit-curvature term", B,
                   FLATMIN_TEST_BACKENDS) {
  std::mt19937 rng(17);
  const int d = 5, hdim = 7, k = 3, n = 12;
  two_layer net;
  net.X = random_mat(d, n, rng, 1.0);
  for (int j = 0; j < n; ++j) net.y.push_back(static_cast<int>(rng() % k));
  net.W1 = random_mat(hdim, d, rng, 0.8);
  net.W2 = random_mat(k, hdim, rng, 0.8);
  net.g1 = mat::Zero(hdim, d);
  net.g2 = mat::Zero(k, hdim);
  const mat A0 = net.W1, B0 = net.W2;
  const double rho = 1e-3, xi = 1e-12;

  // ---- float64 reference: ε from the clean g, then J(w+ε)ᵀ c(w) and SAM's J(w+ε)ᵀ c(w+ε).
  mat cot0, ga, gb;
  softmax_ce(two_layer::forward(A0, B0, net.X), net.y, cot0);
  two_layer::vjp(A0, B0, net.X, cot0, ga, gb);
  const double gn = std::sqrt(ga.squaredNorm() + gb.squaredNorm());
  const mat eA = rho * ga / (gn + xi), eB = rho * gb / (gn + xi);
  mat fa, fb, cot1, sa, sb;
  two_layer::vjp(A0 + eA, B0 + eB, net.X, cot0, fa, fb);  // functional
  softmax_ce(two_layer::forward(A0 + eA, B0 + eB, net.X), net.y, cot1);
  two_layer::vjp(A0 + eA, B0 + eB, net.X, cot1, sa, sb);  // SAM

  // ---- the library, SGD with lr = 1 so that w_new = w − g_used.
  flatmin::param_set<double> ps;
  ps.add("W1", net.W1, net.g1);
  ps.add("W2", net.W2, net.g2);
  auto fsam = flatmin::functional_sam<B>(ps, flatmin::base::sgd{.lr = 1.0}, {.rho = rho, .xi = xi});
  fsam.step(net);
  const mat used_fa = A0 - net.W1, used_fb = B0 - net.W2;
  CHECK((used_fa - fa).norm() <= 1e-12 * fa.norm());
  CHECK((used_fb - fb).norm() <= 1e-12 * fb.norm());

  two_layer net2 = net;
  net2.W1 = A0;
  net2.W2 = B0;
  flatmin::param_set<double> ps2;
  ps2.add("W1", net2.W1, net2.g1);
  ps2.add("W2", net2.W2, net2.g2);
  auto sam = flatmin::sam<B>(ps2, flatmin::base::sgd{.lr = 1.0}, {.rho = rho, .xi = xi});
  sam.step(sam_objective{&net2});
  const mat used_sa = A0 - net2.W1, used_sb = B0 - net2.W2;
  CHECK((used_sa - sa).norm() <= 1e-12 * sa.norm());
  CHECK((used_sb - sb).norm() <= 1e-12 * sb.norm());

  // ---- g_adv − g_fsam = J(w+ε)ᵀ (c(w+ε) − c(w)) ≈ Jᵀ H_ℓ J ε: the logit-curvature term, with
  // J ε from central finite differences of the outputs and H_ℓ the softmax-CE Hessian.
  const double h = 1e-5;
  const mat Jeps = (two_layer::forward(A0 + h * eA, B0 + h * eB, net.X) -
                    two_layer::forward(A0 - h * eA, B0 - h * eB, net.X)) /
                   (2 * h);
  const mat P = softmax_cols(two_layer::forward(A0, B0, net.X));
  mat u(k, n);
  for (int j = 0; j < n; ++j) {
    const Eigen::VectorXd p = P.col(j);
    const Eigen::MatrixXd H = Eigen::MatrixXd(p.asDiagonal()) - p * p.transpose();
    u.col(j) = H * Jeps.col(j) / double(n);
  }
  mat ca, cb;
  two_layer::vjp(A0, B0, net.X, u, ca, cb);
  const double dnorm = std::sqrt((used_sa - used_fa).squaredNorm() + (used_sb - used_fb).squaredNorm());
  const double err = std::sqrt((used_sa - used_fa - ca).squaredNorm() + (used_sb - used_fb - cb).squaredNorm());
  MESSAGE("|g_adv - g_fsam| = " << dnorm << ", |curvature term| = " << std::sqrt(ca.squaredNorm() + cb.squaredNorm())
                                << ", |difference| = " << err);
  // The difference is O(ρ) and the term matches it to O(ρ²).
  CHECK(dnorm > 0.1 * rho * gn);
  CHECK(err < 0.02 * dnorm);
}

TEST_CASE_TEMPLATE("preconditioned_functional_sam: first step equals functional_sam, then P enters", B,
                   FLATMIN_TEST_BACKENDS) {
  std::mt19937 rng(23);
  const int d = 4, hdim = 6, k = 3, n = 9;
  two_layer a;
  a.X = random_mat(d, n, rng, 1.0);
  for (int j = 0; j < n; ++j) a.y.push_back(j % k);
  a.W1 = random_mat(hdim, d, rng, 0.8);
  a.W2 = random_mat(k, hdim, rng, 0.8);
  a.g1 = mat::Zero(hdim, d);
  a.g2 = mat::Zero(k, hdim);
  two_layer b = a;
  flatmin::param_set<double> pa, pb;
  pa.add("W1", a.W1, a.g1);
  pa.add("W2", a.W2, a.g2);
  pb.add("W1", b.W1, b.g1);
  pb.add("W2", b.W2, b.g2);
  auto p = flatmin::preconditioned_functional_sam<B>(pa, flatmin::base::adam{.lr = 0.01}, {.rho = 0.05});
  auto f = flatmin::functional_sam<B>(pb, flatmin::base::adam{.lr = 0.01}, {.rho = 0.05});
  p.step(a);
  f.step(b);
  CHECK((a.W1.array() == b.W1.array()).all());
  CHECK((a.W2.array() == b.W2.array()).all());
  for (int s = 0; s < 3; ++s) {
    p.step(a);
    f.step(b);
  }
  CHECK((a.W1 - b.W1).norm() > 1e-8);
}
