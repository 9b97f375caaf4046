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
/// refresh steps); ξ = 1e-12 (official 1e-7); the official `fisher-sam` mode crashes and has no
/// counterpart.
///
/// Official preset, `flatmin::fsam(params, base, flatmin::official)` (`fsam_official_options`, the
/// official preset of `fsam_preset_options`):
/// WHU-ZQH/FSAM4PLM at 77d5b3b, whose FSAM is the `fisher-esam` mode (ESAM_Mask in
/// fairseq-FSAM/optim/samsgd.py) run with β = γ = 1, i.e. SAM with the Fisher mask (β, γ < 1
/// add ESAM's weight and data selection: no preset). Line numbers counted at that commit:
/// - ξ = 1e-7 added to the norm, ε = ρ m ⊙ g / (‖g‖ + 1e-7), ‖g‖ over every tensor
///   (samsgd.py ≈ 597–604, ESAM_Mask.first_step; the norm, ESAM._grad_norm ≈ 479);
/// - F = g² of the refresh step's batch gradient alone (set_fisher_mask ≈ 545–547),
///   k = ⌊keep · |eligible|⌋ (≈ 562): `source = fisher_estimator::current_batch`;
/// - no perturbation on a refresh step: set_fisher_mask zeroes the gradient (≈ 548) and the step
///   that follows reuses it (fairseq-FSAM/optim/fairseq_optimizer.py, 133–135, `loss_before`), so
///   ε = 0 and the base optimizer gets the gradient at w: `mask::fisher::unperturbed_refresh`;
/// - refreshes when the update count is a multiple of T_m (fairseq-FSAM/trainer.py, train_step):
///   steps 1, 1 + T_m, … as the library; T_m = 100 (`--mask-iter-e 100`, scripts/*-train.sh),
///   keep = 0.1 (samsgd.py, FairseqSAMConfig).
/// The official code exempts from the mask the tensors whose name contains "bias" or "embed" and
/// BatchNorm parameters: mark those `mask_eligible = false` (the preset does not read names).
/// Ties in F go to the lower index here, to the sort's order there.
/// `block` > 1 selects blocks of that many entries (less state, faster ascent/restore).

#include "../backend/default.hpp"
#include "../mask/fisher.hpp"
#include "../optimizer/sharpness_aware.hpp"
#include "../perturb/l2.hpp"
#include "official.hpp"

namespace flatmin {

/// FSAM's options, with the library's defaults (`fsam_options`) or the official code's
/// (`fsam_official_options`: ξ = 1e-7, the current-batch Fisher, unperturbed refresh steps).
template <preset P>
struct fsam_preset_options {
  double rho = 0.05;                                 ///< perturb::l2::rho
  double xi = P == preset::official ? 1e-7 : 1e-12;  ///< perturb::l2::xi
  double keep = 0.1;                                 ///< mask::fisher::keep
  std::size_t refresh_every = 100;                   ///< mask::fisher::refresh_every
  std::size_t block = 1;                             ///< mask::fisher::block
  mask::fisher_estimator source =
      P == preset::official ? mask::fisher_estimator::current_batch : mask::fisher_estimator::accumulated;
  nonfinite on_nonfinite = nonfinite::skip;  ///< optimizer_options::on_nonfinite

  /// The official preset also fixes `mask::fisher::unperturbed_refresh`.
  template <class Base>
  composition<perturb::l2, mask::fisher, Base> compose(Base base) const {
    return {.base = std::move(base),
            .perturb = {.rho = rho, .xi = xi},
            .mask = {.keep = keep,
                     .refresh_every = refresh_every,
                     .block = block,
                     .source = source,
                     .unperturbed_refresh = P == preset::official},
            .options = {.on_nonfinite = on_nonfinite}};
  }
};
using fsam_options = fsam_preset_options<preset::library>;
using fsam_official_options = fsam_preset_options<preset::official>;

template <class T, class Base, class Backend = default_backend>
using fsam_t = sharpness_aware<T, Backend, perturb::l2, mask::fisher, Base>;

template <class Backend = default_backend, class W, class G, class Base,
          class T = detail::precision_for_t<W, G>>
fsam_t<T, Base, Backend> fsam(const param_set<W, G>& params, Base base, fsam_options o = {}) {
  return fsam_t<T, Base, Backend>(params, o.compose(std::move(base)));
}

template <class Backend = default_backend, class W, class G, class Base,
          class T = detail::precision_for_t<W, G>>
fsam_t<T, Base, Backend> fsam(const param_set<W, G>& params, Base base, official_t,
                              fsam_official_options o = {}) {
  return fsam_t<T, Base, Backend>(params, o.compose(std::move(base)));
}

}  // namespace flatmin
