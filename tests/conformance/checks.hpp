#pragma once
/// @file checks.hpp
/// A conformance check shared by the float / double suite (test_conformance.cpp) and the 16-bit one
/// (conformance16.hpp): one body for every element type, so that the two suites check the same thing.

#include <doctest/doctest.h>

#include <array>
#include <limits>
#include <type_traits>

#include "conformance/compositions.hpp"

namespace flatmin_test::conformance {

/// NaN, +inf and −inf of T (a 16-bit storage type: its bit patterns, as an fp16 overflow gives).
template <class T>
std::array<T, 3> nonfinite_values() {
  if constexpr (std::is_floating_point_v<T>) {
    return {std::numeric_limits<T>::quiet_NaN(), std::numeric_limits<T>::infinity(),
            -std::numeric_limits<T>::infinity()};
  } else {
    constexpr bool bf16 = std::is_same_v<T, flatmin::bfloat16>;
    return {T::from_bits(bf16 ? 0x7fc0 : 0x7e00), T::from_bits(bf16 ? 0x7f80 : 0x7c00),
            T::from_bits(bf16 ? 0xff80 : 0xfc00)};
  }
}

/// Composition C over elements T on Backend never writes non-finite values: a NaN / ±inf in g
/// (read by ascend()) or in g_adv (read by descend()), in a weight, a bias or a tensor that is not
/// perturbed, leaves the weights bitwise unchanged and the step skipped, and the optimizer goes on.
/// `layout` must have entries 0 (a weight), 200 (a bias) and 210 (a frozen tensor), as the suites'.
template <class C, class Backend, class T>
void check_never_writes_nonfinite(const layout_spec& layout) {
  using hooks = typename C::hooks;
  constexpr bool perturbs = C::template optimizer<T, Backend>::perturbs;
  for (T v : nonfinite_values<T>())
    for (int where : {0, 1})
      for (std::size_t at : {std::size_t{0}, std::size_t{200}, std::size_t{210}}) {  // weight, bias, frozen
        if (where == 1 && !perturbs) continue;
        CAPTURE(static_cast<double>(v));
        CAPTURE(where);
        CAPTURE(at);
        model<T> m(layout, test_space<Backend>);
        m.set_weights(random_vec(m.numel, 8));
        auto q = quadratic::random(m.numel, 8);
        auto opt = C::template make<T, Backend>(m.params);
        for (int s = 0; s < 2; ++s) opt.step(hooks::objective(q, m));
        const auto before = m.raw_weights();
        flatmin::step_report r;
        hooks::first_gradient(q, m);
        if (where == 0) {
          m.gat(at) = v;
          r = opt.ascend();
          // a perturbation without a gradient at w moves w; descend() finds v in g_adv and restores
          if constexpr (hooks::ascent_reads_gradient) CHECK(bitwise_equal(m.raw_weights(), before));
          // with two points (SAMPa) the gradient after ascend() is read by second_point()
          if constexpr (C::template optimizer<T, Backend>::two_points) r = opt.second_point();
          r = opt.descend();
        } else {
          opt.ascend();
          hooks::second_gradient(q, m);
          second_point<hooks>(opt, q, m);
          m.gat(at) = v;
          r = opt.descend();
        }
        // a step the schedule leaves unperturbed reads g once, in descend()
        CHECK(r.skipped);
        CHECK(bitwise_equal(m.raw_weights(), before));
        CHECK(opt.steps() == 2);
        CHECK_FALSE(opt.ascended());
        // and the optimizer goes on normally
        CHECK_FALSE(opt.step(hooks::objective(q, m)).skipped);
        CHECK(all_finite(m.raw_weights()));
      }
}

}  // namespace flatmin_test::conformance
