// flatmin's base optimizers and SAM, driven through the libtorch adapter, against libtorch's own
// optimizers (torch::optim::SGD / Adam / AdamW, libtorch 1.13) and against a SAM written with
// torch ops here, in float64 on a small MLP. The two models start from the same seed, so every
// forward and backward is bitwise the same as long as the weights are.
#include <flatmin/flatmin.hpp>
#include <flatmin/torch.hpp>
#include <torch/torch.h>

#include <doctest/doctest.h>

#include <functional>
#include <vector>

#include "support/trajectory.hpp"

namespace {

using flatmin_test::trajectory;

torch::nn::Sequential make_net() {
  torch::manual_seed(7);
  torch::nn::Sequential net(torch::nn::Linear(4, 8), torch::nn::Tanh(), torch::nn::Linear(8, 3));
  net->to(torch::kDouble);
  return net;
}

struct data {
  torch::Tensor x, y;
};
data make_data() {
  torch::manual_seed(11);
  return {torch::randn({16, 4}, torch::kDouble), torch::randn({16, 3}, torch::kDouble)};
}

torch::Tensor loss_of(torch::nn::Sequential& net, const data& d) {
  return torch::mse_loss(net->forward(d.x), d.y);
}

std::vector<double> weights(const torch::nn::Sequential& net) {
  std::vector<double> w;
  for (const auto& p : net->parameters()) {
    const auto c = p.detach().contiguous();
    w.insert(w.end(), c.data_ptr<double>(), c.data_ptr<double>() + c.numel());
  }
  return w;
}

/// `steps` steps of libtorch's optimizer `opt` over `net`.
trajectory torch_run(torch::nn::Sequential& net, torch::optim::Optimizer& opt, const data& d, int steps) {
  trajectory t;
  for (int s = 0; s < steps; ++s) {
    opt.zero_grad();
    loss_of(net, d).backward();
    opt.step();
    t.push_back(weights(net));
  }
  return t;
}

/// The same through the adapter: `make` builds the flatmin optimizer from the bound parameters.
/// The closure does not zero the gradients: the adapter does.
template <class Make>
trajectory flatmin_run(torch::nn::Sequential& net, Make make, const data& d, int steps) {
  auto opt = flatmin::libtorch::optimizer(flatmin::libtorch::binding<double>(*net), make);
  trajectory t;
  for (int s = 0; s < steps; ++s) {
    const auto r = opt.step([&] {
      auto loss = loss_of(net, d);
      loss.backward();
      return loss;
    });
    REQUIRE_FALSE(r.skipped);
    t.push_back(weights(net));
  }
  return t;
}

}  // namespace

// libtorch 1.13's rules (torch/csrc/api/src/optim/sgd.cpp, adam.cpp, adamw.cpp), which
// base/sgd.hpp and base/adam.hpp state: SGD d = g + λw, b ← d then μb + (1 − τ)d, d ← d + μb
// (Nesterov) or b, w ← w − lr d; Adam / AdamW w ← w − lr/(1 − β1ᵗ) m / (√v / √(1 − β2ᵗ) + ε) with
// L2 decay in g (Adam) or w ← w(1 − lr λ) first (AdamW).
TEST_CASE("base optimizers through the adapter follow torch::optim over 50 float64 steps") {
  const data d = make_data();
  const int steps = 50;
  const double rtol = 1e-10;

  SUBCASE("SGD") {
    auto ref = make_net();
    torch::optim::SGD topt(ref->parameters(), torch::optim::SGDOptions(0.1));
    const trajectory want = torch_run(ref, topt, d, steps);
    auto net = make_net();
    const trajectory got =
        flatmin_run(net, [](const auto& ps) { return flatmin::sgd(ps, {.lr = 0.1}); }, d, steps);
    CHECK_TRAJECTORY_WITHIN(got, want, rtol);
  }
  SUBCASE("SGD with momentum, dampening and weight decay") {
    auto ref = make_net();
    torch::optim::SGD topt(ref->parameters(),
                           torch::optim::SGDOptions(0.05).momentum(0.9).dampening(0.1).weight_decay(1e-2));
    const trajectory want = torch_run(ref, topt, d, steps);
    auto net = make_net();
    const trajectory got = flatmin_run(
        net,
        [](const auto& ps) {
          return flatmin::sgd(ps, {.lr = 0.05, .momentum = 0.9, .dampening = 0.1, .weight_decay = 1e-2});
        },
        d, steps);
    CHECK_TRAJECTORY_WITHIN(got, want, rtol);
  }
  SUBCASE("SGD with Nesterov momentum and weight decay") {
    auto ref = make_net();
    torch::optim::SGD topt(ref->parameters(),
                           torch::optim::SGDOptions(0.05).momentum(0.9).nesterov(true).weight_decay(1e-2));
    const trajectory want = torch_run(ref, topt, d, steps);
    auto net = make_net();
    const trajectory got = flatmin_run(
        net,
        [](const auto& ps) {
          return flatmin::sgd(ps, {.lr = 0.05, .momentum = 0.9, .weight_decay = 1e-2, .nesterov = true});
        },
        d, steps);
    CHECK_TRAJECTORY_WITHIN(got, want, rtol);
  }
  SUBCASE("Adam with L2 weight decay") {
    auto ref = make_net();
    torch::optim::Adam topt(ref->parameters(),
                            torch::optim::AdamOptions(1e-2).betas({0.9, 0.99}).eps(1e-8).weight_decay(1e-2));
    const trajectory want = torch_run(ref, topt, d, steps);
    auto net = make_net();
    const trajectory got = flatmin_run(
        net,
        [](const auto& ps) {
          return flatmin::adam(ps, {.lr = 1e-2, .beta1 = 0.9, .beta2 = 0.99, .eps = 1e-8, .weight_decay = 1e-2});
        },
        d, steps);
    CHECK_TRAJECTORY_WITHIN(got, want, rtol);
  }
  SUBCASE("AdamW") {
    auto ref = make_net();
    torch::optim::AdamW topt(ref->parameters(),
                             torch::optim::AdamWOptions(1e-2).betas({0.9, 0.999}).eps(1e-8).weight_decay(0.1));
    const trajectory want = torch_run(ref, topt, d, steps);
    auto net = make_net();
    const trajectory got = flatmin_run(
        net,
        [](const auto& ps) {
          return flatmin::adamw(ps, {.lr = 1e-2, .beta1 = 0.9, .beta2 = 0.999, .eps = 1e-8, .weight_decay = 0.1});
        },
        d, steps);
    CHECK_TRAJECTORY_WITHIN(got, want, rtol);
  }
}

// SAM as the authors' PyTorch code does it (davda54/sam, sam.py at 87a9604, as README.md cites it:
// ‖g‖ the norm of the per-tensor norms (line 53), e = ρ g / (‖g‖ + 1e-12) added to w (lines 19–24),
// w restored from a saved copy (line 34), then the base optimizer's step with ∇L(w + e)), written
// here with torch ops over torch::optim::SGD.
TEST_CASE("SAM over SGD through the adapter follows a SAM written with torch ops over 20 float64 steps") {
  const data d = make_data();
  const int steps = 20;
  const double rho = 0.1, xi = 1e-12;

  auto ref = make_net();
  const auto params = ref->parameters();
  torch::optim::SGD base(params, torch::optim::SGDOptions(0.05).momentum(0.9).weight_decay(1e-3));
  trajectory want;
  for (int s = 0; s < steps; ++s) {
    base.zero_grad();
    loss_of(ref, d).backward();
    std::vector<torch::Tensor> saved;
    {
      const torch::NoGradGuard no_grad;
      std::vector<torch::Tensor> norms;
      for (const auto& p : params) norms.push_back(p.grad().norm(2));
      const torch::Tensor scale = rho / (torch::stack(norms).norm(2) + xi);
      for (const auto& p : params) {
        saved.push_back(p.detach().clone());
        p.add_(p.grad() * scale);
      }
    }
    base.zero_grad();
    loss_of(ref, d).backward();
    {
      const torch::NoGradGuard no_grad;
      for (std::size_t i = 0; i < params.size(); ++i) params[i].copy_(saved[i]);
    }
    base.step();
    want.push_back(weights(ref));
  }

  auto net = make_net();
  const trajectory got = flatmin_run(
      net,
      [&](const auto& ps) {
        return flatmin::sam(ps, flatmin::base::sgd{.lr = 0.05, .momentum = 0.9, .weight_decay = 1e-3},
                            {.rho = rho, .xi = xi});
      },
      d, steps);
  CHECK_TRAJECTORY_WITHIN(got, want, 1e-10);
  // The perturbation matters at this ρ: plain SGD from the same start is far from SAM.
  auto plain = make_net();
  const trajectory sgd = flatmin_run(
      plain,
      [](const auto& ps) { return flatmin::sgd(ps, {.lr = 0.05, .momentum = 0.9, .weight_decay = 1e-3}); }, d,
      steps);
  CHECK(flatmin_test::trajectory_error(sgd, want, 1e-10) > 1e3);
}
