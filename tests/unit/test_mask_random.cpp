// mask::random (ESAM's stochastic weight perturbation): the keep rate over many steps within
// statistical bounds of β, the same seed → the same masks, the radius ρ/β with the norm over the
// kept subset (float64 reference), tensor / block / element units.
#include <doctest/doctest.h>

#include "support/backends.hpp"
#include "support/sparse_model.hpp"

using namespace sparse_test;

namespace {
template <class B>
using swp_opt = flatmin::sharpness_aware<double, B, flatmin::perturb::l2, flatmin::mask::random, flatmin::base::sgd>;
}

TEST_CASE_TEMPLATE("random: keep rate within 5 sigma of beta, eps = (rho/beta) g_S / |g_S|", B, FLATMIN_TEST_BACKENDS) {
  using flatmin::mask::granularity;
  for (auto unit : {granularity::element, granularity::block, granularity::tensor}) {
    CAPTURE(static_cast<int>(unit));
    std::vector<std::size_t> sizes;
    for (int t = 0; t < 24; ++t) sizes.push_back(20 + 3 * static_cast<std::size_t>(t));
    model m(sizes);
    const double beta = 0.3, rho = 0.1;
    swp_opt<B> opt(m.ps, {.base = flatmin::base::sgd{.lr = 0.01},
                          .perturb = flatmin::perturb::l2{.rho = rho},
                          .mask = flatmin::mask::random{.beta = beta, .unit = unit, .block = 8, .seed = 9}});
    const block_units U(m, unit == granularity::block ? 8 : 1);
    double units_seen = 0, units_kept = 0;
    const int steps = 300;
    for (int s = 0; s < steps; ++s) {
      const auto G = m.random_g();
      m.set_g(G);
      const auto w0 = m.flat_w();
      const auto r = opt.ascend();
      const auto w1 = m.flat_w();
      const auto moved = changed(w0, w1);
      // every unit is all in or all out; ineligible tensors always in
      std::set<std::size_t> kept;
      double n2 = 0;
      for (std::size_t i : moved) n2 += G[i] * G[i];
      if (unit == granularity::tensor) {
        for (std::size_t t = 0; t < sizes.size(); ++t) {
          if (!m.eligible(t)) continue;
          units_seen += 1;
          const bool in = moved.count(m.offset[t]) > 0;
          units_kept += in;
          for (std::size_t j = 0; j < sizes[t]; ++j) CHECK(moved.count(m.offset[t] + j) == (in ? 1u : 0u));
        }
      } else {
        for (std::size_t u = 0; u < U.size(); ++u) {
          if (!m.eligible(U.tensor[u])) continue;
          units_seen += 1;
          const bool in = moved.count(U.start[u]) > 0;
          units_kept += in;
          for (std::size_t j = 0; j < U.len[u]; ++j) CHECK(moved.count(U.start[u] + j) == (in ? 1u : 0u));
        }
      }
      for (std::size_t i = 0; i < G.size(); ++i) {
        const auto t = m.tensor_of(i);
        if (m.perturbed(t) && !m.eligible(t)) CHECK(moved.count(i) == 1u);
        if (!m.perturbed(t)) CHECK(moved.count(i) == 0u);
      }
      const double scale = rho / beta / (std::sqrt(n2) + 1e-12);
      for (std::size_t i : moved) CHECK(w1[i] == doctest::Approx(w0[i] + scale * G[i]).epsilon(1e-13));
      CHECK(r.perturbation_norm == doctest::Approx(rho / beta).epsilon(1e-9));
      m.set_g(m.random_g());
      opt.descend();
    }
    const double p = units_kept / units_seen;
    const double sigma = std::sqrt(beta * (1 - beta) / units_seen);
    MESSAGE("unit " << static_cast<int>(unit) << ": kept " << p << " over " << units_seen << " draws");
    CHECK(std::abs(p - beta) < 5 * sigma);
  }
}

TEST_CASE_TEMPLATE("random: the same seed gives the same masks on every run, another seed others", B,
                   FLATMIN_TEST_BACKENDS) {
  using flatmin::mask::granularity;
  for (auto unit : {granularity::element, granularity::block, granularity::tensor}) {
    std::vector<std::size_t> sizes(16, 40);
    model m1(sizes), m2(sizes), m3(sizes);
    auto make = [&](model& m, std::uint64_t seed) {
      return swp_opt<B>(m.ps, {.base = flatmin::base::sgd{.lr = 0.01},
                               .mask = flatmin::mask::random{.unit = unit, .block = 4, .seed = seed}});
    };
    auto a = make(m1, 1), b = make(m2, 1), c = make(m3, 2);
    int differ = 0;
    for (int s = 0; s < 5; ++s) {
      const auto G = m1.random_g();
      std::vector<std::set<std::size_t>> moved;
      for (auto [m, o] : {std::pair{&m1, &a}, std::pair{&m2, &b}, std::pair{&m3, &c}}) {
        m->set_g(G);
        const auto w0 = m->flat_w();
        o->ascend();
        moved.push_back(changed(w0, m->flat_w()));
        o->cancel();
      }
      CHECK(moved[0] == moved[1]);
      differ += moved[0] != moved[2];
    }
    CHECK(differ > 0);
  }
}

TEST_CASE("random: bad options name the option") {
  model m;
  using opt = swp_opt<flatmin::backend::eigen>;
  CHECK_THROWS_WITH_AS(
      opt(m.ps, {.base = flatmin::base::sgd{.lr = 0.1}, .mask = flatmin::mask::random{.beta = 0}}),
      doctest::Contains("beta"), std::invalid_argument);
}
