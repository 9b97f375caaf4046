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
/// The draw of a step becomes the state (what `entry_mask()` reports) only when the optimizer
/// applies the step (`commit_step()`); a skipped or cancelled step leaves the last applied step's
/// draw (step 0's before the first). A mask set with `set_entry_mask()` (the optimizer's
/// `set_mask()`) replaces the draws: from then on every step uses it (one bit per unit in backend
/// memory), still scaled by 1/β.
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
  double beta = 0.5;                             ///< keep probability β
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
      const std::uint32_t* fixed = nullptr;  ///< a set mask's bits (one per unit), or null: the draw
      FLATMIN_HD bool operator()(std::size_t i, std::uint32_t flags) const {
        if (!(flags & tensor_flags::mask_eligible)) return true;
        if (fixed) return detail::test_bit(fixed, units(i));
        return kernels::bernoulli(kernels::counter_hash(seed, step, units(i)), threshold);
      }
    };
    static constexpr bool norm_over_mask = true;
    static constexpr bool compact = true;  ///< may be compact: see is_compact()

    state(const random& m, const backend::layout<T, Backend>& l)
        : units_(l, kind(m.unit), m.unit == granularity::block ? m.block : 1), uview_(units_.view(l)) {
      m.validate();
      beta_ = m.beta;
      seed_ = m.seed;
      threshold_ = kernels::bernoulli_threshold(m.beta);
      next_ = {seed_, step_, threshold_, beta_};
    }

    /// Tensor and block units run the ascent and restore over the kept units only.
    bool is_compact() const { return units_.kind() != detail::unit_kind::element; }

    /// Throws std::invalid_argument if `unit` or, with block units, `block` changed since
    /// construction (the optimizer calls it before anything is written).
    void check(const random& m) const {
      units_.check_unchanged("mask::random", "unit / block", kind(m.unit), m.block);
    }

    /// Draws step t's mask (host side: only the compact segment list is built, from the same hash),
    /// pending until commit_step().
    void begin_step(const random& m, std::size_t step) {
      next_ = {m.seed, step, kernels::bernoulli_threshold(m.beta), m.beta};
      pending_ = true;
      if (is_compact()) {
        if (!fixed_.empty()) {
          const auto h = Backend::to_host(fixed_);
          range_next_.build(units_, [&](std::size_t u) { return detail::test_bit(h.data(), u); });
        } else {
          range_next_.build(units_, [&](std::size_t u) { return on(next_, u); });
        }
      }
    }
    bool refresh(const random&, const backend::layout<T, Backend>&, std::size_t, T) { return false; }

    /// The optimizer applied the step: its draw becomes the state.
    void commit_step() {
      if (!pending_) return;
      seed_ = next_.seed, step_ = next_.step, threshold_ = next_.threshold, beta_ = next_.beta;
      range_.swap(range_next_);
      pending_ = false;
    }
    /// The step was skipped or cancelled: its draw is dropped.
    void abandon_step() { pending_ = false; }

    view get_view() const {
      const draw& d = pending_ ? next_ : draw{seed_, step_, threshold_, beta_};
      return {uview_, d.seed, d.step, d.threshold, fixed_.empty() ? nullptr : Backend::data(fixed_)};
    }
    backend::range_of<T, Backend> range(const backend::layout<T, Backend>& l) const {
      return is_compact() ? (pending_ ? range_next_ : range_).range(l) : l.full();
    }
    /// Every perturbed entry may be drawn.
    std::size_t saved_size(const backend::layout<T, Backend>& l) const {
      return is_compact() ? units_.dense_elements() + units_.eligible_elements() : l.numel();
    }
    double radius_scale() const { return 1.0 / (pending_ ? next_.beta : beta_); }
    std::size_t bytes() const {
      return units_.bytes() + range_.bytes() + range_next_.bytes() + fixed_.size() * sizeof(std::uint32_t);
    }
    /// No checkpoint entries: the draw of step t is a hash of (seed, t, unit), so the step count
    /// is the generator's whole position. (A mask set with set_entry_mask() is not saved.)
    template <class F>
    void visit(F&&) {}
    /// Checkpoint identity: the unit kind and size.
    std::string identity(const random&) const {
      switch (units_.kind()) {
        case detail::unit_kind::element:
          return "random(unit=element)";
        case detail::unit_kind::block:
          return "random(unit=block, block=" + std::to_string(units_.block()) + ")";
        case detail::unit_kind::tensor:
          break;
      }
      return "random(unit=tensor)";
    }

    /// The mask of tensor t, one byte per entry: the last applied step's draw, or the set mask.
    std::vector<std::uint8_t> entry_mask(const backend::layout<T, Backend>&, std::size_t t) const {
      if (!fixed_.empty()) {
        const auto h = Backend::to_host(fixed_);
        return detail::entry_mask(units_, t, [&](std::size_t u) { return detail::test_bit(h.data(), u); });
      }
      const draw d{seed_, step_, threshold_, beta_};
      return detail::entry_mask(units_, t, [&](std::size_t u) { return on(d, u); });
    }
    /// Sets the mask of tensor t; the first call fixes every tensor's mask to the current draw
    /// first, and no step draws again.
    void set_entry_mask(const backend::layout<T, Backend>&, std::size_t t,
                        const std::vector<std::uint8_t>& mask) {
      std::vector<std::uint32_t> h;
      if (fixed_.empty()) {
        h.assign(units_.words(), 0u);
        const draw d{seed_, step_, threshold_, beta_};
        for (std::size_t u = 0; u < units_.count(); ++u)
          if (on(d, u)) h[u >> 5] |= 1u << (u & 31);
      } else {
        h = Backend::to_host(fixed_);
      }
      detail::set_entry_mask(units_, h, t, mask);
      fixed_ = Backend::from_host(h);
      if (is_compact()) range_.build(units_, [&](std::size_t u) { return detail::test_bit(h.data(), u); });
    }

    const detail::units<T, Backend>& units() const { return units_; }

   private:
    static detail::unit_kind kind(granularity g) {
      switch (g) {
        case granularity::element:
          return detail::unit_kind::element;
        case granularity::block:
          return detail::unit_kind::block;
        case granularity::tensor:
          return detail::unit_kind::tensor;
      }
      return detail::unit_kind::tensor;
    }

    struct draw {
      std::uint64_t seed, step, threshold;
      double beta;
    };
    static bool on(const draw& d, std::size_t u) {
      return kernels::bernoulli(kernels::counter_hash(d.seed, d.step, u), d.threshold);
    }

    detail::units<T, Backend> units_;
    detail::unit_view<T> uview_;
    detail::compact_range<T, Backend> range_, range_next_;
    std::uint64_t seed_ = 0, step_ = 0, threshold_ = 0;
    double beta_ = 1;
    draw next_{};
    bool pending_ = false;
    typename Backend::template vector<std::uint32_t> fixed_;
  };
};

}  // namespace flatmin::mask
