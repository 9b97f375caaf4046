// Official presets (`flatmin::official`) against float64 re-derivations, written here with plain
// loops, of what each official implementation computes: the same tanh MLP and full batch, 60
// steps, every step's weights to 1e-9 relative. Each case also checks that the library's default
// composition (which departs from the official code) does NOT match, so the comparison can fail.
//
// The loss is scaled by c = 1e-6 (and the learning rate by 1/c): the trajectory is the same as at
// c = 1, but ‖g‖ ~ 1e-7 makes ξ visible, ξ / (c ‖g‖) ≥ 1e-5 for ξ = 1e-12, far above the
// tolerance, so a preset with another paper's ξ fails.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <span>
#include <sstream>
#include <string>
#include <vector>

#include "support/backends.hpp"
#include "support/problems.hpp"
#include "support/trajectory.hpp"

namespace {
using vec = std::vector<double>;

constexpr double loss_scale = 1e-6;
constexpr int steps = 60;
constexpr double rtol = 1e-9;

/// ℓ_i(p) = ½ c ‖W2 tanh(W1 x_i + b1) + b2 − t_i‖², L = mean over the batch; 3 → 5 → 2, 12
/// samples. p is the flat vector fc1.weight (5×3, row-major), fc1.bias, fc2.weight (2×5), fc2.bias.
struct mlp {
  static constexpr std::size_t D = 3, H = 5, O = 2, n = 12;
  static constexpr std::size_t w1 = 0, b1 = H * D, w2 = b1 + H, b2 = w2 + O * H, size = b2 + O;
  /// Offsets of the four tensors in p (for the per-tensor rules of the official codes).
  static constexpr std::size_t begin[4] = {w1, b1, w2, b2}, end[4] = {b1, w2, b2, size};
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

  /// ℓ_i and, when g is given, g += scale · ∇ℓ_i.
  double sample(const vec& p, std::size_t i, vec* g = nullptr, double scale = 0) const {
    double z[H], r[O], l = 0;
    for (std::size_t h = 0; h < H; ++h) {
      double a = p[b1 + h];
      for (std::size_t d = 0; d < D; ++d) a += p[w1 + h * D + d] * x[i][d];
      z[h] = std::tanh(a);
    }
    for (std::size_t o = 0; o < O; ++o) {
      double y = p[b2 + o];
      for (std::size_t h = 0; h < H; ++h) y += p[w2 + o * H + h] * z[h];
      r[o] = y - t[i][o];
      l += 0.5 * loss_scale * r[o] * r[o];
    }
    if (g) {
      for (std::size_t o = 0; o < O; ++o) {
        const double dy = scale * loss_scale * r[o];
        (*g)[b2 + o] += dy;
        for (std::size_t h = 0; h < H; ++h) (*g)[w2 + o * H + h] += dy * z[h];
      }
      for (std::size_t h = 0; h < H; ++h) {
        double dz = 0;
        for (std::size_t o = 0; o < O; ++o) dz += p[w2 + o * H + h] * scale * loss_scale * r[o];
        const double da = dz * (1 - z[h] * z[h]);
        (*g)[b1 + h] += da;
        for (std::size_t d = 0; d < D; ++d) (*g)[w1 + h * D + d] += da * x[i][d];
      }
    }
    return l;
  }
  /// ∇ of the mean loss over `idx`.
  vec grad(const vec& p, const std::vector<std::size_t>& idx) const {
    vec g(size, 0.0);
    for (std::size_t i : idx) sample(p, i, &g, 1.0 / static_cast<double>(idx.size()));
    return g;
  }
  vec grad(const vec& p) const { return grad(p, all()); }
  static std::vector<std::size_t> all() {
    std::vector<std::size_t> a(n);
    std::iota(a.begin(), a.end(), std::size_t{0});
    return a;
  }
  vec losses(const vec& p) const {
    vec l(n);
    for (std::size_t i = 0; i < n; ++i) l[i] = sample(p, i);
    return l;
  }
};

/// The norm the PyTorch codes take: the L2 norm of the per-tensor L2 norms of v.
double norm_of_tensor_norms(const vec& v) {
  double s = 0;
  for (int k = 0; k < 4; ++k) {
    double t = 0;
    for (std::size_t j = mlp::begin[k]; j < mlp::end[k]; ++j) t += v[j] * v[j];
    s += std::sqrt(t) * std::sqrt(t);
  }
  return std::sqrt(s);
}
bool is_weight(std::size_t j) { return (j >= mlp::w1 && j < mlp::b1) || (j >= mlp::w2 && j < mlp::b2); }

using flatmin_test::trajectory;

// ---------------------------------------------------------------------------------------------
// The library side: the same MLP behind a param_set named as PyTorch names it.
// ---------------------------------------------------------------------------------------------

flatmin_test::layout_spec mlp_layout(bool biases_eligible = true) {
  const flatmin::tensor_options bias{.mask_eligible = biases_eligible};
  return {{"fc1.weight", {mlp::H, mlp::D}}, {"fc1.bias", {mlp::H}, bias},
          {"fc2.weight", {mlp::O, mlp::H}}, {"fc2.bias", {mlp::O}, bias}};
}

/// A `flatmin::sample_objective` over the model's buffers (ESAM); also a plain objective.
struct mlp_objective {
  const mlp& f;
  flatmin_test::model<double>& m;
  double operator()() {
    const vec p = m.weights();
    m.set_grads(f.grad(p));
    double l = 0;
    for (double v : f.losses(p)) l += v / mlp::n;
    return l;
  }
  std::size_t batch_size() const { return mlp::n; }
  double losses_and_gradient(std::span<double> l) {
    const vec ls = f.losses(m.weights());
    std::copy(ls.begin(), ls.end(), l.begin());
    return (*this)();
  }
  void losses(std::span<double> l) {
    const vec ls = f.losses(m.weights());
    std::copy(ls.begin(), ls.end(), l.begin());
  }
  void subset_gradient(std::span<const std::size_t> idx) {
    m.set_grads(f.grad(m.weights(), std::vector<std::size_t>(idx.begin(), idx.end())));
  }
};
static_assert(flatmin::sample_objective<mlp_objective>);

/// `steps` closure-protocol steps of `opt` over `m`; the weights after each.
template <class Opt>
trajectory run_library(Opt& opt, flatmin_test::model<double>& m, const mlp& f) {
  mlp_objective obj{f, m};
  trajectory out;
  for (int s = 0; s < steps; ++s) {
    const auto r = opt.step(obj);
    REQUIRE_FALSE(r.skipped);
    out.push_back(m.weights());
  }
  return out;
}

#define CHECK_TRAJECTORY(GOT_, WANT_) CHECK_TRAJECTORY_WITHIN(GOT_, WANT_, rtol)
#define CHECK_DEPARTS(GOT_, WANT_) CHECK_DEPARTS_BEYOND(GOT_, WANT_, rtol)

// ---------------------------------------------------------------------------------------------
// Re-derivations of the official codes (float64, SGD as the base: p ← p − lr g_adv, as
// torch.optim.SGD without momentum).
// ---------------------------------------------------------------------------------------------

/// davda54/sam, sam.py at 87a9604: first_step (lines 17–25), second_step (lines 30–36), the norm
/// (_grad_norm, lines 49–53). adaptive = True scales by |p| in the norm and by p² in ε, every tensor.
trajectory davda54(const mlp& f, double rho, double lr, bool adaptive) {
  vec p = mlp::start();
  trajectory out;
  for (int s = 0; s < steps; ++s) {
    const vec g = f.grad(p);
    vec tg(g);
    if (adaptive)
      for (std::size_t j = 0; j < p.size(); ++j) tg[j] = std::fabs(p[j]) * g[j];
    const double scale = rho / (norm_of_tensor_norms(tg) + 1e-12);  // line 19
    const vec old = p;                                                // line 23
    for (std::size_t j = 0; j < p.size(); ++j)  // lines 24–25
      p[j] += (adaptive ? p[j] * p[j] : 1.0) * g[j] * scale;
    const vec gadv = f.grad(p);
    p = old;  // line 34
    for (std::size_t j = 0; j < p.size(); ++j) p[j] -= lr * gadv[j];
    out.push_back(p);
  }
  return out;
}

/// SamsungLabs/ASAM, asam.py at dc9b513: ascent_step (lines 13–38): on tensors whose name holds
/// "weight", t = |p| + η and g ← g t (lines 22–25); norm of the per-tensor norms + 1e-16 (line 27);
/// on those tensors g ← g t again (lines 32–33); ε = g ρ / norm (lines 35–36); descent_step
/// subtracts ε (line 45) and steps the base optimizer.
trajectory samsung_asam(const mlp& f, double rho, double eta, double lr) {
  vec p = mlp::start();
  trajectory out;
  for (int s = 0; s < steps; ++s) {
    vec g = f.grad(p), t(p.size(), 1.0);
    for (std::size_t j = 0; j < p.size(); ++j)
      if (is_weight(j)) {
        t[j] = std::fabs(p[j]) + eta;
        g[j] *= t[j];
      }
    const double norm = norm_of_tensor_norms(g) + 1e-16;
    vec eps(p.size());
    for (std::size_t j = 0; j < p.size(); ++j) {
      if (is_weight(j)) g[j] *= t[j];
      eps[j] = g[j] * (rho / norm);
      p[j] += eps[j];
    }
    const vec gadv = f.grad(p);
    for (std::size_t j = 0; j < p.size(); ++j) p[j] -= eps[j];
    for (std::size_t j = 0; j < p.size(); ++j) p[j] -= lr * gadv[j];
    out.push_back(p);
  }
  return out;
}

/// WHU-ZQH/FSAM4PLM at 77d5b3b, the `fisher-esam` mode with β = γ = 1 (FSAM):
/// - trainer.py train_step: a refresh when the update count (from 0) is a multiple of T_m;
/// - optim/samsgd.py ESAM_Mask.set_fisher_mask (≈ lines 538–575): F = g² of the batch gradient on
///   the masked tensors (names without "bias"/"embed"), the top ⌊|F| keep⌋ by a descending sort,
///   then the gradient is zeroed (≈ 548);
/// - optim/fairseq_optimizer.py step (lines 133–135): the step then runs on that zeroed gradient,
///   so ε = 0 · ρ / (0 + 1e-7) = 0 and γ = 1 keeps every sample: the base step gets ∇L(w);
/// - ESAM_Mask.first_step (≈ 593–606): ε = g ρ / (‖g‖ + 1e-7) / β, ‖g‖ over every tensor,
///   multiplied by the mask on the masked tensors; second_step subtracts ε (≈ 387).
trajectory fsam4plm(const mlp& f, double rho, double keep, std::size_t refresh, double lr) {
  vec p = mlp::start();
  std::vector<char> mask(p.size(), 0);
  trajectory out;
  for (int s = 0; s < steps; ++s) {
    const vec g = f.grad(p);
    vec eps(p.size(), 0.0);
    if (static_cast<std::size_t>(s) % refresh == 0) {
      std::vector<std::size_t> elig;
      for (std::size_t j = 0; j < p.size(); ++j)
        if (is_weight(j)) elig.push_back(j);
      const auto k = static_cast<std::size_t>(static_cast<double>(elig.size()) * keep);
      auto larger = [&](std::size_t a, std::size_t b) { return g[a] * g[a] > g[b] * g[b]; };
      std::stable_sort(elig.begin(), elig.end(), larger);
      std::fill(mask.begin(), mask.end(), 0);
      for (std::size_t r = 0; r < k; ++r) mask[elig[r]] = 1;
      // the gradient is zeroed: ε = 0
    } else {
      const double scale = rho / (norm_of_tensor_norms(g) + 1e-7) / 1.0;
      for (std::size_t j = 0; j < p.size(); ++j) eps[j] = g[j] * scale * (is_weight(j) ? mask[j] : 1.0);
    }
    for (std::size_t j = 0; j < p.size(); ++j) p[j] += eps[j];
    const vec gadv = f.grad(p);
    for (std::size_t j = 0; j < p.size(); ++j) p[j] -= eps[j];
    for (std::size_t j = 0; j < p.size(); ++j) p[j] -= lr * gadv[j];
    out.push_back(p);
  }
  return out;
}

/// dydjw9/Efficient_SAM, utils/Esam.py at 4c84cf5, with β = 1 (every tensor perturbed): step
/// (lines 67–…): per-sample losses at w, ε = ρ g / (‖g‖ + 1e-7) / β (line 26), losses at w + ε,
/// position = int(|B| γ) (line 97), cutoff = the position-th largest increase (lines 98–99),
/// the samples strictly above it (line 104), the mean loss's gradient over them at w + ε;
/// second_step subtracts ε (line 57) and steps the base optimizer.
trajectory dydjw9_esam(const mlp& f, double rho, double gamma, double lr, std::size_t* kept = nullptr) {
  vec p = mlp::start();
  trajectory out;
  for (int s = 0; s < steps; ++s) {
    const vec before = f.losses(p), g = f.grad(p);
    const double scale = rho / (norm_of_tensor_norms(g) + 1e-7) / 1.0;
    vec eps(p.size());
    for (std::size_t j = 0; j < p.size(); ++j) {
      eps[j] = g[j] * scale;
      p[j] += eps[j];
    }
    const vec after = f.losses(p);
    vec inc(mlp::n), sorted;
    for (std::size_t i = 0; i < mlp::n; ++i) inc[i] = after[i] - before[i];
    std::vector<std::size_t> idx;
    if (gamma >= 0.99) {
      idx = mlp::all();
    } else {
      const auto position = static_cast<std::size_t>(static_cast<double>(mlp::n) * gamma);
      sorted = inc;
      std::sort(sorted.begin(), sorted.end(), std::greater<>());
      const double cutoff = sorted[position - 1];
      for (std::size_t i = 0; i < mlp::n; ++i)
        if (inc[i] > cutoff) idx.push_back(i);
    }
    if (kept) *kept = idx.size();
    const vec gadv = f.grad(p, idx);
    for (std::size_t j = 0; j < p.size(); ++j) p[j] -= eps[j];
    for (std::size_t j = 0; j < p.size(); ++j) p[j] -= lr * gadv[j];
    out.push_back(p);
  }
  return out;
}

template <class B>
struct library_run {
  mlp f;
  flatmin_test::model<double> m;
  explicit library_run(bool biases_eligible = true)
      : m(mlp_layout(biases_eligible), flatmin_test::test_space<B>) {
    m.set_weights(mlp::start());
  }
};

}  // namespace

TEST_CASE_TEMPLATE("official SAM preset = davda54/sam (xi 1e-12) over 60 steps", B, FLATMIN_TEST_BACKENDS) {
  const double rho = 0.05, lr = 0.5 / loss_scale;
  const mlp f;
  const auto want = davda54(f, rho, lr, false);
  {
    library_run<B> r;
    auto opt = flatmin::sam<B>(r.m.params, flatmin::base::sgd{.lr = lr}, flatmin::official, {.rho = rho});
    CHECK(opt.perturbation().xi == 1e-12);
    CHECK_TRAJECTORY(run_library(opt, r.m, f), want);
  }
  {  // another code's ξ (ESAM / SSAM / FSAM's 1e-7) does not pass
    library_run<B> r;
    auto opt = flatmin::sam<B>(r.m.params, flatmin::base::sgd{.lr = lr}, {.rho = rho, .xi = 1e-7});
    CHECK_DEPARTS(run_library(opt, r.m, f), want);
  }
}

TEST_CASE_TEMPLATE("official ASAM preset = SamsungLabs/ASAM (eta 0.01, weights by name, xi 1e-16)", B,
                   FLATMIN_TEST_BACKENDS) {
  const double rho = 0.5, eta = 0.01, lr = 0.2 / loss_scale;
  const mlp f;
  const auto want = samsung_asam(f, rho, eta, lr);
  {
    library_run<B> r;
    auto opt = flatmin::asam<B>(r.m.params, flatmin::base::sgd{.lr = lr}, flatmin::official);
    CHECK(opt.perturbation().xi == 1e-16);
    CHECK(opt.perturbation().eta == 0.01);
    CHECK(opt.perturbation().rho == 0.5);
    CHECK_TRAJECTORY(run_library(opt, r.m, f), want);
  }
  {  // the library's default: ξ = 1e-12 and the biases scaled too
    library_run<B> r;
    auto opt = flatmin::asam<B>(r.m.params, flatmin::base::sgd{.lr = lr});
    CHECK_DEPARTS(run_library(opt, r.m, f), want);
  }
  {  // by_name = false with every tensor adaptive scales the biases: not SamsungLabs
    library_run<B> r;
    auto opt =
        flatmin::asam<B>(r.m.params, flatmin::base::sgd{.lr = lr}, flatmin::official, {.by_name = false});
    CHECK_DEPARTS(run_library(opt, r.m, f), want);
  }
}

TEST_CASE_TEMPLATE("official ASAM preset, davda54 flavour (eta 0, every tensor, xi 1e-12)", B,
                   FLATMIN_TEST_BACKENDS) {
  const double rho = 2.0, lr = 0.2 / loss_scale;
  const mlp f;
  const auto want = davda54(f, rho, lr, true);
  {
    // biases marked adaptive = false by the user: davda54 scales them all the same
    flatmin_test::model<double> m(
        {{"fc1.weight", {mlp::H, mlp::D}}, {"fc1.bias", {mlp::H}, {.adaptive = false}},
         {"fc2.weight", {mlp::O, mlp::H}}, {"fc2.bias", {mlp::O}, {.adaptive = false}}},
        flatmin_test::test_space<B>);
    m.set_weights(mlp::start());
    auto opt = flatmin::asam<B>(m.params, flatmin::base::sgd{.lr = lr}, flatmin::official,
                                flatmin::asam_davda54_options{});
    CHECK(opt.perturbation().eta == 0.0);
    CHECK(opt.perturbation().rho == 2.0);
    CHECK_TRAJECTORY(run_library(opt, m, f), want);
  }
  {  // the library's default η = 0.01 (and ξ) departs
    library_run<B> r;
    auto opt = flatmin::asam<B>(r.m.params, flatmin::base::sgd{.lr = lr}, {.rho = rho});
    CHECK_DEPARTS(run_library(opt, r.m, f), want);
  }
}

TEST_CASE_TEMPLATE("official FSAM preset = FSAM4PLM (current-batch Fisher, refresh steps at w, xi 1e-7)", B,
                   FLATMIN_TEST_BACKENDS) {
  const double rho = 0.05, keep = 0.4, lr = 0.5 / loss_scale;
  const std::size_t refresh = 10;  // refreshes at steps 1, 11, 21, 31, 41, 51
  const mlp f;
  const auto want = fsam4plm(f, rho, keep, refresh, lr);
  {
    library_run<B> r(false);  // the official code exempts biases from the mask
    auto opt = flatmin::fsam<B>(r.m.params, flatmin::base::sgd{.lr = lr}, flatmin::official,
                                {.rho = rho, .keep = keep, .refresh_every = refresh});
    CHECK(opt.mask().unperturbed_refresh);
    CHECK(opt.mask().source == flatmin::mask::fisher_estimator::current_batch);
    CHECK(opt.perturbation().xi == 1e-7);
    mlp_objective obj{f, r.m};
    trajectory got;
    for (int s = 0; s < steps; ++s) {
      const auto rep = opt.step(obj);
      REQUIRE_FALSE(rep.skipped);
      CHECK((rep.perturbation_norm == 0.0) == (s % 10 == 0));  // only the refresh steps stay at w
      got.push_back(r.m.weights());
    }
    CHECK_TRAJECTORY(got, want);
  }
  {  // the library's default: accumulated Fisher, perturbed refresh steps, ξ = 1e-12
    library_run<B> r(false);
    auto opt = flatmin::fsam<B>(r.m.params, flatmin::base::sgd{.lr = lr},
                                {.rho = rho, .keep = keep, .refresh_every = refresh});
    CHECK_DEPARTS(run_library(opt, r.m, f), want);
  }
}

TEST_CASE_TEMPLATE("official ESAM preset = dydjw9/Efficient_SAM (strict cutoff, xi 1e-7)", B,
                   FLATMIN_TEST_BACKENDS) {
  const double rho = 0.05, lr = 0.5 / loss_scale;
  const mlp f;
  // γ|B| = 6 (official keeps 5, the default 6) and 3.6 (official keeps 2, the default 4)
  for (double gamma : {0.5, 0.3}) {
    CAPTURE(gamma);
    std::size_t kept = 0;
    const auto want = dydjw9_esam(f, rho, gamma, lr, &kept);
    CHECK(kept == (gamma == 0.5 ? 5u : 2u));
    {
      library_run<B> r;
      auto opt = flatmin::esam<B>(r.m.params, flatmin::base::sgd{.lr = lr}, flatmin::official,
                                  {.rho = rho, .beta = 1.0, .gamma = gamma});
      CHECK(opt.perturbation().xi == 1e-7);
      CHECK(opt.descent().strict_cutoff);
      CHECK_TRAJECTORY(run_library(opt, r.m, f), want);
      CHECK(opt.descent().selected().size() == kept);
    }
    {  // the library's default keeps ⌈γ|B|⌉ samples with ξ = 1e-12
      library_run<B> r;
      auto opt = flatmin::esam<B>(r.m.params, flatmin::base::sgd{.lr = lr},
                                  {.rho = rho, .beta = 1.0, .gamma = gamma});
      CHECK_DEPARTS(run_library(opt, r.m, f), want);
    }
  }
}

TEST_CASE("select::sharpness_sensitive strict_cutoff by hand: above the floor(gamma |B|)-th largest") {
  flatmin::select::sharpness_sensitive s{.gamma = 0.5, .strict_cutoff = true};
  const std::vector<double> before(6, 1.0);
  // increases 0.5 1 0.25 0.75 −1 2: sorted 2 1 0.75 0.5 0.25 −1
  const std::vector<double> after{1.5, 2, 1.25, 1.75, 0, 3};
  CHECK(s.select(before, after) == std::vector<std::size_t>{1, 5});  // p = 3, cutoff 0.75: 2 samples
  s.gamma = 0.7;                                                      // p = ⌊4.2⌋ = 4, cutoff 0.5
  CHECK(s.select(before, after) == std::vector<std::size_t>{1, 3, 5});
  s.strict_cutoff = false;  // the library's ⌈4.2⌉ = 5
  CHECK(s.select(before, after).size() == 5);
  s.strict_cutoff = true;
  // a tie with the cutoff drops every tied sample: increases 1 1 1 0 0 0, p = 2, cutoff 1
  s.gamma = 0.4;
  const std::vector<double> tied{2, 2, 2, 1, 1, 1};
  CHECK(s.select(before, tied) == std::vector<std::size_t>{0});  // none above: the largest, lower index
  // p = 1: nothing is above the largest; the official mean over no sample is NaN, the library keeps one
  s.gamma = 0.2;
  CHECK(s.select(before, after) == std::vector<std::size_t>{5});
  s.gamma = 0.1;  // p = 0 (the official code fails): the same fallback
  CHECK(s.select(before, after) == std::vector<std::size_t>{5});
  s.gamma = 0.99;  // γ ≥ 0.99 keeps the whole batch, as the official code
  CHECK(s.select(before, after).size() == 6);
}

TEST_CASE("official ASAM preset: by_name needs a tensor named \"weight\"; davda54 overrides the flags") {
  std::vector<double> a{1.0, -2.0}, ga(2), b{0.5}, gb(1);
  {
    flatmin::param_set<double> ps;
    ps.add("W1", a, ga);
    ps.add("b1", b, gb);
    CHECK_THROWS_WITH_AS(flatmin::asam(ps, flatmin::base::sgd{}, flatmin::official),
                         doctest::Contains("by_name"), std::invalid_argument);
    // by_name = false: the per-tensor options decide
    auto opt = flatmin::asam(ps, flatmin::base::sgd{}, flatmin::official, {.by_name = false});
    CHECK(opt.layout().host_tensors().size() == 2);
  }
  {
    flatmin::param_set<double> ps;
    ps.add("fc.weight", a, ga, {.adaptive = false});
    ps.add("fc.bias", b, gb);
    auto sl = flatmin::asam(ps, flatmin::base::sgd{}, flatmin::official);
    const auto& t = sl.layout().host_tensors();
    CHECK((t[0].flags & flatmin::tensor_flags::adaptive) != 0);  // named weight: scaled
    CHECK((t[1].flags & flatmin::tensor_flags::adaptive) == 0);  // a bias: T = 1
    auto dv = flatmin::asam(ps, flatmin::base::sgd{}, flatmin::official, flatmin::asam_davda54_options{});
    for (const auto& x : dv.layout().host_tensors()) CHECK((x.flags & flatmin::tensor_flags::adaptive) != 0);
  }
}

TEST_CASE_TEMPLATE("mask::fisher unperturbed_refresh: a retried refresh step stays at w; resuming agrees",
                   B, FLATMIN_TEST_BACKENDS) {
  const mlp f;
  const double lr = 0.5 / loss_scale;
  const flatmin::fsam_official_options o{.keep = 0.4, .refresh_every = 3};  // refreshes at 1, 4, 7, …
  library_run<B> r(false);
  auto opt = flatmin::fsam<B>(r.m.params, flatmin::base::sgd{.lr = lr}, flatmin::official, o);
  mlp_objective obj{f, r.m};
  const vec w0 = r.m.weights();
  obj();
  CHECK(opt.ascend().perturbation_norm == 0.0);
  CHECK(r.m.weights() == w0);  // ε = 0: w + ε is w, bit for bit
  opt.cancel();
  obj();
  CHECK(opt.ascend().perturbation_norm == 0.0);  // the retry keeps the step's refresh and its ε = 0
  CHECK(r.m.weights() == w0);
  obj();
  opt.descend();
  for (int s = 1; s < 5; ++s) {  // steps 2 … 5: only step 4 refreshes
    const auto rep = opt.step(obj);
    CHECK((rep.perturbation_norm == 0.0) == (s == 3));
  }
  std::stringstream ckpt;
  opt.save(ckpt);
  const vec w5 = r.m.weights();
  trajectory a;
  for (int s = 0; s < 6; ++s) {
    opt.step(obj);
    a.push_back(r.m.weights());
  }
  // a second optimizer resumed from step 5 over the same weights
  r.m.set_weights(w5);
  auto again = flatmin::fsam<B>(r.m.params, flatmin::base::sgd{.lr = lr}, flatmin::official, o);
  again.load(ckpt);
  for (int s = 0; s < 6; ++s) {
    const auto rep = again.step(obj);
    CHECK((rep.perturbation_norm == 0.0) == (s == 1 || s == 4));  // steps 7 and 10 refresh
    CHECK(r.m.weights() == a[static_cast<std::size_t>(s)]);
  }
}
