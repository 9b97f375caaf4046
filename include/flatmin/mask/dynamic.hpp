#pragma once
/// @file dynamic.hpp
/// `mask::dynamic` — SSAM-D's drop-and-grow mask (Mi et al., "Make Sharpness-Aware Minimization
/// Stronger: A Sparsified Perturbation Approach", NeurIPS 2022; official code
/// Mi-Peng/Sparse-Sharpness-Aware-Minimization, solver/sam.py, class SSAMD).
///
/// N eligible units, sparsity s, x = N − N·s; every count is the official code's expression
/// evaluated in IEEE double, as Python evaluates it, from s itself (never from 1 − s, whose
/// rounding changes counts: 195 × (1 − 0.8) floors to 38, 195 × 0.2 to 39), then truncated:
///
///     start:        a random set of a₀ = N − ⌈N·s⌉ active units
///     refresh t:    dr   = dr₀ (1 + cos(π (t − 1) / T)) / 2        (T = total_steps; dr₀ if T = 0)
///                   kept = ⌊x (1 − dr)⌋ active units, the largest |g| (drop the others)
///                   grow = ⌊min(x · dr, N · s)⌋ units drawn at random among those inactive before t
///     ε = ρ (m ⊙ dir(g)) / (‖norm(g)‖ + ξ)   — the norm over all perturbed entries
///
/// The official counts do not keep the density: kept and grow come from the nominal count x, not
/// from the active count, so after the first refresh a = kept + grow, e.g. 78 + 39 = 117 of 195 at
/// s = 0.2, dr = 0.5 (density 0.6, not 0.8), and 0.5·x + min(0.5·x, N·s) in general at dr = 0.5.
/// When kept exceeds the active units (late in a cosine schedule), the official code tops the
/// kept set up with arbitrary inactive units (ties of zero scores in torch.topk, which can also
/// trip its own assertion); flatmin grows the difference at random among the inactive, so the
/// active count is still the official kept + grow. `counts = dynamic_counts::constant` keeps the
/// density instead: a₀ units after every refresh (kept = max(⌊a₀ (1 − dr)⌋, 2a₀ − N), grow =
/// a₀ − kept).
///
/// Timing (the official code's): the mask is refreshed after the ascent of steps 1, 1 + T_m,
/// 1 + 2T_m, … (the official loop refreshes after `first_step` at the first batch of every
/// update epoch, epochs counted from 0), from that step's g at w, and used from the next step on:
/// step 1 is perturbed with the random start, steps 2 … 1 + T_m with the first refreshed mask.
/// The official death-rate schedule counts epochs from 0; the library counts steps, so t − 1
/// replaces the epoch and T is total_steps (set it to epochs × steps per epoch). Scores of blocks
/// are Σ|g| over the block. Randomness (the start and each growth) comes from
/// `kernels::counter_hash(seed, t, unit)`, so the same seed gives the same masks on every
/// backend; ties go to the lower unit index.
///
/// Skipped and cancelled steps leave the state as it was: a refresh writes a second bit buffer and
/// segment list, which become the mask only when the optimizer applies the step (`commit_step()`);
/// `abandon_step()` drops them. Memory: two bits per unit and two segment lists (see bytes()).
///
/// Options: sparsity = 0.5 (s), death_rate = 0.5 (dr₀), refresh_every = 1000 steps (the paper:
/// every 5 epochs — set it to 5 × steps per epoch), total_steps = 0 (T; 0 keeps dr = dr₀),
/// block = 1, seed = 0, counts = official, frozen = false (no refreshes: the mask stays as it is,
/// e.g. one set with the optimizer's `set_mask()`). The granularity is fixed when the optimizer is
/// built.

#include <algorithm>
#include <cmath>
#include <numbers>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "../backend/layout.hpp"
#include "detail/top_k.hpp"
#include "detail/units.hpp"

namespace flatmin::mask {

/// How `mask::dynamic` counts the units it keeps and grows (see the header comment).
enum class dynamic_counts : std::uint8_t { official, constant };

struct dynamic {
  static constexpr const char* name = "dynamic";  ///< in checkpoints' composition identity
  double sparsity = 0.5;                          ///< s, fraction of eligible units not perturbed, in [0, 1]
  double death_rate = 0.5;                        ///< dr₀ in [0, 1]
  std::size_t refresh_every = 1000;               ///< T_m ≥ 1, in steps
  std::size_t total_steps = 0;                    ///< T of the cosine schedule (0: constant dr₀)
  std::size_t block = 1;                          ///< 1 = entries; else a power of two ≤ 1024
  std::uint64_t seed = 0;
  dynamic_counts counts = dynamic_counts::official;
  bool frozen = false;  ///< no refreshes: the mask stays as it is

  /// Throws std::invalid_argument unless the options are valid for an optimizer computing in T.
  template <class T = double>
  void validate() const {
    flatmin::detail::check_option<T>("mask::dynamic", "sparsity", sparsity, flatmin::detail::domain::unit);
    flatmin::detail::check_option<T>("mask::dynamic", "death_rate", death_rate,
                                     flatmin::detail::domain::unit);
    flatmin::detail::check_option(counts == dynamic_counts::official || counts == dynamic_counts::constant,
                                  "mask::dynamic", "counts", static_cast<double>(counts),
                                  "official or constant");
    flatmin::detail::check_option(refresh_every >= 1, "mask::dynamic", "refresh_every",
                                  static_cast<double>(refresh_every), ">= 1");
    detail::check_block("mask::dynamic", block);
  }

  /// Whether the mask is refreshed after the ascent of `step` (1-based).
  bool refreshes(std::size_t step) const { return !frozen && step >= 1 && (step - 1) % refresh_every == 0; }

  /// dr at the refresh of step t.
  double rate(std::size_t t) const {
    if (total_steps == 0) return death_rate;
    const double x = std::min(1.0, static_cast<double>(t - 1) / static_cast<double>(total_steps));
    return death_rate * (1 + std::cos(std::numbers::pi * x)) / 2;
  }

  /// a₀ = N − ⌈N·s⌉ active units at the start, of n eligible units.
  std::size_t start_count(std::size_t n) const {
    const double nd = static_cast<double>(n);
    return n - std::min(n, static_cast<std::size_t>(std::ceil(nd * sparsity)));
  }

  /// {kept, grown} at a refresh with death rate dr, of n eligible units (before clamping to the
  /// active and inactive units).
  std::pair<std::size_t, std::size_t> refresh_counts(std::size_t n, double dr) const {
    const double nd = static_cast<double>(n);
    if (counts == dynamic_counts::constant) {
      const std::size_t a0 = start_count(n);
      std::size_t kept = static_cast<std::size_t>(static_cast<double>(a0) * (1 - dr));
      kept = std::min(a0, std::max(kept, a0 - std::min(a0, n - a0)));  // grow at most the inactive units
      return {kept, a0 - kept};
    }
    const double x = nd - nd * sparsity;
    return {static_cast<std::size_t>(x * (1 - dr)),
            static_cast<std::size_t>(std::min(x * dr, nd * sparsity))};
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
          bits_next_(Backend::template make_vector<std::uint32_t>(units_.words(), 0u)),
          uview_(units_.view(l)) {
      m.validate();
      const std::size_t n = units_.eligible_units();
      const std::size_t a0 = m.start_count(n);
      const detail::random_key<T> key{uview_, m.seed, 0};
      const auto sel = detail::top_k<Backend>(units_.count(), a0, key, 32);
      Backend::for_each_index(units_.words(),
                              detail::fill_bits<decltype(sel)>{sel, Backend::data(bits_), units_.count()});
      active_ = a0;
      // Every refresh leaves at most ⌊x (1 − dr)⌋ + ⌊x dr⌋ ≤ ⌊x⌋ + 1 units (+ 1 for rounding).
      const double nd = static_cast<double>(n);
      bound_ = std::min(n, std::max(a0, static_cast<std::size_t>(nd - nd * m.sparsity) + 1));
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

    /// On a refresh step, computes the next mask from g at w (pending until commit_step()). The
    /// ascent of this step keeps the current mask, so this returns false.
    bool refresh(const dynamic& m, const backend::layout<T, Backend>& l, std::size_t step, T inv_scale) {
      pending_ = false;
      if (!m.refreshes(step)) return false;
      const std::size_t n = units_.eligible_units();
      const auto [kept_n, grow_n] = m.refresh_counts(n, m.rate(step));
      const std::size_t kept = std::min(kept_n, active_);
      const std::size_t grow = std::min(grow_n + (kept_n - kept), n - active_);
      auto score = Backend::template make_vector<T>(units_.count(), T(0));
      detail::add_scores(l, units_, Backend::data(score), static_cast<const T*>(nullptr), inv_scale,
                         detail::score_of::magnitude);
      const std::uint32_t* old = Backend::data(bits_);
      const detail::score_key<T> drop_key{Backend::data(score), old, true};
      const detail::random_key<T> grow_key{uview_, m.seed, step, old, false};
      const auto k = detail::top_k<Backend>(units_.count(), kept, drop_key, detail::float_key_bits<T>);
      const auto g = detail::top_k<Backend>(units_.count(), grow, grow_key, 32);
      Backend::for_each_index(units_.words(), detail::fill_bits<detail::either<decltype(k), decltype(g)>>{
                                                  {k, g}, Backend::data(bits_next_), units_.count()});
      active_next_ = kept + grow;
      pending_ = true;
      if (is_compact()) range_next_.build_from_bits(units_, bits_next_);
      return false;
    }

    /// The optimizer applied the step: a pending refresh becomes the mask.
    void commit_step() {
      if (!pending_) return;
      bits_.swap(bits_next_);
      range_.swap(range_next_);
      active_ = active_next_;
      pending_ = false;
    }
    /// The step was skipped or cancelled: a pending refresh is dropped.
    void abandon_step() { pending_ = false; }

    view get_view() const { return {uview_, Backend::data(bits_)}; }
    backend::range_of<T, Backend> range(const backend::layout<T, Backend>& l) const {
      return is_compact() ? range_.range(l) : l.full();
    }
    /// Dense storage for element masks; for block masks a bound on the active blocks' entries over
    /// every refresh (and on the current mask, which set_entry_mask() or load() may have made larger).
    std::size_t saved_size(const backend::layout<T, Backend>& l) const {
      if (!is_compact()) return l.numel();
      const std::size_t bound =
          units_.dense_elements() + std::min(bound_ * units_.block(), units_.eligible_elements());
      return std::max({bound, range_.elements(), range_next_.elements()});
    }
    double radius_scale() const { return 1.0; }
    /// Both bit buffers and segment lists (the second makes skipped steps free of side effects).
    std::size_t bytes() const {
      return (bits_.size() + bits_next_.size()) * sizeof(std::uint32_t) + units_.bytes() + range_.bytes() +
             range_next_.bytes();
    }
    template <class F>
    void visit(F&& f) {
      f("dynamic.bits", bits_);
      f("dynamic.bound", bound_);
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
    /// a unit that is not a candidate, active units ≤ bound ≤ eligible units. Throws std::invalid_argument.
    template <class Staged>
    loaded check_load(const Staged& s) const {
      auto fail = [](const std::string& what) {
        return std::invalid_argument("flatmin: load(): mask::dynamic: " + what);
      };
      const auto& bits = s.template buffer<std::uint32_t>("dynamic.bits");
      const auto bound = s.template scalar<std::size_t>("dynamic.bound");
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

    /// The mask of tensor t, one byte per entry (introspection; see detail::entry_mask).
    std::vector<std::uint8_t> entry_mask(const backend::layout<T, Backend>&, std::size_t t) const {
      const auto h = Backend::to_host(bits_);
      return detail::entry_mask(units_, t, [&](std::size_t u) { return detail::test_bit(h.data(), u); });
    }
    /// Sets the mask of tensor t (validated by detail::set_entry_mask). Later refreshes start from
    /// it; set `frozen` for it to stay.
    void set_entry_mask(const backend::layout<T, Backend>&, std::size_t t,
                        const std::vector<std::uint8_t>& mask) {
      auto h = Backend::to_host(bits_);
      detail::set_entry_mask(units_, h, t, mask);
      bits_ = Backend::from_host(h);
      recount();
      if (is_compact()) rebuild_range();
    }

    /// Active units now.
    std::size_t active() const { return active_; }
    const detail::units<T, Backend>& units() const { return units_; }
    std::vector<std::uint32_t> host_bits() const { return Backend::to_host(bits_); }

   private:
    void rebuild_range() { range_.build_from_bits(units_, bits_); }
    void recount() {
      active_ = static_cast<std::size_t>(Backend::template reduce_index<double>(
          units_.words(), detail::popcount_word{Backend::data(bits_)}));
    }

    detail::units<T, Backend> units_;
    typename Backend::template vector<std::uint32_t> bits_, bits_next_;
    detail::unit_view<T> uview_;
    detail::compact_range<T, Backend> range_, range_next_;
    std::size_t active_ = 0, bound_ = 0, active_next_ = 0;
    bool pending_ = false;
  };
};

}  // namespace flatmin::mask
