#pragma once
/// @file dynamic.hpp
/// `mask::dynamic` — SSAM-D's drop-and-grow mask (Mi et al., "Make Sharpness-Aware Minimization
/// Stronger: A Sparsified Perturbation Approach", NeurIPS 2022; official code
/// Mi-Peng/Sparse-Sharpness-Aware-Minimization).
///
///     start:       a random set of a₀ = ⌈keep · N⌉ active units (N = eligible units, s = 1 − keep)
///     refresh t:   dr  = dr₀ (1 + cos(π t / T)) / 2              (T = total_steps; dr₀ if T = 0)
///                  keep the top ⌊a (1 − dr)⌋ active units by |g|  (drop the smallest)
///                  grow ⌊min(a · dr, N · s)⌋ units drawn at random among those inactive before t
///     ε = ρ (m ⊙ dir(g)) / (‖norm(g)‖ + ξ)   — the norm over all perturbed entries
///
/// a is the number of active units before the refresh; with the floors, a refresh can leave one
/// unit fewer than it found (the paper's and ALGORITHMS.md's formula, kept as written). The paper
/// counts refreshes and the schedule in epochs; the library counts steps: refresh steps are
/// 1 + T_m, 1 + 2T_m, … and t is the step number. Scores of blocks are Σ|g| over the block.
/// Randomness (the start and each growth) comes from `kernels::counter_hash(seed, t, unit)`, so
/// the same seed gives the same masks on every backend; ties go to the lower unit index.
///
/// Options: keep = 0.5 (s = 0.5), death_rate = 0.5 (dr₀), refresh_every = 1000 steps (the paper:
/// every 5 epochs — set it to 5 × steps per epoch), total_steps = 0 (T; 0 keeps dr = dr₀),
/// block = 1, seed = 0. The granularity is fixed when the optimizer is built.

#include <algorithm>
#include <cmath>
#include <numbers>
#include <stdexcept>
#include <string>
#include <vector>

#include "../backend/layout.hpp"
#include "detail/top_k.hpp"
#include "detail/units.hpp"

namespace flatmin::mask {

struct dynamic {
  static constexpr const char* name = "dynamic";  ///< in checkpoints' composition identity
  double keep = 0.5;                 ///< 1 − s, fraction of eligible units active at the start
  double death_rate = 0.5;           ///< dr₀ in [0, 1]
  std::size_t refresh_every = 1000;  ///< T_m ≥ 1, in steps
  std::size_t total_steps = 0;       ///< T of the cosine schedule (0: constant dr₀)
  std::size_t block = 1;             ///< 1 = entries; else a power of two ≤ 1024
  std::uint64_t seed = 0;

  /// Throws std::invalid_argument unless the options are valid for an optimizer computing in T.
  template <class T = double>
  void validate() const {
    flatmin::detail::check_option<T>("mask::dynamic", "keep", keep, flatmin::detail::domain::unit);
    flatmin::detail::check_option<T>("mask::dynamic", "death_rate", death_rate,
                                     flatmin::detail::domain::unit);
    flatmin::detail::check_option(refresh_every >= 1, "mask::dynamic", "refresh_every",
                                  static_cast<double>(refresh_every), ">= 1");
    detail::check_block("mask::dynamic", block);
  }

  bool refreshes(std::size_t step) const { return step > 1 && (step - 1) % refresh_every == 0; }

  /// dr at step t.
  double rate(std::size_t t) const {
    if (total_steps == 0) return death_rate;
    const double x = std::min(1.0, static_cast<double>(t) / static_cast<double>(total_steps));
    return death_rate * (1 + std::cos(std::numbers::pi * x)) / 2;
  }

  template <class T, class Backend>
  class state {
   public:
    using view = detail::bit_view<T>;
    static constexpr bool norm_over_mask = false;
    static constexpr bool compact = true;  ///< may be compact: see is_compact()

    state(const dynamic& m, const backend::layout<T, Backend>& l)
        : units_(l, m.block > 1 ? detail::unit_kind::block : detail::unit_kind::element, m.block),
          bits_(Backend::template make_vector<std::uint32_t>(units_.words(), 0u)),
          uview_(units_.view(l)) {
      m.validate();
      const auto n = static_cast<double>(units_.eligible_units());
      const auto a0 = static_cast<std::size_t>(std::ceil(m.keep * n));
      const detail::random_key<T> key{uview_, m.seed, 0};
      const auto sel = detail::top_k<Backend>(units_.count(), a0, key, 32);
      Backend::for_each_index(units_.words(), detail::fill_bits<decltype(sel)>{sel, Backend::data(bits_), units_.count()});
      active_ = std::min<std::size_t>(a0, units_.eligible_units());
      bound_ = active_;
      if (is_compact()) rebuild_range();
    }

    bool is_compact() const { return units_.kind() != detail::unit_kind::element; }

    /// Throws std::invalid_argument if `block` changed since construction (the optimizer calls it
    /// before anything is written).
    void check(const dynamic& m) const {
      const auto k = m.block > 1 ? detail::unit_kind::block : detail::unit_kind::element;
      units_.check_unchanged("mask::dynamic", "block", k, m.block);
    }

    void begin_step(const dynamic&, std::size_t) {}

    bool refresh(const dynamic& m, const backend::layout<T, Backend>& l, std::size_t step, T inv_scale) {
      if (!m.refreshes(step) || step == last_step_) return false;  // once per step number (retries keep the mask)
      last_step_ = step;
      const double dr = m.rate(step);
      const double a = static_cast<double>(active_);
      const double n = static_cast<double>(units_.eligible_units());
      const auto keep_n = static_cast<std::size_t>(std::floor(a * (1 - dr)));
      const auto grow_n = static_cast<std::size_t>(std::floor(std::min(a * dr, n * (1 - m.keep))));
      auto old = Backend::template make_vector<std::uint32_t>(units_.words(), 0u);
      Backend::copy(bits_, old);
      auto score = Backend::template make_vector<T>(units_.count(), T(0));
      detail::add_scores(l, units_, Backend::data(score), inv_scale, detail::score_of::magnitude, false);
      const detail::score_key<T> drop_key{Backend::data(score), Backend::data(old), true};
      const detail::random_key<T> grow_key{uview_, m.seed, step, Backend::data(old), false};
      const auto kept = detail::top_k<Backend>(units_.count(), keep_n, drop_key, detail::float_key_bits<T>);
      const auto grown = detail::top_k<Backend>(units_.count(), grow_n, grow_key, 32);
      Backend::for_each_index(units_.words(), detail::fill_bits<detail::either<decltype(kept), decltype(grown)>>{
                                                  {kept, grown}, Backend::data(bits_), units_.count()});
      active_ = std::min(keep_n, active_) + std::min(grow_n, units_.eligible_units() - active_);
      bound_ = std::max(bound_, active_);
      if (is_compact()) rebuild_range();
      return true;
    }

    view get_view() const { return {uview_, Backend::data(bits_)}; }
    backend::pass_range<T> range(const backend::layout<T, Backend>& l) const {
      return is_compact() ? range_.range(l) : l.full();
    }
    std::size_t saved_size(const backend::layout<T, Backend>& l) const {
      if (!is_compact()) return l.numel();
      const std::size_t bound = units_.dense_elements() + std::min(bound_ * units_.block(), units_.eligible_elements());
      return std::max(bound, range_.elements());
    }
    double radius_scale() const { return 1.0; }
    std::size_t bytes() const { return bits_.size() * sizeof(std::uint32_t) + units_.bytes() + range_.bytes(); }
    /// Checkpoint entries: the bits, the bound on active units the saved weights are sized for,
    /// and the last refreshed step (the active count is the bits' popcount).
    template <class F>
    void visit(F&& f) {
      f("dynamic.bits", bits_);
      f("dynamic.bound", bound_);
      f("dynamic.last_step", last_step_);
    }
    /// Checkpoint identity: the unit size fixes the buffers.
    std::string identity(const dynamic&) const {
      return "dynamic(block=" + std::to_string(units_.block()) + ")";
    }
    /// What a checked checkpoint leaves for after_load().
    struct loaded {
      detail::compact_range<T, Backend> range;
      std::size_t active = 0;
      std::size_t saved_size = 0;
    };
    /// Checks the loaded entries before anything is committed: no bit past the unit count or on
    /// a unit that is not a candidate, active units ≤ bound ≤ eligible units, the last refreshed
    /// step at most one past the loaded step count. Throws std::invalid_argument.
    template <class Staged>
    loaded check_load(const Staged& s) const {
      auto fail = [](const std::string& what) {
        return std::invalid_argument("flatmin: load(): mask::dynamic: " + what);
      };
      const auto& bits = s.template buffer<std::uint32_t>("dynamic.bits");
      const auto bound = s.template scalar<std::size_t>("dynamic.bound");
      if (s.template scalar<std::size_t>("dynamic.last_step") > s.steps() + 1)
        throw fail("last refreshed step is past the step count");
      loaded l;
      l.active = detail::check_loaded_bits(units_, bits, "mask::dynamic");
      if (bound > units_.eligible_units() || l.active > bound)
        throw fail(std::to_string(l.active) + " active units and a bound of " + std::to_string(bound) +
                   ": need active <= bound <= " + std::to_string(units_.eligible_units()) +
                   " (eligible units)");
      if (is_compact())
        l.range.build(units_, [&](std::size_t u) { return detail::test_bit(bits.data(), u); });
      const std::size_t b =
          units_.dense_elements() + std::min(bound * units_.block(), units_.eligible_elements());
      l.saved_size = is_compact() ? std::max(b, l.range.elements()) : units_.count();  // element units: N
      return l;
    }
    /// Commits what check_load() built, after the optimizer has swapped the entries in.
    void after_load(loaded& l) noexcept {
      range_.swap(l.range);
      active_ = l.active;
    }

    /// Active units now.
    std::size_t active() const { return active_; }
    const detail::units<T, Backend>& units() const { return units_; }
    std::vector<std::uint32_t> host_bits() const { return Backend::to_host(bits_); }

   private:
    void rebuild_range() { range_.build_from_bits(units_, bits_); }

    detail::units<T, Backend> units_;
    typename Backend::template vector<std::uint32_t> bits_;
    detail::unit_view<T> uview_;
    detail::compact_range<T, Backend> range_;
    std::size_t active_ = 0, bound_ = 0, last_step_ = 0;
  };
};

}  // namespace flatmin::mask
