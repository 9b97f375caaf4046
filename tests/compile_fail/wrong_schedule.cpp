// expect: the Schedule has no .perturbs_at\(size_t step\) const. returning bool
// A schedule that cannot say whether a step perturbs must not compile, naming the capability.
#include <flatmin/flatmin.hpp>

#include <vector>

struct every_other {  // `perturbs(t)` instead of `perturbs_at(t)`
  void validate() const {}
  bool perturbs(std::size_t t) const { return t % 2 == 1; }
};

int main() {
  std::vector<float> w(3), g(3);
  flatmin::param_set<float> ps;
  ps.add("w", w, g);
  flatmin::sharpness_aware<float, flatmin::backend::eigen, flatmin::perturb::l2, flatmin::mask::dense,
                           flatmin::base::sgd, flatmin::descent::standard, flatmin::regularize::none,
                           every_other>
      opt(ps, {.base = flatmin::base::sgd{}});
  static_cast<void>(opt);
}
