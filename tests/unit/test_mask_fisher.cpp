// mask::fisher (FSAM, SSAM-F) against float64 references written here: the exact selected set
// (random scores, ties, keep boundaries), ε with the full-gradient norm, refresh timing and
// accumulation, block masks, per-example estimates, the exact restore and the state's size.
#include <doctest/doctest.h>

#include "support/backends.hpp"
#include "support/sparse_model.hpp"

#include <sstream>

using namespace sparse_test;

namespace {
template <class B>
using fisher_opt = flatmin::sharpness_aware<double, B, flatmin::perturb::l2, flatmin::mask::fisher, flatmin::base::sgd>;

/// Element candidates: (score, global index) over eligible tensors.
std::vector<std::pair<double, std::size_t>> element_candidates(const model& m, const std::vector<double>& F) {
  std::vector<std::pair<double, std::size_t>> c;
  for (std::size_t i = 0; i < m.numel(); ++i)
    if (m.eligible(m.tensor_of(i))) c.push_back({F[i], i});
  return c;
}
std::set<std::size_t> dense_part(const model& m) {
  std::set<std::size_t> s;
  for (std::size_t i = 0; i < m.numel(); ++i) {
    const auto t = m.tensor_of(i);
    if (m.perturbed(t) && !m.eligible(t)) s.insert(i);
  }
  return s;
}
std::size_t eligible_count(const model& m) {
  std::size_t n = 0;
  for (std::size_t t = 0; t < m.sizes.size(); ++t)
    if (m.eligible(t)) n += m.sizes[t];
  return n;
}
std::size_t perturbable_count(const model& m) {
  std::size_t n = 0;
  for (std::size_t t = 0; t < m.sizes.size(); ++t)
    if (m.perturbed(t)) n += m.sizes[t];
  return n;
}
std::set<std::size_t> unite(std::set<std::size_t> a, const std::set<std::size_t>& b) {
  a.insert(b.begin(), b.end());
  return a;
}
}  // namespace

TEST_CASE_TEMPLATE("fisher: first step selects the top-k of g^2, eps uses the full norm, restore is exact", B,
                   FLATMIN_TEST_BACKENDS) {
  for (double keep : {0.0, 0.1, 0.37, 0.5, 1.0}) {
    CAPTURE(keep);
    model m;
    const double rho = 0.2, lr = 0.05;
    fisher_opt<B> opt(m.ps, {.base = flatmin::base::sgd{.lr = lr},
                             .perturb = flatmin::perturb::l2{.rho = rho},
                             .mask = flatmin::mask::fisher{.keep = keep, .refresh_every = 100}});
    const auto G = m.random_g();
    m.set_g(G);
    const auto w0 = m.flat_w();
    const auto r = opt.ascend();
    const auto w1 = m.flat_w();

    std::vector<double> F(G.size());
    for (std::size_t i = 0; i < G.size(); ++i) F[i] = G[i] * G[i];
    const std::size_t k = static_cast<std::size_t>(std::floor(keep * static_cast<double>(eligible_count(m))));
    const auto want = unite(top_k_ref(element_candidates(m, F), k), dense_part(m));
    CHECK(changed(w0, w1) == want);
    CHECK(r.mask_density == static_cast<double>(want.size()) / static_cast<double>(perturbable_count(m)));

    double n2 = 0;  // ‖g‖ over every perturbed tensor, masked or not
    for (std::size_t i = 0; i < G.size(); ++i)
      if (m.perturbed(m.tensor_of(i))) n2 += G[i] * G[i];
    const double scale = rho / (std::sqrt(n2) + 1e-12);
    for (std::size_t i : want) CHECK(w1[i] == doctest::Approx(w0[i] + scale * G[i]).epsilon(1e-13));

    const auto Gadv = m.random_g();
    m.set_g(Gadv);
    opt.descend();
    const auto w2 = m.flat_w();
    for (std::size_t i = 0; i < G.size(); ++i) CHECK(w2[i] == doctest::Approx(w0[i] - lr * Gadv[i]).epsilon(1e-14));
  }
}

TEST_CASE_TEMPLATE("fisher: ties go to the lower index, exactly k at every boundary", B, FLATMIN_TEST_BACKENDS) {
  model m({64, 3, 64, 2});
  std::vector<double> G(m.numel());
  std::mt19937 rng(3);
  for (auto& x : G) x = (rng() % 2 ? 1.0 : -1.0) * static_cast<double>(1 + rng() % 3);  // |g| in {1,2,3}
  const std::size_t n = eligible_count(m);
  std::vector<double> F(G.size());
  for (std::size_t i = 0; i < G.size(); ++i) F[i] = G[i] * G[i];
  std::size_t big = 0;  // entries with the largest score
  for (auto& c : element_candidates(m, F)) big += c.first == 9.0;
  for (std::size_t k : {std::size_t{0}, std::size_t{1}, big - 1, big, big + 1, n / 2, n - 1, n}) {
    CAPTURE(k);
    const double keep = (static_cast<double>(k) + 0.5) / static_cast<double>(n);
    fisher_opt<B> opt(m.ps, {.base = flatmin::base::sgd{.lr = 0.1},
                             .mask = flatmin::mask::fisher{.keep = std::min(keep, 1.0)}});
    m.set_g(G);
    const auto w0 = m.flat_w();
    opt.ascend();
    const auto got = changed(w0, m.flat_w());
    opt.cancel();
    CHECK(m.flat_w() == w0);
    const auto want = unite(top_k_ref(element_candidates(m, F), k), dense_part(m));
    CHECK(got == want);
  }
  SUBCASE("all scores equal") {
    std::vector<double> E(m.numel(), 0.5);
    fisher_opt<B> opt(m.ps,
                      {.base = flatmin::base::sgd{.lr = 0.1}, .mask = flatmin::mask::fisher{.keep = 0.3}});
    m.set_g(E);
    const auto w0 = m.flat_w();
    opt.ascend();
    const auto got = changed(w0, m.flat_w());
    opt.cancel();
    std::vector<double> F2(E.size(), 0.25);
    CHECK(got == unite(top_k_ref(element_candidates(m, F2), static_cast<std::size_t>(0.3 * n)), dense_part(m)));
  }
}

TEST_CASE_TEMPLATE("fisher: refresh timing, accumulation since the last refresh, non-zero refresh steps", B,
                   FLATMIN_TEST_BACKENDS) {
  using est = flatmin::mask::fisher_estimator;
  for (int mode = 0; mode < 3; ++mode) {  // accumulated, current batch, accumulated + empty start
    CAPTURE(mode);
    model m;
    const std::size_t T = 3;
    flatmin::mask::fisher opts{.keep = 0.2, .refresh_every = T};
    if (mode == 1) opts.source = est::current_batch;
    if (mode == 2) opts.empty_start = true;
    fisher_opt<B> opt(m.ps, {.base = flatmin::base::sgd{.lr = 0.01}, .mask = opts});
    const std::size_t k = static_cast<std::size_t>(std::floor(0.2 * static_cast<double>(eligible_count(m))));
    std::vector<double> F(m.numel(), 0.0);
    std::set<std::size_t> mask;  // eligible part
    for (std::size_t step = 1; step <= 11; ++step) {
      CAPTURE(step);
      const auto G = m.random_g();
      const bool refresh = mode == 2 ? (step > 1 && (step - 1) % T == 0) : (step == 1 || (step - 1) % T == 0);
      for (std::size_t i = 0; i < G.size(); ++i) F[i] = (mode == 1 ? 0.0 : F[i]) + G[i] * G[i];
      if (refresh) {
        mask = top_k_ref(element_candidates(m, F), k);
        std::fill(F.begin(), F.end(), 0.0);
      }
      m.set_g(G);
      const auto w0 = m.flat_w();
      const auto r = opt.ascend();
      CHECK(changed(w0, m.flat_w()) == unite(mask, dense_part(m)));
      if (refresh) CHECK(r.perturbation_norm > 0);
      m.set_g(m.random_g());
      opt.descend();
    }
  }
}

TEST_CASE_TEMPLATE("fisher: a block mask equals the element mask of the block scores", B, FLATMIN_TEST_BACKENDS) {
  for (std::size_t bs : {std::size_t{4}, std::size_t{16}}) {
    for (double keep : {0.0, 0.25, 0.5, 1.0}) {
      CAPTURE(bs);
      CAPTURE(keep);
      model m({37, 5, 50, 7, 33});
      const double lr = 0.1;
      fisher_opt<B> opt(m.ps, {.base = flatmin::base::sgd{.lr = lr},
                               .mask = flatmin::mask::fisher{.keep = keep, .refresh_every = 2, .block = bs}});
      const block_units U(m, bs);
      std::vector<double> S(U.size(), 0.0);
      std::set<std::size_t> mask;
      for (std::size_t step = 1; step <= 4; ++step) {
        const auto G = m.random_g();
        std::vector<std::pair<double, std::size_t>> cand;
        std::size_t neligible = 0;
        for (std::size_t u = 0; u < U.size(); ++u) {
          double s = 0;
          for (std::size_t j = 0; j < U.len[u]; ++j) s += G[U.start[u] + j] * G[U.start[u] + j];
          S[u] += s;
          if (m.eligible(U.tensor[u])) {
            cand.push_back({S[u], u});
            ++neligible;
          }
        }
        if (step == 1 || (step - 1) % 2 == 0) {
          mask.clear();
          for (std::size_t u : top_k_ref(cand, static_cast<std::size_t>(std::floor(keep * static_cast<double>(neligible)))))
            for (std::size_t j = 0; j < U.len[u]; ++j) mask.insert(U.start[u] + j);
          std::fill(S.begin(), S.end(), 0.0);
        }
        m.set_g(G);
        const auto w0 = m.flat_w();
        const auto r = opt.ascend();
        const auto want = unite(mask, dense_part(m));
        const auto w1 = m.flat_w();
        CHECK(changed(w0, w1) == want);
        CHECK(r.mask_density == static_cast<double>(want.size()) / static_cast<double>(perturbable_count(m)));
        // ε = ρ g / ‖g‖ with FSAM's norm over every perturbed entry, on the masked entries only;
        // its reported norm is over the masked entries (the compact range's sums)
        double n2 = 0, d2 = 0;
        for (std::size_t i = 0; i < G.size(); ++i)
          if (m.perturbed(m.tensor_of(i))) n2 += G[i] * G[i];
        for (std::size_t i : want) d2 += G[i] * G[i];
        const double scale = 0.05 / (std::sqrt(n2) + 1e-12);
        for (std::size_t i : want) CHECK(w1[i] == doctest::Approx(w0[i] + scale * G[i]).epsilon(1e-13));
        CHECK(r.perturbation_norm == doctest::Approx(scale * std::sqrt(d2)).epsilon(1e-12));
        const auto Gadv = m.random_g();
        m.set_g(Gadv);
        opt.descend();
        const auto w2 = m.flat_w();
        for (std::size_t i = 0; i < w2.size(); ++i) CHECK(w2[i] == doctest::Approx(w0[i] - lr * Gadv[i]).epsilon(1e-14));
      }
    }
  }
}

namespace {
/// An objective with per-example gradients (SSAM-F): example n's gradient is E[n], the batch's G.
struct example_obj {
  model& m;
  std::vector<std::vector<double>> E;
  std::vector<double> G;
  int example_calls = 0;
  double operator()() {
    m.set_g(G);
    return 1.0;
  }
  void example_gradient(std::size_t n) {
    ++example_calls;
    m.set_g(E[n]);
  }
};
}  // namespace

TEST_CASE_TEMPLATE("fisher: SSAM-F's per-example estimate, closure and two-call protocols", B, FLATMIN_TEST_BACKENDS) {
  model m;
  const std::size_t Ns = 3;
  example_obj obj{m, {}, m.random_g()};
  for (std::size_t n = 0; n < Ns; ++n) obj.E.push_back(m.random_g());
  std::vector<double> F(m.numel(), 0.0);
  for (auto& e : obj.E)
    for (std::size_t i = 0; i < F.size(); ++i) F[i] += e[i] * e[i];
  const std::size_t k = eligible_count(m) / 2;
  const auto want = top_k_ref(element_candidates(m, F), k);
  auto bits_set = [](const std::vector<std::uint32_t>& bits, std::size_t n) {
    std::set<std::size_t> s;
    for (std::size_t i = 0; i < n; ++i)
      if ((bits[i / 32] >> (i % 32)) & 1u) s.insert(i);
    return s;
  };

  auto opt = flatmin::ssam_f<B>(m.ps, flatmin::base::sgd{.lr = 0.01}, {.examples = Ns, .refresh_every = 10});
  static_assert(flatmin::example_objective<example_obj>);
  opt.step(obj);
  CHECK(obj.example_calls == static_cast<int>(Ns));
  CHECK(bits_set(opt.mask_state().host_bits(), m.numel()) == want);
  opt.step(obj);  // step 2: not a refresh step, no examples asked
  CHECK(obj.example_calls == static_cast<int>(Ns));

  // Two-call protocol: the caller feeds the examples while wants_examples() holds.
  model m2;
  auto opt2 = flatmin::ssam_f<B>(m2.ps, flatmin::base::sgd{.lr = 0.01}, {.examples = Ns, .refresh_every = 10});
  CHECK(opt2.mask_state().wants_examples(opt2.mask(), 1));
  for (std::size_t n = 0; n < Ns; ++n) {
    m2.set_g(obj.E[n]);
    opt2.mask_state().add_example(opt2.mask(), opt2.layout());
  }
  m2.set_g(obj.G);
  opt2.ascend();
  opt2.descend();
  CHECK(bits_set(opt2.mask_state().host_bits(), m2.numel()) == want);
}

TEST_CASE_TEMPLATE("fisher: a 90%-sparse block mask needs less than a third of dense SAM's extra state", B,
                   FLATMIN_TEST_BACKENDS) {
  const std::size_t n = 1 << 17;
  std::vector<float> w(n, 1.f), g(n, 0.5f), b(100, 0.f), gb(100, 0.f);
  flatmin::param_set<float> ps;
  ps.add("w", w, g);
  ps.add("b", b, gb, flatmin::tensor_options{.mask_eligible = false});
  auto dense = flatmin::sam<B>(ps, flatmin::base::sgd{.lr = 0.1});
  auto sparse = flatmin::fsam<B>(ps, flatmin::base::sgd{.lr = 0.1}, {.keep = 0.1, .block = 128});
  g[3] = 2.f;
  dense.ascend();
  dense.descend();
  sparse.ascend();
  sparse.descend();
  MESSAGE("extra state bytes: dense SAM " << dense.extra_state_bytes() << ", FSAM 90% blocks of 128 "
                                          << sparse.extra_state_bytes());
  CHECK(dense.extra_state_bytes() >= n * sizeof(float));
  CHECK(3 * sparse.extra_state_bytes() < dense.extra_state_bytes());
}

TEST_CASE("fisher: bad options name the option") {
  model m;
  using opt = fisher_opt<flatmin::backend::eigen>;
  CHECK_THROWS_WITH_AS(
      opt(m.ps, {.base = flatmin::base::sgd{.lr = 0.1}, .mask = flatmin::mask::fisher{.keep = 1.5}}),
      doctest::Contains("keep"), std::invalid_argument);
  CHECK_THROWS_WITH_AS(
      opt(m.ps, {.base = flatmin::base::sgd{.lr = 0.1}, .mask = flatmin::mask::fisher{.block = 3}}),
      doctest::Contains("block"), std::invalid_argument);
  CHECK_THROWS_WITH_AS(
      opt(m.ps, {.base = flatmin::base::sgd{.lr = 0.1}, .mask = flatmin::mask::fisher{.refresh_every = 0}}),
      doctest::Contains("refresh_every"), std::invalid_argument);
}

TEST_CASE_TEMPLATE("fisher, dynamic: save() and load() resume the masks exactly", B, FLATMIN_TEST_BACKENDS) {
  // saved after step 4 (a refresh step of refresh_every = 3: the sums have just restarted) or 5
  auto run = [](auto make_mask, int saved_after) {
    model m1, m2;
    using M = decltype(make_mask());
    using opt_t = flatmin::sharpness_aware<double, B, flatmin::perturb::l2, M, flatmin::base::sgd>;
    opt_t a(m1.ps, {.base = flatmin::base::sgd{.lr = 0.05}, .mask = make_mask()});
    std::vector<std::vector<double>> grads;
    for (int s = 0; s < 12; ++s) grads.push_back(m1.random_g());
    for (int s = 0; s < saved_after; ++s) {
      m1.set_g(grads[s]);
      a.ascend();
      a.descend();
    }
    std::stringstream ck;
    a.save(ck);
    for (std::size_t t = 0; t < m1.w.size(); ++t) m2.w[t] = m1.w[t];
    opt_t b(m2.ps, {.base = flatmin::base::sgd{.lr = 0.05}, .mask = make_mask()});
    b.load(ck);
    for (int s = saved_after; s < 12; ++s) {
      m1.set_g(grads[s]);
      m2.set_g(grads[s]);
      a.ascend();
      b.ascend();
      CHECK(m1.flat_w() == m2.flat_w());
      a.descend();
      b.descend();
    }
    CHECK(m1.flat_w() == m2.flat_w());
  };
  for (int saved_after : {4, 5}) {
    CAPTURE(saved_after);
    run([] { return flatmin::mask::fisher{.keep = 0.3, .refresh_every = 3, .block = 4}; }, saved_after);
    run([] { return flatmin::mask::fisher{.keep = 0.3, .refresh_every = 3}; }, saved_after);
    run([] { return flatmin::mask::dynamic{.sparsity = 0.6, .refresh_every = 2, .block = 8, .seed = 2}; }, saved_after);
    run([] { return flatmin::mask::dynamic{.sparsity = 0.6, .refresh_every = 2, .seed = 2}; }, saved_after);
  }
}
