#pragma once
/// @file asam.hpp
/// ASAM — Kwon, Kim, Park, Choi, "ASAM: Adaptive Sharpness-Aware Minimization for Scale-Invariant
/// Learning of Deep Neural Networks", ICML 2021.
///
///     T_w = |w| + η;  ε = ρ T_w² g / (‖T_w g‖ + ξ);  then as SAM
///
/// Defaults: ρ = 0.5, η = 0.01, ξ = 1e-12. Set `tensor_options::adaptive = false` on biases to
/// match the official code (which scales only tensors named "weight").
/// η = 0.01 is the paper's and the authors' code's: with η = 0, T_w = |w| never perturbs an entry
/// that is 0 (a zero-initialised bias, a pruned weight) however large its gradient, and davda54's
/// η = 0 mode is labelled experimental there.
///
/// Two official presets, one per public implementation (ξ is added to the norm in both, as in the
/// library's formula):
/// - `flatmin::asam(params, base, flatmin::official)` (`asam_official_options`, the official preset
///   of `asam_preset_options`; `asam_options` has the same fields): the authors' code,
///   SamsungLabs/ASAM, asam.py at dc9b513. T_w = |w| + η on the tensors whose name contains
///   "weight" (line 22: BatchNorm / LayerNorm scales, named "weight" in PyTorch, are scaled; biases
///   are not, T = 1); ‖T_w g‖ over every tensor, plus ξ = 1e-16 (line 27); ε = ρ T_w² g / that
///   (lines 32–36); ρ = 0.5, η = 0.01 (line 5). `by_name = true` applies the name rule (it overrides
///   `tensor_options::adaptive`; a set with no tensor named "weight" is rejected), `false` keeps
///   the per-tensor options. Not reproduced: the restore w = (w + ε) − ε (line 45; the library
///   restores the saved w bit-exactly, a difference of rounding only).
/// - `flatmin::asam(params, base, flatmin::official, flatmin::asam_davda54_options{})`: davda54/sam's
///   `adaptive = True` mode, sam.py at 87a9604. η = 0 and every tensor scaled, biases included
///   (ε = ρ w² g / (‖|w| g‖ + ξ), lines 24 and 53), ξ = 1e-12 (line 19); ρ = 2.0, the value its
///   README's ASAM run uses (the class default, 0.05, is SAM's).

#include <concepts>
#include <stdexcept>
#include <string>

#include "../backend/default.hpp"
#include "../mask/dense.hpp"
#include "../optimizer/sharpness_aware.hpp"
#include "../perturb/adaptive.hpp"
#include "official.hpp"

namespace flatmin {

/// ASAM's options, with the library's defaults (`asam_options`) or SamsungLabs/ASAM's
/// (`asam_official_options`: ξ = 1e-16, by_name).
template <preset P>
struct asam_preset_options {
  double rho = 0.5;                                   ///< perturb::adaptive::rho
  double eta = 0.01;                                  ///< perturb::adaptive::eta
  double xi = P == preset::official ? 1e-16 : 1e-12;  ///< perturb::adaptive::xi
  /// Scale exactly the tensors whose name contains "weight" (overrides `tensor_options::adaptive`).
  bool by_name = P == preset::official;
  nonfinite on_nonfinite = nonfinite::skip;  ///< optimizer_options::on_nonfinite

  template <class Base>
  composition<perturb::adaptive, mask::dense, Base> compose(Base base) const {
    return {.base = std::move(base),
            .perturb = {.rho = rho, .eta = eta, .xi = xi},
            .options = {.on_nonfinite = on_nonfinite}};
  }
};
using asam_options = asam_preset_options<preset::library>;
using asam_official_options = asam_preset_options<preset::official>;

/// The davda54/sam adaptive-mode preset's options (η = 0 and every tensor scaled are fixed).
struct asam_davda54_options {
  double rho = 2.0;                          ///< perturb::adaptive::rho
  double xi = 1e-12;                         ///< perturb::adaptive::xi
  nonfinite on_nonfinite = nonfinite::skip;  ///< optimizer_options::on_nonfinite

  template <class Base>
  composition<perturb::adaptive, mask::dense, Base> compose(Base base) const {
    return {.base = std::move(base),
            .perturb = {.rho = rho, .eta = 0.0, .xi = xi},
            .options = {.on_nonfinite = on_nonfinite}};
  }
};

template <class T, class Base, class Backend = default_backend>
using asam_t = sharpness_aware<T, Backend, perturb::adaptive, mask::dense, Base>;

namespace detail {
/// A copy of `ps` (the same buffers) whose tensors' `adaptive` option is `scaled(view)`. The
/// optimizer copies the views, so the copy may be a temporary.
template <class W, class G, class Pred>
param_set<W, G> with_adaptive(const param_set<W, G>& ps, Pred scaled) {
  param_set<W, G> out;
  for (const auto& v : ps.tensors()) {
    tensor_options o = v.options;
    o.adaptive = scaled(v);
    out.add(v.name, v.value, v.grad, v.shape, o, v.space).extra_flags = v.extra_flags;
  }
  return out;
}

/// `asam_t` from `o`, with its `by_name` rule applied to `params`.
template <class Backend, class W, class G, class Base, preset P, class T = detail::precision_for_t<W, G>>
asam_t<T, Base, Backend> make_asam(const param_set<W, G>& params, Base base,
                                   const asam_preset_options<P>& o) {
  if (!o.by_name) return asam_t<T, Base, Backend>(params, o.compose(std::move(base)));
  auto weight = [](const tensor_view<T>& v) { return v.name.find("weight") != std::string::npos; };
  bool any = false;
  for (const auto& v : params.tensors()) any = any || weight(v);
  if (!any)
    throw std::invalid_argument(
        "flatmin::asam: by_name = true, but no tensor name contains \"weight\", so nothing "
        "would be scaled; set by_name = false and mark the scaled tensors with tensor_options::adaptive");
  return asam_t<T, Base, Backend>(detail::with_adaptive(params, weight), o.compose(std::move(base)));
}
}  // namespace detail

template <class Backend = default_backend, class W, class G, class Base,
          class T = detail::precision_for_t<W, G>>
asam_t<T, Base, Backend> asam(const param_set<W, G>& params, Base base, asam_options o = {}) {
  return detail::make_asam<Backend>(params, std::move(base), o);
}

template <class Backend = default_backend, class W, class G, class Base,
          class T = detail::precision_for_t<W, G>>
asam_t<T, Base, Backend> asam(const param_set<W, G>& params, Base base, official_t,
                              asam_official_options o = {}) {
  return detail::make_asam<Backend>(params, std::move(base), o);
}

/// The davda54 flavour. `O` is deduced (never from a braced list), so that
/// `asam(params, base, official, {.rho = 1})` still means the SamsungLabs preset, unambiguously.
template <class Backend = default_backend, class W, class G, class Base, std::same_as<asam_davda54_options> O,
          class T = detail::precision_for_t<W, G>>
asam_t<T, Base, Backend> asam(const param_set<W, G>& params, Base base, official_t, O o) {
  auto all = [](const tensor_view<T>&) { return true; };
  return asam_t<T, Base, Backend>(detail::with_adaptive(params, all), o.compose(std::move(base)));
}

}  // namespace flatmin
