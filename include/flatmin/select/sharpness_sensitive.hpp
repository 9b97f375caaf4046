#pragma once
/// @file sharpness_sensitive.hpp
/// `select::sharpness_sensitive` — ESAM's sharpness-sensitive data selection (Du et al.,
/// "Efficient Sharpness-aware Minimization for Improved Training of Neural Networks", ICLR 2022;
/// official code dydjw9/Efficient_SAM). A descent policy: it decides which gradient the base
/// optimizer receives.
///
///     ℓ_i(w) for every sample of the batch (with the batch gradient g, which builds ε)
///     ℓ_i(w + ε) forward only;  Δ_i = ℓ_i(w + ε) − ℓ_i(w)
///     B⁺ = the k = ⌈γ |B|⌉ samples with the largest Δ_i   (ties: lower index first; γ ≥ 0.99: all)
///     g_adv = ∇ (1/|B⁺|) Σ_{i ∈ B⁺} ℓ_i (w + ε)
///
/// A NaN increase ranks first, so a non-finite loss reaches g_adv and the step is skipped by the
/// optimizer's usual check.
///
/// `strict_cutoff = true` reproduces the official selection (dydjw9/Efficient_SAM, utils/Esam.py
/// at 4c84cf5, lines 97–104): p = ⌊γ |B|⌋, c = the p-th largest increase, B⁺ = { i : Δ_i > c } —
/// p − 1 samples when the increases are distinct, fewer when some tie with c (the library's default
/// keeps exactly ⌈γ |B|⌉, a size that does not depend on ties). Where that leaves no sample
/// (p ≤ 1, or every increase ties with c) the official code averages over an empty batch (a NaN
/// step, or an error for p = 0); the library keeps the one sample with the largest increase.
/// (WHU-ZQH/FSAM4PLM's copy of ESAM uses Δ_i ≥ c instead: no option reproduces that one.)
///
/// Closure protocol: the objective must be a `flatmin::sample_objective` (concepts/objective.hpp);
/// a composition using this policy with another objective fails to compile with a message naming
/// the missing capability. Two-call protocol:
///
///     losses at w + gradient of the batch; opt.ascend();
///     losses at w + ε (forward only); auto& idx = opt.descent().select(before, after);
///     gradient of the mean loss over idx; opt.descend();
///
/// Options: gamma = 0.5 (γ in (0, 1]), strict_cutoff = false.

#include <algorithm>
#include <cmath>
#include <numeric>
#include <span>
#include <vector>

#include "../concepts/objective.hpp"
#include "../config.hpp"

namespace flatmin::select {

struct sharpness_sensitive {
  static constexpr const char* name = "sharpness_sensitive";  ///< in checkpoints' composition identity
  /// Chooses samples of the batch for g_adv: a distributed run selects over every rank's batch.
  static constexpr bool selects_samples = true;
  double gamma = 0.5;          ///< fraction of the batch kept for the second gradient
  bool strict_cutoff = false;  ///< the official selection: increases above the ⌊γ|B|⌋-th largest

  /// Throws std::invalid_argument unless γ is in (0, 1] (T: the optimizer's type; γ is used in double).
  template <class T = double>
  void validate() const {
    flatmin::detail::check_option<T>("select::sharpness_sensitive", "gamma", gamma,
                                     flatmin::detail::domain::unit_positive);
  }

  /// k = ⌈γ |B|⌉ (|B| when γ ≥ 0.99); under `strict_cutoff` an upper bound (the count depends on
  /// the increases).
  std::size_t kept(std::size_t batch) const {
    if (gamma >= 0.99) return batch;
    return std::min(batch, static_cast<std::size_t>(std::ceil(gamma * static_cast<double>(batch))));
  }

  /// Closure protocol, first call: per-sample losses at w and the batch gradient.
  template <class O>
  double first_gradient(O& obj) {
    static_assert(
        sample_objective<O>,
        "flatmin::select::sharpness_sensitive (ESAM data selection) needs a flatmin::sample_objective: "
        "the objective must provide batch_size(), losses_and_gradient(std::span<double>), "
        "losses(std::span<double>) and subset_gradient(std::span<const std::size_t>)");
    if constexpr (sample_objective<O>) {
      before_.assign(static_cast<std::size_t>(obj.batch_size()), 0.0);
      return static_cast<double>(obj.losses_and_gradient(std::span<double>(before_)));
    } else {
      return 0.0;
    }
  }

  /// Closure protocol, second call: losses at w + ε, selection, gradient on the selected samples.
  template <class O>
  void second_gradient(O& obj) {
    static_assert(
        sample_objective<O>,
        "flatmin::select::sharpness_sensitive (ESAM data selection) needs a flatmin::sample_objective");
    if constexpr (sample_objective<O>) {
      after_.assign(before_.size(), 0.0);
      obj.losses(std::span<double>(after_));
      select(before_, after_);
      obj.subset_gradient(std::span<const std::size_t>(selected_));
    }
  }

  /// The selection from the losses at w and at w + ε (two-call protocol); ascending indices.
  const std::vector<std::size_t>& select(std::span<const double> before, std::span<const double> after) {
    if (before.size() != after.size())
      throw std::invalid_argument("flatmin::select::sharpness_sensitive: " + std::to_string(before.size()) +
                                  " losses at w but " + std::to_string(after.size()) + " at w + eps");
    std::vector<double> inc;
    increases(before, after, inc);
    return select_increases(inc);
  }

  /// Δ_i = after_i − before_i, a NaN increase as +∞ (it ranks first). The sizes must agree.
  static void increases(std::span<const double> before, std::span<const double> after,
                        std::vector<double>& inc) {
    inc.resize(before.size());
    for (std::size_t i = 0; i < inc.size(); ++i) {
      inc[i] = after[i] - before[i];
      if (std::isnan(inc[i])) inc[i] = HUGE_VAL;
    }
  }

  /// The selection from the increases Δ (as `increases` writes them); ascending indices. A
  /// distributed run (optimizer/data_parallel.hpp) calls it on every rank's increases in rank order.
  const std::vector<std::size_t>& select_increases(std::span<const double> inc) {
    validate();
    const std::size_t n = inc.size(), k = kept(n);
    selected_.resize(n);
    std::iota(selected_.begin(), selected_.end(), std::size_t{0});
    auto first = [&](std::size_t a, std::size_t b) { return inc[a] > inc[b] || (inc[a] == inc[b] && a < b); };
    if (strict_cutoff && gamma < 0.99) return select_strict(inc, first);
    if (k < n)
      std::nth_element(selected_.begin(), selected_.begin() + static_cast<std::ptrdiff_t>(k), selected_.end(),
                       first);
    selected_.resize(k);
    std::sort(selected_.begin(), selected_.end());
    return selected_;
  }

  /// The samples selected in the last step.
  const std::vector<std::size_t>& selected() const { return selected_; }

 private:
  /// The official cutoff: increases strictly above the p-th largest, p = ⌊γ n⌋ (see the file comment).
  template <class First>
  const std::vector<std::size_t>& select_strict(std::span<const double> inc, const First& first) {
    const std::size_t n = inc.size();
    const auto p = static_cast<std::size_t>(std::floor(gamma * static_cast<double>(n)));
    // selected_ holds 0 … n−1: its p-th element in the ranking carries the cutoff.
    double cut = HUGE_VAL;
    if (p >= 1) {
      const auto pth = selected_.begin() + static_cast<std::ptrdiff_t>(p - 1);
      std::nth_element(selected_.begin(), pth, selected_.end(), first);
      cut = inc[selected_[p - 1]];
    }
    selected_.clear();
    for (std::size_t i = 0; i < n; ++i)
      if (inc[i] > cut) selected_.push_back(i);
    if (selected_.empty() && n > 0) {  // the official code would average over no sample
      std::size_t best = 0;
      for (std::size_t i = 1; i < n; ++i)
        if (first(i, best)) best = i;
      selected_.push_back(best);
    }
    return selected_;
  }

 public:
  // Per-step scratch (public only so that the options stay an aggregate for designated initializers).
  std::vector<double> before_ = {}, after_ = {};
  std::vector<std::size_t> selected_ = {};
};

}  // namespace flatmin::select
