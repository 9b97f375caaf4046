// mask::dynamic (SSAM-D) against a float64 reference written here: the random start of exactly
// ⌈keep·N⌉ units, drop by |g| and growth among the previously inactive with the cosine death rate,
// at element and block granularity. The reference draws its random numbers from the same counter
// hash (kernels::counter_hash(seed, step, unit)): the draws are part of the mask's definition.
#include <doctest/doctest.h>

#include <numbers>

#include "support/backends.hpp"
#include "support/sparse_model.hpp"

using namespace sparse_test;

namespace {
template <class B>
using dyn_opt = flatmin::sharpness_aware<double, B, flatmin::perturb::l2, flatmin::mask::dynamic, flatmin::base::sgd>;

double draw(std::uint64_t seed, std::uint64_t step, std::size_t u) {
  return static_cast<double>(flatmin::kernels::counter_hash(seed, step, u) >> 32);
}
}  // namespace

TEST_CASE_TEMPLATE("dynamic: random start, drop by |g|, random growth, cosine death rate", B, FLATMIN_TEST_BACKENDS) {
  for (std::size_t bs : {std::size_t{1}, std::size_t{8}}) {
    CAPTURE(bs);
    model m({37, 5, 50, 7, 61});
    const block_units U(m, bs);
    const double keep = 0.4, dr0 = 0.5;
    const std::size_t every = 2, total = 8;
    const std::uint64_t seed = 42;
    dyn_opt<B> opt(m.ps, flatmin::base::sgd{.lr = 0.01}, {},
                   flatmin::mask::dynamic{.keep = keep, .death_rate = dr0, .refresh_every = every,
                                          .total_steps = total, .block = bs, .seed = seed});
    std::size_t n = 0;
    std::vector<std::pair<double, std::size_t>> cand;
    for (std::size_t u = 0; u < U.size(); ++u)
      if (m.eligible(U.tensor[u])) {
        ++n;
        cand.push_back({draw(seed, 0, u), u});
      }
    std::set<std::size_t> active = top_k_ref(cand, static_cast<std::size_t>(std::ceil(keep * static_cast<double>(n))));
    for (std::size_t step = 1; step <= 10; ++step) {
      CAPTURE(step);
      const auto G = m.random_g();
      if (step > 1 && (step - 1) % every == 0) {
        const double x = std::min(1.0, static_cast<double>(step) / static_cast<double>(total));
        const double dr = dr0 * (1 + std::cos(std::numbers::pi * x)) / 2;
        const double a = static_cast<double>(active.size());
        std::vector<std::pair<double, std::size_t>> on, off;
        for (std::size_t u = 0; u < U.size(); ++u) {
          if (!m.eligible(U.tensor[u])) continue;
          double s = 0;
          for (std::size_t j = 0; j < U.len[u]; ++j) s += std::abs(G[U.start[u] + j]);
          if (active.count(u)) on.push_back({s, u});
          else off.push_back({draw(seed, step, u), u});
        }
        auto next = top_k_ref(on, static_cast<std::size_t>(std::floor(a * (1 - dr))));
        const auto grown = top_k_ref(off, static_cast<std::size_t>(std::floor(std::min(a * dr, static_cast<double>(n) * (1 - keep)))));
        next.insert(grown.begin(), grown.end());
        active = next;
      }
      std::set<std::size_t> want;
      for (std::size_t u = 0; u < U.size(); ++u)
        if (m.perturbed(U.tensor[u]) && (!m.eligible(U.tensor[u]) || active.count(u)))
          for (std::size_t j = 0; j < U.len[u]; ++j) want.insert(U.start[u] + j);
      m.set_g(G);
      const auto w0 = m.flat_w();
      opt.ascend();
      CHECK(changed(w0, m.flat_w()) == want);
      CHECK(opt.mask_state().active() == active.size());
      m.set_g(m.random_g());
      opt.descend();
    }
  }
}

TEST_CASE_TEMPLATE("dynamic: the same seed gives the same masks, another seed others", B, FLATMIN_TEST_BACKENDS) {
  model m1, m2, m3;
  auto make = [](model& m, std::uint64_t seed) {
    return dyn_opt<B>(m.ps, flatmin::base::sgd{.lr = 0.01}, {}, flatmin::mask::dynamic{.refresh_every = 2, .seed = seed});
  };
  auto a = make(m1, 5), b = make(m2, 5), c = make(m3, 6);
  for (int s = 0; s < 6; ++s) {
    const auto G = m1.random_g();
    for (auto* m : {&m1, &m2, &m3}) m->set_g(G);
    a.ascend(), b.ascend(), c.ascend();
    a.descend(), b.descend(), c.descend();
    CHECK(a.mask_state().host_bits() == b.mask_state().host_bits());
    CHECK(a.mask_state().host_bits() != c.mask_state().host_bits());
  }
}
