#pragma once
/// @file sgd.hpp
/// `base::sgd` — stochastic gradient descent with momentum, dampening, Nesterov and coupled
/// weight decay, with the semantics of PyTorch's `torch.optim.SGD`:
///
///     d = g + λ w                                  (tensors with weight decay on)
///     b ← d (first step),  b ← μ b + (1 − τ) d    (momentum μ > 0)
///     d ← d + μ b (Nesterov)  or  d ← b
///     w ← w − lr · d
///
/// Options: lr (1e-3), momentum μ (0), dampening τ (0), weight_decay λ (0), nesterov (false).
/// State: the momentum buffer (N values) when μ > 0.

#include <string>

#include "../config.hpp"
#include "../kernels/sgd_update.hpp"

namespace flatmin::base {

struct sgd {
  static constexpr const char* name = "sgd";  ///< in checkpoints' composition identity
  double lr = 1e-3;
  double momentum = 0;
  double dampening = 0;
  double weight_decay = 0;
  bool nesterov = false;

  static constexpr bool has_second_moment = false;

  /// Throws std::invalid_argument unless the options are valid for an optimizer computing in T.
  template <class T = double>
  void validate() const {
    using flatmin::detail::domain;
    flatmin::detail::check_option<T>("base::sgd", "lr", lr, domain::positive);
    flatmin::detail::check_option<T>("base::sgd", "momentum", momentum, domain::unit_open);
    flatmin::detail::check_option<T>("base::sgd", "dampening", dampening, domain::unit);
    flatmin::detail::check_option<T>("base::sgd", "weight_decay", weight_decay, domain::non_negative);
    flatmin::detail::check_derived<T>("base::sgd", "lr * weight_decay", lr * weight_decay);
    if (nesterov)
      detail::check_option(momentum > 0 && dampening == 0, "base::sgd", "momentum (with nesterov)", momentum,
                           "> 0 with dampening == 0");
  }

  template <class T, class Backend>
  class state {
   public:
    state(const sgd& o, std::size_t n)
        : n_(n), buf_(Backend::template make_vector<T>(o.momentum > 0 ? n : 0)) {}

    /// Throws usage_error if the options no longer fit the state (momentum turned on after
    /// construction: there is no buffer for it). The optimizer calls it before anything is written.
    void check(const sgd& o) const {
      if (o.momentum > 0 && buf_.size() != n_)
        throw usage_error("flatmin::base::sgd: momentum was turned on after construction");
    }

    /// The update for step `t` (1-based count of applied steps, this one included).
    kernels::sgd_update<T> prepare(const sgd& o, std::size_t t) {
      check(o);
      return {static_cast<T>(o.lr), static_cast<T>(o.momentum), static_cast<T>(o.dampening),
              static_cast<T>(o.weight_decay), o.nesterov, t == 1,
              // momentum set to 0 between steps: plain SGD (no dampening), the buffer kept as is
              o.momentum > 0 && buf_.size() ? Backend::data(buf_) : nullptr};
    }
    /// The momentum buffer (global index; nullptr without momentum), for perturb::momentum.
    const T* first_moment() const { return buf_.size() ? Backend::data(buf_) : nullptr; }
    std::size_t bytes() const { return buf_.size() * sizeof(T); }
    template <class F>
    void visit(F&& f) {
      f("momentum_buffer", buf_);
    }
    /// Checkpoint identity: whether there is a momentum buffer.
    std::string identity(const sgd&) const { return buf_.size() ? "sgd(momentum)" : "sgd"; }

   private:
    std::size_t n_;
    typename Backend::template vector<T> buf_;
  };
};

}  // namespace flatmin::base
