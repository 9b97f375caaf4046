#pragma once
/// @file fisher.hpp
/// `mask::fisher` — perturb only the entries (or blocks) with the largest Fisher-diagonal estimate.
///
///     every T_m steps:  F_u = Σ (estimator below) over the entries of unit u
///                       m   = top-k of F over the eligible units, k = ⌊keep · |eligible units|⌋
///     ε = ρ (m ⊙ dir(g)) / (‖norm(g)‖ + ξ)    — the norm over ALL perturbed entries (not only m)
///
/// FSAM (Zhong et al., Findings of EMNLP 2022) and SSAM-F (Mi et al., NeurIPS 2022). Units are
/// entries (`block = 1`) or blocks of `block` contiguous entries of one tensor (scored by the sum
/// of their entries' estimates). Tensors with `mask_eligible = false` are perturbed densely and are
/// not candidates; tensors with `perturb = false` are neither. Ties go to the lower unit index;
/// exactly k units are selected (exact top-k in O(N): a sampled bracket of the k-th score and one
/// counting pass, radix selection inside the bracket, `detail/score_top_k.hpp`).
///
/// Estimators (`source`):
/// - `accumulated` (default): Σ g_t² over the steps since the last refresh, the refresh step's own
///   gradient included. The official FSAM code uses the squared current batch gradient only:
/// - `current_batch`: g² of the refresh step (no pass on other steps);
/// - `per_example` (SSAM-F): Σ_{n<N_s} (∂ℓ_n/∂w)² over N_s single examples, collected on refresh
///   steps from an objective with `example_gradient(n)` (concept `example_objective`; the closure
///   protocol calls it N_s times before the batch gradient), or in the two-call protocol by calling
///   `opt.mask_state().add_example(opt.mask(), opt.layout())` after each example's backward pass
///   while `wants_examples(opt.mask(), step)` holds. Until any example arrives the state falls back
///   to the `accumulated` estimator.
///
/// Refresh steps (`schedule`):
/// - `library` (default): 1, 1 + T_m, 1 + 2T_m, … (the first mask comes from the first gradient);
///   with `empty_start` step 1 is not a refresh step and the steps before the first refresh perturb
///   only the ineligible tensors.
/// - `ssam_official` (the official SSAM-F timing): only step 1 is unperturbed (no mask yet), and
///   the mask is recomputed before steps 2, 2 + T_m, 2 + 2T_m, … — the official code recomputes it
///   right after the first step of every update epoch, at the weights the next step starts from
///   (a new mask at steps 2, 7, 12 with T_m = 5). `empty_start` is then irrelevant.
/// The refresh happens after the gradient is known to be finite and before the ascent, so a
/// refresh step is perturbed with its new mask; `unperturbed_refresh = true` instead perturbs
/// nothing on a refresh step (ε = 0 on every entry, ineligible dense tensors included), as the
/// official FSAM code does: its `set_fisher_mask` zeroes every parameter's gradient
/// (`model.zero_grad()`) before the ascent of that step (WHU-ZQH/FSAM4PLM,
/// fairseq-FSAM/optim/samsgd.py), so the step descends along the clean gradient.
/// Departure from the official SSAM-F: it does not zero the gradients before its Fisher pass, so
/// its first example's squared gradient includes the previous step's g_adv; flatmin's examples are
/// the examples' gradients only.
///
/// Skipped and cancelled steps leave the state as it was: an estimate and a refresh are written to
/// a second buffer of sums and bits (and a second segment list) and become the state only when the
/// optimizer applies the step (`commit_step()`); `abandon_step()` drops them. No extra pass: the
/// estimate reads the committed sums and writes the other buffer, the same traffic as in place.
/// The cost is memory: one more T per unit and one more bit per unit (see bytes()).
/// A non-finite per-example gradient (found by the pass that adds its squares) makes the step skip
/// (`nonfinite_examples()`, `skip_reason::nonfinite_example_gradient`).
///
/// Storage: two bits per unit, two T per unit for F, and, with blocks, saved weights for the active
/// blocks only plus two segment lists, so that the ascent and restore passes touch only those
/// blocks. From 2^19 units on, the selection's buffers are kept for the next refresh: 2^16 T of
/// sampled scores (device and host) and 8 + sizeof(T) bytes per unit of the bracket's band (about
/// 2 % of the units at keep = 0.1, at most a quarter). The granularity (`block`) is fixed when the
/// optimizer is built; `keep` may change between steps. `frozen = true` stops estimates and
/// refreshes (a mask set with `set_entry_mask()` / the optimizer's `set_mask()`, or one frozen for
/// an experiment, stays).
///
/// Sharded data-parallel runs (optimizer/data_parallel.hpp, element units): each process scores
/// its shard, k is ⌊keep · eligible units of every process⌋, and the top-k is one selection over
/// all of them (histograms summed across the processes, ties to the lower global index), so each
/// shard's mask is its part of the one-process mask. The per-example estimator is refused there.
///
/// Options: keep = 0.1, refresh_every = 100, block = 1, source = accumulated, examples = 16,
/// empty_start = false, schedule = library, unperturbed_refresh = false, frozen = false.

#include <algorithm>
#include <cmath>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "../backend/layout.hpp"
#include "../concepts/objective.hpp"
#include "detail/score_top_k.hpp"
#include "detail/sparse_base.hpp"

namespace flatmin::mask {

/// Which Fisher-diagonal estimate `mask::fisher` uses.
enum class fisher_estimator : std::uint8_t { accumulated, current_batch, per_example };

/// When `mask::fisher` recomputes its mask (see the header comment).
enum class fisher_schedule : std::uint8_t { library, ssam_official };

struct fisher {
  static constexpr const char* name = "fisher";  ///< in checkpoints' composition identity
  double keep = 0.1;                             ///< fraction of eligible units perturbed, in [0, 1]
  std::size_t refresh_every = 100;               ///< T_m ≥ 1, in steps
  std::size_t block = 1;                         ///< 1 = entries; else a power of two ≤ 1024
  fisher_estimator source = fisher_estimator::accumulated;
  std::size_t examples = 16;  ///< N_s for `per_example`
  bool empty_start = false;   ///< no mask before the first refresh (step 1 is no refresh step)
  fisher_schedule schedule = fisher_schedule::library;
  bool unperturbed_refresh = false;  ///< ε = 0 on refresh steps (the official FSAM code)
  bool frozen = false;               ///< no estimates, no refreshes: the mask stays as it is

  /// Throws std::invalid_argument unless the options are valid for an optimizer computing in T.
  template <class T = double>
  void validate() const {
    flatmin::detail::check_option<T>("mask::fisher", "keep", keep, flatmin::detail::domain::unit);
    flatmin::detail::check_option(
        source == fisher_estimator::accumulated || source == fisher_estimator::current_batch ||
            source == fisher_estimator::per_example,
        "mask::fisher", "source", static_cast<double>(source), "accumulated, current_batch or per_example");
    flatmin::detail::check_option(refresh_every >= 1, "mask::fisher", "refresh_every",
                                  static_cast<double>(refresh_every), ">= 1");
    flatmin::detail::check_option(examples >= 1, "mask::fisher", "examples", static_cast<double>(examples),
                                  ">= 1");
    detail::check_block("mask::fisher", block);
  }

  /// Whether `step` (1-based) recomputes the mask.
  bool refreshes(std::size_t step) const {
    if (frozen) return false;
    if (schedule == fisher_schedule::ssam_official) return step >= 2 && (step - 2) % refresh_every == 0;
    if (step == 1) return !empty_start;
    return step > 1 && (step - 1) % refresh_every == 0;
  }

  template <class T, class Backend>
  class state : public detail::sparse_state<state<T, Backend>, T, Backend> {
    using base = detail::sparse_state<state, T, Backend>;
    friend base;

   public:
    static constexpr const char* where = "mask::fisher";
    static constexpr const char* unit_option = "block";
    static constexpr const char* bits_entry = "fisher.bits";
    static constexpr bool bits_optional = false;
    static constexpr bool norm_over_mask = false;
    /// Selects across the processes of a sharded run (set_span): k is a fraction of every
    /// process's eligible units, and the top-k is over all of them (element units).
    static constexpr bool spans_processes = true;
    static detail::unit_spec spec(const fisher& m) { return detail::block_units(m.block); }

    state(const fisher& m, const backend::layout<T, Backend>& l)
        : base(l, spec(m), true),
          acc_(Backend::template make_vector<T>(this->units_.count(), T(0))),
          acc_next_(Backend::template make_vector<T>(this->units_.count(), T(0))) {
      m.validate();
      keep_ = m.keep;
      detail::add_scores(l, this->units_, Backend::data(acc_), static_cast<const T*>(nullptr), T(1),
                         detail::score_of::zero);  // 0 / −1
      Backend::copy(acc_, acc_next_);
      if (this->is_compact()) this->range_.build_from_bits(this->units_, this->bits_);
    }

    /// SSAM-F: on a refresh step, the optimizer's closure protocol hands the objective here before
    /// the batch gradient; with `example_gradient(n)` it collects N_s per-example squared gradients.
    template <class O>
    void before_gradient(const fisher& m, const backend::layout<T, Backend>& l, std::size_t step, O& obj) {
      if constexpr (example_objective<O>) {
        if (!wants_examples(m, step)) return;
        this->abandon_step();  // a retried step (after an exception in the objective) collects afresh
        for (std::size_t n = 0; n < m.examples; ++n) {
          obj.example_gradient(n);
          add_example(m, l);
        }
      }
    }
    /// Whether the `per_example` estimator expects examples before step `step`'s batch gradient.
    bool wants_examples(const fisher& m, std::size_t step) const {
      return m.source == fisher_estimator::per_example && m.refreshes(step);
    }
    /// Adds (∂ℓ_n/∂w)², read from the gradient views, to the pending F (the first example of a step
    /// overwrites it). A non-finite entry of an example gradient, in any tensor (the same pass
    /// reads the other tensors' gradients for that), marks the step to be skipped.
    void add_example(const fisher&, const backend::layout<T, Backend>& l, T inv_scale = T(1)) {
      if (estimate(l, inv_scale, collected_, true)) bad_examples_ = true;
      collected_ = true;
      examples_now_ = true;
    }
    /// Whether an example added for this step had a NaN or Inf gradient (the optimizer skips it).
    bool nonfinite_examples() const { return bad_examples_; }

    /// The step's estimate as element scores, for the optimizer's first statistics pass to write
    /// as it reads g (`kernels::stats_scores_pass`: one read of g for both), when this step makes
    /// one from the batch gradient (`accumulated`, or `current_batch` on a refresh step) over
    /// element units; refresh() then makes none. nullopt otherwise: refresh() makes it (block
    /// units sum a block's squares, which the statistics pass does not see; the per-example
    /// estimator reads the examples). Pending like refresh()'s: a skipped step drops it.
    std::optional<kernels::element_scores<T>> statistics_scores(const fisher& m, std::size_t step,
                                                                T inv_scale) {
      estimated_ = !m.frozen && this->units_.kind() == detail::unit_kind::element &&
                   (m.source == fisher_estimator::accumulated ||
                    (m.source == fisher_estimator::current_batch && m.refreshes(step)));
      if (!estimated_) return std::nullopt;
      const bool accumulate = m.source == fisher_estimator::accumulated;
      return kernels::element_scores<T>{Backend::data(acc_next_), pending_from(accumulate), inv_scale,
                                        kernels::score_of::square, false};
    }

    /// The step's estimate (unless the statistics pass wrote it) and, on a refresh step, the new
    /// mask, both pending until commit_step().
    bool refresh(const fisher& m, const backend::layout<T, Backend>& l, std::size_t step, T inv_scale) {
      if (m.frozen) return false;
      if (this->span_.spans() && m.source == fisher_estimator::per_example)
        throw usage_error(
            "flatmin: mask::fisher: the per_example estimator is not sharded (each process would add "
            "its own examples); use accumulated or current_batch");
      const bool now = m.refreshes(step);
      switch (m.source) {
        case fisher_estimator::accumulated:
          if (!estimated_) estimate(l, inv_scale, true);
          break;
        case fisher_estimator::current_batch:
          if (now && !estimated_) estimate(l, inv_scale, false);
          break;
        case fisher_estimator::per_example:
          if (!collected_ && (!examples_seen_ || now)) estimate(l, inv_scale, !examples_seen_);
          break;
      }
      if (!now) return false;
      keep_next_ = m.keep;
      const T* f = Backend::data(acc_next_);
      const std::size_t n = this->units_.count();
      const auto sel = detail::score_top_k<Backend>(f, n, keep_units(m.keep), this->span_, &top_k_);
      Backend::for_each_index(this->units_.words(),
                              detail::score_bits<T>{sel, Backend::data(this->bits_next_), n});
      unperturbed_ = m.unperturbed_refresh;
      this->stage_bits(true);
      return true;
    }

    /// 0 on a refresh step with `unperturbed_refresh` (ε = 0 everywhere), else 1.
    double radius_scale() const { return this->pending() && unperturbed_ ? 0.0 : 1.0; }
    /// Checkpoint identity: the unit size fixes the buffers, the estimator what the sums mean.
    std::string identity(const fisher& m) const {
      static constexpr const char* sources[] = {"accumulated", "current_batch", "per_example"};
      const auto s = static_cast<std::size_t>(m.source);
      return std::string("fisher(block=") + std::to_string(this->units_.block()) +
             ", source=" + (s < 3 ? sources[s] : "?") + ")";
    }
    /// The committed sums F, one per unit (−1: not a candidate), in host memory.
    std::vector<T> host_sums() const { return Backend::to_host(acc_); }

   private:
    static std::invalid_argument load_error(const std::string& what) {
      return std::invalid_argument("flatmin: load(): mask::fisher: " + what);
    }
    /// k = ⌊keep · eligible units⌋ (of every process, in a sharded run).
    std::size_t keep_units(double keep) const {
      return static_cast<std::size_t>(std::floor(keep * static_cast<double>(this->all_eligible_units())));
    }
    std::size_t active_bound() const { return keep_units(this->pending() ? keep_next_ : keep_); }
    /// The pending sums become the state; after a refresh they restart: rather than a pass writing
    /// 0 (−1 for non-candidates), the next estimate overwrites them (the same values: 0 + h = h).
    void on_commit(bool refreshed) {
      if (acc_pending_) {
        acc_.swap(acc_next_);
        restart_ = refreshed;
      }
      if (refreshed) keep_ = keep_next_;
      if (examples_now_) examples_seen_ = true;
    }
    void on_abandon() { acc_pending_ = examples_now_ = collected_ = bad_examples_ = estimated_ = false; }
    std::size_t extra_bytes() const { return (acc_.size() + acc_next_.size()) * sizeof(T) + top_k_.bytes(); }
    /// Checkpoint entries after the bits: the sums (stale while `restart`), the step bookkeeping.
    template <class F>
    void visit_more(F& f) {
      f("fisher.acc", acc_);
      f("fisher.keep", keep_);
      f("fisher.restart", restart_);
      f("fisher.examples_seen", examples_seen_);
    }
    /// keep in [0, 1], at most ⌊keep · eligible⌋ active units, sums ≥ 0 on candidates and −1
    /// elsewhere. Returns that bound.
    template <class Staged>
    std::size_t check_more(const Staged& s, std::size_t active) const {
      const auto& acc = s.template buffer<T>("fisher.acc");
      const double keep = s.template scalar<double>("fisher.keep");
      if (!(keep >= 0 && keep <= 1)) throw load_error("keep " + std::to_string(keep) + " is not in [0, 1]");
      const std::size_t k = keep_units(keep);
      if (active > k)
        throw load_error(std::to_string(active) + " active units, at most " + std::to_string(k) +
                         " with keep " + std::to_string(keep));
      const auto& ts = this->units_.host_tensors();
      const auto& base = this->units_.host_base();
      for (std::size_t t = 0; t < ts.size(); ++t) {
        const bool cand = detail::candidate_flags(ts[t].flags);
        for (std::uint64_t u = base[t]; u < base[t + 1]; ++u)
          if (cand ? !(acc[u] >= T(0)) : acc[u] != T(-1))
            throw load_error("the sum of unit " + std::to_string(u) + " is " + std::to_string(acc[u]) +
                             (cand ? ", not >= 0" : ", not -1 (not a candidate)"));
      }
      return k;
    }
    /// Pending F = committed F (or the pending F, when this step already wrote it) + (g / scale)²,
    /// or (g / scale)² alone; after a refresh the committed sums are stale and not read. Returns
    /// whether g had a non-finite entry.
    bool estimate(const backend::layout<T, Backend>& l, T inv_scale, bool accumulate,
                  bool check_all = false) {
      return detail::add_scores(l, this->units_, Backend::data(acc_next_), pending_from(accumulate),
                                inv_scale, detail::score_of::square, check_all) > 0;
    }
    /// The sums a pending estimate adds to (null: none), with the pending buffer marked written.
    const T* pending_from(bool accumulate) {
      const T* from = nullptr;
      if (accumulate)
        from = acc_pending_ ? Backend::data(acc_next_) : (restart_ ? nullptr : Backend::data(acc_));
      acc_pending_ = true;
      return from;
    }

    typename Backend::template vector<T> acc_, acc_next_;
    detail::top_k_workspace<T, Backend> top_k_;  ///< the selection's buffers, reused by every refresh
    double keep_ = 0, keep_next_ = 0;
    bool examples_seen_ = false;
    bool restart_ = false;  ///< the sums in acc_ are stale: the next estimate overwrites them
    // pending (this step only, until commit_step() / abandon_step())
    bool acc_pending_ = false, examples_now_ = false, collected_ = false;
    bool bad_examples_ = false, unperturbed_ = false;
    bool estimated_ = false;  ///< the statistics pass wrote this step's estimate (statistics_scores)
  };
};

}  // namespace flatmin::mask
