#pragma once
/// @file random.hpp
/// `mask::random` — ESAM's stochastic weight perturbation (Du et al., "Efficient Sharpness-aware
/// Minimization for Improved Training of Neural Networks", ICLR 2022; official code
/// dydjw9/Efficient_SAM).
///
///     every step t:  S = { units u : hash(seed, t, u) < β }      (each unit kept with probability β)
///     ε_S = (ρ / β) · dir(g)_S / (‖norm(g)_S‖ + ξ),   0 outside S  — the norm over S only
///
/// Units: whole tensors (`granularity::tensor`, the default, as the official code), blocks of
/// `block` entries of one tensor, or single entries. Tensors with `mask_eligible = false` are
/// always perturbed. The draw is `kernels::counter_hash(seed, t, u)`: no state is stored, the view
/// recomputes it, and the same seed gives the same masks on every backend. With tensor or block
/// units the ascent and restore run over the kept units only (a segment list built per step on
/// the host from the same hash, one draw per unit).
///
/// Options: beta = 0.5 (β in (0, 1]), unit = tensor, block = 128, seed = 0.

#include <cmath>
#include <string>
#include <vector>

#include "../backend/layout.hpp"
#include "../kernels/counter_hash.hpp"
#include "detail/units.hpp"

namespace flatmin::mask {

/// The unit a sparse mask decides on.
enum class granularity : std::uint8_t { element, block, tensor };

struct random {
  static constexpr const char* name = "random";  ///< in checkpoints' composition identity
  double beta = 0.5;                     ///< keep probability β
  granularity unit = granularity::tensor;
  std::size_t block = 128;  ///< entries per block for `granularity::block` (power of two ≤ 1024)
  std::uint64_t seed = 0;

  /// Throws std::invalid_argument unless the options are valid for an optimizer computing in T.
  template <class T = double>
  void validate() const {
    flatmin::detail::check_option<T>("mask::random", "beta", beta, flatmin::detail::domain::unit_positive);
    const bool known =
        unit == granularity::element || unit == granularity::block || unit == granularity::tensor;
    flatmin::detail::check_option(known, "mask::random", "unit", static_cast<double>(unit),
                                  "element, block or tensor");
    detail::check_block("mask::random", block);
  }

  template <class T, class Backend>
  class state {
   public:
    /// m(i) = [hash(seed, t, unit(i)) < β] on eligible tensors, 1 elsewhere.
    struct view {
      detail::unit_view<T> units;
      std::uint64_t seed, step, threshold;
      FLATMIN_HD bool operator()(std::size_t i, std::uint32_t flags) const {
        if (!(flags & tensor_flags::mask_eligible)) return true;
        return kernels::bernoulli(kernels::counter_hash(seed, step, units(i)), threshold);
      }
    };
    static constexpr bool norm_over_mask = true;
    static constexpr bool compact = true;  ///< may be compact: see is_compact()

    state(const random& m, const backend::layout<T, Backend>& l)
        : units_(l, kind(m.unit), m.unit == granularity::block ? m.block : 1), uview_(units_.view(l)) {
      m.validate();
      beta_ = m.beta;
    }

    /// Tensor and block units run the ascent and restore over the kept units only.
    bool is_compact() const { return units_.kind() != detail::unit_kind::element; }

    /// Throws std::invalid_argument if `unit` or, with block units, `block` changed since
    /// construction (the optimizer calls it before anything is written).
    void check(const random& m) const {
      units_.check_unchanged("mask::random", "unit / block", kind(m.unit), m.block);
    }

    /// Draws step t's mask (host side: only the compact segment list is built, from the same hash).
    void begin_step(const random& m, std::size_t step) {
      step_ = step;
      seed_ = m.seed;
      beta_ = m.beta;
      threshold_ = kernels::bernoulli_threshold(m.beta);
      if (is_compact())
        range_.build(units_, [&](std::size_t u) {
          return kernels::bernoulli(kernels::counter_hash(seed_, step_, u), threshold_);
        });
    }
    bool refresh(const random&, const backend::layout<T, Backend>&, std::size_t, T) { return false; }

    view get_view() const { return {uview_, seed_, step_, threshold_}; }
    backend::pass_range<T> range(const backend::layout<T, Backend>& l) const {
      return is_compact() ? range_.range(l) : l.full();
    }
    /// Every perturbed entry may be drawn.
    std::size_t saved_size(const backend::layout<T, Backend>& l) const {
      return is_compact() ? units_.dense_elements() + units_.eligible_elements() : l.numel();
    }
    double radius_scale() const { return 1.0 / beta_; }
    std::size_t bytes() const { return units_.bytes() + range_.bytes(); }
    /// No checkpoint entries: the draw of step t is a hash of (seed, t, unit), so the step count
    /// is the generator's whole position.
    template <class F>
    void visit(F&&) {}
    /// Checkpoint identity: the unit kind and size.
    std::string identity(const random&) const {
      switch (units_.kind()) {
        case detail::unit_kind::element: return "random(unit=element)";
        case detail::unit_kind::block:
          return "random(unit=block, block=" + std::to_string(units_.block()) + ")";
        case detail::unit_kind::tensor: break;
      }
      return "random(unit=tensor)";
    }

    const detail::units<T, Backend>& units() const { return units_; }

   private:
    static detail::unit_kind kind(granularity g) {
      switch (g) {
        case granularity::element: return detail::unit_kind::element;
        case granularity::block: return detail::unit_kind::block;
        case granularity::tensor: return detail::unit_kind::tensor;
      }
      return detail::unit_kind::tensor;
    }

    detail::units<T, Backend> units_;
    detail::unit_view<T> uview_;
    detail::compact_range<T, Backend> range_;
    std::uint64_t seed_ = 0, step_ = 0, threshold_ = 0;
    double beta_ = 1;
  };
};

}  // namespace flatmin::mask
