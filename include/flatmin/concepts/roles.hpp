#pragma once
/// @file roles.hpp
/// One concept per policy role (backend, base optimizer, perturbation, mask, descent rule,
/// regularizer, schedule), built from one concept per capability, and `detail::check_*<...>()`: a
/// static_assert per capability, so that a wrong composition names what is missing. Also the
/// optional ascent-time hook (`ascent_hook`) a descent rule or a regularizer's state may offer.
/// Bottom layer: it knows the backend's layout types and the objective concepts, no policy.

#include <concepts>
#include <cstddef>
#include <type_traits>

#include "../backend/layout.hpp"
#include "objective.hpp"

namespace flatmin {

// ---- backend -------------------------------------------------------------------------------------

template <class B>
concept backend_has_segment_size = requires {
  { B::segment_size } -> std::convertible_to<std::size_t>;
};
template <class B>
concept backend_has_accepts = requires {
  { B::accepts(memory_space::host) } -> std::convertible_to<bool>;
};
template <class B>
concept backend_has_vectors = requires(std::size_t n) {
  typename B::template vector<float>;
  { B::template make_vector<float>(n) } -> std::same_as<typename B::template vector<float>>;
};

/// A backend: vectors in its memory space, one-launch passes and deterministic reductions.
template <class B>
concept backend_policy = backend_has_segment_size<B> && backend_has_accepts<B> && backend_has_vectors<B>;

// ---- base optimizer ------------------------------------------------------------------------------

template <class P>
concept has_validate = requires(const P& p) {
  p.validate();
};

template <class P>
concept base_has_second_moment_flag = requires {
  { P::has_second_moment } -> std::convertible_to<bool>;
};
template <class P, class T, class Backend>
concept base_has_state = requires {
  typename P::template state<T, Backend>;
}
&&std::constructible_from<typename P::template state<T, Backend>, const P&, std::size_t>;
template <class P, class T, class Backend>
concept base_state_prepares = requires(const P& p, typename P::template state<T, Backend>& s) {
  s.prepare(p, std::size_t{1});
  { s.bytes() } -> std::convertible_to<std::size_t>;
};

/// A base optimizer: options with validate(), and a per-run state created for (T, Backend).
template <class P, class T, class Backend>
concept base_optimizer = has_validate<P> && base_has_second_moment_flag<P> && base_has_state<P, T, Backend> &&
    base_state_prepares<P, T, Backend>;

// ---- perturbation --------------------------------------------------------------------------------

template <class P>
concept perturbation_has_radius = requires(const P& p) {
  { p.rho } -> std::convertible_to<double>;
  { p.xi } -> std::convertible_to<double>;
};
template <class P>
concept perturbation_has_perturbs_flag = requires {
  { P::perturbs } -> std::convertible_to<bool>;
};

/// A perturbation added as drawn, not rescaled to a radius (perturb::gaussian): `normalised ==
/// false` and the ascent's fixed scale `scale()`.
template <class P>
concept perturbation_has_fixed_scale = requires(const P& p) {
  requires !P::normalised;
  { p.scale() } -> std::convertible_to<double>;
};

/// A perturbation: radius options (or a fixed scale), validate(), and a per-element term built
/// from the base state.
template <class P>
concept perturbation = has_validate<P> && perturbation_has_perturbs_flag<P> &&
    (perturbation_has_radius<P> || perturbation_has_fixed_scale<P>);

// ---- mask ----------------------------------------------------------------------------------------

template <class M, class T, class Backend>
concept mask_has_state = requires {
  typename M::template state<T, Backend>;
}
&&std::constructible_from<typename M::template state<T, Backend>, const M&,
                          const backend::layout<T, Backend>&>;
template <class M, class T, class Backend>
concept mask_state_has_passes = requires(typename M::template state<T, Backend>& s,
                                         const backend::layout<T, Backend>& l) {
  s.get_view();
  { s.range(l) } -> std::same_as<backend::range_of<T, Backend>>;
  { s.saved_size(l) } -> std::convertible_to<std::size_t>;
  { s.radius_scale() } -> std::convertible_to<double>;
};
template <class M, class T, class Backend>
concept mask_state_has_flags = requires {
  { M::template state<T, Backend>::norm_over_mask } -> std::convertible_to<bool>;
  { M::template state<T, Backend>::compact } -> std::convertible_to<bool>;
};

/// A mask: validate() and a per-run state created for (T, Backend). A mask whose storage is
/// compact (`compact`, refined by `is_compact()`) must keep the mask equal to 1 on every entry of
/// `range()`: the optimizer then runs the ascent and restore over the range without the view.
template <class M, class T, class Backend>
concept mask_policy = has_validate<M> && mask_has_state<M, T, Backend> &&
    mask_state_has_passes<M, T, Backend> && mask_state_has_flags<M, T, Backend>;

// ---- descent rule --------------------------------------------------------------------------------

template <class D>
concept descent_has_gradients = requires(D& d, detail::full_objective& o) {
  { d.first_gradient(o) } -> std::convertible_to<double>;
  d.second_gradient(o);
};

/// A descent rule (closure protocol): `first_gradient(obj)` computes g at w and returns the loss,
/// `second_gradient(obj)` computes the gradient the base step uses, at w + ε. Checked against an
/// objective with every capability; the one a user passes is checked by the policy itself.
template <class D>
concept descent_policy = has_validate<D> && descent_has_gradients<D>;

// ---- regularizer ---------------------------------------------------------------------------------

template <class R, class T, class Backend>
concept regularizer_has_state = requires {
  typename R::template state<T, Backend>;
}
&&std::constructible_from<typename R::template state<T, Backend>, const R&,
                          const backend::layout<T, Backend>&>;
template <class R, class T, class Backend>
concept regularizer_state_adjusts = requires(const R& r, typename R::template state<T, Backend>& s,
                                             const backend::layout<T, Backend>& l, T w, T g,
                                             const backend::elem_of<T, Backend>& e) {
  { s.prepare(r, l, std::size_t{1}, T(1))(w, g, e) } -> std::convertible_to<T>;
};

/// A regularizer: validate() and a per-run state whose `prepare(options, layout, t, inv_scale)`
/// (once per applied step) returns an elementwise `(w, g, elem) -> g'` applied to g_adv.
template <class R, class T, class Backend>
concept regularizer_policy =
    has_validate<R> && regularizer_has_state<R, T, Backend> && regularizer_state_adjusts<R, T, Backend>;

// ---- schedule ------------------------------------------------------------------------------------

template <class S>
concept schedule_has_perturbs_at = requires(const S& s, std::size_t t) {
  { s.perturbs_at(t) } -> std::convertible_to<bool>;
};

/// A schedule: validate() and `perturbs_at(t)`, whether step t (1-based: applied steps + 1)
/// perturbs. A pure function of t, so that a checkpoint (which stores the step count) resumes it
/// and a skipped or cancelled step, which does not advance t, is decided again the same way.
template <class S>
concept schedule_policy = has_validate<S> && schedule_has_perturbs_at<S>;

// ---- ascent-time hook (optional capability) -------------------------------------------------------

/// What the ascent-time hook is told about the clean gradient g, the one at w. Everything here was
/// computed by the ascent anyway: the hook costs no pass of its own.
struct ascent_stats {
  std::size_t step = 0;   ///< 1-based step number (applied steps + 1)
  double grad_norm2 = 0;  ///< ‖g‖² over every entry of every tensor (g divided by grad_scale)
  double norm2 = 0;       ///< the squared norm the perturbation divides by (over its support)
  double scale = 0;  ///< ε = scale · m ⊙ dir(g), scale = ρ·s / (‖norm(g)‖ + ξ) (0: g vanishes)
  double perturbation_norm = 0;  ///< ‖ε‖, about to be added to w
};

/// The optional ascent-time hook of a descent rule (on the policy object) or of a regularizer (on
/// its state): `on_ascent(layout, stats, inv_scale)` is called by ascend() once g is known to be
/// finite and the mask is refreshed, before w moves, on every step that perturbs. The gradient
/// views (`layout.tensors()`, each entry times `inv_scale`) hold the clean g then; later in the
/// step they hold g_adv. GSAM, WSAM and LookSAM keep what they need of g here (a copy, a norm).
/// Not called on a step that does not perturb (there descend() sees g itself). The step may still
/// be skipped (non-finite g_adv) or cancelled after the hook, and an ascent retried after cancel()
/// calls it again: what it records must be scratch for the step, not state the next step relies on.
template <class P, class T, class Backend>
concept ascent_hook = requires(P& p, const backend::layout<T, Backend>& l, const ascent_stats& s, T inv) {
  p.on_ascent(l, s, inv);
};

/// A member named `on_ascent` that is not a template nor overloaded (so that its address can be
/// taken): a hook was meant, and one that does not match `ascent_hook` would be silently ignored.
template <class P>
concept names_on_ascent = requires {
  &P::on_ascent;
};

// ---- one static_assert per capability --------------------------------------------------------------

namespace detail {

template <class B>
constexpr bool check_backend() {
  static_assert(backend_has_segment_size<B>,
                "flatmin: the Backend has no `static constexpr size_t segment_size`");
  static_assert(backend_has_accepts<B>, "flatmin: the Backend has no `static bool accepts(memory_space)`");
  static_assert(backend_has_vectors<B>,
                "flatmin: the Backend has no `vector<T>` and `make_vector<T>(n)` (its memory for the state)");
  return true;
}

template <class P, class T, class B>
constexpr bool check_base() {
  static_assert(has_validate<P>, "flatmin: the Base optimizer has no `validate() const`");
  static_assert(base_has_second_moment_flag<P>,
                "flatmin: the Base optimizer has no `static constexpr bool has_second_moment`");
  static_assert(
      base_has_state<P, T, B>,
      "flatmin: the Base optimizer has no `state<T, Backend>` constructible from (options, size_t n)");
  static_assert(base_state_prepares<P, T, B>,
                "flatmin: the Base optimizer's state has no `prepare(options, t)` (the update) or `bytes()`");
  return true;
}

template <class P>
constexpr bool check_perturbation() {
  static_assert(has_validate<P>, "flatmin: the Perturb policy has no `validate() const`");
  static_assert(perturbation_has_perturbs_flag<P>,
                "flatmin: the Perturb policy has no `static constexpr bool perturbs`");
  static_assert(perturbation_has_radius<P> || perturbation_has_fixed_scale<P>,
                "flatmin: the Perturb policy has no radius options `rho` and `xi` (nor `normalised == false` "
                "with a fixed `scale()`)");
  return true;
}

template <class M, class T, class B>
constexpr bool check_mask() {
  static_assert(has_validate<M>, "flatmin: the Mask has no `validate() const`");
  static_assert(mask_has_state<M, T, B>,
                "flatmin: the Mask has no `state<T, Backend>` constructible from (options, layout)");
  static_assert(
      mask_state_has_passes<M, T, B>,
      "flatmin: the Mask's state lacks get_view(), range(layout), saved_size(layout) or radius_scale()");
  static_assert(mask_state_has_flags<M, T, B>,
                "flatmin: the Mask's state lacks `static constexpr bool norm_over_mask` or `compact`");
  return true;
}

template <class D>
constexpr bool check_descent() {
  static_assert(has_validate<D>, "flatmin: the Descent rule has no `validate() const`");
  static_assert(descent_has_gradients<D>,
                "flatmin: the Descent rule has no `first_gradient(obj)` returning the loss and "
                "`second_gradient(obj)`");
  return true;
}

template <class R, class T, class B>
constexpr bool check_regularizer() {
  static_assert(has_validate<R>, "flatmin: the Regularizer has no `validate() const`");
  static_assert(regularizer_has_state<R, T, B>,
                "flatmin: the Regularizer has no `state<T, Backend>` constructible from (options, layout)");
  static_assert(regularizer_state_adjusts<R, T, B>,
                "flatmin: the Regularizer's state has no `prepare(options, layout, t, inv_scale)` returning "
                "an elementwise (w, g, elem) -> g'");
  return true;
}

template <class S>
constexpr bool check_schedule() {
  static_assert(has_validate<S>, "flatmin: the Schedule has no `validate() const`");
  static_assert(schedule_has_perturbs_at<S>,
                "flatmin: the Schedule has no `perturbs_at(size_t step) const` returning bool");
  return true;
}

/// A hook that is declared but does not match the signature would never be called: say so.
template <class D, class RegState, class T, class B>
constexpr bool check_ascent_hooks() {
  static_assert(!names_on_ascent<D> || ascent_hook<D, T, B>,
                "flatmin: the Descent rule's on_ascent is not callable as on_ascent(const layout<T, "
                "Backend>&, const ascent_stats&, T inv_scale) (concepts/roles.hpp: ascent_hook)");
  static_assert(!names_on_ascent<RegState> || ascent_hook<RegState, T, B>,
                "flatmin: the Regularizer state's on_ascent is not callable as on_ascent(const layout<T, "
                "Backend>&, const ascent_stats&, T inv_scale) (concepts/roles.hpp: ascent_hook)");
  return true;
}

}  // namespace detail

}  // namespace flatmin
