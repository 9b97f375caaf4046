// expect: the objective is not a flatmin::functional_objective
// Functional-SAM's step() with a plain objective (no functional_backward()) must not compile.
#include <flatmin/flatmin.hpp>

#include <vector>

int main() {
  std::vector<float> w(3), g(3);
  flatmin::param_set<float> ps;
  ps.add("w", w, g);
  auto opt = flatmin::functional_sam(ps, flatmin::base::sgd{});
  opt.step([] { return 0.0; });
}
