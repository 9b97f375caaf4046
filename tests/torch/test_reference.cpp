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

/// `steps` SAM steps written with torch ops over `net`, as the official SAM (davda54/sam sam.py,
/// commit 03c7768, lines 15-35): parameter i moves by rho_of(i) · g_i / (‖g‖ + ξ), one norm over
/// every parameter; the gradient at w + ε; w restored; then `base`'s step.
template <class RhoOf>
trajectory torch_sam_run(torch::nn::Sequential& net, torch::optim::Optimizer& base, const data& d, int steps,
                         RhoOf rho_of, double xi) {
  const auto params = net->parameters();
  trajectory t;
  for (int s = 0; s < steps; ++s) {
    base.zero_grad();
    loss_of(net, d).backward();
    std::vector<torch::Tensor> saved;
    {
      const torch::NoGradGuard no_grad;
      std::vector<torch::Tensor> norms;
      for (const auto& p : params) norms.push_back(p.grad().norm(2));
      const torch::Tensor grad_norm = torch::stack(norms).norm(2);
      for (std::size_t i = 0; i < params.size(); ++i) {
        saved.push_back(params[i].detach().clone());
        params[i].add_(params[i].grad() * (rho_of(i) / (grad_norm + xi)));
      }
    }
    base.zero_grad();
    loss_of(net, d).backward();
    {
      const torch::NoGradGuard no_grad;
      for (std::size_t i = 0; i < params.size(); ++i) params[i].copy_(saved[i]);
    }
    base.step();
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
  torch::optim::SGD base(ref->parameters(), torch::optim::SGDOptions(0.05).momentum(0.9).weight_decay(1e-3));
  const trajectory want = torch_sam_run(ref, base, d, steps, [&](std::size_t) { return rho; }, xi);

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

// Param groups and an LR schedule, against torch::optim with the same groups (libtorch 1.13's
// OptimizerParamGroup, each group's own lr and weight_decay) and torch::optim::StepLR (every
// step_size steps each group's lr × γ, torch/csrc/api/src/optim/schedulers/step_lr.cpp). The net's
// first layer is one group (lr × 0.3, weight decay × 4), the rest the other.
TEST_CASE("param groups and StepLR through the adapter follow torch::optim's over 50 float64 steps") {
  const data d = make_data();
  const int steps = 50;
  const auto groups_of = [](torch::nn::Sequential& net) {
    auto ps = net->parameters();  // weight 0, bias 0, weight 2, bias 2
    return std::pair{std::vector<torch::Tensor>{ps[0], ps[1]}, std::vector<torch::Tensor>{ps[2], ps[3]}};
  };
  const auto flatmin_groups = [&](torch::nn::Sequential& net, double lr, double wd) {
    auto [a, b] = groups_of(net);
    return std::vector<flatmin::libtorch::param_group>{{a, 0.3 * lr, 4 * wd}, {b, lr, wd}};
  };
  const auto run = [&](torch::nn::Sequential& net, auto& opt, bool schedule) {
    torch::optim::StepLR sched(opt, /*step_size=*/7, /*gamma=*/0.5);
    trajectory t;
    for (int s = 0; s < steps; ++s) {
      opt.zero_grad();
      opt.step([&] {
        auto loss = loss_of(net, d);
        loss.backward();
        return loss;
      });
      if (schedule) sched.step();
      t.push_back(weights(net));
    }
    return t;
  };
  SUBCASE("AdamW") {
    for (const bool schedule : {false, true}) {
      CAPTURE(schedule);
      const double lr = 1e-2, wd = 0.05;
      auto ref = make_net();
      auto [ra, rb] = groups_of(ref);
      std::vector<torch::optim::OptimizerParamGroup> tg;
      tg.emplace_back(ra, std::make_unique<torch::optim::AdamWOptions>(
                              torch::optim::AdamWOptions(0.3 * lr).weight_decay(4 * wd)));
      tg.emplace_back(rb,
                      std::make_unique<torch::optim::AdamWOptions>(torch::optim::AdamWOptions(lr).weight_decay(wd)));
      torch::optim::AdamW topt(std::move(tg), torch::optim::AdamWOptions(lr));
      const trajectory want = run(ref, topt, schedule);
      auto net = make_net();
      flatmin::libtorch::optimizer opt(
          flatmin::libtorch::binding<double>(*net), flatmin_groups(net, lr, wd),
          [](const auto& ps) { return flatmin::adamw(ps, {.lr = 1.0, .weight_decay = 0}); });
      const trajectory got = run(net, opt, schedule);
      CHECK_TRAJECTORY_WITHIN(got, want, 1e-10);
    }
  }
  SUBCASE("SGD with momentum") {
    for (const bool schedule : {false, true}) {
      CAPTURE(schedule);
      const double lr = 0.05, wd = 1e-2;
      auto ref = make_net();
      auto [ra, rb] = groups_of(ref);
      std::vector<torch::optim::OptimizerParamGroup> tg;
      tg.emplace_back(ra, std::make_unique<torch::optim::SGDOptions>(
                              torch::optim::SGDOptions(0.3 * lr).momentum(0.9).weight_decay(4 * wd)));
      tg.emplace_back(rb, std::make_unique<torch::optim::SGDOptions>(
                              torch::optim::SGDOptions(lr).momentum(0.9).weight_decay(wd)));
      torch::optim::SGD topt(std::move(tg), torch::optim::SGDOptions(lr).momentum(0.9));
      const trajectory want = run(ref, topt, schedule);
      auto net = make_net();
      flatmin::libtorch::optimizer opt(
          flatmin::libtorch::binding<double>(*net), flatmin_groups(net, lr, wd),
          [](const auto& ps) { return flatmin::sgd(ps, {.lr = 0.1, .momentum = 0.9}); });
      const trajectory got = run(net, opt, schedule);
      CHECK_TRAJECTORY_WITHIN(got, want, 1e-10);
    }
  }
}

TEST_CASE("param groups: a schedule that breaks the groups' ratios, and bad groups, raise usage_error") {
  auto net = make_net();
  auto ps = net->parameters();
  const auto make = [](const auto& p) { return flatmin::adamw(p, {.lr = 1e-2}); };
  using flatmin::libtorch::param_group;
  flatmin::libtorch::optimizer opt(flatmin::libtorch::binding<double>(*net),
                                   std::vector<param_group>{{{ps[0], ps[1]}, 1e-3}, {{ps[2], ps[3]}}}, make);
  CHECK(opt.inner().base().lr == 1e-2);  // the largest group's
  opt.param_groups()[0].options().set_lr(2e-3);  // one group only: the ratio 0.1 is broken
  const data d = make_data();
  const auto w0 = weights(net);
  CHECK_THROWS_WITH_AS(opt.step([&] {
    auto l = loss_of(net, d);
    l.backward();
    return l;
  }),
                       doctest::Contains("param group 0"), flatmin::usage_error);
  CHECK(weights(net) == w0);
  CHECK_THROWS_WITH_AS(flatmin::libtorch::optimizer(flatmin::libtorch::binding<double>(*net),
                                                    std::vector<param_group>{{{ps[0], ps[1], ps[2]}}}, make),
                       doctest::Contains("'2.bias' is in no param group"), flatmin::usage_error);
  CHECK_THROWS_WITH_AS(flatmin::libtorch::optimizer(flatmin::libtorch::binding<double>(*net),
                                                    std::vector<param_group>{{ps}, {{ps[0]}}}, make),
                       doctest::Contains("'0.weight' is in param groups 0 and 1"), flatmin::usage_error);
}

// Per-group ρ as the official SAM has it, davda54/sam sam.py (commit 03c7768, line 18): each
// group's scale = group["rho"] / (grad_norm + 1e-12), grad_norm over every group's gradients; the
// reference is written with torch ops here. Group 0 (the first layer) has ρ 0.25 and lr × 0.5; the
// other group keeps the optimizer's ρ 0.1 and lr.
TEST_CASE("per-group rho through the adapter follows the official SAM's param groups over 20 float64 steps") {
  const data d = make_data();
  const int steps = 20;
  const double rho0 = 0.1, rho1 = 0.25, lr = 0.05, xi = 1e-12;

  auto ref = make_net();
  const auto params = ref->parameters();
  std::vector<torch::optim::OptimizerParamGroup> tg;
  tg.emplace_back(std::vector<torch::Tensor>{params[0], params[1]},
                  std::make_unique<torch::optim::SGDOptions>(torch::optim::SGDOptions(0.5 * lr).momentum(0.9)));
  tg.emplace_back(std::vector<torch::Tensor>{params[2], params[3]},
                  std::make_unique<torch::optim::SGDOptions>(torch::optim::SGDOptions(lr).momentum(0.9)));
  torch::optim::SGD base(std::move(tg), torch::optim::SGDOptions(lr).momentum(0.9));
  const trajectory want =
      torch_sam_run(ref, base, d, steps, [&](std::size_t i) { return i < 2 ? rho1 : rho0; }, xi);

  auto net = make_net();
  auto ps = net->parameters();
  using flatmin::libtorch::param_group;
  flatmin::libtorch::optimizer opt(
      flatmin::libtorch::binding<double>(*net),
      std::vector<param_group>{{{ps[0], ps[1]}, 0.5 * lr, std::nullopt, rho1}, {{ps[2], ps[3]}}},
      [&](const auto& p) {
        return flatmin::sam(p, flatmin::base::sgd{.lr = lr, .momentum = 0.9}, {.rho = rho0, .xi = xi});
      });
  CHECK(opt.inner().perturbation().rho == rho1);  // the largest group's; the other group at 0.4 of it
  trajectory got;
  for (int s = 0; s < steps; ++s) {
    opt.step([&] {
      auto loss = loss_of(net, d);
      loss.backward();
      return loss;
    });
    got.push_back(weights(net));
  }
  CHECK_TRAJECTORY_WITHIN(got, want, 1e-10);

  // refusals: ρ for an optimizer without a perturbation, and a bad ρ
  const auto adamw = [](const auto& p) { return flatmin::adamw(p, {.lr = 1e-2}); };
  CHECK_THROWS_WITH_AS(flatmin::libtorch::optimizer(flatmin::libtorch::binding<double>(*net),
                                                    std::vector<param_group>{{ps, std::nullopt, std::nullopt, 0.1}},
                                                    adamw),
                       doctest::Contains("param group rho"), flatmin::usage_error);
  const auto sam = [](const auto& p) { return flatmin::sam(p, flatmin::base::sgd{.lr = 0.1}, {.rho = 0.1}); };
  CHECK_THROWS_WITH_AS(flatmin::libtorch::optimizer(flatmin::libtorch::binding<double>(*net),
                                                    std::vector<param_group>{{ps, std::nullopt, std::nullopt, -1.0}},
                                                    sam),
                       doctest::Contains("rho must be finite"), flatmin::usage_error);
}

// Gradient clipping as torch::nn::utils::clip_grad_norm_ (torch/csrc/api/include/torch/nn/utils/
// clip_grad.h: the norm of the per-tensor norms, coef = max / (norm + 1e-6), grads × coef when < 1)
// between backward and SGD's step; with SAM, clip_grad_norm_ on g_adv (the ascent is not clipped).
TEST_CASE("clip_grad_norm through the adapter follows torch::nn::utils::clip_grad_norm_ (SGD and SAM)") {
  const data d = make_data();
  const int steps = 20;
  const double rho = 0.1;
  // the bound: 0.7 × the first gradient's norm, so that the first steps are clipped and later ones
  // (smaller gradients near the minimum) are not
  double max_norm = 0;
  {
    auto probe = make_net();
    loss_of(probe, d).backward();
    std::vector<torch::Tensor> norms;
    for (const auto& p : probe->parameters()) norms.push_back(p.grad().norm(2));
    max_norm = 0.7 * torch::stack(norms).norm(2).item<double>();
  }
  for (const bool sam : {false, true}) {
    CAPTURE(sam);
    auto ref = make_net();
    const auto params = ref->parameters();
    torch::optim::SGD base(params, torch::optim::SGDOptions(0.1).momentum(0.9));
    trajectory want;
    int clipped = 0;
    for (int s = 0; s < steps; ++s) {
      base.zero_grad();
      loss_of(ref, d).backward();
      std::vector<torch::Tensor> saved;
      if (sam) {
        {
          const torch::NoGradGuard no_grad;
          std::vector<torch::Tensor> norms;
          for (const auto& p : params) norms.push_back(p.grad().norm(2));
          const torch::Tensor scale = rho / (torch::stack(norms).norm(2) + 1e-12);
          for (const auto& p : params) {
            saved.push_back(p.detach().clone());
            p.add_(p.grad() * scale);
          }
        }
        base.zero_grad();
        loss_of(ref, d).backward();
        const torch::NoGradGuard no_grad;
        for (std::size_t i = 0; i < params.size(); ++i) params[i].copy_(saved[i]);
      }
      if (torch::nn::utils::clip_grad_norm_(params, max_norm) > max_norm) ++clipped;
      base.step();
      want.push_back(weights(ref));
    }
    CHECK(clipped > 0);
    CHECK(clipped < steps);
    auto net = make_net();
    const flatmin::base::sgd sgd{.lr = 0.1, .momentum = 0.9};
    const trajectory got =
        sam ? flatmin_run(
                  net,
                  [&](const auto& ps) {
                    auto o = flatmin::sam(ps, sgd, {.rho = rho});
                    o.options().clip_grad_norm = max_norm;
                    return o;
                  },
                  d, steps)
            : flatmin_run(
                  net, [&](const auto& ps) { return flatmin::sgd(ps, sgd, {.clip_grad_norm = max_norm}); }, d, steps);
    CHECK_TRAJECTORY_WITHIN(got, want, 1e-10);
  }
}

// Functional-SAM through step(obj): the object's functional_backward() forward at w + ε and
// back-propagates the cotangent of the clean pass (descent/functional.hpp). For a model linear in
// w the Jacobian does not depend on w, so g_fsam is the clean gradient exactly and the trajectory
// is the base optimizer's (torch::optim::SGD here), while SAM's is not.
TEST_CASE("Functional-SAM through the adapter: on a linear model it follows torch::optim::SGD") {
  const data d = make_data();
  const int steps = 20;
  const auto make_linear = [] {
    torch::manual_seed(7);
    torch::nn::Linear net(4, 3);
    net->to(torch::kDouble);
    return net;
  };
  const auto w_of = [](const torch::nn::Linear& net) {
    std::vector<double> w;
    for (const auto& p : net->parameters()) {
      const auto c = p.detach().contiguous();
      w.insert(w.end(), c.data_ptr<double>(), c.data_ptr<double>() + c.numel());
    }
    return w;
  };
  auto ref = make_linear();
  torch::optim::SGD topt(ref->parameters(), torch::optim::SGDOptions(0.1).momentum(0.9));
  trajectory want;
  for (int s = 0; s < steps; ++s) {
    topt.zero_grad();
    torch::mse_loss(ref->forward(d.x), d.y).backward();
    topt.step();
    want.push_back(w_of(ref));
  }
  struct objective {
    torch::nn::Linear& net;
    const data& d;
    torch::Tensor cotangent;
    torch::Tensor operator()() {
      auto out = net->forward(d.x);
      out.retain_grad();
      auto loss = torch::mse_loss(out, d.y);
      loss.backward();
      cotangent = out.grad().detach().clone();
      return loss;
    }
    void functional_backward() { net->forward(d.x).backward(cotangent); }
  };
  const flatmin::base::sgd sgd{.lr = 0.1, .momentum = 0.9};
  const auto run = [&](auto make) {
    auto net = make_linear();
    flatmin::libtorch::optimizer opt(flatmin::libtorch::binding<double>(*net), make);
    trajectory got;
    for (int s = 0; s < steps; ++s) {
      objective obj{net, d, {}};
      const auto r = opt.step(obj);
      REQUIRE(r.perturbed);
      got.push_back(w_of(net));
    }
    return got;
  };
  const trajectory fsam = run([&](const auto& ps) { return flatmin::functional_sam(ps, sgd, {.rho = 0.5}); });
  CHECK_TRAJECTORY_WITHIN(fsam, want, 1e-10);
  const trajectory sam = run([&](const auto& ps) { return flatmin::sam(ps, sgd, {.rho = 0.5}); });
  CHECK(flatmin_test::trajectory_error(sam, want, 1e-10) > 1e3);  // SAM's g_adv is not g here
}
