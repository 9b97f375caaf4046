#pragma once
// The conformance checks with 16-bit weights and gradients (flatmin::bfloat16, flatmin::half;
// state and arithmetic float, params/precision.hpp's mode 1) for every composition of
// compositions.hpp on every backend of FLATMIN_TEST_BACKENDS. Included by one test per type
// (test_conformance_bf16.cpp, test_conformance_fp16.cpp: two translation units that compile in
// parallel), which applies the two checks to its cases:
//  - restores the weights bit-exactly after ascend() + cancel(), touches only masked-in entries,
//    and descend() equals the base optimizer alone applied to the saved w with g_adv, bitwise
//    (where the descent is the base step on g_adv, as in test_conformance.cpp);
//  - never writes non-finite values: a NaN / ±inf in g or g_adv (an fp16 overflow) leaves the
//    weights bitwise unchanged and the step skipped, and the optimizer goes on.
// Convergence is not checked here: 16-bit weights rounded to nearest stall once an update is under
// half a spacing (by design; tests/unit/test_mixed_precision.cpp checks every mode's arithmetic).
#include <doctest/doctest.h>

#include <cstring>
#include <string>
#include <tuple>

#include "conformance/checks.hpp"
#include "conformance/compositions.hpp"
#include "support/backends.hpp"

using namespace flatmin_test;
namespace fc = flatmin_test::conformance;

namespace {

const layout_spec conf_layout = {
    {"fc1.weight", {16, 12}},
    {"fc1.bias", {16}, {.weight_decay = false, .adaptive = false, .mask_eligible = false}},
    {"frozen", {10}, {.weight_decay = false, .perturb = false}},
    {"fc2.weight", {4, 16}},
};

template <class Composition, class Backend, class E>
struct case16 {
  using comp = Composition;
  using backend = Backend;
  using elem = E;
  using hooks = typename comp::hooks;
  using opt = typename comp::template optimizer<E, Backend>;
};

template <class Comps, class Backends, class Elems>
struct cross3;
template <class... C, class... B, class... E>
struct cross3<std::tuple<C...>, std::tuple<B...>, std::tuple<E...>> {
  template <class X, class Y>
  using row = std::tuple<case16<X, Y, E>...>;
  template <class X>
  using rows = decltype(std::tuple_cat(std::declval<row<X, B>>()...));
  using type = decltype(std::tuple_cat(std::declval<rows<C>>()...));
};

}  // namespace

TEST_CASE_TEMPLATE_DEFINE(
    "conformance 16-bit: restores bit-exactly; descend() is the base step at the saved w", X,
    conformance16_restores) {
  using E = typename X::elem;
  using B = typename X::backend;
  model<E> m(conf_layout, test_space<B>), b(conf_layout, test_space<B>);
  m.set_weights(random_vec(m.numel, 7));
  b.set_raw_weights(m.raw_weights());
  auto q = quadratic::random(m.numel, 7, 1.0, 10.0, 0.2);
  auto opt = X::comp::template make<E, B>(m.params);
  auto alone = X::comp::template make_base_alone<E, B>(b.params);
  for (int s = 1; s <= 8; ++s) {
    CAPTURE(s);
    X::hooks::first_gradient(q, m);
    const auto before = m.raw_weights();
    const auto r0 = opt.ascend();
    // only masked-in entries of perturbed tensors moved
    const auto view = opt.mask_state().get_view();
    const auto now = m.raw_weights();
    std::size_t moved_outside = 0;
    for (const auto& t : opt.layout().host_tensors())
      for (std::size_t j = 0; j < t.size; ++j) {
        const std::size_t i = t.offset + j;
        const bool in = (t.flags & flatmin::tensor_flags::perturb) && view(i, t.flags);
        if (!in && std::memcmp(&now[i], &before[i], sizeof(E)) != 0) ++moved_outside;
      }
    CHECK(moved_outside == 0);
    opt.cancel();
    CHECK(bitwise_equal(m.raw_weights(), before));
    const auto r1 = opt.ascend();
    CHECK_FALSE(r1.skipped);
    if constexpr (X::hooks::cancel_leaves_no_trace) CHECK(bitwise_equal(m.raw_weights(), now));  // the same ε
    if (X::opt::perturbs && X::opt::perturbs_layout && r1.perturbed && r1.perturbation_norm > 1e-2)
      CHECK_FALSE(bitwise_equal(m.raw_weights(), before));
    static_cast<void>(r0);
    X::hooks::second_gradient(q, m);
    fc::second_point<typename X::hooks>(opt, q, m);
    b.set_raw_grads(m.raw_grads());
    CHECK_FALSE(opt.descend().skipped);
    CHECK_FALSE(alone.descend().skipped);
    if constexpr (X::hooks::descent_is_base_on_g_adv) CHECK(bitwise_equal(m.raw_weights(), b.raw_weights()));
  }
}

TEST_CASE_TEMPLATE_DEFINE("conformance 16-bit: never writes non-finite values", X, conformance16_nonfinite) {
  fc::check_never_writes_nonfinite<typename X::comp, typename X::backend, typename X::elem>(conf_layout);
}
