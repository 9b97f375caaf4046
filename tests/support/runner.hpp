#pragma once
/// @file runner.hpp
/// Runs a library optimizer and its float64 reference side by side on the same noisy quadratic and
/// checks, at every step, the perturbed weights after ascend(), the weights after descend() and the
/// report's norms.

#include <optional>

#include "problems.hpp"

namespace flatmin_test {

inline ref::sgd to_ref(const flatmin::base::sgd& o) {
  ref::sgd r;
  r.lr = o.lr;
  r.momentum = o.momentum;
  r.dampening = o.dampening;
  r.weight_decay = o.weight_decay;
  r.nesterov = o.nesterov;
  return r;
}
inline ref::adam to_ref(const flatmin::base::adam& o) {
  return ref::adam{o.lr, o.beta1, o.beta2, o.eps, o.weight_decay, o.decay == flatmin::base::weight_decay_mode::decoupled,
                  {}, {}, 0};
}
inline ref::adam to_ref(const flatmin::base::adamw& o) {
  return ref::adam{o.lr, o.beta1, o.beta2, o.eps, o.weight_decay, true, {}, {}, 0};
}
inline ref::perturbation to_ref(const flatmin::perturb::l2& p) { return ref::sam_perturbation(p.rho, p.xi); }
inline ref::perturbation to_ref(const flatmin::perturb::adaptive& p) {
  return ref::asam_perturbation(p.rho, p.eta, p.xi);
}

/// `steps` steps of `opt` (over `m`, whose weights are the start) against `rb` (+ `p` when the
/// optimizer perturbs), both on copies of `q`. `tol` defaults to rtol<T>.
template <class T, class Opt, class RefBase>
void run_against_reference(model<T>& m, Opt& opt, RefBase rb, const std::optional<ref::perturbation>& p,
                           const quadratic& q, int steps, double tol = rtol<T>) {
  quadratic ql = q, qr = q;
  ref::vec w = m.weights();
  auto grad = [&](const ref::vec& x) { return qr.grad(x); };
  for (int s = 1; s <= steps; ++s) {
    CAPTURE(s);
    if (p) {
      const ref::vec before = w;
      const auto rr = ref::sharpness_aware_step(w, m.opts, *p, rb, grad);
      ref::vec perturbed = before;
      for (std::size_t i = 0; i < perturbed.size(); ++i) perturbed[i] += rr.eps[i];

      ql.eval(m);
      const auto r1 = opt.ascend();
      CHECK_FALSE(r1.skipped);
      FLATMIN_CHECK_CLOSE(m.weights(), perturbed, tol);
      FLATMIN_CHECK_CLOSE1(r1.grad_norm, rr.grad_norm, tol);
      FLATMIN_CHECK_CLOSE1(r1.perturbation_norm, rr.perturbation_norm, tol);

      ql.eval(m);
      const auto r2 = opt.descend();
      CHECK_FALSE(r2.skipped);
      CHECK(r2.step == static_cast<std::size_t>(s));
      FLATMIN_CHECK_CLOSE(m.weights(), w, tol);
      FLATMIN_CHECK_CLOSE1(r2.perturbed_grad_norm, rr.perturbed_grad_norm, tol);
    } else {
      const ref::vec g = ref::base_step(w, m.opts, rb, grad);
      ql.eval(m);
      const auto r = opt.descend();
      CHECK_FALSE(r.skipped);
      CHECK(r.step == static_cast<std::size_t>(s));
      FLATMIN_CHECK_CLOSE(m.weights(), w, tol);
      FLATMIN_CHECK_CLOSE1(r.grad_norm, ref::norm(g), tol);
    }
    CHECK(opt.steps() == static_cast<std::size_t>(s));
  }
}

}  // namespace flatmin_test
