// mask::dynamic (SSAM-D) against a float64 reference written here: the random start of
// N − ⌈N·s⌉ units, drop by |g| and growth among the previously inactive with the cosine death
// rate, with the official code's counts and timing (Mi-Peng/Sparse-Sharpness-Aware-Minimization,
// solver/sam.py at 2d17866, class SSAMD: init_mask's live_num, update_mask's death_num and the
// top-k of the death scores, and step(), which refreshes after first_step at batch 0 of every
// update epoch), at element and block granularity. The reference draws its random numbers from
// the same counter hash (kernels::counter_hash(seed, step, unit)): the draws are part of the
// mask's definition.
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
    for (std::size_t total : {std::size_t{0}, std::size_t{8}}) {
      CAPTURE(bs);
      CAPTURE(total);
      model m({37, 5, 50, 7, 61});
      const block_units U(m, bs);
      const double s = 0.6, dr0 = 0.5;
      const std::size_t every = 2;
      const std::uint64_t seed = 42;
      dyn_opt<B> opt(m.ps, {.base = flatmin::base::sgd{.lr = 0.01},
                            .mask = flatmin::mask::dynamic{.sparsity = s,
                                                           .death_rate = dr0,
                                                           .refresh_every = every,
                                                           .total_steps = total,
                                                           .block = bs,
                                                           .seed = seed}});
      std::size_t n = 0;
      std::vector<std::pair<double, std::size_t>> cand;
      for (std::size_t u = 0; u < U.size(); ++u)
        if (m.eligible(U.tensor[u])) {
          ++n;
          cand.push_back({draw(seed, 0, u), u});
        }
      const double nd = static_cast<double>(n);
      std::set<std::size_t> active = top_k_ref(cand, n - static_cast<std::size_t>(std::ceil(nd * s)));
      for (std::size_t step = 1; step <= 10; ++step) {
        CAPTURE(step);
        const auto G = m.random_g();
        std::set<std::size_t> want;  // the ascent uses the mask before this step's refresh
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
        if ((step - 1) % every == 0) {  // refreshed after the ascent, from g at w
          const double x = total ? std::min(1.0, static_cast<double>(step - 1) / static_cast<double>(total)) : 0.0;
          const double dr = dr0 * (1 + std::cos(std::numbers::pi * x)) / 2;
          const double nominal = nd - nd * s;
          const auto kept_n = static_cast<std::size_t>(nominal * (1 - dr));
          const auto grow_n = static_cast<std::size_t>(std::min(nominal * dr, nd * s));
          const std::size_t kept = std::min(kept_n, active.size());
          const std::size_t grow = std::min(grow_n + kept_n - kept, n - active.size());
          std::vector<std::pair<double, std::size_t>> on, off;
          for (std::size_t u = 0; u < U.size(); ++u) {
            if (!m.eligible(U.tensor[u])) continue;
            double sc = 0;
            for (std::size_t j = 0; j < U.len[u]; ++j) sc += std::abs(G[U.start[u] + j]);
            if (active.count(u)) on.push_back({sc, u});
            else off.push_back({draw(seed, step, u), u});
          }
          auto next = top_k_ref(on, kept);
          const auto grown = top_k_ref(off, grow);
          next.insert(grown.begin(), grown.end());
          active = next;
        }
      }
    }
  }
}

TEST_CASE_TEMPLATE("dynamic: the active count is the official code's over 20 refreshes", B, FLATMIN_TEST_BACKENDS) {
  // The official count, re-derived with its arithmetic (Python floats are IEEE doubles):
  //   init_mask:   live_num = L - ceil(L * s)
  //   update_mask: kept = int((L - L*s) * (1 - dr)); death_num = int(min((L - L*s) * dr, L*s))
  //                mask = top-kept of the death scores + death_num grown: kept + death_num units
  //   dr = drop_rate * (1 + cos(pi * epoch / T_end)) / 2, refreshed after the ascent of batch 0
  for (const std::size_t L : {std::size_t{195}, std::size_t{1003}}) {
    for (const double s : {0.2, 0.5, 0.9}) {
      for (const std::size_t total : {std::size_t{0}, std::size_t{40}}) {
        CAPTURE(L);
        CAPTURE(s);
        CAPTURE(total);
        model m({L}, 3);
        const std::size_t every = 2;
        dyn_opt<B> opt(
            m.ps,
            {.base = flatmin::base::sgd{.lr = 0.01},
             .mask = flatmin::mask::dynamic{
                 .sparsity = s, .death_rate = 0.5, .refresh_every = every, .total_steps = total, .seed = 9}});
        const double l = static_cast<double>(L);
        std::size_t want = L - static_cast<std::size_t>(std::ceil(l * s));
        CHECK(opt.mask_count(0) == want);
        for (std::size_t step = 1; step <= 20 * every; ++step) {
          m.set_g(m.random_g());
          opt.ascend();
          m.set_g(m.random_g());
          opt.descend();
          if ((step - 1) % every == 0) {
            const double epoch = static_cast<double>(step - 1), t_end = static_cast<double>(total);
            const double dr = total ? 0.5 * (1 + std::cos(std::numbers::pi * std::min(1.0, epoch / t_end))) / 2 : 0.5;
            want = static_cast<std::size_t>((l - l * s) * (1 - dr)) +
                   static_cast<std::size_t>(std::min((l - l * s) * dr, l * s));
          }
          CAPTURE(step);
          CHECK(opt.mask_count(0) == want);
          CHECK(opt.mask_state().active() == want);
        }
        if (L == 195 && s == 0.2 && total == 0) CHECK(want == 117);  // the hand count: 78 + 39
      }
    }
  }
}

TEST_CASE_TEMPLATE("dynamic: constant counts keep N - ceil(N s) active", B, FLATMIN_TEST_BACKENDS) {
  for (const double s : {0.2, 0.5, 0.9}) {
    CAPTURE(s);
    model m({195}, 3);
    dyn_opt<B> opt(m.ps, {.base = flatmin::base::sgd{.lr = 0.01},
                          .mask = flatmin::mask::dynamic{.sparsity = s,
                                                         .refresh_every = 1,
                                                         .total_steps = 12,
                                                         .seed = 9,
                                                         .counts = flatmin::mask::dynamic_counts::constant}});
    const std::size_t want = 195 - static_cast<std::size_t>(std::ceil(195.0 * s));
    auto before = opt.mask_bytes(0);
    std::size_t changes = 0;
    for (int step = 1; step <= 12; ++step) {
      m.set_g(m.random_g());
      opt.ascend();
      m.set_g(m.random_g());
      opt.descend();
      CHECK(opt.mask_count(0) == want);
      changes += opt.mask_bytes(0) != before;
      before = opt.mask_bytes(0);
    }
    CHECK(changes >= 10);  // the mask does move (dr > 0 on all but the last refresh)
  }
}

TEST_CASE_TEMPLATE("dynamic: the same seed gives the same masks, another seed others", B, FLATMIN_TEST_BACKENDS) {
  model m1, m2, m3;
  auto make = [](model& m, std::uint64_t seed) {
    return dyn_opt<B>(m.ps, {.base = flatmin::base::sgd{.lr = 0.01},
                             .mask = flatmin::mask::dynamic{.refresh_every = 2, .seed = seed}});
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
