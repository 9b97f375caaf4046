#pragma once
/// @file precision.hpp
/// `precision<W, G, S>`: the element types of an optimizer — the weights it updates in the user's
/// memory (W), the gradients it reads there (G), and its own state and arithmetic (S).

#include <type_traits>

#include "../numeric/bfloat16.hpp"
#include "../numeric/half.hpp"

namespace flatmin {

namespace detail {
/// Whether E is one of the 16-bit storage types (numeric/).
template <class E>
inline constexpr bool is_storage16 = std::is_same_v<E, bfloat16> || std::is_same_v<E, half>;
/// The default state type: W when W is float or double, else float (16-bit weights are storage;
/// their state and arithmetic are float unless asked for double).
template <class W, class G>
using default_state_t = std::conditional_t<is_storage16<W>, float, W>;
}  // namespace detail

/// The three element types of an optimizer. `sharpness_aware<float, ...>` means
/// `precision<float, float, float>`; `precision<float, float, double>` keeps float weights and
/// gradients with double moments, momentum and arithmetic. Every element is read, converted to S,
/// computed with in S, and rounded once to W where a weight is written. The weights saved for the
/// exact restore are kept in W (a copy of them: exact, and no larger than the weights).
///
/// W and G may be the 16-bit storage types `bfloat16` and `half` (numeric/); S is float or double,
/// float by default when W is 16-bit (`precision<bfloat16>` is bf16 weights and gradients with
/// float state). The three ways to train with them, and what each costs in precision:
/// 1. `precision<bfloat16>` (or half): 16-bit weights updated in place, rounded to nearest even.
///    The fewest bytes; an update smaller than half a weight's spacing (2^-9 to 2^-8 of |w| for
///    bf16, 2^-12 to 2^-11 for half) is lost, so small learning rates stall.
///    `optimizer_options::weight_rounding = rounding::stochastic` makes the rounding unbiased (the
///    update is kept in expectation).
/// 2. The same with `optimizer_options::master_weights = true`: the optimizer keeps an S copy of
///    the weights, the base step updates it and rounds it into the 16-bit weights, the
///    perturbation w + ε is written to the 16-bit weights the model reads: full-precision
///    training at S bytes more per parameter.
/// 3. `precision<float, bfloat16>` (or half): float weights and state, 16-bit gradients: the
///    gradient reads of every pass halve; the gradients' own rounding (at most 2^-8 relative for
///    bf16, 2^-11 for half) is all that is lost, and half gradients need loss scaling
///    (`step_args::grad_scale`; an overflow to ±inf skips the step).
template <class W, class G = W, class S = detail::default_state_t<W, G>>
struct precision {
  using weight_type = W;
  using grad_type = G;
  using state_type = S;
};

namespace detail {

/// The precision an optimizer's first template argument names: a floating type T is
/// `precision<T, T, T>`, a 16-bit type E `precision<E, E, float>`.
template <class P>
struct precision_of {
  using type = precision<P>;
};
template <class W, class G, class S>
struct precision_of<precision<W, G, S>> {
  using type = precision<W, G, S>;
};
template <class P>
using precision_of_t = typename precision_of<P>::type;

/// The precision the factories (algorithms/) give an optimizer over a `param_set<W, G>`: W itself
/// when the weights and gradients share a type (so `flatmin::sam(params, ...)` over float views is
/// `sharpness_aware<float, ...>` as before, and over bfloat16 views `precision<bfloat16>`), else
/// `precision<W, G>` with its default state type.
template <class W, class G>
using precision_for_t = std::conditional_t<std::is_same_v<W, G>, W, precision<W, G>>;

/// The element types of weights and gradients: float, double and the 16-bit storage types.
template <class E>
inline constexpr bool supported_element =
    std::is_same_v<E, float> || std::is_same_v<E, double> || is_storage16<E>;
/// The state (and arithmetic) types: float and double.
template <class E>
inline constexpr bool supported_state = std::is_same_v<E, float> || std::is_same_v<E, double>;

}  // namespace detail

}  // namespace flatmin
