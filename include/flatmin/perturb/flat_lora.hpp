#pragma once
/// @file flat_lora.hpp
/// `perturb::flat_lora` — Flat-LoRA's perturbation (T. Li et al., "Flat-LoRA:
/// Low-Rank Adaptation over a Flat Loss Landscape", ICML 2025; the composition and its official
/// code: algorithms/flat_lora.hpp): random noise on the FROZEN base weight W of each LoRA pair,
/// scaled per output row by the merged weight W′ = W + s·B·A:
///
///     σ_i = f_t · ρ · ‖W′_i‖ / √n_in,    W_ij ← W_ij + σ_i z_ij,   z_ij ~ N(0, 1)
///     g = ∇L at the perturbed model (one gradient, for A, B and every other trained tensor)
///     W_ij ← W_ij − σ_i z_ij             (z regenerated from its seed), then the base step on g
///
/// f_t = ½(1 − cos(π·min(t − 1, T)/T)) with T = `ramp_steps` (t the 1-based step: f_1 = 0, f rises
/// to 1 at step T + 1 and stays), or f_t = 1 when `ramp_steps` is 0.
///
/// The pairs are those registered with a frozen base (`param_set::add_lora_pair(..., lora_base{W,
/// s})`); W is written only between `ascend()` and the end of `descend()` (or `cancel()`, or a
/// skipped step). No trained tensor is perturbed (`perturbs_layout == false`): the ascent reads no
/// gradient and runs no pass over the layout, so a step needs ONE gradient, at the perturbed model.
/// Protocol: `ascend()` BEFORE the (only) backward, then `descend()`; `step(obj)` calls the
/// objective once.
///
/// The restore. By default the noise is regenerated and subtracted, as the official code does:
/// W + ε − ε rounds twice, so W drifts by up to about one unit in the last place of W per entry
/// and step (a random walk: harmless in float, visible in bf16 after hundreds of steps; measured in
/// tests/unit/test_flat_lora.cpp). `exact_restore = true` saves each base before the noise and
/// copies it back: bit-exact, for one copy of every base (in W) in memory.
///
/// The draws: z = kernels::standard_normal(counter_hash(seed, noise_stream(t), e)), e the entry's
/// number across the bases (rows in registration order): the same on every backend and thread
/// count, and a checkpoint (which holds the step count) resumes the same noise. The report's
/// ‖ε‖ is the expected one, √(Σ_i n_in σ_i²).
///
/// Cost per step, besides the base step on the trained tensors: per base entry the merged
/// weight's r multiply-adds and one draw to add the noise, and one more draw to take it off (a copy
/// with `exact_restore`), on backend::eigen in its ISA clones (kernels/flat_lora.hpp). On a
/// 1024 × 1024 base of rank 8, one thread of this project's AVX-512 VM: 26 ns per base entry
/// (19 ns with `exact_restore`; 86 ns on the SSE2 baseline). The draws dominate: the cost follows
/// the size of the frozen model, not of the adapters.
///
/// Options: ρ = `rho` (0.05), `ramp_steps` (0: no ramp), `seed` (0), `exact_restore` (false).

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <vector>

#include "../backend/layout.hpp"
#include "../config.hpp"
#include "../kernels/flat_lora.hpp"
#include "../kernels/gaussian.hpp"
#include "../kernels/perturb_terms.hpp"

namespace flatmin::perturb {

struct flat_lora {
  static constexpr const char* name = "flat_lora";  ///< in checkpoints' composition identity
  double rho = 0.05;           ///< ρ ≥ 0: the noise's scale relative to ‖W′_i‖ / √n_in
  std::size_t ramp_steps = 0;  ///< T of f_t = ½(1 − cos(π min(t − 1, T)/T)); 0: f_t = 1
  std::uint64_t seed = 0;      ///< the draws' seed (kernels::counter_hash)
  bool exact_restore = false;  ///< save the bases and copy them back (bit-exact, memory of the bases)

  static constexpr bool perturbs = true;
  static constexpr bool normalised = false;            ///< the noise is added as drawn (no radius)
  static constexpr bool needs_clean_gradient = false;  ///< ascend() reads no gradient
  static constexpr bool dense_mask_only = true;
  static constexpr bool perturbs_layout = false;  ///< ε is on the frozen bases, not the trained tensors

  template <class T = double>
  void validate() const {
    flatmin::detail::check_option<T>("perturb::flat_lora", "rho", rho, flatmin::detail::domain::non_negative);
  }
  /// The ascent's scale: ρ.
  double scale() const { return rho; }
  /// f_t at the 1-based step t.
  double factor(std::size_t t) const {
    if (ramp_steps == 0) return 1.0;
    const double x = static_cast<double>(t > ramp_steps ? ramp_steps : (t == 0 ? 0 : t - 1)) /
                     static_cast<double>(ramp_steps);
    return 0.5 * (1.0 - std::cos(3.14159265358979323846 * x));
  }

  template <class T, class Backend>
  class state {
    using L = backend::layout<T, Backend>;
    using W = typename L::weight_type;
    using G = typename L::grad_type;

   public:
    /// Throws std::invalid_argument when no LoRA pair of the set has a frozen base: there would
    /// be nothing to perturb.
    state(const flat_lora&, const L& l) {
      const auto& bases = l.host_lora_bases();
      if (bases.empty())
        throw std::invalid_argument(
            "flatmin: perturb::flat_lora (Flat-LoRA) perturbs the frozen base weights of LoRA pairs, and "
            "this parameter set registers none (param_set::add_lora_pair(..., flatmin::lora_base{W, s}))");
      std::vector<std::uint32_t> row_base;
      for (std::size_t p = 0; p < bases.size(); ++p) {
        row_base.insert(row_base.end(), bases[p].rows, static_cast<std::uint32_t>(p));
        entries_ += bases[p].rows * bases[p].cols;
      }
      rows_ = row_base.size();
      bases_ = Backend::from_host(bases);
      row_base_ = Backend::from_host(row_base);
      sigma_ = Backend::template make_vector<T>(rows_);
    }

    /// No term over the trained tensors (ε = 0 there): the optimizer runs no layout pass for it.
    template <class BaseState>
    kernels::l2_term<T> term(const flat_lora&, const BaseState&, std::size_t) const {
      return {};
    }

    /// Adds the noise of step t (1-based) to every base; saves them first with `exact_restore`.
    void apply(const flat_lora& o, const L& l, std::size_t t) {
      if (o.exact_restore && saved_.size() != entries_) saved_ = Backend::template make_vector<W>(entries_);
      if (!o.exact_restore) saved_ = typename Backend::template vector<W>();
      kernel_ = {l.tensors(),
                 Backend::data(bases_),
                 Backend::data(row_base_),
                 Backend::data(sigma_),
                 o.exact_restore ? Backend::data(saved_) : nullptr,
                 o.rho * o.factor(t),
                 o.seed,
                 kernels::noise_stream(t),
                 false};
      Backend::for_each_index(rows_, kernel_);
      applied_ = true;
      norm_ = std::sqrt(Backend::template reduce_index<double>(
          rows_, kernels::flat_lora_energy<T, W>{Backend::data(bases_), Backend::data(row_base_),
                                                 Backend::data(sigma_)}));
    }

    /// Takes the noise off again (nothing when it is not on).
    void undo(const L&) {
      if (!applied_) return;
      auto k = kernel_;
      k.undo = true;
      Backend::for_each_index(rows_, k);
      applied_ = false;
    }

    /// Whether the bases hold noise now (between ascend() and descend()).
    bool applied() const { return applied_; }
    /// √(Σ_i n_in σ_i²) at the last apply.
    double perturbation_norm() const { return norm_; }
    /// Rows and entries of the bases.
    std::size_t rows() const { return rows_; }
    std::size_t entries() const { return entries_; }
    std::size_t bytes() const { return rows_ * sizeof(T) + saved_.size() * sizeof(W); }

   private:
    std::size_t rows_ = 0, entries_ = 0;
    typename Backend::template vector<backend::lora_base_rec<W>> bases_;
    typename Backend::template vector<std::uint32_t> row_base_;
    typename Backend::template vector<T> sigma_;
    typename Backend::template vector<W> saved_;
    kernels::flat_lora_row<T, W, G> kernel_{};
    bool applied_ = false;
    double norm_ = 0;
  };
};

}  // namespace flatmin::perturb
