// expect: flatmin::composition: .base is required
// A composition that leaves out the base optimizer must not compile: a default-constructed base
// would run silently with its default learning rate.
#include <flatmin/flatmin.hpp>

#include <vector>

int main() {
  std::vector<float> w(4, 1.0f), g(4, 0.0f);
  flatmin::param_set<float> ps;
  ps.add("w", w, g);
  flatmin::sharpness_aware<float, flatmin::backend::eigen, flatmin::perturb::l2, flatmin::mask::dense,
                           flatmin::base::sgd>
      opt(ps, {.perturb = {.rho = 0.1}});
  static_cast<void>(opt);
}
