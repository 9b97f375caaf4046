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
/// memory), still scaled by 1/β. Checkpoints save it (entry "random.bits", present only once a mask
/// is set); a checkpoint without it loads as drawing.
///
/// Sharded (optimizer/data_parallel.hpp): the draw hashes the one-process unit number (the global
/// entry or tensor index, a tensor split between shards being one unit on both), through
/// `set_origin`, so each shard's mask is its part of the one-process mask. Block units are not
/// sharded.
///
/// Options: beta = 0.5 (β in (0, 1]), unit = tensor, block = 128, seed = 0.

#include <cmath>
#include <string>
#include <vector>

#include "../backend/layout.hpp"
#include "../kernels/counter_hash.hpp"
#include "detail/sparse_base.hpp"

namespace flatmin::mask {

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
  class state : public detail::sparse_state<state<T, Backend>, T, Backend> {
    using base = detail::sparse_state<state, T, Backend>;
    friend base;

   public:
    static constexpr const char* where = "mask::random";
    static constexpr const char* unit_option = "unit / block";
    static constexpr const char* bits_entry = "random.bits";
    static constexpr bool bits_optional = true;  ///< saved only once a mask is set
    static constexpr bool norm_over_mask = true;
    /// Draws over the one-process unit numbers when sharded (`set_origin`).
    static constexpr bool numbers_globally = true;
    static detail::unit_spec spec(const random& m) {
      return {m.unit, m.unit == granularity::block ? m.block : std::size_t{1}};
    }

    /// m(i) = [hash(seed, t, unit(i)) < β] on eligible tensors, 1 elsewhere.
    struct view {
      detail::unit_view<T> units;
      std::uint64_t seed, step, threshold;
      const std::uint32_t* fixed = nullptr;  ///< a set mask's bits (one per unit), or null: the draw
      std::uint64_t origin = 0;              ///< this shard's first unit in the one-process numbering
      FLATMIN_HD bool operator()(std::size_t i, std::uint32_t flags) const {
        if (!(flags & tensor_flags::mask_eligible)) return true;
        if (fixed) return detail::test_bit(fixed, units(i));
        return kernels::bernoulli(kernels::counter_hash(seed, step, units(i) + origin), threshold);
      }
    };

    state(const random& m, const backend::layout<T, Backend>& l) : base(l, spec(m), false) {
      m.validate();
      now_ = next_ = {m.seed, 0, kernels::bernoulli_threshold(m.beta), m.beta};
    }

    /// Draws step t's mask, pending until commit_step(). With compact units the step's segment list
    /// is built on the host from the same hash; a set mask's list does not change between steps.
    void begin_step(const random& m, std::size_t step) {
      next_ = {m.seed, step, kernels::bernoulli_threshold(m.beta), m.beta};
      draw_pending_ = true;
      if (this->bits_.empty())
        this->stage_range(true, [&] {
          this->range_next_.build(this->units_, [&](std::size_t u) { return on(next_, u); });
        });
    }
    bool refresh(const random&, const backend::layout<T, Backend>&, std::size_t, T) { return false; }

    view get_view() const {
      const draw& d = draw_pending_ ? next_ : now_;
      return {this->uview_, d.seed, d.step, d.threshold, fixed(), origin_};
    }

    /// Sharded (data_parallel, through the optimizer's set_stats_reducer): this shard begins at
    /// flat index `first_index` of the one-process layout, inside its tensor `first_tensor`; the
    /// draws then hash the one-process unit numbers. Throws usage_error for block units at a
    /// non-zero origin.
    void set_origin(std::uint64_t first_index, std::uint64_t first_tensor) {
      switch (this->units_.kind()) {
        case granularity::element:
          origin_ = first_index;
          break;
        case granularity::tensor:
          origin_ = first_tensor;
          break;
        case granularity::block:
          if (first_index == 0) {
            origin_ = 0;
            break;
          }
          throw usage_error("flatmin: mask::random with block units is not sharded yet (use unit = tensor "
                            "or element)");
      }
    }
    double radius_scale() const { return 1.0 / (draw_pending_ ? next_.beta : now_.beta); }
    /// Checkpoint identity: the unit kind and size.
    std::string identity(const random&) const {
      switch (this->units_.kind()) {
        case granularity::element:
          return "random(unit=element)";
        case granularity::block:
          return "random(unit=block, block=" + std::to_string(this->units_.block()) + ")";
        case granularity::tensor:
          break;
      }
      return "random(unit=tensor)";
    }

    /// The mask of tensor t, one byte per entry: the last applied step's draw, or the set mask.
    std::vector<std::uint8_t> entry_mask(const backend::layout<T, Backend>& l, std::size_t t) const {
      if (fixed()) return base::entry_mask(l, t);
      return detail::entry_mask(this->units_, t, [&](std::size_t u) { return on(now_, u); });
    }

   private:
    struct draw {
      std::uint64_t seed, step, threshold;
      double beta;
    };
    /// The draw of local unit u.
    bool on(const draw& d, std::size_t u) const {
      return kernels::bernoulli(kernels::counter_hash(d.seed, d.step, u + origin_), d.threshold);
    }
    const std::uint32_t* fixed() const { return this->bits_.empty() ? nullptr : Backend::data(this->bits_); }

    /// Every unit may be drawn.
    std::size_t active_bound() const { return this->units_.eligible_units(); }
    void on_commit(bool) {
      if (draw_pending_) now_ = next_;
    }
    void on_abandon() { draw_pending_ = false; }
    /// The first set_entry_mask() starts from the last applied step's draw (no step draws again),
    /// on the candidate units only (the others' bits are never read, and a load refuses them).
    std::vector<std::uint32_t> initial_bits() const {
      std::vector<std::uint32_t> h(this->units_.words(), 0u);
      const auto& ts = this->units_.host_tensors();
      const auto& first = this->units_.host_base();
      for (std::size_t t = 0; t < ts.size(); ++t)
        if (detail::candidate_flags(ts[t].flags))
          for (std::uint64_t u = first[t]; u < first[t + 1]; ++u)
            if (on(now_, u)) h[u >> 5] |= 1u << (u & 31);
      return h;
    }
    /// The draws need no entry: the draw of step t is a hash of (seed, t, unit), so the step count
    /// is the generator's whole position; it becomes the last applied step's draw here.
    void on_load(typename base::loaded& l) noexcept {
      now_.step = l.steps;
      draw_pending_ = false;
    }

    draw now_{}, next_{};  ///< the last applied step's draw, and this step's
    bool draw_pending_ = false;
    std::uint64_t origin_ = 0;  ///< set_origin(): the first unit's one-process number
  };
};

}  // namespace flatmin::mask
