// The sparse masks' state across the step protocol and its introspection:
// - a skipped or cancelled step (non-finite g at w or at w + ε, found_inf, cancel()) leaves every
//   piece of mask state as it was (bits, Fisher sums, counts, the compact range), and the retried
//   step is bitwise the step of a run that was never interrupted (fisher, dynamic, random);
// - SSAM-F's official timing (Mi-Peng/Sparse-Sharpness-Aware-Minimization, solver/sam.py at
//   2d17866: SSAMF.init_mask starts with an all-zero mask; SSAMF.step calls update_mask after the
//   whole SAM step when `epoch % update_freq == 0 and batch_idx == 0`): step 1 unperturbed, new
//   masks at steps 2, 7, 12 with 5 steps between refreshes, each from the examples at that point;
// - FSAM's official refresh steps (WHU-ZQH/FSAM4PLM, fairseq-FSAM/optim/samsgd.py: set_fisher_mask
//   calls model.zero_grad() after reading g², before first_step): ε = 0 on every entry;
// - a NaN per-example gradient skips the step;
// - get / set / get of the mask per tensor, and a set mask is the one the ascent uses.
#include <doctest/doctest.h>

#include <sstream>
#include <string>

#include "support/backends.hpp"
#include "support/sparse_model.hpp"

using namespace sparse_test;

namespace {
template <class B, class M>
using opt_t = flatmin::sharpness_aware<double, B, flatmin::perturb::l2, M, flatmin::base::sgd>;

std::set<std::size_t> dense_part(const model& m) {
  std::set<std::size_t> s;
  for (std::size_t i = 0; i < m.numel(); ++i)
    if (m.perturbed(m.tensor_of(i)) && !m.eligible(m.tensor_of(i))) s.insert(i);
  return s;
}
std::set<std::size_t> eligible_part(const model& m, const std::set<std::size_t>& s) {
  std::set<std::size_t> r;
  for (std::size_t i : s)
    if (m.eligible(m.tensor_of(i))) r.insert(i);
  return r;
}

/// Everything observable of the mask state: the per-tensor masks, the checkpointed buffers, the
/// compact range's size, the state's size, and the mask's own counters where it has them.
template <class Opt>
std::string snapshot(Opt& o, const model& m) {
  std::ostringstream os;
  o.save(os);
  for (std::size_t t = 0; t < m.sizes.size(); ++t) {
    const auto b = o.mask_bytes(t);
    os.write(reinterpret_cast<const char*>(b.data()), static_cast<std::streamsize>(b.size()));
  }
  // (not the sizes of scratch buffers: an abandoned refresh may have grown the saved-weights buffer
  // or the pending segment list, as the applied step will; they hold no state)
  os << '|' << o.mask_state().range(o.layout()).elements << '|' << o.mask_state().range(o.layout()).count << '|'
     << o.mask_state().radius_scale();
  const auto& ms = o.mask_state();
  if constexpr (requires { ms.host_sums(); }) {
    const auto h = ms.host_sums();
    os.write(reinterpret_cast<const char*>(h.data()), static_cast<std::streamsize>(h.size() * sizeof(double)));
  }
  if constexpr (requires { ms.active(); }) os << '|' << ms.active();
  return os.str();
}

enum class interruption { nonfinite_g, nonfinite_g_adv, found_inf_at_ascend, found_inf_at_descend, cancel };

template <class B, class M>
void check_skips_leave_state(const M& mask) {
  for (auto how : {interruption::nonfinite_g, interruption::nonfinite_g_adv, interruption::found_inf_at_ascend,
                   interruption::found_inf_at_descend, interruption::cancel}) {
    CAPTURE(static_cast<int>(how));
    model ma, mb;
    opt_t<B, M> a(ma.ps, {.base = flatmin::base::sgd{.lr = 0.05}, .mask = mask});
    opt_t<B, M> b(mb.ps, {.base = flatmin::base::sgd{.lr = 0.05}, .mask = mask});
    for (std::size_t step = 1; step <= 9; ++step) {
      CAPTURE(step);
      const auto G = ma.random_g(), Gadv = ma.random_g();
      // b: an interrupted attempt at this step first
      const std::string before = snapshot(b, mb);
      const auto w_before = mb.flat_w();
      auto bad = G;
      bad[3] = std::numeric_limits<double>::quiet_NaN();
      mb.set_g(how == interruption::nonfinite_g ? bad : G);
      const bool inf_at_ascend = how == interruption::found_inf_at_ascend;
      const auto r1 = b.ascend({.found_inf = inf_at_ascend ? std::optional<bool>(true) : std::nullopt});
      if (how == interruption::cancel) {
        b.cancel();
      } else {
        auto bad_adv = Gadv;
        bad_adv[5] = std::numeric_limits<double>::infinity();
        mb.set_g(how == interruption::nonfinite_g_adv ? bad_adv : Gadv);
        const auto r2 = b.descend({.found_inf = how == interruption::found_inf_at_descend ? std::optional<bool>(true)
                                                                                         : std::nullopt});
        CHECK(r2.skipped);
      }
      CHECK(r1.skipped == (how == interruption::nonfinite_g || inf_at_ascend));
      CHECK(mb.flat_w() == w_before);
      CHECK(b.steps() == step - 1);
      CHECK(snapshot(b, mb) == before);
      // then the step itself, on both
      ma.set_g(G);
      mb.set_g(G);
      a.ascend();
      b.ascend();
      CHECK(mb.flat_w() == ma.flat_w());
      ma.set_g(Gadv);
      mb.set_g(Gadv);
      a.descend();
      b.descend();
      CHECK(mb.flat_w() == ma.flat_w());
      CHECK(snapshot(b, mb) == snapshot(a, ma));
    }
  }
}
}  // namespace

TEST_CASE_TEMPLATE("mask state: a skipped or cancelled step leaves it as it was (fisher)", B, FLATMIN_TEST_BACKENDS) {
  using est = flatmin::mask::fisher_estimator;
  check_skips_leave_state<B>(flatmin::mask::fisher{.keep = 0.3, .refresh_every = 3});
  check_skips_leave_state<B>(flatmin::mask::fisher{.keep = 0.3, .refresh_every = 3, .block = 4});
  check_skips_leave_state<B>(flatmin::mask::fisher{.keep = 0.3, .refresh_every = 2, .source = est::current_batch});
  check_skips_leave_state<B>(flatmin::mask::fisher{
      .keep = 0.3, .refresh_every = 2, .schedule = flatmin::mask::fisher_schedule::ssam_official});
}

TEST_CASE_TEMPLATE("mask state: a skipped or cancelled step leaves it as it was (dynamic)", B, FLATMIN_TEST_BACKENDS) {
  check_skips_leave_state<B>(flatmin::mask::dynamic{.sparsity = 0.6, .refresh_every = 2, .total_steps = 9, .seed = 4});
  check_skips_leave_state<B>(flatmin::mask::dynamic{.sparsity = 0.6, .refresh_every = 2, .block = 8, .seed = 4});
}

TEST_CASE_TEMPLATE("mask state: a skipped or cancelled step leaves it as it was (random)", B, FLATMIN_TEST_BACKENDS) {
  using flatmin::mask::granularity;
  check_skips_leave_state<B>(flatmin::mask::random{.beta = 0.5, .unit = granularity::element, .seed = 1});
  check_skips_leave_state<B>(flatmin::mask::random{.beta = 0.5, .unit = granularity::block, .block = 8, .seed = 1});
  check_skips_leave_state<B>(flatmin::mask::random{.beta = 0.5, .unit = granularity::tensor, .seed = 1});
}

namespace {
/// An objective with per-example gradients (SSAM-F): example n's gradient is E[n], the batch's G.
struct example_obj {
  model& m;
  std::vector<std::vector<double>> E;
  std::vector<double> G, Gadv;
  int example_calls = 0, batch_calls = 0;
  double operator()() {
    m.set_g(batch_calls++ % 2 == 0 ? G : Gadv);
    return 1.0;
  }
  void example_gradient(std::size_t n) {
    ++example_calls;
    m.set_g(E[n]);
  }
};
}  // namespace

TEST_CASE_TEMPLATE("ssam_f official: step 1 unperturbed, new masks at steps 2, 7, 12, xi = 1e-7", B,
                   FLATMIN_TEST_BACKENDS) {
  model m;
  const std::size_t Ns = 2, every = 5;
  auto opt = flatmin::ssam_f<B>(m.ps, flatmin::base::sgd{.lr = 0.01}, flatmin::official,
                                {.sparsity = 0.7, .examples = Ns, .refresh_every = every});
  CHECK(opt.perturbation().xi == 1e-7);  // solver/sam.py: rho / (grad_norm + 1e-7)
  std::size_t n = 0;
  for (std::size_t t = 0; t < m.sizes.size(); ++t)
    if (m.eligible(t)) n += m.sizes[t];
  const auto k = static_cast<std::size_t>(static_cast<double>(n) * (1 - 0.7));  // int(L * (1 - sparsity))
  std::set<std::size_t> mask;  // eligible part; the official init_mask is all zeros
  example_obj obj{m, {}, {}, {}};
  for (std::size_t step = 1; step <= 13; ++step) {
    CAPTURE(step);
    obj.E = {m.random_g(), m.random_g()};
    obj.G = m.random_g();
    obj.Gadv = m.random_g();
    const bool refresh = step == 2 || step == 7 || step == 12;  // after steps 1, 6, 11 in the official loop
    if (refresh) {
      std::vector<std::pair<double, std::size_t>> cand;
      for (std::size_t i = 0; i < m.numel(); ++i)
        if (m.eligible(m.tensor_of(i))) cand.push_back({obj.E[0][i] * obj.E[0][i] + obj.E[1][i] * obj.E[1][i], i});
      mask = top_k_ref(cand, k);
    }
    const int calls = obj.example_calls;
    const auto w0 = m.flat_w();
    std::set<std::size_t> moved;
    struct probe {  // records which entries the ascent moved, then hands g_adv
      example_obj& o;
      std::vector<double> w0;
      std::set<std::size_t>& moved;
      double operator()() {
        if (o.batch_calls % 2 == 1) moved = changed(w0, o.m.flat_w());
        return o();
      }
      void example_gradient(std::size_t i) { o.example_gradient(i); }
    } p{obj, w0, moved};
    opt.step(p);
    CHECK(obj.example_calls - calls == (refresh ? static_cast<int>(Ns) : 0));
    std::set<std::size_t> want = dense_part(m);
    want.insert(mask.begin(), mask.end());
    CHECK(moved == want);
    CHECK(eligible_part(m, moved) == mask);
  }
}

TEST_CASE_TEMPLATE("fisher unperturbed_refresh: eps = 0 everywhere on refresh steps (FSAM official)", B,
                   FLATMIN_TEST_BACKENDS) {
  model m;
  using M = flatmin::mask::fisher;
  opt_t<B, M> opt(m.ps, {.base = flatmin::base::sgd{.lr = 0.05},
                         .mask = M{.keep = 0.2, .refresh_every = 3, .unperturbed_refresh = true}});
  for (std::size_t step = 1; step <= 8; ++step) {
    CAPTURE(step);
    const bool refresh = step == 1 || (step - 1) % 3 == 0;
    m.set_g(m.random_g());
    const auto w0 = m.flat_w();
    const auto r = opt.ascend();
    if (refresh) {
      CHECK(m.flat_w() == w0);  // not even the ineligible dense tensors move
      CHECK(r.perturbation_norm == 0);
    } else {
      const auto moved = changed(w0, m.flat_w());
      CHECK(eligible_part(m, moved).size() == static_cast<std::size_t>(0.2 * 87));  // k of 87 eligible
      for (std::size_t i : dense_part(m)) CHECK(moved.count(i) == 1);
    }
    const auto Gadv = m.random_g();
    m.set_g(Gadv);
    opt.descend();
    const auto w1 = m.flat_w();
    for (std::size_t i = 0; i < w1.size(); ++i) CHECK(w1[i] == w0[i] - 0.05 * Gadv[i]);
  }
}

namespace {
template <class B>
void nan_example_skips(std::size_t block) {
  CAPTURE(block);
  model m, m2;
  const std::size_t Ns = 3;
  auto make = [&](model& mm) {
    return flatmin::ssam_f<B>(mm.ps, flatmin::base::sgd{.lr = 0.01},
                              {.examples = Ns, .refresh_every = 4, .block = block});
  };
  auto opt = make(m);
  auto twin = make(m2);
  example_obj obj{m, {m.random_g(), m.random_g(), m.random_g()}, m.random_g(), m.random_g()};
  example_obj obj2{m2, obj.E, obj.G, obj.Gadv};
  const std::string before = snapshot(opt, m);
  const auto w0 = m.flat_w();
  auto E_bad = obj.E;
  E_bad[1][7] = std::numeric_limits<double>::quiet_NaN();  // entry 7 of tensor 0 (eligible)
  obj.E.swap(E_bad);
  const auto r = opt.step(obj);
  CHECK(r.skipped);
  CHECK(r.reason == flatmin::skip_reason::nonfinite_example_gradient);
  CHECK(m.flat_w() == w0);
  CHECK(opt.steps() == 0);
  CHECK(snapshot(opt, m) == before);
  obj.E.swap(E_bad);
  obj.batch_calls = 0;
  opt.step(obj);
  twin.step(obj2);
  CHECK(m.flat_w() == m2.flat_w());
  CHECK(snapshot(opt, m) == snapshot(twin, m2));

  // two-call protocol: the caller's examples, one of them with an Inf entry
  model m3;
  auto opt3 = make(m3);
  for (std::size_t i = 0; i < Ns; ++i) {
    auto e = obj.E[i];
    if (i == 2) e[40] = std::numeric_limits<double>::infinity();  // tensor 2 (eligible)
    m3.set_g(e);
    opt3.mask_state().add_example(opt3.mask(), opt3.layout());
  }
  m3.set_g(obj.G);
  CHECK(opt3.ascend().reason == flatmin::skip_reason::nonfinite_example_gradient);
  m3.set_g(obj.Gadv);
  CHECK(opt3.descend().skipped);
  CHECK(!opt3.mask_state().nonfinite_examples());
}
}  // namespace

TEST_CASE_TEMPLATE("ssam_f: a NaN per-example gradient skips the step and leaves the state", B, FLATMIN_TEST_BACKENDS) {
  nan_example_skips<B>(1);
  nan_example_skips<B>(4);  // block units count their non-finite units apart (count_index)
}

namespace {
/// get, set (another mask, valid for the granularity), get; then the ascent moves exactly the set
/// entries (and the dense-perturbed tensors).
template <class B, class M>
void check_round_trip(const M& mask, std::size_t unit) {
  model m({37, 5, 50, 7, 61});
  opt_t<B, M> opt(m.ps, {.base = flatmin::base::sgd{.lr = 0.05}, .mask = mask});
  m.set_g(m.random_g());  // one step so that a refreshing mask has a mask
  opt.ascend();
  m.set_g(m.random_g());
  opt.descend();
  std::set<std::size_t> want = dense_part(m);
  for (std::size_t t = 0; t < m.sizes.size(); ++t) {
    CAPTURE(t);
    const auto got = opt.mask_bytes(t);
    REQUIRE(got.size() == m.sizes[t]);
    CHECK(opt.mask_bytes("t" + std::to_string(t)) == got);
    const auto idx = opt.mask_indices(t);
    CHECK(opt.mask_count(t) == idx.size());
    for (std::size_t j = 0; j < got.size(); ++j)
      CHECK((got[j] != 0) == std::binary_search(idx.begin(), idx.end(), j));
    if (!m.perturbed(t)) CHECK(opt.mask_count(t) == 0);
    if (m.perturbed(t) && !m.eligible(t)) CHECK(opt.mask_count(t) == m.sizes[t]);
    if (!m.eligible(t)) {
      auto other = got;
      other[0] ^= 1;
      CHECK_THROWS_AS(opt.set_mask(t, other), std::invalid_argument);
      continue;
    }
    // a new mask: units alternately on and off, shifted by the tensor index
    std::vector<std::uint8_t> set(m.sizes[t]);
    for (std::size_t j = 0; j < set.size(); ++j) set[j] = static_cast<std::uint8_t>((j / unit + t) % 3 == 0);
    opt.set_mask("t" + std::to_string(t), set);
    CHECK(opt.mask_bytes(t) == set);
    for (std::size_t j = 0; j < set.size(); ++j)
      if (set[j]) want.insert(m.offset[t] + j);
    CHECK_THROWS_AS(opt.set_mask(t, std::vector<std::uint8_t>(set.size() + 1, 1)), std::invalid_argument);
    if (unit > 1) {
      auto split = set;
      split[1] ^= 1;  // entries 0 and 1 share a unit
      CHECK_THROWS_WITH_AS(opt.set_mask(t, split), doctest::Contains("must agree"), std::invalid_argument);
      CHECK(opt.mask_bytes(t) == set);  // a rejected mask changes nothing
    }
  }
  CHECK_THROWS_AS(opt.mask_bytes(99), std::invalid_argument);
  CHECK_THROWS_AS(opt.mask_bytes("nope"), std::invalid_argument);
  m.set_g(m.random_g());
  const auto w0 = m.flat_w();
  opt.ascend();  // frozen (or never refreshing on this step): the set mask is the one used
  CHECK(changed(w0, m.flat_w()) == want);
  CHECK_THROWS_AS(opt.set_mask(0, opt.mask_bytes(0)), flatmin::usage_error);
  m.set_g(m.random_g());
  opt.descend();
}
}  // namespace

TEST_CASE_TEMPLATE("mask introspection: get, set, get; the ascent uses the set mask", B, FLATMIN_TEST_BACKENDS) {
  using flatmin::mask::granularity;
  SUBCASE("fisher") {
    check_round_trip<B>(flatmin::mask::fisher{.keep = 0.3, .refresh_every = 3, .frozen = false}, 1);
  }
  SUBCASE("fisher blocks, frozen") {
    // frozen from the start: no mask is ever computed (all zeros), then the set one stays
    check_round_trip<B>(flatmin::mask::fisher{.keep = 0.3, .refresh_every = 1, .block = 4, .frozen = true}, 4);
  }
  SUBCASE("dynamic") {
    check_round_trip<B>(flatmin::mask::dynamic{.sparsity = 0.5, .refresh_every = 5, .seed = 3}, 1);
  }
  SUBCASE("dynamic blocks, frozen") {
    check_round_trip<B>(flatmin::mask::dynamic{.sparsity = 0.5, .refresh_every = 1, .block = 8, .frozen = true}, 8);
  }
  SUBCASE("random blocks") {
    check_round_trip<B>(flatmin::mask::random{.beta = 0.5, .unit = granularity::block, .block = 8, .seed = 2}, 8);
  }
  SUBCASE("random elements") {
    check_round_trip<B>(flatmin::mask::random{.beta = 0.5, .unit = granularity::element, .seed = 2}, 1);
  }
}

TEST_CASE_TEMPLATE("mask introspection: the random mask reports the last applied step's draw", B,
                   FLATMIN_TEST_BACKENDS) {
  using flatmin::mask::granularity;
  model m;
  opt_t<B, flatmin::mask::random> opt(
      m.ps, {.base = flatmin::base::sgd{.lr = 0.05},
             .mask = flatmin::mask::random{.beta = 0.5, .unit = granularity::element, .seed = 6}});
  for (int step = 1; step <= 3; ++step) {
    m.set_g(m.random_g());
    const auto w0 = m.flat_w();
    opt.ascend();
    const auto moved = changed(w0, m.flat_w());
    m.set_g(m.random_g());
    opt.descend();
    std::set<std::size_t> reported;
    for (std::size_t t = 0; t < m.sizes.size(); ++t)
      for (std::size_t j : opt.mask_indices(t)) reported.insert(m.offset[t] + j);
    CHECK(reported == moved);
  }
}

TEST_CASE_TEMPLATE("mask introspection: dense reports all ones and cannot be set", B, FLATMIN_TEST_BACKENDS) {
  model m;
  opt_t<B, flatmin::mask::dense> opt(m.ps, {.base = flatmin::base::sgd{.lr = 0.05}});
  for (std::size_t t = 0; t < m.sizes.size(); ++t) {
    CHECK(opt.mask_count(t) == (m.perturbed(t) ? m.sizes[t] : 0));
    CHECK(opt.mask_indices(t).size() == opt.mask_count(t));
  }
  CHECK_THROWS_AS(opt.set_mask(0, opt.mask_bytes(0)), flatmin::usage_error);
}
