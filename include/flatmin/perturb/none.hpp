#pragma once
/// @file none.hpp
/// `perturb::none` — no perturbation: ε = 0 and no second gradient. Runs the plain base optimizer
/// through the same machinery (reports, non-finite handling), for baselines.

#include "../config.hpp"
#include "../kernels/perturb_terms.hpp"

namespace flatmin::perturb {

struct none {
  static constexpr const char* name = "none";  ///< in checkpoints' composition identity
  double rho = 0;
  double xi = 0;
  static constexpr bool perturbs = false;
  void validate() const {}
  template <class T, class BaseState>
  kernels::l2_term<T> term(const BaseState&, std::size_t) const {
    return {};
  }
};

}  // namespace flatmin::perturb
