#pragma once
/// @file gaussian.hpp
/// `perturb::gaussian` — a random, filter-wise Gaussian perturbation (RWP's: Li, Tao, Suykens,
/// Huang, "Revisiting Random Weight Perturbation for Efficiently Improving Generalization",
/// TMLR 2024; the composition and its official code: algorithms/rwp.hpp):
///
///     ε_i = σ · ‖W_r(i)‖ · z_i,   z_i ~ N(0, 1)
///
/// r(i) the row of entry i along its tensor's first dimension (a filter; backend/layout.hpp's
/// `host_row_lengths`) for a tensor of two or more dimensions, with ‖W_r‖ its norm; for a tensor of
/// one dimension (a bias, a norm's scale) the whole tensor's norm plus 1e-16 (the official code's
/// two cases). ε does not depend on the gradient and is not rescaled to a radius: the ascent adds
/// it as drawn (`normalised == false`: no ρ, ξ).
///
/// The draws: z_i = kernels::standard_normal(counter_hash(seed, noise_stream(t), i)) for step t,
/// so the noise is regenerated from (seed, t, i), never stored, and is the same on every backend
/// and thread count (kernels/gaussian.hpp); a checkpoint restores the step count and so the
/// stream. The row norms are computed from w at the ascent (one pass reading w, summed per row in
/// a fixed order: the same on every backend). `step_report::perturbation_norm` is the expected
/// ‖ε‖, σ·√(Σ_r len_r ‖W_r‖²): the draw's own norm is not computed (it would take a second
/// generation pass).
///
/// Composes with mask::dense only (the ascent's element path). The ascent reads no gradient,
/// but the gradient at w is still checked there (it is needed by the descent rule that mixes it,
/// descent::mix), so `needs_clean_gradient` stays true: call `ascend()` after the first backward.
/// Options: σ = `sigma` (0.01), `seed` (0).

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "../backend/layout.hpp"
#include "../concepts/roles.hpp"
#include "../config.hpp"
#include "../kernels/gaussian.hpp"
#include "rows.hpp"

namespace flatmin::perturb {

struct gaussian {
  static constexpr const char* name = "gaussian";  ///< in checkpoints' composition identity
  double sigma = 0.01;     ///< σ ≥ 0: ε's standard deviation relative to its row's norm
  std::uint64_t seed = 0;  ///< the draws' seed (kernels::counter_hash)

  static constexpr bool perturbs = true;
  static constexpr bool normalised = false;      ///< ε is added as drawn (no radius ρ)
  static constexpr bool dense_mask_only = true;  ///< the ascent's element path looks the row up

  template <class T = double>
  void validate() const {
    flatmin::detail::check_option<T>("perturb::gaussian", "sigma", sigma,
                                     flatmin::detail::domain::non_negative);
  }
  /// The ascent's scale: σ.
  double scale() const { return sigma; }

  template <class T, class Backend>
  class state {
   public:
    state(const gaussian&, const backend::layout<T, Backend>& l)
        : rows_(l), norms_(Backend::template make_vector<T>(rows_.rows())) {}

    template <class BaseState>
    kernels::gaussian_term<T> term(const gaussian& o, const BaseState&, std::size_t steps_done) const {
      return {rows_.table(), Backend::data(norms_), o.seed, kernels::noise_stream(steps_done + 1)};
    }

    /// The row norms of w (the weights the ascent perturbs), and the expected ‖ε‖.
    void on_ascent(const gaussian& o, const backend::layout<T, Backend>& l, const ascent_stats&, T) {
      using L = backend::layout<T, Backend>;
      Backend::for_each_index(rows_.rows(),
                              kernels::row_norm_pass<T, typename L::weight_type, typename L::grad_type>{
                                  l.tensors(), rows_.row_tensor(), rows_.table(), Backend::data(norms_)});
      // on the backend, in its fixed order: no copy of the norms to the host inside the step
      const double e2 = Backend::template reduce_index<double>(
          rows_.rows(), kernels::row_energy<T>{rows_.perturbed_lengths(), Backend::data(norms_)});
      expected_norm_ = o.sigma * std::sqrt(e2);
    }
    /// σ·√(Σ_r len_r ‖W_r‖²) over the perturbed tensors at the last ascent.
    double perturbation_norm() const { return expected_norm_; }
    std::size_t bytes() const { return rows_.rows() * sizeof(T); }

   private:
    row_table<T, Backend> rows_;
    typename Backend::template vector<T> norms_;
    double expected_norm_ = 0;
  };
};

}  // namespace flatmin::perturb
