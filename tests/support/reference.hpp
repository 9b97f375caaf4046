#pragma once
/// @file reference.hpp
/// Independent float64 references of every update rule the core implements, written plainly as
/// loops over std::vector<double> from the formulas of shared/ALGORITHMS.md and the documented
/// algorithms of PyTorch's torch.optim.SGD / Adam / AdamW. They deliberately call nothing from the
/// library (no kernels, no backend), so that a test comparing the two can fail.
///
/// Everything is flat: the parameters of all tensors laid end to end, with per-element options
/// (`elem_opts`) expanded from the per-tensor ones.

#include <cmath>
#include <cstddef>
#include <functional>
#include <stdexcept>
#include <vector>

namespace flatmin_test::ref {

using vec = std::vector<double>;

/// The per-tensor options as the reference sees them, one entry per scalar.
struct elem_opts {
  bool weight_decay = true;
  bool perturb = true;
  bool adaptive = true;
};
using opts_vec = std::vector<elem_opts>;

inline double dot(const vec& a, const vec& b) {
  double s = 0;
  for (std::size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
  return s;
}

inline bool all_finite(const vec& a) {
  for (double x : a)
    if (!std::isfinite(x)) return false;
  return true;
}

// ---------------------------------------------------------------------------------------------
// Base optimizers
// ---------------------------------------------------------------------------------------------

/// torch.optim.SGD: d = g + λw (coupled); b = d on the first step, else μb + (1−τ)d;
/// d = d + μb (Nesterov) or b; w −= lr·d.
struct sgd {
  double lr = 1e-3, momentum = 0, dampening = 0, weight_decay = 0;
  bool nesterov = false;
  vec buf;
  std::size_t t = 0;

  void step(vec& w, const vec& g, const opts_vec& o) {
    ++t;
    if (buf.empty()) buf.assign(w.size(), 0.0);
    for (std::size_t i = 0; i < w.size(); ++i) {
      double d = g[i];
      if (o[i].weight_decay) d += weight_decay * w[i];
      if (momentum != 0) {
        if (t == 1)
          buf[i] = d;
        else
          buf[i] = momentum * buf[i] + (1 - dampening) * d;
        if (nesterov)
          d = d + momentum * buf[i];
        else
          d = buf[i];
      }
      w[i] -= lr * d;
    }
  }
};

/// torch.optim.Adam (coupled L2 in the gradient) and torch.optim.AdamW (decoupled decay
/// w ← w(1 − lr·λ) first), written with the bias-corrected moments m̂ = m/(1−β1ᵗ),
/// v̂ = v/(1−β2ᵗ):  w −= lr · m̂ / (√v̂ + ε).
struct adam {
  double lr = 1e-3, beta1 = 0.9, beta2 = 0.999, eps = 1e-8, weight_decay = 0;
  bool decoupled = false;
  vec m, v;
  std::size_t t = 0;

  void step(vec& w, const vec& g, const opts_vec& o) {
    ++t;
    if (m.empty()) {
      m.assign(w.size(), 0.0);
      v.assign(w.size(), 0.0);
    }
    for (std::size_t i = 0; i < w.size(); ++i) {
      double d = g[i];
      if (o[i].weight_decay) {
        if (decoupled)
          w[i] *= 1 - lr * weight_decay;
        else
          d += weight_decay * w[i];
      }
      m[i] = beta1 * m[i] + (1 - beta1) * d;
      v[i] = beta2 * v[i] + (1 - beta2) * d * d;
      const double mhat = m[i] / (1 - std::pow(beta1, double(t)));
      const double vhat = v[i] / (1 - std::pow(beta2, double(t)));
      w[i] -= lr * mhat / (std::sqrt(vhat) + eps);
    }
  }
};

inline adam adamw(double lr = 1e-3, double beta1 = 0.9, double beta2 = 0.999, double eps = 1e-8,
                  double weight_decay = 1e-2) {
  return adam{lr, beta1, beta2, eps, weight_decay, true, {}, {}, 0};
}

/// No base step at all (used to inspect the ascent alone).
struct no_base {
  void step(vec&, const vec&, const opts_vec&) {}
};

// ---------------------------------------------------------------------------------------------
// Perturbations
// ---------------------------------------------------------------------------------------------

/// SAM: ε = ρ g / (‖g‖ + ξ), the norm over the perturbed tensors only; 0 on the others.
/// With g = 0 on the perturbed tensors, ε = 0 (also for ξ = 0).
inline vec sam_epsilon(const vec& g, const opts_vec& o, double rho, double xi) {
  double n2 = 0;
  for (std::size_t i = 0; i < g.size(); ++i)
    if (o[i].perturb) n2 += g[i] * g[i];
  const double denom = std::sqrt(n2) + xi;
  vec e(g.size(), 0.0);
  if (denom == 0) return e;
  for (std::size_t i = 0; i < g.size(); ++i)
    if (o[i].perturb) e[i] = rho * g[i] / denom;
  return e;
}

/// ASAM: T = |w| + η on adaptive tensors, 1 elsewhere;  ε = ρ T² g / (‖T g‖ + ξ), the norm over
/// the perturbed tensors only.
inline vec asam_epsilon(const vec& w, const vec& g, const opts_vec& o, double rho, double eta, double xi) {
  vec tw(w.size(), 1.0);
  for (std::size_t i = 0; i < w.size(); ++i)
    if (o[i].adaptive) tw[i] = std::fabs(w[i]) + eta;
  double n2 = 0;
  for (std::size_t i = 0; i < g.size(); ++i)
    if (o[i].perturb) n2 += (tw[i] * g[i]) * (tw[i] * g[i]);
  const double denom = std::sqrt(n2) + xi;
  vec e(g.size(), 0.0);
  if (denom == 0) return e;
  for (std::size_t i = 0; i < g.size(); ++i)
    if (o[i].perturb) e[i] = rho * tw[i] * tw[i] * g[i] / denom;
  return e;
}

inline double norm(const vec& a) { return std::sqrt(dot(a, a)); }

/// A perturbation: which formula, with its options.
struct perturbation {
  enum kind_t { l2, adaptive } kind = l2;
  double rho = 0.05, eta = 0.01, xi = 1e-12;

  vec epsilon(const vec& w, const vec& g, const opts_vec& o) const {
    return kind == l2 ? sam_epsilon(g, o, rho, xi) : asam_epsilon(w, g, o, rho, eta, xi);
  }
};

inline perturbation sam_perturbation(double rho = 0.05, double xi = 1e-12) {
  return {perturbation::l2, rho, 0.0, xi};
}
inline perturbation asam_perturbation(double rho = 0.5, double eta = 0.01, double xi = 1e-12) {
  return {perturbation::adaptive, rho, eta, xi};
}

/// What a reference SAM step computed (for assertions on the library's report).
struct step_result {
  vec g, eps, g_adv;
  double grad_norm = 0, perturbation_norm = 0, perturbed_grad_norm = 0;
};

/// A whole SAM / ASAM step:  g = grad(w);  ε;  g_adv = grad(w + ε);  w ← base(w, g_adv).
/// `grad(w)` returns the gradient at w (each call may also advance the caller's own noise).
template <class Base>
step_result sharpness_aware_step(vec& w, const opts_vec& o, const perturbation& p, Base& base,
                                 const std::function<vec(const vec&)>& grad) {
  step_result r;
  r.g = grad(w);
  r.eps = p.epsilon(w, r.g, o);
  vec wp(w.size());
  for (std::size_t i = 0; i < w.size(); ++i) wp[i] = w[i] + r.eps[i];
  r.g_adv = grad(wp);
  base.step(w, r.g_adv, o);
  r.grad_norm = norm(r.g);
  r.perturbation_norm = norm(r.eps);
  r.perturbed_grad_norm = norm(r.g_adv);
  return r;
}

/// The plain base step (no perturbation): w ← base(w, grad(w)).
template <class Base>
vec base_step(vec& w, const opts_vec& o, Base& base, const std::function<vec(const vec&)>& grad) {
  vec g = grad(w);
  base.step(w, g, o);
  return g;
}

}  // namespace flatmin_test::ref
