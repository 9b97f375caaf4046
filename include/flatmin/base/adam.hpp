#pragma once
/// @file adam.hpp
/// `base::adam` — Adam (Kingma & Ba 2015), semantics of PyTorch's `torch.optim.Adam` (no
/// amsgrad); with `.decay = weight_decay_mode::decoupled` it is AdamW (Loshchilov & Hutter 2019,
/// `torch.optim.AdamW`), which `base::adamw` (adamw.hpp) names with AdamW's defaults:
///
///     coupled:    d = g + λ w                 (tensors with weight decay on)
///     decoupled:  w ← w (1 − lr λ), d = g     (tensors with weight decay on)
///     m ← β1 m + (1 − β1) d,   v ← β2 v + (1 − β2) d²
///     w ← w − lr/(1 − β1ᵗ) · m / (√v / √(1 − β2ᵗ) + ε)
///
/// Options: lr (1e-3), beta1 (0.9), beta2 (0.999), eps (1e-8), weight_decay λ (0),
/// decay (coupled). State: m and v (2N values), saved as "exp_avg" and "exp_avg_sq" whichever the
/// decay. Exposes its second moment to `perturb::preconditioned`.

#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "../config.hpp"
#include "../kernels/adam_update.hpp"

namespace flatmin::base {

/// Where Adam's weight decay enters: into the gradient (L2, `torch.optim.Adam`) or as a
/// shrinking of the weights apart from the moments (`torch.optim.AdamW`).
enum class weight_decay_mode : std::uint8_t { coupled, decoupled };

struct adam {
  static constexpr const char* name = "adam";  ///< in checkpoints' composition identity
  double lr = 1e-3;
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  double weight_decay = 0;
  weight_decay_mode decay = weight_decay_mode::coupled;

  static constexpr bool has_second_moment = true;

  /// Throws std::invalid_argument unless the options are valid for an optimizer computing in T.
  template <class T = double>
  void validate() const {
    using flatmin::detail::check_option;
    using flatmin::detail::domain;
    // Errors name the policy the user wrote: AdamW is this policy with decoupled decay.
    const char* where = decay == weight_decay_mode::decoupled ? "base::adamw" : "base::adam";
    check_option<T>(where, "lr", lr, domain::positive);
    check_option<T>(where, "beta1", beta1, domain::unit_open);
    check_option<T>(where, "beta2", beta2, domain::unit_open);
    check_option<T>(where, "eps", eps, domain::positive);
    check_option<T>(where, "weight_decay", weight_decay, domain::non_negative);
    // The largest step size is lr / (1 − β1¹); AdamW's shrink factor is 1 − lr λ.
    flatmin::detail::check_derived<T>(where, "lr / (1 - beta1)", lr / (1 - beta1));
    flatmin::detail::check_derived<T>(where, "lr * weight_decay", lr * weight_decay);
    if (decay != weight_decay_mode::coupled && decay != weight_decay_mode::decoupled)
      throw std::invalid_argument(std::string(where) + ": decay must be coupled (0) or decoupled (1), got " +
                                  std::to_string(static_cast<int>(decay)));
  }

  /// First and second moments.
  template <class T, class Backend>
  class state {
   public:
    state(const adam& o, std::size_t n)
        : m_(Backend::template make_vector<T>(n)),
          v_(Backend::template make_vector<T>(n)),
          beta2_(o.beta2),
          eps_(o.eps) {}

    kernels::adam_update<T> prepare(const adam& o, std::size_t t) {
      beta2_ = o.beta2;
      eps_ = o.eps;
      const double bc1 = 1.0 - std::pow(o.beta1, static_cast<double>(t));
      const double bc2 = 1.0 - std::pow(o.beta2, static_cast<double>(t));
      return {static_cast<T>(o.lr),
              static_cast<T>(o.beta1),
              static_cast<T>(o.beta2),
              static_cast<T>(o.eps),
              static_cast<T>(o.weight_decay),
              static_cast<T>(o.lr / bc1),
              static_cast<T>(std::sqrt(bc2)),
              o.decay == weight_decay_mode::decoupled,
              Backend::data(m_),
              Backend::data(v_)};
    }
    /// m (first moment, not bias-corrected), in the backend's memory, global index.
    const T* first_moment() const { return Backend::data(m_); }
    /// v (second moment, not bias-corrected), in the backend's memory, global index.
    const T* second_moment() const { return Backend::data(v_); }
    /// β2 and ε of the last applied step (of the options at construction before the first step):
    /// with them `perturb::preconditioned` rebuilds Adam's denominator √v / √(1 − β2ᵗ) + ε.
    double second_moment_beta2() const { return beta2_; }
    double second_moment_eps() const { return eps_; }
    std::size_t bytes() const { return (m_.size() + v_.size()) * sizeof(T); }
    /// Checkpoint entries: the moments and the last step's β2 and ε (the preconditioner's).
    template <class F>
    void visit(F&& f) {
      f("exp_avg", m_);
      f("exp_avg_sq", v_);
      f("adam.beta2", beta2_);
      f("adam.eps", eps_);
    }
    /// Checks the loaded β2 and ε (host copies in `s`) before they are committed.
    template <class Staged>
    void check_load(const Staged& s) const {
      const double b2 = s.template scalar<double>("adam.beta2"), eps = s.template scalar<double>("adam.eps");
      if (!(b2 >= 0 && b2 < 1) || !(flatmin::detail::finite(eps) && eps > 0))
        throw std::invalid_argument("flatmin: load(): Adam's last beta2 " + std::to_string(b2) + " / eps " +
                                    std::to_string(eps) +
                                    " out of range (beta2 in [0, 1), eps finite and > 0)");
    }

   private:
    typename Backend::template vector<T> m_, v_;
    double beta2_, eps_;
  };
};

}  // namespace flatmin::base
