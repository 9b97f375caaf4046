// Official SSAM presets (`flatmin::official`) against float64 re-derivations, written here with
// plain loops, of what the official code computes (Mi-Peng/Sparse-Sharpness-Aware-Minimization,
// solver/sam.py at 2d17866): the tanh MLP of test_official.cpp, full batch, 60 steps, every step's
// weights to 1e-9 relative. The official loop calls `step` once per batch and refreshes the mask
// when `epoch % update_freq == 0 and batch_idx == 0` (epochs from 0): with one batch per epoch,
// epoch e is step e + 1 and update_freq is T_m in steps.
//
// The loss is scaled by c = 1e-6 (the learning rate by 1/c), as in test_official.cpp: ‖g‖ ~ 1e-7
// makes ξ visible, so a preset with ξ = 1e-12 instead of the official 1e-7 fails.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <numbers>
#include <numeric>
#include <vector>

#include "support/backends.hpp"
#include "support/problems.hpp"
#include "support/trajectory.hpp"

namespace {
using vec = std::vector<double>;
using flatmin_test::trajectory;

constexpr double loss_scale = 1e-6;
constexpr int steps = 60;
constexpr double rtol = 1e-9;

/// ℓ_i(p) = ½ c ‖W2 tanh(W1 x_i + b1) + b2 − t_i‖², L = mean over the batch; 3 → 5 → 2, 12
/// samples (the problem of test_official.cpp). p is fc1.weight (5×3), fc1.bias, fc2.weight (2×5),
/// fc2.bias, flat.
struct mlp {
  static constexpr std::size_t D = 3, H = 5, O = 2, n = 12;
  static constexpr std::size_t w1 = 0, b1 = H * D, w2 = b1 + H, b2 = w2 + O * H, size = b2 + O;
  std::vector<vec> x, t;

  mlp() {
    for (std::size_t i = 0; i < n; ++i) {
      vec xi(D), ti(O);
      for (std::size_t d = 0; d < D; ++d) xi[d] = flatmin_test::uniform(17, i, d, -1.5, 1.5);
      for (std::size_t o = 0; o < O; ++o) ti[o] = flatmin_test::uniform(18, i, o, -1, 1);
      x.push_back(xi);
      t.push_back(ti);
    }
  }
  static vec start() {
    vec p(size);
    for (std::size_t j = 0; j < size; ++j) p[j] = flatmin_test::uniform(19, 0, j, -0.9, 0.9);
    return p;
  }
  /// g += scale · ∇ℓ_i.
  void sample(const vec& p, std::size_t i, vec& g, double scale) const {
    double z[H], r[O];
    for (std::size_t h = 0; h < H; ++h) {
      double a = p[b1 + h];
      for (std::size_t d = 0; d < D; ++d) a += p[w1 + h * D + d] * x[i][d];
      z[h] = std::tanh(a);
    }
    for (std::size_t o = 0; o < O; ++o) {
      double y = p[b2 + o];
      for (std::size_t h = 0; h < H; ++h) y += p[w2 + o * H + h] * z[h];
      r[o] = y - t[i][o];
    }
    for (std::size_t o = 0; o < O; ++o) {
      const double dy = scale * loss_scale * r[o];
      g[b2 + o] += dy;
      for (std::size_t h = 0; h < H; ++h) g[w2 + o * H + h] += dy * z[h];
    }
    for (std::size_t h = 0; h < H; ++h) {
      double dz = 0;
      for (std::size_t o = 0; o < O; ++o) dz += p[w2 + o * H + h] * scale * loss_scale * r[o];
      const double da = dz * (1 - z[h] * z[h]);
      g[b1 + h] += da;
      for (std::size_t d = 0; d < D; ++d) g[w1 + h * D + d] += da * x[i][d];
    }
  }
  /// ∇ of the mean loss over the batch.
  vec grad(const vec& p) const {
    vec g(size, 0.0);
    for (std::size_t i = 0; i < n; ++i) sample(p, i, g, 1.0 / static_cast<double>(n));
    return g;
  }
  /// The Fisher examples: example e is sample (5e + 2) mod n (a fixed choice of the objective;
  /// the official code draws them with a shuffled loader).
  static std::size_t example(std::size_t e) { return (5 * e + 2) % n; }
  vec example_grad(const vec& p, std::size_t e) const {
    vec g(size, 0.0);
    sample(p, example(e), g, 1.0);
    return g;
  }
};

double norm(const vec& v) {
  double s = 0;
  for (double a : v) s += a * a;
  return std::sqrt(s);
}

#define CHECK_TRAJECTORY(GOT_, WANT_) CHECK_TRAJECTORY_WITHIN(GOT_, WANT_, rtol)
#define CHECK_DEPARTS(GOT_, WANT_) CHECK_DEPARTS_BEYOND(GOT_, WANT_, rtol)

flatmin_test::layout_spec mlp_layout() {
  return {{"fc1.weight", {mlp::H, mlp::D}},
          {"fc1.bias", {mlp::H}},
          {"fc2.weight", {mlp::O, mlp::H}},
          {"fc2.bias", {mlp::O}}};
}

/// The batch gradient and, for SSAM-F's Fisher pass (`flatmin::example_objective`), the gradient
/// of example n alone.
struct mlp_objective {
  const mlp& f;
  flatmin_test::model<double>& m;
  std::size_t examples_seen = 0;
  double operator()() {
    m.set_grads(f.grad(m.weights()));
    return 0.0;
  }
  void example_gradient(std::size_t n) {
    ++examples_seen;
    m.set_grads(f.example_grad(m.weights(), n));
  }
};
static_assert(flatmin::example_objective<mlp_objective>);

/// One SAM step with SGD as the base (p ← p − lr g_adv, torch.optim.SGD without momentum): the
/// official first_step (ε = ρ g / (‖g‖ + 1e-7) ⊙ mask, ‖g‖ over every tensor), second_step.
void masked_sam_step(const mlp& f, vec& p, const vec& g, const std::vector<char>& mask, double rho, double xi,
                     double lr) {
  const double scale = rho / (norm(g) + xi);
  vec eps(p.size());
  for (std::size_t j = 0; j < p.size(); ++j) {
    eps[j] = g[j] * scale * (mask[j] ? 1.0 : 0.0);
    p[j] += eps[j];
  }
  const vec gadv = f.grad(p);
  for (std::size_t j = 0; j < p.size(); ++j) p[j] -= eps[j];
  for (std::size_t j = 0; j < p.size(); ++j) p[j] -= lr * gadv[j];
}

/// SSAM-F, solver/sam.py at 2d17866, class SSAMF:
/// - init_mask (≈ lines 110–114): the mask starts all zeros, so step 1 is unperturbed;
/// - first_step (≈ 166–177): ε = ρ g / (‖g‖ + 1e-7) ⊙ mask, every tensor a candidate;
/// - step (≈ 180–191): after the SAM step of epoch 0, T_m, 2T_m, … (steps 1, 1 + T_m, …)
///   update_mask at the weights the next step starts from, so steps 2, 2 + T_m, … use a new mask;
/// - update_mask (≈ 116–165): F = Σ over N_s single examples of (∂ℓ_n/∂w)² (≈ 145), keep_num =
///   int(N (1 − sparsity)) (≈ 151), the top keep_num of F over all tensors (≈ 152).
/// Departure kept on purpose (the library's documented behaviour, mask/fisher.hpp): the official
/// code does not zero the gradients before its Fisher pass (second_step leaves g_adv in p.grad),
/// so its first example's square includes the previous g_adv; here, as in flatmin, each example
/// contributes its own gradient only. Ties of F go to the lower index (stable sort).
trajectory official_ssam_f(const mlp& f, double rho, double sparsity, std::size_t examples,
                           std::size_t refresh, double lr, double xi = 1e-7) {
  vec p = mlp::start();
  std::vector<char> mask(p.size(), 0);
  trajectory out;
  for (std::size_t t = 1; t <= static_cast<std::size_t>(steps); ++t) {
    if (t >= 2 && (t - 2) % refresh == 0) {  // the update after step t − 1, at today's weights
      vec F(p.size(), 0.0);
      for (std::size_t e = 0; e < examples; ++e) {
        const vec ge = f.example_grad(p, e);
        for (std::size_t j = 0; j < p.size(); ++j) F[j] += ge[j] * ge[j];
      }
      const auto k = static_cast<std::size_t>(static_cast<double>(p.size()) * (1 - sparsity));
      std::vector<std::size_t> order(p.size());
      std::iota(order.begin(), order.end(), std::size_t{0});
      std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) { return F[a] > F[b]; });
      std::fill(mask.begin(), mask.end(), 0);
      for (std::size_t r = 0; r < k; ++r) mask[order[r]] = 1;
    }
    masked_sam_step(f, p, f.grad(p), mask, rho, xi, lr);
    out.push_back(p);
  }
  return out;
}

/// What the SSAM-D re-derivation found in the library's masks at its refreshes.
struct growth_report {
  std::size_t refreshes = 0;
  std::size_t kept_mismatches = 0;   ///< library's kept units ≠ the re-derived top |g| among the active
  std::size_t grown_mismatches = 0;  ///< grown units not the re-derived count
};

/// SSAM-D, solver/sam.py at 2d17866, class SSAMD, with drop_strategy = gradient, growth_strategy =
/// random, T_start = 0 and T_end = total (in steps, as the library counts):
/// - init_mask (≈ lines 249–271): a random start of live_num = N − ⌈N s⌉ units (≈ 257);
/// - DeathRate_Scheduler (≈ 273–276): dr = dr₀ (1 + cos(π (epoch − T_start) / (T_end − T_start)))
///   / 2 at the epoch of the refresh, epoch = t − 1;
/// - step (≈ 352–367): first_step with the current mask (≈ 339–349: ε = ρ g / (‖g‖ + 1e-7) ⊙
///   mask), then, at steps 1, 1 + T_m, …, update_mask from the same g at w, then the closure and
///   second_step: the new mask is used from the next step on;
/// - update_mask (≈ 278–326): with x = N − N s in double, keep the top int(x (1 − dr)) of
///   (|g| + 1e-7) ⊙ mask (≈ 295; the 1e-7 only puts every active unit above the inactive ones) and
///   grow death_num = int(min(x dr, N s)) (≈ 294) of (rand + 1e-7) ⊙ (1 − mask) (≈ 288, 303–304).
/// The growth is random (torch's RNG there, kernels::counter_hash in flatmin), so the start and
/// the grown units are taken from the library's masks: `lib[0]` before step 1, `lib[t]` after
/// step t. Checked here: the start has live_num units, the library kept exactly the re-derived
/// units and grew only previously inactive ones, as many as re-derived. When the kept count
/// exceeds the active units (late in the cosine schedule), the official topk tops the kept set up
/// with arbitrary inactive units; the re-derivation follows flatmin's documented rule
/// (mask/dynamic.hpp): keep all active units and grow the difference at random.
trajectory official_ssam_d(const mlp& f, double rho, double s, double dr0, std::size_t refresh,
                           std::size_t total, double lr, const std::vector<std::vector<char>>& lib,
                           growth_report& rep, double xi = 1e-7) {
  const std::size_t N = mlp::size;
  const double nd = static_cast<double>(N);
  vec p = mlp::start();
  std::vector<char> mask = lib[0];
  CHECK(static_cast<std::size_t>(std::count(mask.begin(), mask.end(), 1)) ==
        N - static_cast<std::size_t>(std::ceil(nd * s)));
  trajectory out;
  for (std::size_t t = 1; t <= static_cast<std::size_t>(steps); ++t) {
    const vec g = f.grad(p);
    std::vector<char> next = mask;
    if ((t - 1) % refresh == 0) {
      ++rep.refreshes;
      const double epoch = static_cast<double>(t - 1);
      const double dr = dr0 * (1 + std::cos(std::numbers::pi * epoch / static_cast<double>(total))) / 2;
      const double x = nd - nd * s;
      const auto kept_n = static_cast<std::size_t>(x * (1 - dr));
      const auto grow_n = static_cast<std::size_t>(std::min(x * dr, nd * s));
      const auto active = static_cast<std::size_t>(std::count(mask.begin(), mask.end(), 1));
      const std::size_t kept = std::min(kept_n, active);
      const std::size_t grow = std::min(grow_n + (kept_n - kept), N - active);
      std::vector<std::size_t> order;
      for (std::size_t j = 0; j < N; ++j)
        if (mask[j]) order.push_back(j);
      std::stable_sort(order.begin(), order.end(),
                       [&](std::size_t a, std::size_t b) { return std::fabs(g[a]) > std::fabs(g[b]); });
      std::fill(next.begin(), next.end(), 0);
      for (std::size_t r = 0; r < kept; ++r) next[order[r]] = 1;
      std::size_t grown = 0;
      bool kept_same = true;
      for (std::size_t j = 0; j < N; ++j) {
        if (mask[j] && lib[t][j] != next[j]) kept_same = false;
        if (!mask[j] && lib[t][j]) {  // a grown unit, drawn by the library
          next[j] = 1;
          ++grown;
        }
      }
      if (!kept_same) ++rep.kept_mismatches;
      if (grown != grow) ++rep.grown_mismatches;
    }
    masked_sam_step(f, p, g, mask, rho, xi, lr);
    mask = next;
    out.push_back(p);
  }
  return out;
}

}  // namespace

TEST_CASE_TEMPLATE("official SSAM-F preset = Mi-Peng SSAMF (per-example Fisher, step 1 unperturbed, xi 1e-7)",
                   B, FLATMIN_TEST_BACKENDS) {
  const double rho = 0.05, sparsity = 0.6, lr = 0.5 / loss_scale;
  const std::size_t examples = 7, refresh = 5;  // new masks at steps 2, 7, 12, …, 57
  const mlp f;
  const auto want = official_ssam_f(f, rho, sparsity, examples, refresh, lr);
  const flatmin::ssam_f_options o{
      .rho = rho, .sparsity = sparsity, .examples = examples, .refresh_every = refresh};
  {
    flatmin_test::model<double> m(mlp_layout(), flatmin_test::test_space<B>);
    m.set_weights(mlp::start());
    auto opt = flatmin::ssam_f<B>(m.params, flatmin::base::sgd{.lr = lr}, flatmin::official, o);
    CHECK(opt.perturbation().xi == 1e-7);
    CHECK(opt.mask().schedule == flatmin::mask::fisher_schedule::ssam_official);
    CHECK(opt.mask().source == flatmin::mask::fisher_estimator::per_example);
    mlp_objective obj{f, m};
    trajectory got;
    for (std::size_t t = 1; t <= static_cast<std::size_t>(steps); ++t) {
      const std::size_t before = obj.examples_seen;
      const auto rep = opt.step(obj);
      REQUIRE_FALSE(rep.skipped);
      const bool refreshed = t >= 2 && (t - 2) % refresh == 0;
      CHECK(obj.examples_seen - before == (refreshed ? examples : 0u));  // N_s examples, refreshes only
      CHECK((rep.perturbation_norm == 0.0) == (t == 1));                 // only step 1 stays at w
      got.push_back(m.weights());
    }
    // k = ⌊0.4 · 32⌋ = 12 entries perturbed
    std::size_t active = 0;
    for (std::size_t k = 0; k < 4; ++k) active += opt.mask_count(k);
    CHECK(active == 12);
    CHECK_TRAJECTORY(got, want);
  }
  {  // the library's default composition: first mask from step 1's estimate, ξ = 1e-12
    flatmin_test::model<double> m(mlp_layout(), flatmin_test::test_space<B>);
    m.set_weights(mlp::start());
    auto opt = flatmin::ssam_f<B>(m.params, flatmin::base::sgd{.lr = lr}, o);
    mlp_objective obj{f, m};
    trajectory got;
    for (int s = 0; s < steps; ++s) {
      REQUIRE_FALSE(opt.step(obj).skipped);
      got.push_back(m.weights());
    }
    CHECK_DEPARTS(got, want);
  }
}

/// The whole mask of `opt` (one byte per entry of p).
template <class Opt>
std::vector<char> whole_mask(const Opt& opt) {
  std::vector<char> m;
  for (std::size_t k = 0; k < 4; ++k)
    for (auto b : opt.mask_bytes(k)) m.push_back(static_cast<char>(b));
  return m;
}

TEST_CASE_TEMPLATE("official SSAM-D preset = Mi-Peng SSAMD (counts, timing, cosine dr; library growth)", B,
                   FLATMIN_TEST_BACKENDS) {
  // s = 0.2 of N = 32: x = 25.6, a start of 25 units; refreshes after the ascent of steps 1, 6, …, 56
  const double rho = 0.05, sparsity = 0.2, dr0 = 0.6, lr = 0.5 / loss_scale;
  const std::size_t refresh = 5, total = 60;
  const mlp f;
  const flatmin::ssam_d_options o{.rho = rho,
                                  .sparsity = sparsity,
                                  .death_rate = dr0,
                                  .refresh_every = refresh,
                                  .total_steps = total,
                                  .seed = 7};
  std::vector<std::vector<char>> lib;
  trajectory got;
  {
    flatmin_test::model<double> m(mlp_layout(), flatmin_test::test_space<B>);
    m.set_weights(mlp::start());
    auto opt = flatmin::ssam_d<B>(m.params, flatmin::base::sgd{.lr = lr}, flatmin::official, o);
    CHECK(opt.perturbation().xi == 1e-7);
    CHECK(opt.mask().counts == flatmin::mask::dynamic_counts::official);
    mlp_objective obj{f, m};
    lib.push_back(whole_mask(opt));
    for (int s = 0; s < steps; ++s) {
      REQUIRE_FALSE(opt.step(obj).skipped);
      got.push_back(m.weights());
      lib.push_back(whole_mask(opt));
    }
  }
  growth_report rep;
  const auto want = official_ssam_d(f, rho, sparsity, dr0, refresh, total, lr, lib, rep);
  CHECK(rep.refreshes == 12);
  CHECK(rep.kept_mismatches == 0);
  CHECK(rep.grown_mismatches == 0);
  // the first refresh (dr = 0.6): int(25.6 · 0.4) = 10 kept + int(min(15.36, 6.4)) = 6 grown
  CHECK(std::count(lib[1].begin(), lib[1].end(), 1) == 16);
  CHECK_TRAJECTORY(got, want);
  {  // the library's default ξ = 1e-12 departs
    flatmin_test::model<double> m(mlp_layout(), flatmin_test::test_space<B>);
    m.set_weights(mlp::start());
    auto opt = flatmin::ssam_d<B>(m.params, flatmin::base::sgd{.lr = lr}, o);
    mlp_objective obj{f, m};
    trajectory def;
    for (int s = 0; s < steps; ++s) {
      REQUIRE_FALSE(opt.step(obj).skipped);
      def.push_back(m.weights());
    }
    CHECK_DEPARTS(def, want);
  }
}
