#pragma once
/// @file objective.hpp
/// The objective concepts: what an objective offers the closure protocol (`opt.step(obj)`).
/// Bottom layer: standard headers only, so that policies (descent/, mask/, select/) and the
/// optimizer can all name them without including upward.

#include <concepts>
#include <cstddef>
#include <functional>
#include <span>
#include <type_traits>

namespace flatmin {

/// The minimal objective: called with no argument, it writes the gradient at the current weights
/// into the gradient views and returns the loss.
template <class O>
concept objective = std::invocable<O&> && std::convertible_to < std::invoke_result_t<O&>,
double > ;

/// An objective that can also give the gradient of single examples (SSAM-F's Fisher estimate):
/// `example_gradient(n)` writes ∇ℓ_n (the loss of the n-th Fisher example, with its true label)
/// into the gradient views; which examples are used is the objective's choice (SSAM draws N_s
/// training examples at random).
template <class O>
concept example_objective = objective<O> && requires(O& o, std::size_t n) {
  o.example_gradient(n);
};

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

/// An objective Functional-SAM can drive: `o()` is the clean pass (writes ∇L at the current
/// weights, saves the output cotangent, returns the loss) and `o.functional_backward()` is the
/// perturbed pass (forward at the current weights, back-propagates the saved cotangent).
template <class O>
concept functional_objective = objective<O> && requires(O& o) {
  o.functional_backward();
};

namespace detail {
/// An objective with every capability above (never called): a descent policy is checked against
/// it, so that the role concept does not depend on which objective a user passes.
struct full_objective {
  double operator()();
  void example_gradient(std::size_t);
  std::size_t batch_size();
  double losses_and_gradient(std::span<double>);
  void losses(std::span<double>);
  void subset_gradient(std::span<const std::size_t>);
  void functional_backward();
};
static_assert(example_objective<full_objective> && sample_objective<full_objective> &&
              functional_objective<full_objective>);
}  // namespace detail

}  // namespace flatmin
