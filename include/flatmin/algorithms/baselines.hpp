#pragma once
/// @file baselines.hpp
/// The plain base optimizers run through the same machinery (reports, non-finite handling,
/// checkpoints) with `perturb::none`: one gradient per step, `ascend()` optional.
///
///     auto opt = flatmin::sgd(params, {.lr = 0.1, .momentum = 0.9});
///     model.forward_backward(batch);  opt.descend();

#include "../backend/default.hpp"
#include "../base/adam.hpp"
#include "../base/adamw.hpp"
#include "../base/sgd.hpp"
#include "../mask/dense.hpp"
#include "../optimizer/sharpness_aware.hpp"
#include "../perturb/none.hpp"

namespace flatmin {

/// The base optimizer `Base` alone.
template <class T, class Base, class Backend = default_backend>
using plain_t = sharpness_aware<T, Backend, perturb::none, mask::dense, Base>;

template <class Backend = default_backend, class W, class G, class Base,
          class T = detail::precision_for_t<W, G>>
plain_t<T, Base, Backend> plain(const param_set<W, G>& params, Base base, optimizer_options options = {}) {
  return plain_t<T, Base, Backend>(params, {.base = std::move(base), .options = options});
}

/// PyTorch-style SGD (momentum, dampening, Nesterov, coupled weight decay).
template <class Backend = default_backend, class W, class G, class T = detail::precision_for_t<W, G>>
plain_t<T, base::sgd, Backend> sgd(const param_set<W, G>& params, base::sgd o = {},
                                   optimizer_options options = {}) {
  return plain<Backend>(params, o, options);
}
/// PyTorch-style Adam (coupled L2 weight decay).
template <class Backend = default_backend, class W, class G, class T = detail::precision_for_t<W, G>>
plain_t<T, base::adam, Backend> adam(const param_set<W, G>& params, base::adam o = {},
                                     optimizer_options options = {}) {
  return plain<Backend>(params, o, options);
}
/// PyTorch-style AdamW (decoupled weight decay).
template <class Backend = default_backend, class W, class G, class T = detail::precision_for_t<W, G>>
plain_t<T, base::adamw, Backend> adamw(const param_set<W, G>& params, base::adamw o = {},
                                       optimizer_options options = {}) {
  return plain<Backend>(params, o, options);
}

}  // namespace flatmin
