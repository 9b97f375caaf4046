// Every field of every named algorithm's option struct reaches the policy it stands for (its
// `compose()`, algorithms/), and each official preset starts from the official defaults and fixes
// what its header says. The expected values are the ones written into the options here (each one
// off every default, so that a field left out of the composition shows as its policy's default)
// and, for the presets, the values the algorithm headers cite from the official code.
#include <doctest/doctest.h>

#include <flatmin/flatmin.hpp>

#include <vector>

namespace {
using flatmin::nonfinite;
namespace mask = flatmin::mask;

constexpr nonfinite raise = nonfinite::raise;

/// A weight matrix, its bias and a second weight (sizes fit blocks of 4 and 8).
struct model {
  std::vector<double> w1 = std::vector<double>(64, 0.5), g1 = std::vector<double>(64, 0.0);
  std::vector<double> b1 = std::vector<double>(8, 0.1), gb1 = std::vector<double>(8, 0.0);
  std::vector<double> w2 = std::vector<double>(32, -0.5), g2 = std::vector<double>(32, 0.0);
  flatmin::param_set<double> ps;
  model() {
    ps.add("fc1.weight", w1, g1);
    ps.add("fc1.bias", b1, gb1);  // adaptive by its flag: only a name rule leaves it unscaled
    ps.add("fc2.weight", w2, g2);
  }
};

bool scaled(const auto& opt, std::size_t t) {
  return (opt.layout().host_tensors()[t].flags & flatmin::tensor_flags::adaptive) != 0;
}

const flatmin::base::sgd sgd{.lr = 0.25, .momentum = 0.5};
const flatmin::base::adam adam{.lr = 0.125};
}  // namespace

TEST_CASE("algorithm options: SAM, its official preset and schedule, and the radius-only algorithms") {
  model m;
  auto check = [](auto& opt) {
    CHECK(opt.base().lr == 0.25);
    CHECK(opt.base().momentum == 0.5);
    CHECK(opt.perturbation().rho == 0.3);
    CHECK(opt.perturbation().xi == 1e-3);
    CHECK(opt.options().on_nonfinite == raise);
  };
  const flatmin::sam_options o{.rho = 0.3, .xi = 1e-3, .on_nonfinite = raise};
  auto a = flatmin::sam(m.ps, sgd, o);
  check(a);
  auto b = flatmin::sam(m.ps, sgd, flatmin::official, {.rho = 0.3, .xi = 1e-3, .on_nonfinite = raise});
  check(b);
  auto c = flatmin::sam(m.ps, sgd, flatmin::schedule::every_k{.k = 3, .first = 2}, o);
  check(c);
  CHECK(c.schedule().k == 3);
  CHECK(c.schedule().first == 2);
  auto f = flatmin::functional_sam(m.ps, sgd, o);
  check(f);
  auto p = flatmin::preconditioned_sam(m.ps, adam, o);
  CHECK(p.base().lr == 0.125);
  CHECK(p.perturbation().rho == 0.3);
  CHECK(p.perturbation().xi == 1e-3);
  CHECK(p.options().on_nonfinite == raise);
  auto pf = flatmin::preconditioned_functional_sam(m.ps, adam, o);
  CHECK(pf.perturbation().rho == 0.3);
  CHECK(pf.perturbation().xi == 1e-3);
  CHECK(pf.options().on_nonfinite == raise);
  // Defaults: ρ = 0.05, ξ = 1e-12 (sam.hpp; davda54/sam sam.py at 87a9604, lines 19 and 24).
  auto d = flatmin::sam(m.ps, sgd, flatmin::official);
  CHECK(d.perturbation().rho == 0.05);
  CHECK(d.perturbation().xi == 1e-12);
  CHECK(d.options().on_nonfinite == nonfinite::skip);
}

TEST_CASE("algorithm options: ASAM, its SamsungLabs and davda54 presets") {
  model m;
  auto a =
      flatmin::asam(m.ps, sgd, {.rho = 0.3, .eta = 0.2, .xi = 1e-3, .by_name = true, .on_nonfinite = raise});
  CHECK(a.base().lr == 0.25);
  CHECK(a.perturbation().rho == 0.3);
  CHECK(a.perturbation().eta == 0.2);
  CHECK(a.perturbation().xi == 1e-3);
  CHECK(a.options().on_nonfinite == raise);
  CHECK(scaled(a, 0));
  CHECK_FALSE(scaled(a, 1));
  CHECK(scaled(a, 2));
  // by_name off (the library default): the bias's own flag (adaptive) decides
  auto l = flatmin::asam(m.ps, sgd);
  CHECK(l.perturbation().xi == 1e-12);
  CHECK(scaled(l, 1));

  // SamsungLabs/ASAM asam.py at dc9b513: ρ = 0.5, η = 0.01 (line 5), ξ = 1e-16 (line 27), only
  // tensors named "weight" scaled (line 22).
  auto o = flatmin::asam(m.ps, sgd, flatmin::official);
  CHECK(o.perturbation().rho == 0.5);
  CHECK(o.perturbation().eta == 0.01);
  CHECK(o.perturbation().xi == 1e-16);
  CHECK(scaled(o, 0));
  CHECK_FALSE(scaled(o, 1));
  auto on = flatmin::asam(m.ps, sgd, flatmin::official,
                          {.rho = 0.3, .eta = 0.2, .xi = 1e-3, .by_name = false, .on_nonfinite = raise});
  CHECK(on.perturbation().rho == 0.3);
  CHECK(on.perturbation().eta == 0.2);
  CHECK(on.perturbation().xi == 1e-3);
  CHECK(on.options().on_nonfinite == raise);
  CHECK(scaled(on, 1));  // by_name = false: the bias's flag

  // davda54/sam sam.py at 87a9604, adaptive = True: η = 0, every tensor scaled (lines 24, 53)
  auto dv = flatmin::asam(m.ps, sgd, flatmin::official,
                          flatmin::asam_davda54_options{.rho = 0.3, .xi = 1e-3, .on_nonfinite = raise});
  CHECK(dv.perturbation().rho == 0.3);
  CHECK(dv.perturbation().eta == 0.0);
  CHECK(dv.perturbation().xi == 1e-3);
  CHECK(dv.options().on_nonfinite == raise);
  for (std::size_t t = 0; t < 3; ++t) CHECK(scaled(dv, t));
  auto dd = flatmin::asam(m.ps, sgd, flatmin::official, flatmin::asam_davda54_options{});
  CHECK(dd.perturbation().rho == 2.0);
  CHECK(dd.perturbation().xi == 1e-12);
}

TEST_CASE("algorithm options: FSAM and its official preset") {
  model m;
  auto check = [](auto& opt, mask::fisher_estimator source, bool unperturbed) {
    CHECK(opt.base().lr == 0.25);
    CHECK(opt.perturbation().rho == 0.3);
    CHECK(opt.perturbation().xi == 1e-3);
    CHECK(opt.mask().keep == 0.4);
    CHECK(opt.mask().refresh_every == 7);
    CHECK(opt.mask().block == 4);
    CHECK(opt.mask().source == source);
    CHECK(opt.mask().unperturbed_refresh == unperturbed);
    CHECK(opt.options().on_nonfinite == raise);
  };
  auto a = flatmin::fsam(m.ps, sgd,
                         {.rho = 0.3,
                          .xi = 1e-3,
                          .keep = 0.4,
                          .refresh_every = 7,
                          .block = 4,
                          .source = mask::fisher_estimator::current_batch,
                          .on_nonfinite = raise});
  check(a, mask::fisher_estimator::current_batch, false);
  auto o = flatmin::fsam(m.ps, sgd, flatmin::official,
                         {.rho = 0.3,
                          .xi = 1e-3,
                          .keep = 0.4,
                          .refresh_every = 7,
                          .block = 4,
                          .source = mask::fisher_estimator::accumulated,
                          .on_nonfinite = raise});
  check(o, mask::fisher_estimator::accumulated, true);
  // WHU-ZQH/FSAM4PLM at 77d5b3b (fsam.hpp): ξ = 1e-7, the current-batch estimate, unperturbed
  // refresh steps, keep = 0.1, T_m = 100.
  auto d = flatmin::fsam(m.ps, sgd, flatmin::official);
  CHECK(d.perturbation().xi == 1e-7);
  CHECK(d.mask().source == mask::fisher_estimator::current_batch);
  CHECK(d.mask().unperturbed_refresh);
  CHECK(d.mask().keep == 0.1);
  CHECK(d.mask().refresh_every == 100);
  auto l = flatmin::fsam(m.ps, sgd);
  CHECK(l.perturbation().xi == 1e-12);
  CHECK(l.mask().source == mask::fisher_estimator::accumulated);
  CHECK_FALSE(l.mask().unperturbed_refresh);
}

TEST_CASE("algorithm options: ESAM and its official preset") {
  model m;
  auto check = [](auto& opt, bool strict) {
    CHECK(opt.base().lr == 0.25);
    CHECK(opt.perturbation().rho == 0.3);
    CHECK(opt.perturbation().xi == 1e-3);
    CHECK(opt.mask().beta == 0.75);
    CHECK(opt.descent().gamma == 0.625);
    CHECK(opt.descent().strict_cutoff == strict);
    CHECK(opt.mask().unit == mask::granularity::block);
    CHECK(opt.mask().block == 8);
    CHECK(opt.mask().seed == 11);
    CHECK(opt.options().on_nonfinite == raise);
  };
  auto a = flatmin::esam(m.ps, sgd,
                         {.rho = 0.3,
                          .xi = 1e-3,
                          .beta = 0.75,
                          .gamma = 0.625,
                          .unit = mask::granularity::block,
                          .block = 8,
                          .seed = 11,
                          .on_nonfinite = raise});
  check(a, false);
  auto o = flatmin::esam(m.ps, sgd, flatmin::official,
                         {.rho = 0.3,
                          .xi = 1e-3,
                          .beta = 0.75,
                          .gamma = 0.625,
                          .unit = mask::granularity::block,
                          .block = 8,
                          .seed = 11,
                          .on_nonfinite = raise});
  check(o, true);
  // dydjw9/Efficient_SAM utils/Esam.py at 4c84cf5: ξ = 1e-7 (line 26), the strict cutoff (97–104)
  auto d = flatmin::esam(m.ps, sgd, flatmin::official);
  CHECK(d.perturbation().xi == 1e-7);
  CHECK(d.descent().strict_cutoff);
  auto l = flatmin::esam(m.ps, sgd);
  CHECK(l.perturbation().xi == 1e-12);
  CHECK_FALSE(l.descent().strict_cutoff);
}

TEST_CASE("algorithm options: SSAM-F, SSAM-D and their official presets") {
  model m;
  const flatmin::ssam_f_options f{.rho = 0.3,
                                  .xi = 1e-3,
                                  .sparsity = 0.75,
                                  .examples = 5,
                                  .refresh_every = 9,
                                  .block = 8,
                                  .empty_start = true,
                                  .schedule = mask::fisher_schedule::ssam_official,
                                  .on_nonfinite = raise};
  auto a = flatmin::ssam_f(m.ps, sgd, f);
  CHECK(a.base().lr == 0.25);
  CHECK(a.perturbation().rho == 0.3);
  CHECK(a.perturbation().xi == 1e-3);
  CHECK(a.mask().keep == 0.25);  // 1 − s
  CHECK(a.mask().source == mask::fisher_estimator::per_example);
  CHECK(a.mask().examples == 5);
  CHECK(a.mask().refresh_every == 9);
  CHECK(a.mask().block == 8);
  CHECK(a.mask().empty_start);
  CHECK(a.mask().schedule == mask::fisher_schedule::ssam_official);
  CHECK(a.options().on_nonfinite == raise);
  // The official preset imposes ξ = 1e-7 (solver/sam.py) and the official timing, keeps the rest.
  flatmin::ssam_f_options g = f;
  g.schedule = mask::fisher_schedule::library;
  auto o = flatmin::ssam_f(m.ps, sgd, flatmin::official, g);
  CHECK(o.perturbation().rho == 0.3);
  CHECK(o.perturbation().xi == 1e-7);
  CHECK(o.mask().keep == 0.25);
  CHECK(o.mask().examples == 5);
  CHECK(o.mask().schedule == mask::fisher_schedule::ssam_official);
  CHECK(o.options().on_nonfinite == raise);

  const flatmin::ssam_d_options d{.rho = 0.3,
                                  .xi = 1e-3,
                                  .sparsity = 0.75,
                                  .death_rate = 0.25,
                                  .refresh_every = 9,
                                  .total_steps = 90,
                                  .block = 8,
                                  .seed = 13,
                                  .counts = mask::dynamic_counts::constant,
                                  .on_nonfinite = raise};
  auto b = flatmin::ssam_d(m.ps, sgd, d);
  CHECK(b.base().lr == 0.25);
  CHECK(b.perturbation().rho == 0.3);
  CHECK(b.perturbation().xi == 1e-3);
  CHECK(b.mask().sparsity == 0.75);
  CHECK(b.mask().death_rate == 0.25);
  CHECK(b.mask().refresh_every == 9);
  CHECK(b.mask().total_steps == 90);
  CHECK(b.mask().block == 8);
  CHECK(b.mask().seed == 13);
  CHECK(b.mask().counts == mask::dynamic_counts::constant);
  CHECK(b.options().on_nonfinite == raise);
  auto od = flatmin::ssam_d(m.ps, sgd, flatmin::official, d);
  CHECK(od.perturbation().xi == 1e-7);
  CHECK(od.mask().counts == mask::dynamic_counts::official);
  CHECK(od.mask().sparsity == 0.75);
  CHECK(od.mask().seed == 13);
}

TEST_CASE("algorithm options: BAR and the plain base optimizers") {
  model m;
  auto b = flatmin::bar(m.ps, sgd,
                        {.rho = 0.3,
                         .alpha = 0.5,
                         .xi = 1e-3,
                         .alpha_schedule = [](std::size_t t) { return 1.0 / static_cast<double>(t); },
                         .on_nonfinite = raise});
  CHECK(b.base().lr == 0.25);
  CHECK(b.regularizer().rho == 0.3);
  CHECK(b.regularizer().alpha == 0.5);
  CHECK(b.regularizer().xi == 1e-3);
  CHECK(b.regularizer().alpha_at(4) == 0.125);  // α · schedule(4) = 0.5 / 4
  CHECK(b.options().on_nonfinite == raise);

  auto s = flatmin::sgd(m.ps, {.lr = 0.25, .momentum = 0.5}, {.on_nonfinite = raise});
  CHECK(s.base().lr == 0.25);
  CHECK(s.base().momentum == 0.5);
  CHECK(s.options().on_nonfinite == raise);
  auto w = flatmin::adamw(m.ps, {.lr = 0.125}, {.on_nonfinite = raise});
  CHECK(w.base().lr == 0.125);
  CHECK(w.options().on_nonfinite == raise);
}

TEST_CASE("composition: a direct user names each policy's options") {
  model m;
  using opt_t = flatmin::sharpness_aware<double, flatmin::default_backend, flatmin::perturb::l2, mask::fisher,
                                         flatmin::base::sgd>;
  opt_t opt(m.ps, {.base = {.lr = 0.25}, .perturb = {.rho = 0.3}, .mask = {.keep = 0.4, .block = 8}});
  CHECK(opt.base().lr == 0.25);
  CHECK(opt.perturbation().rho == 0.3);
  CHECK(opt.perturbation().xi == 1e-12);  // perturb::l2's default
  CHECK(opt.mask().keep == 0.4);
  CHECK(opt.mask().block == 8);
  CHECK(opt.options().on_nonfinite == nonfinite::skip);
  // A bad option anywhere in the aggregate throws std::invalid_argument naming it.
  CHECK_THROWS_WITH_AS(opt_t(m.ps, {.base = {.lr = 0.25}, .mask = {.keep = 2.0}}), doctest::Contains("keep"),
                       std::invalid_argument);
  const auto bad = static_cast<nonfinite>(5);
  CHECK_THROWS_WITH_AS(opt_t(m.ps, {.base = {.lr = 0.25}, .options = {.on_nonfinite = bad}}),
                       doctest::Contains("on_nonfinite"), std::invalid_argument);
}

TEST_CASE("composition: README's Fisher-masked preconditioned SAM over AdamW") {
  std::vector<float> w(256, 0.5f), g(256, 0.0f);
  flatmin::param_set<float> params;
  params.add("w", w, g);
  using opt_t = flatmin::sharpness_aware<float, flatmin::default_backend, flatmin::perturb::preconditioned,
                                         flatmin::mask::fisher, flatmin::base::adamw>;
  opt_t opt(params, {.base = {.lr = 3e-4}, .perturb = {.rho = 0.05}, .mask = {.keep = 0.1, .block = 128}});
  CHECK(opt.base().lr == 3e-4);
  CHECK(opt.perturbation().rho == 0.05);
  CHECK(opt.mask().keep == 0.1);
  CHECK(opt.mask().block == 128);
}
