// expect: perturb::preconditioned\) needs a base optimizer with a second moment
// perturb::preconditioned over SGD (no second moment) must not compile, with that message.
#include <flatmin/flatmin.hpp>

#include <vector>

int main() {
  std::vector<float> w(3), g(3);
  flatmin::param_set<float> ps;
  ps.add("w", w, g);
  auto opt = flatmin::preconditioned_sam(ps, flatmin::base::sgd{});
  static_cast<void>(opt);
}
