#pragma once
/// @file precision.hpp
/// `precision<W, G, S>`: the element types of an optimizer — the weights it updates in the user's
/// memory (W), the gradients it reads there (G), and its own state and arithmetic (S).

#include <type_traits>

namespace flatmin {

/// The three element types of an optimizer. `sharpness_aware<float, ...>` means
/// `precision<float, float, float>`; `precision<float, float, double>` keeps float weights and
/// gradients with double moments, momentum and arithmetic. Every element is read, converted to S,
/// computed with in S, and rounded once to W where a weight is written. The weights saved for the
/// exact restore are kept in W (a copy of them: exact, and no larger than the weights).
template <class W, class G = W, class S = W>
struct precision {
  using weight_type = W;
  using grad_type = G;
  using state_type = S;
};

namespace detail {

/// The precision an optimizer's first template argument names: a floating type T is
/// `precision<T, T, T>`.
template <class P>
struct precision_of {
  using type = precision<P, P, P>;
};
template <class W, class G, class S>
struct precision_of<precision<W, G, S>> {
  using type = precision<W, G, S>;
};
template <class P>
using precision_of_t = typename precision_of<P>::type;

/// The element types this version supports: float and double (the mixed-precision issue adds the
/// 16-bit storage types here).
template <class E>
inline constexpr bool supported_element = std::is_same_v<E, float> || std::is_same_v<E, double>;

}  // namespace detail

}  // namespace flatmin
