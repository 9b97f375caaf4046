#pragma once
/// @file fsam.hpp
/// FSAM — Zhong, Ding, Shen, Tao, "Improving Sharpness-Aware Minimization with Fisher Mask for
/// Better Generalization on Language Models", Findings of EMNLP 2022 (official code WHU-ZQH/FSAM4PLM).
///
///     every T_m steps: F = Σ g ⊙ g since the last refresh;  m = top ⌊keep · |eligible|⌋ of F
///     ε = ρ (m ⊙ g) / (‖g‖ + ξ)      (‖g‖ over every perturbed entry: ‖ε‖ ≤ ρ, no rescaling)
///
/// Defaults (the official scripts): keep = 0.1 (90 % sparse), T_m = 100 steps, ρ = 0.05; the
/// paper's base optimizer is Adam (pass `base::adam{...}`). Tensors marked `mask_eligible = false`
/// (the official code: biases and embeddings) are perturbed densely.
/// Where the library differs from the official code: F accumulates the squared gradients since
/// the last refresh (`source = fisher_estimator::current_batch` gives the official current-batch
/// estimate); a refresh step is perturbed with its new mask (the official code perturbs nothing on
/// refresh steps); the official `fisher-sam` mode crashes and has no counterpart.
/// `block` > 1 selects blocks of that many entries (less state, faster ascent/restore).

#include "../backend/default.hpp"
#include "../mask/fisher.hpp"
#include "../optimizer/sharpness_aware.hpp"
#include "../perturb/l2.hpp"

namespace flatmin {

struct fsam_options {
  double rho = 0.05;
  double xi = 1e-12;
  double keep = 0.1;
  std::size_t refresh_every = 100;
  std::size_t block = 1;
  mask::fisher_estimator source = mask::fisher_estimator::accumulated;
  nonfinite on_nonfinite = nonfinite::skip;
};

template <class T, class Base, class Backend = default_backend>
using fsam_t = sharpness_aware<T, Backend, perturb::l2, mask::fisher, Base>;

template <class Backend = default_backend, class T, class Base>
fsam_t<T, Base, Backend> fsam(const param_set<T>& params, Base base, fsam_options o = {}) {
  return fsam_t<T, Base, Backend>(
      params, std::move(base), perturb::l2{o.rho, o.xi},
      mask::fisher{.keep = o.keep, .refresh_every = o.refresh_every, .block = o.block, .source = o.source},
      {o.on_nonfinite});
}

}  // namespace flatmin
