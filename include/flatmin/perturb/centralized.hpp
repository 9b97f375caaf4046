#pragma once
/// @file centralized.hpp
/// `perturb::centralized<Inner>` — gradient centralisation of the ascent's gradient (GCSAM:
/// Hassan, Vakanski, Zhang, Xian, "GCSAM: Gradient Centralized Sharpness Aware Minimization",
/// 2025; gradient centralisation: Yong et al., ECCV 2020), a transform of any perturbation that
/// reads the gradient: Inner's ε from
///
///     GC(g)_i = g_i − mean(g over the row of i)
///
/// the row along its tensor's first dimension (backend::layout::host_row_lengths) for a tensor of
/// two or more dimensions; a tensor of one dimension (a bias, a norm's scale) is left as it is, as
/// gradient centralisation does. With perturb::l2 (algorithms/gcsam.hpp):
/// ε = ρ GC(g)/(‖GC(g)‖ + ξ). The means are computed from g before the statistics pass (one pass
/// reading g, each row summed in a fixed order: the same on every backend); the descent is
/// Inner's composition's, on g_adv as it is.
///
/// Inner: a perturbation without state of its own that reads the gradient and is rescaled to a
/// radius (perturb::l2, adaptive, preconditioned); composes with mask::dense only (the ascent's
/// element path, which looks the row up). Its options are Inner's (this struct derives from it):
/// `perturb::centralized<perturb::l2>{{.rho = 0.05}}`.

#include <cstddef>
#include <string>

#include "../backend/layout.hpp"
#include "../kernels/centralized_term.hpp"
#include "l2.hpp"
#include "rows.hpp"

namespace flatmin::perturb {

template <class Inner = l2>
struct centralized : Inner {
  static_assert(
      !requires { typename Inner::template state<float, void>; },
      "perturb::centralized: the inner perturbation has a state of its own (not supported)");
  static_assert(
      !requires { requires !Inner::needs_clean_gradient; },
      "perturb::centralized: the inner perturbation reads no gradient (nothing to centralise)");
  static_assert(
      !requires { requires !Inner::normalised; },
      "perturb::centralized: the inner perturbation is not rescaled to a radius");

  static constexpr const char* name = "centralized";  ///< the identity adds Inner's (state::identity)
  static constexpr bool dense_mask_only = true;       ///< the ascent's element path looks the row up

  template <class T, class Backend>
  class state {
   public:
    state(const centralized&, const backend::layout<T, Backend>& l)
        : rows_(l), means_(Backend::template make_vector<T>(rows_.rows())) {}

    template <class BaseState>
    auto term(const centralized& o, const BaseState& base, std::size_t steps_done) const {
      using inner_term = decltype(static_cast<const Inner&>(o).template term<T>(base, steps_done));
      return kernels::centralized_term<T, inner_term>{
          static_cast<const Inner&>(o).template term<T>(base, steps_done), rows_.table(),
          Backend::data(means_)};
    }

    /// The row means of g (in the views, divided by the gradients' scale), before the statistics.
    void before_statistics(const centralized&, const backend::layout<T, Backend>& l, T inv_scale) {
      using L = backend::layout<T, Backend>;
      Backend::for_each_index(
          rows_.rows(),
          kernels::row_mean_pass<T, typename L::weight_type, typename L::grad_type>{
              l.tensors(), rows_.row_tensor(), rows_.table(), inv_scale, Backend::data(means_)});
    }

    std::string identity(const centralized&) const { return std::string("centralized<") + Inner::name + ">"; }
    std::size_t bytes() const { return rows_.rows() * sizeof(T); }

   private:
    row_table<T, Backend> rows_;
    typename Backend::template vector<T> means_;
  };
};

}  // namespace flatmin::perturb
