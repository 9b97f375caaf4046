// expect: the Perturb policy has no radius options .rho. and .xi.
// A perturbation without ρ and ξ must not compile, and the error must name what is missing.
#include <flatmin/flatmin.hpp>

#include <vector>

struct no_radius {
  static constexpr bool perturbs = true;
  void validate() const {}
};

int main() {
  std::vector<float> w(3), g(3);
  flatmin::param_set<float> ps;
  ps.add("w", w, g);
  flatmin::sharpness_aware<float, flatmin::backend::eigen, no_radius, flatmin::mask::dense,
                           flatmin::base::sgd>
      opt(ps, {.base = flatmin::base::sgd{}});
  static_cast<void>(opt);
}
