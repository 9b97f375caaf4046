#pragma once
/// @file adam.hpp
/// `base::adam` — Adam (Kingma & Ba 2015) with coupled L2 weight decay, semantics of PyTorch's
/// `torch.optim.Adam` (no amsgrad):
///
///     d = g + λ w                         (tensors with weight decay on)
///     m ← β1 m + (1 − β1) d,   v ← β2 v + (1 − β2) d²
///     w ← w − lr/(1 − β1ᵗ) · m / (√v / √(1 − β2ᵗ) + ε)
///
/// Options: lr (1e-3), beta1 (0.9), beta2 (0.999), eps (1e-8), weight_decay λ (0).
/// State: m and v (2N values). Exposes its second moment to `perturb::preconditioned`.

#include <cmath>
#include <stdexcept>
#include <string>

#include "../config.hpp"
#include "../kernels/adam_update.hpp"

namespace flatmin::base {

namespace detail {
inline void validate_adam(const char* where, double lr, double b1, double b2, double eps, double wd) {
  using flatmin::detail::check_option;
  using flatmin::detail::finite;
  check_option(finite(lr) && lr > 0, where, "lr", lr, "finite and > 0");
  check_option(b1 >= 0 && b1 < 1, where, "beta1", b1, "in [0, 1)");
  check_option(b2 >= 0 && b2 < 1, where, "beta2", b2, "in [0, 1)");
  check_option(finite(eps) && eps > 0, where, "eps", eps, "finite and > 0");
  check_option(finite(wd) && wd >= 0, where, "weight_decay", wd, "finite and >= 0");
}

/// State shared by Adam and AdamW: first and second moments.
template <class T, class Backend>
class adam_state {
 public:
  explicit adam_state(std::size_t n, double beta2 = 0.999, double eps = 1e-8)
      : m_(Backend::template make_vector<T>(n)), v_(Backend::template make_vector<T>(n)), beta2_(beta2), eps_(eps) {}

  kernels::adam_update<T> make(double lr, double b1, double b2, double eps, double wd, bool decoupled, std::size_t t) {
    beta2_ = b2;
    eps_ = eps;
    const double bc1 = 1.0 - std::pow(b1, static_cast<double>(t));
    const double bc2 = 1.0 - std::pow(b2, static_cast<double>(t));
    return {static_cast<T>(lr),        static_cast<T>(b1),        static_cast<T>(b2),
            static_cast<T>(eps),       static_cast<T>(wd),        static_cast<T>(lr / bc1),
            static_cast<T>(std::sqrt(bc2)), decoupled,            Backend::data(m_),
            Backend::data(v_)};
  }
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
}  // namespace detail

struct adam {
  static constexpr const char* name = "adam";  ///< in checkpoints' composition identity
  double lr = 1e-3;
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  double weight_decay = 0;

  static constexpr bool has_second_moment = true;

  void validate() const { detail::validate_adam("base::adam", lr, beta1, beta2, eps, weight_decay); }

  template <class T, class Backend>
  class state : public detail::adam_state<T, Backend> {
   public:
    state(const adam& o, std::size_t n) : detail::adam_state<T, Backend>(n, o.beta2, o.eps) {}
    kernels::adam_update<T> prepare(const adam& o, std::size_t t) {
      return this->make(o.lr, o.beta1, o.beta2, o.eps, o.weight_decay, false, t);
    }
  };
};

}  // namespace flatmin::base
