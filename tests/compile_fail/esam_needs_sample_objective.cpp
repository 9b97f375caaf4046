// expect: \(ESAM data selection\) needs a flatmin::sample_objective
// ESAM's step() with a plain objective (no per-sample losses) must not compile, with that message.
#include <flatmin/flatmin.hpp>

#include <vector>

int main() {
  std::vector<float> w(3), g(3);
  flatmin::param_set<float> ps;
  ps.add("w", w, g);
  auto opt = flatmin::esam(ps, flatmin::base::sgd{});
  opt.step([] { return 0.0; });
}
