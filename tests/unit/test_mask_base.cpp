// The sparse-mask base (mask/detail/sparse_base.hpp) as the checkpoints see it, for mask::random:
// a mask the user set with set_mask() is saved (entry "random.bits") and a fresh optimizer that
// loads it perturbs the same entries and takes bitwise the same steps; a drawing random mask
// writes no entry (the v2 layout of files written before the entry existed) and a file without it
// makes a live optimizer draw again; after a load the draw reported by mask_bytes() is the last
// applied step's. And mask::dynamic's refreshes reuse one score buffer (its bytes stay put).
//
// The references are the optimizer that was saved (the uninterrupted run, bitwise) and the masks
// the test sets by hand.
#include <doctest/doctest.h>

#include <sstream>
#include <string>

#include <flatmin/mask/dynamic.hpp>
#include <flatmin/mask/random.hpp>

#include "support/backends.hpp"
#include "support/problems.hpp"

using namespace flatmin_test;

namespace {
// units of 4: w 0–29, b 30–39 (the candidates), frozen 40–41, norm 42–43
const layout_spec base_layout = {{"w", {40, 3}},
                                 {"b", {40}, {.weight_decay = false, .adaptive = false}},
                                 {"frozen", {5}, {.perturb = false}},
                                 {"norm", {7}, {.mask_eligible = false}}};
const char* const tensor_names[] = {"w", "b", "frozen", "norm"};

template <class B>
using random_t =
    flatmin::sharpness_aware<float, B, flatmin::perturb::l2, flatmin::mask::random, flatmin::base::sgd>;

template <class B>
random_t<B> make_random(model<float>& m, flatmin::mask::granularity unit) {
  return random_t<B>(m.params, {.base = {.lr = 0.05, .momentum = 0.9},
                                .mask = {.beta = 0.5, .unit = unit, .block = 4, .seed = 11}});
}

template <class Opt>
std::string saved(Opt& opt) {
  std::stringstream ss;
  opt.save(ss);
  return ss.str();
}

template <class Opt>
std::vector<std::vector<std::uint8_t>> masks(const Opt& opt) {
  std::vector<std::vector<std::uint8_t>> r;
  for (const char* n : tensor_names) r.push_back(opt.mask_bytes(n));
  return r;
}

// A mask of w by hand: blocks (of 4 entries) 1, 2, 7 and 29 on; with tensor units the whole w.
std::vector<std::uint8_t> hand_mask(flatmin::mask::granularity unit) {
  std::vector<std::uint8_t> m(120, 0);
  if (unit == flatmin::mask::granularity::tensor) return std::vector<std::uint8_t>(120, 1);
  for (std::size_t blk : {1u, 2u, 7u, 29u})
    for (std::size_t j = 0; j < 4; ++j) m[4 * blk + j] = 1;
  return m;
}

// Runs `more` steps of both and checks them bitwise equal, step by step.
template <class Opt>
void same_steps(Opt& a, model<float>& ma, quadratic& qa, Opt& b, model<float>& mb, quadratic& qb, int more) {
  for (int s = 0; s < more; ++s) {
    CAPTURE(s);
    const auto ra = a.step(qa.objective(ma));
    const auto rb = b.step(qb.objective(mb));
    CHECK(bitwise_equal(mb.raw_weights(), ma.raw_weights()));
    CHECK(bitwise_equal(rb.grad_norm, ra.grad_norm));
    CHECK(masks(b) == masks(a));
  }
}
}  // namespace

TEST_CASE_TEMPLATE("mask base: a random mask set with set_mask() survives save and load, bitwise", B,
                   FLATMIN_TEST_BACKENDS) {
  using flatmin::mask::granularity;
  for (auto unit : {granularity::block, granularity::tensor, granularity::element}) {
    CAPTURE(static_cast<int>(unit));
    model<float> ma(base_layout);
    ma.set_weights(random_vec(ma.numel, 61));
    auto qa = quadratic::random(ma.numel, 61, 0.5, 2.0, 0.2);
    auto a = make_random<B>(ma, unit);
    for (int s = 0; s < 2; ++s) a.step(qa.objective(ma));
    const auto set = hand_mask(unit);
    a.set_mask("w", set);
    a.set_mask("b", std::vector<std::uint8_t>(40, 0));
    for (int s = 0; s < 2; ++s) a.step(qa.objective(ma));
    REQUIRE(a.mask_bytes("w") == set);  // the steps did not draw over it
    const std::string blob = saved(a);
    CHECK(blob.find("random.bits") != std::string::npos);

    model<float> mb(base_layout);
    mb.set_raw_weights(ma.raw_weights());
    auto qb = qa;
    auto b = make_random<B>(mb, unit);
    if (unit != granularity::tensor) CHECK(masks(b) != masks(a));  // the load has something to do
    std::stringstream in(blob);
    b.load(in);
    CHECK(b.mask_bytes("w") == set);
    CHECK(b.mask_bytes("b") == std::vector<std::uint8_t>(40, 0));
    CHECK(b.mask_bytes("norm") == std::vector<std::uint8_t>(7, 1));
    CHECK(b.mask_bytes("frozen") == std::vector<std::uint8_t>(5, 0));
    CHECK(b.mask_state().host_bits() == a.mask_state().host_bits());
    auto saved_weights = [](const auto& o) { return o.extra_state_bytes() - o.mask_state().bytes(); };
    CHECK(saved_weights(b) == saved_weights(a));
    same_steps(a, ma, qa, b, mb, qb, 4);
    CHECK(saved(b) == saved(a));
  }
}

TEST_CASE_TEMPLATE("mask base: a drawing random mask writes no bits, and loading it undoes a set mask", B,
                   FLATMIN_TEST_BACKENDS) {
  using flatmin::mask::granularity;
  model<float> ma(base_layout);
  ma.set_weights(random_vec(ma.numel, 62));
  auto qa = quadratic::random(ma.numel, 62, 0.5, 2.0, 0.2);
  auto a = make_random<B>(ma, granularity::block);
  for (int s = 0; s < 3; ++s) a.step(qa.objective(ma));
  const std::string blob = saved(a);
  CHECK(blob.find("random.bits") == std::string::npos);
  CHECK(a.mask_state().host_bits().empty());

  // a live optimizer whose mask was set, rolled back to the drawing state
  model<float> mb(base_layout);
  mb.set_weights(random_vec(mb.numel, 63));
  auto qb = quadratic::random(mb.numel, 63, 0.5, 2.0, 0.2);
  auto b = make_random<B>(mb, granularity::block);
  b.step(qb.objective(mb));
  b.set_mask("w", hand_mask(granularity::block));
  b.step(qb.objective(mb));
  REQUIRE_FALSE(b.mask_state().host_bits().empty());
  std::stringstream in(blob);
  b.load(in);
  CHECK(b.mask_state().host_bits().empty());
  // the draw mask_bytes() reports is step 3's, the last one applied, as in the saved optimizer
  CHECK(masks(b) == masks(a));
  mb.set_raw_weights(ma.raw_weights());
  qb = qa;
  same_steps(a, ma, qa, b, mb, qb, 4);
  CHECK(saved(b) == saved(a));
}

TEST_CASE_TEMPLATE("mask base: dynamic's refreshes reuse one score buffer", B, FLATMIN_TEST_BACKENDS) {
  using dynamic_t =
      flatmin::sharpness_aware<float, B, flatmin::perturb::l2, flatmin::mask::dynamic, flatmin::base::sgd>;
  model<float> m(base_layout);
  m.set_weights(random_vec(m.numel, 64));
  auto q = quadratic::random(m.numel, 64);
  // element units: no segment lists, so bytes() is the bits, the unit tables and the scores
  dynamic_t opt(m.params, {.base = {.lr = 0.05}, .mask = {.sparsity = 0.6, .refresh_every = 1, .seed = 3}});
  const std::size_t before = opt.mask_state().bytes();
  opt.step(q.objective(m));
  // after the first refresh one float score per unit (172 entries), held from then on
  const std::size_t after = opt.mask_state().bytes();
  CHECK(after == before + 172 * sizeof(float));
  for (int s = 0; s < 4; ++s) opt.step(q.objective(m));
  CHECK(opt.mask_state().bytes() == after);
}
