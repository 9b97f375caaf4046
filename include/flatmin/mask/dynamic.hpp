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
/// Sharded data-parallel runs (optimizer/data_parallel.hpp, element units): N counts every
/// process's eligible units, the start, the drop and the growth are selections over all of them
/// (histograms summed across the processes) and the draws hash the global unit index, so each
/// shard's mask is its part of the one-process mask.
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
#include "detail/sparse_base.hpp"
#include "detail/top_k.hpp"

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
  class state : public detail::sparse_state<state<T, Backend>, T, Backend> {
    using base = detail::sparse_state<state, T, Backend>;
    friend base;

   public:
    static constexpr const char* where = "mask::dynamic";
    static constexpr const char* unit_option = "block";
    static constexpr const char* bits_entry = "dynamic.bits";
    static constexpr bool bits_optional = false;
    static constexpr bool norm_over_mask = false;
    static detail::unit_spec spec(const dynamic& m) { return detail::block_units(m.block); }

    /// Selects across the processes of a sharded run (set_span): the counts are of every
    /// process's eligible units, the drop and the growth are global top-k selections, and the
    /// random keys hash the global unit index (element units).
    static constexpr bool spans_processes = true;

    state(const dynamic& m, const backend::layout<T, Backend>& l) : base(l, spec(m), true) {
      m.validate();
      const std::size_t n = this->units_.eligible_units();
      const std::size_t a0 = draw_start(m);
      // Every refresh leaves at most ⌊x (1 − dr)⌋ + ⌊x dr⌋ ≤ ⌊x⌋ + 1 units (+ 1 for rounding).
      const double nd = static_cast<double>(n);
      bound_ = std::min(n, std::max(a0, static_cast<std::size_t>(nd - nd * m.sparsity) + 1));
      if (this->is_compact()) this->range_.build_from_bits(this->units_, this->bits_);
    }

    /// On a refresh step, computes the next mask from g at w (pending until commit_step()). The
    /// ascent of this step keeps the current mask, so this returns false. The scores' buffer is
    /// allocated at the first refresh and reused. In a sharded run the active count is first
    /// summed over the processes (a set mask or a loaded checkpoint counted only its shard).
    bool refresh(const dynamic& m, const backend::layout<T, Backend>& l, std::size_t step, T inv_scale) {
      this->abandon_step();
      if (!m.refreshes(step)) return false;
      const detail::span& sp = this->span_;
      if (sp.spans()) {
        std::vector<std::uint64_t> a{this->count_bits(Backend::to_host(this->bits_))};
        sp.sum(a);
        active_ = static_cast<std::size_t>(a[0]);
      }
      const std::size_t n = eligible(), count = this->units_.count();
      const auto [kept_n, grow_n] = m.refresh_counts(n, m.rate(step));
      const std::size_t kept = std::min(kept_n, active_);
      const std::size_t grow = std::min(grow_n + (kept_n - kept), n - active_);
      if (score_.size() != count) score_ = Backend::template make_vector<T>(count, T(0));
      detail::add_scores(l, this->units_, Backend::data(score_), static_cast<const T*>(nullptr), inv_scale,
                         detail::score_of::magnitude);
      const std::uint32_t* old = Backend::data(this->bits_);
      const detail::score_key<T> drop_key{Backend::data(score_), old, true};
      const detail::random_key<T> grow_key{this->uview_, m.seed, step, old, false, sp.offset};
      const auto k = detail::top_k<Backend>(count, kept, drop_key, detail::float_key_bits<T>, sp);
      const auto g = detail::top_k<Backend>(count, grow, grow_key, 32, sp);
      using fill = detail::fill_bits<detail::either<decltype(k), decltype(g)>>;
      Backend::for_each_index(this->units_.words(), fill{{k, g}, Backend::data(this->bits_next_), count});
      active_next_ = kept + grow;
      this->stage_bits(false);
      return false;
    }

    /// Checkpoint identity: the unit size fixes the buffers.
    std::string identity(const dynamic&) const {
      return "dynamic(block=" + std::to_string(this->units_.block()) + ")";
    }
    /// Active units now (in a sharded run: of every process, as of the last refresh).
    std::size_t active() const { return active_; }

   private:
    std::size_t eligible() const { return this->all_eligible_units(); }
    /// The start mask: a₀ units of the eligible ones at random (hash of the global unit index).
    std::size_t draw_start(const dynamic& m) {
      const detail::span& sp = this->span_;
      const std::size_t a0 = m.start_count(eligible()), count = this->units_.count();
      const detail::random_key<T> key{this->uview_, m.seed, 0, nullptr, false, sp.offset};
      const auto sel = detail::top_k<Backend>(count, a0, key, 32, sp);
      Backend::for_each_index(this->units_.words(),
                              detail::fill_bits<decltype(sel)>{sel, Backend::data(this->bits_), count});
      active_ = a0;
      return a0;
    }
    /// A sharded run: the start mask again, over every process's units. The bound of active units
    /// becomes this shard's eligible units (a global selection may put more of them in one shard
    /// than its share; element units, so the bound sizes nothing).
    void on_span(const dynamic& m) {
      draw_start(m);
      if (this->span_.spans()) bound_ = this->units_.eligible_units();
      if (this->is_compact()) this->range_.build_from_bits(this->units_, this->bits_);
    }
    /// A bound on the active units over every refresh.
    std::size_t active_bound() const { return bound_; }
    /// The bound follows what the mask holds: a loaded checkpoint's bound (checked only against
    /// its own bits) may be below what the next refresh's counts give, and a checkpoint saved after
    /// that refresh must load again (found by fuzzing load()). Sharded, the shard's eligible units.
    void raise_bound() {
      bound_ = this->span_.spans() ? this->units_.eligible_units()
                                   : std::max(bound_, std::min(active_, this->units_.eligible_units()));
    }
    void on_commit(bool refreshed) {
      if (refreshed) {
        active_ = active_next_;
        raise_bound();
      }
    }
    void on_bits_set(const std::vector<std::uint32_t>& h) {
      active_ = this->count_bits(h);
      raise_bound();
    }
    std::size_t extra_bytes() const { return score_.size() * sizeof(T); }
    template <class F>
    void visit_more(F& f) {
      f("dynamic.bound", bound_);
    }
    /// Active units ≤ bound ≤ eligible units; returns the bound.
    template <class Staged>
    std::size_t check_more(const Staged& s, std::size_t active) const {
      const auto bound = s.template scalar<std::size_t>("dynamic.bound");
      if (bound > this->units_.eligible_units() || active > bound)
        throw std::invalid_argument("flatmin: load(): mask::dynamic: " + std::to_string(active) +
                                    " active units and a bound of " + std::to_string(bound) +
                                    ": need active <= bound <= " +
                                    std::to_string(this->units_.eligible_units()) + " (eligible units)");
      return bound;
    }
    void on_load(typename base::loaded& l) noexcept { active_ = l.active; }

    typename Backend::template vector<T> score_;  ///< |g| per unit at a refresh (scratch)
    std::size_t active_ = 0, bound_ = 0, active_next_ = 0;
  };
};

}  // namespace flatmin::mask
