// flatmin quick start: SAM over AdamW on a least-squares model whose parameters live in Eigen.
#include <flatmin/flatmin.hpp>

#include <Eigen/Dense>
#include <cstdio>

int main() {
  const int n = 256, d = 8;
  Eigen::MatrixXf X = Eigen::MatrixXf::Random(n, d);
  Eigen::VectorXf y = X * Eigen::VectorXf::LinSpaced(d, -1.f, 1.f) + 0.5f * Eigen::VectorXf::Ones(n) +
                      0.1f * Eigen::VectorXf::Random(n);  // noisy targets
  Eigen::VectorXf w = Eigen::VectorXf::Zero(d), dw(d);  // parameters and their gradients:
  Eigen::VectorXf b = Eigen::VectorXf::Zero(1), db(1);  // the optimizer only holds views of them

  flatmin::param_set<float> params;
  params.add("w", w, dw);
  params.add("b", b, db, {.weight_decay = false});

  auto opt = flatmin::sam(params, flatmin::base::adamw{.lr = 0.05}, {.rho = 0.05});

  // The objective writes the gradient at the current weights and returns the loss.
  auto loss_and_grad = [&] {
    const Eigen::VectorXf r = (X * w).array() + b(0) - y.array();
    dw = X.transpose() * r / float(n);
    db(0) = r.mean();
    return 0.5 * r.squaredNorm() / n;
  };

  double loss = 0;
  for (int it = 0; it < 300; ++it) {
    // Closure protocol: the optimizer calls the objective at w and at w + ε.
    const flatmin::step_report r = opt.step(loss_and_grad);
    loss = r.loss;
    if (it % 100 == 0) std::printf("step %3zu  loss %.5f  |g| %.4f  |eps| %.4f\n", r.step, r.loss, r.grad_norm, r.perturbation_norm);
  }
  // Two-call protocol: the caller computes both gradients (gradient accumulation, AMP, DDP...).
  loss_and_grad();
  opt.ascend();  // w <- w + eps (w saved)
  loss_and_grad();
  opt.descend();  // w <- saved w, then the AdamW step with the gradient at w + eps

  std::printf("final loss %.5f after %zu steps\n", loss, opt.steps());
  return loss < 0.01 ? 0 : 1;
}
