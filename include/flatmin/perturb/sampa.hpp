#pragma once
/// @file sampa.hpp
/// `perturb::sampa` — SAMPa (Xie, Pethick, Cevher, "SAMPa: Sharpness-aware Minimization
/// Parallelized", NeurIPS 2024; the composition and its official code: algorithms/sampa.hpp). The
/// ascent follows the gradient kept from the last look-ahead point y_t, so the two gradients of a
/// step do not depend on each other:
///
///     x̃_t = x_t + ρ g_y / (‖g_y‖ + ξ)                 g_y = ∇L(y_t), kept from the last step
///     y_{t+1} = Base.peek(x_t, g_y)                     the base step on g_y, its state untouched
///     g̃ = ∇L(x̃_t),  g_y ← ∇L(y_{t+1})                 (independent: parallel in the paper)
///     x_{t+1} = Base(x_t, (1 − λ) g̃ + λ g_y)
///
/// On the first step there is no g_y: ε = 0 and y_1 = x_0 (the official code starts from a zero
/// g_y and no momentum buffer, which gives the same two points).
///
/// The protocol has a middle call: `ascend()` before any backward (it reads no gradient), the
/// backward at x̃, `second_point()` (keeps g̃, checks it, moves w to y), the backward at y,
/// `descend()` (w back to x, the base step on the mix). `step(obj)` calls the objective twice, at
/// x̃ then at y. The weights rest at x between steps.
///
/// The look-ahead: `kernels::sgd_update::peek` / `adam_update::peek`, the base's own arithmetic
/// without its state writes: for base::sgd, y = x − lr·(μ·b + (1 − τ)(g_y + λ_wd x)), which is the
/// official heavy-ball form x − lr·(g_y + wd·x + μ·b) for τ = 0; for Adam / AdamW, the step Adam
/// would take on g_y. Tensors with `tensor_options::perturb = false` stay at x at both points.
///
/// Cost: two gradients and, besides SAM's passes, a copy of g̃ (N of T kept for the step) written
/// by second_point()'s finiteness check as it reads g̃ (`kernels::check_copy_pass`), one
/// look-ahead pass, and g_y (N of T, kept between steps and checkpointed). The mix and the new g_y
/// are written in the fused descent pass (76 bytes per parameter for SGD against SAM's 44:
/// bench_passes opt_sampa_sgd). g_y is the y-gradient as the step used it: unscaled, and clipped
/// with `clip_grad_norm`.
///
/// Options: ρ = `rho` (0.1, the official), ξ = `xi` (1e-12, the official), λ = `lambda` (0.2, the
/// official `--og`).

#include <cstddef>

#include "../backend/layout.hpp"
#include "../concepts/roles.hpp"
#include "../config.hpp"
#include "../kernels/descent_terms.hpp"
#include "../kernels/sampa.hpp"

namespace flatmin::kernels {

/// d = (1 − λ) g̃ + λ a (a the y-gradient in the views) on a step that perturbed, and g_y ← a;
/// d = a otherwise (a step the schedule left unperturbed: the views hold g at x), g_y kept.
///
/// No branch in the element loop, which the host compiler would not vectorise (the descent runs
/// under FLATMIN_IVDEP: backend/host/isa_clones.hpp `independent_entries`): `keep` is g_y when on,
/// else the g̃ scratch buffer, which this step's descent is the last to read, so a is always stored
/// somewhere; and d is a select, never λ-arithmetic on a stale g̃ (c + 1·(a − c) is not a in
/// floating point). When off, c is not used, so the order of its read and the store is moot.
template <class T>
struct sampa_adjust {
  const T* tilde;
  T* keep;
  T lambda;
  bool on;
  template <class E>
  FLATMIN_HD T operator()(T /*w*/, T a, const E& e) const {
    const T c = tilde[e.i];
    keep[e.i] = a;
    const T mixed = c + lambda * (a - c);
    return on ? mixed : a;
  }
};

}  // namespace flatmin::kernels

namespace flatmin::perturb {

struct sampa {
  static constexpr const char* name = "sampa";  ///< in checkpoints' composition identity
  double rho = 0.1;                             ///< radius ρ ≥ 0
  double xi = 1e-12;                            ///< ξ ≥ 0 added to the norm
  double lambda = 0.2;                          ///< λ ∈ [0, 1], the weight of ∇L(y) in the mix

  static constexpr bool perturbs = true;
  static constexpr bool needs_clean_gradient = false;  ///< ascend() reads no gradient
  static constexpr bool second_point = true;           ///< a look-ahead point between the backwards
  static constexpr bool dense_mask_only = true;

  template <class T = double>
  void validate() const {
    using flatmin::detail::domain;
    flatmin::detail::check_option<T>("perturb::sampa", "rho", rho, domain::non_negative);
    flatmin::detail::check_option<T>("perturb::sampa", "xi", xi, domain::non_negative);
    flatmin::detail::check_option<T>("perturb::sampa", "lambda", lambda, domain::unit);
  }

  template <class T, class Backend>
  class state {
   public:
    state(const sampa&, const backend::layout<T, Backend>& l)
        : gy_(Backend::template make_vector<T>(l.numel())),
          tilde_(Backend::template make_vector<T>(l.numel())) {}

    template <class BaseState>
    kernels::sampa_term<T> term(const sampa&, const BaseState&, std::size_t) const {
      return {has_ ? Backend::data(gy_) : nullptr};
    }
    /// Where second_point()'s finiteness check writes g̃ (the views' ∇L(x̃), unscaled) as it reads
    /// it. Scratch: written whatever the check finds, read only by the same step's descent (a
    /// skipped or cancelled step never reads it, and it is not checkpointed).
    T* second_gradient() { return Backend::data(tilde_); }
    /// Whether there is a g_y (an applied perturbed step), and it.
    bool has_point() const { return has_; }
    const T* point_gradient() const { return Backend::data(gy_); }
    /// The descent's mix; writes the new g_y in the same pass.
    kernels::sampa_adjust<T> descent_adjust(const sampa& o, bool perturbed) {
      return {Backend::data(tilde_), perturbed ? Backend::data(gy_) : Backend::data(tilde_),
              static_cast<T>(o.lambda), perturbed};
    }
    void commit_step() noexcept { has_ = true; }
    std::size_t bytes() const { return (gy_.size() + tilde_.size()) * sizeof(T); }
    template <class F>
    void visit(F&& f) {
      f("sampa.point_gradient", gy_);
      f("sampa.has_point", has_);
    }

   private:
    typename Backend::template vector<T> gy_, tilde_;
    bool has_ = false;
  };
};

}  // namespace flatmin::perturb
