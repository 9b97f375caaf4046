#pragma once
/// @file concepts.hpp
/// Concepts naming every role, so that a wrong composition fails with the missing capability.

#include <concepts>
#include <cstddef>
#include <functional>
#include <span>
#include <type_traits>

#include "../backend/layout.hpp"

namespace flatmin {

/// The minimal objective: called with no argument, it writes the gradient at the current weights
/// into the gradient views and returns the loss.
template <class O>
concept objective = std::invocable<O&> && std::convertible_to<std::invoke_result_t<O&>, double>;

/// An objective that can also give the gradient of single examples (SSAM-F's Fisher estimate):
/// `example_gradient(n)` writes ∇ℓ_n (the loss of the n-th Fisher example, with its true label)
/// into the gradient views; which examples are used is the objective's choice (SSAM draws N_s
/// training examples at random).
template <class O>
concept example_objective = objective<O> && requires(O& o, std::size_t n) { o.example_gradient(n); };

/// An objective that exposes its mini-batch sample by sample (ESAM's data selection):
/// - `batch_size()`: |B|;
/// - `losses_and_gradient(losses)`: the per-sample losses at the current weights into `losses`
///   (|B| entries) and the gradient of the mean loss into the gradient views; returns the mean loss;
/// - `losses(losses)`: the per-sample losses at the current weights, forward only (no gradient);
/// - `subset_gradient(idx)`: the gradient of the mean loss over the samples `idx` (ascending
///   indices into the batch) into the gradient views.
template <class O>
concept sample_objective = requires(O& o, std::span<double> losses, std::span<const std::size_t> idx) {
  { o.batch_size() } -> std::convertible_to<std::size_t>;
  { o.losses_and_gradient(losses) } -> std::convertible_to<double>;
  o.losses(losses);
  o.subset_gradient(idx);
};

/// A backend: vectors in its memory space, one-launch passes and deterministic reductions.
template <class B>
concept backend_policy = requires {
  { B::segment_size } -> std::convertible_to<std::size_t>;
  { B::accepts(memory_space::host) } -> std::convertible_to<bool>;
  typename B::template vector<float>;
};

/// A base optimizer: options with validate(), and a per-run state created for (T, Backend).
template <class P, class T, class Backend>
concept base_optimizer = requires(const P& p, typename P::template state<T, Backend>& s) {
  p.validate();
  { P::has_second_moment } -> std::convertible_to<bool>;
  s.prepare(p, std::size_t{1});
  { s.bytes() } -> std::convertible_to<std::size_t>;
};

/// A perturbation: radius options, validate(), and a per-element term built from the base state.
template <class P>
concept perturbation = requires(const P& p) {
  p.validate();
  { P::perturbs } -> std::convertible_to<bool>;
  { p.rho } -> std::convertible_to<double>;
  { p.xi } -> std::convertible_to<double>;
};

/// A mask: validate() and a per-run state created for (T, Backend). A mask whose storage is
/// compact (`compact`, refined by `is_compact()`) must keep the mask equal to 1 on every entry of
/// `range()`: the optimizer then runs the ascent and restore over the range without the view.
template <class M, class T, class Backend>
concept mask_policy = requires(const M& m, typename M::template state<T, Backend>& s,
                               const backend::layout<T, Backend>& l) {
  m.validate();
  s.get_view();
  { s.range(l) } -> std::same_as<backend::pass_range<T>>;
  { s.saved_size(l) } -> std::convertible_to<std::size_t>;
  { s.radius_scale() } -> std::convertible_to<double>;
  { M::template state<T, Backend>::norm_over_mask } -> std::convertible_to<bool>;
  { M::template state<T, Backend>::compact } -> std::convertible_to<bool>;
};

}  // namespace flatmin
