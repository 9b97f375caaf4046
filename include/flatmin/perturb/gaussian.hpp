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

namespace flatmin::perturb {

struct gaussian {
  static constexpr const char* name = "gaussian";  ///< in checkpoints' composition identity
  double sigma = 0.01;     ///< σ ≥ 0: ε's standard deviation relative to its row's norm
  std::uint64_t seed = 0;  ///< the draws' seed (kernels::counter_hash)

  static constexpr bool perturbs = true;
  static constexpr bool normalised = false;  ///< ε is added as drawn (no radius ρ)

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
    state(const gaussian&, const backend::layout<T, Backend>& l) {
      using W = typename backend::layout<T, Backend>::weight_type;
      const auto& rec = l.host_tensors();
      const auto& lens = l.host_row_lengths();
      std::vector<kernels::row_table_entry> table;
      std::vector<std::uint64_t> row_tensor;
      std::vector<const W*> values;
      std::vector<double> tiny;
      std::uint64_t rows = 0;
      for (std::size_t t = 0; t < rec.size(); ++t) {
        const std::uint64_t len = lens[t] > 0 ? lens[t] : 1;
        table.push_back({rec[t].offset, len, rows});
        values.push_back(rec[t].w);
        tiny.push_back(len == rec[t].size ? 1e-16 : 0.0);
        const std::uint64_t n = rec[t].size / len;
        row_tensor.insert(row_tensor.end(), n, t);
        rows += n;
      }
      row_weight_.resize(rows);  // len_r on a perturbed tensor's rows, 0 elsewhere
      for (std::uint64_t r = 0; r < rows; ++r)
        row_weight_[r] = (rec[row_tensor[r]].flags & tensor_flags::perturb)
                             ? static_cast<double>(table[row_tensor[r]].row_length)
                             : 0.0;
      rows_ = rows;
      table_ = Backend::from_host(table);
      row_tensor_ = Backend::from_host(row_tensor);
      values_ = Backend::from_host(values);
      tiny_ = Backend::from_host(tiny);
      norms_ = Backend::template make_vector<T>(rows);
    }

    template <class BaseState>
    kernels::gaussian_term<T> term(const gaussian& o, const BaseState&, std::size_t steps_done) const {
      return {Backend::data(table_), Backend::data(norms_), o.seed, kernels::noise_stream(steps_done + 1)};
    }

    /// The row norms of w (the weights the ascent perturbs), and the expected ‖ε‖.
    void on_ascent(const gaussian& o, const backend::layout<T, Backend>&, const ascent_stats&, T) {
      using W = typename backend::layout<T, Backend>::weight_type;
      Backend::for_each_index(rows_, kernels::row_norm_pass<T, W>{
                                         Backend::data(values_), Backend::data(row_tensor_),
                                         Backend::data(table_), Backend::data(tiny_), Backend::data(norms_)});
      const std::vector<T> n = Backend::to_host(norms_);
      double e2 = 0;  // over the perturbed tensors' rows, in row order
      for (std::uint64_t r = 0; r < rows_; ++r)
        e2 += row_weight_[r] * static_cast<double>(n[r]) * static_cast<double>(n[r]);
      expected_norm_ = o.sigma * std::sqrt(e2);
    }
    /// σ·√(Σ_r len_r ‖W_r‖²) over the perturbed tensors at the last ascent.
    double perturbation_norm() const { return expected_norm_; }
    std::size_t bytes() const { return rows_ * sizeof(T); }

   private:
    std::uint64_t rows_ = 0;
    std::vector<double> row_weight_;
    typename Backend::template vector<kernels::row_table_entry> table_;
    typename Backend::template vector<std::uint64_t> row_tensor_;
    typename Backend::template vector<const typename backend::layout<T, Backend>::weight_type*> values_;
    typename Backend::template vector<double> tiny_;
    typename Backend::template vector<T> norms_;
    double expected_norm_ = 0;
  };
};

}  // namespace flatmin::perturb
