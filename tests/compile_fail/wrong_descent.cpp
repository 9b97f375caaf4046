// expect: the Descent rule has no .first_gradient\(obj\). returning the loss
// A descent rule without second_gradient() must not compile, naming the missing capability.
#include <flatmin/flatmin.hpp>

#include <vector>

struct half_descent {
  void validate() const {}
  template <class O>
  double first_gradient(O& obj) {
    return obj();
  }
};

int main() {
  std::vector<float> w(3), g(3);
  flatmin::param_set<float> ps;
  ps.add("w", w, g);
  flatmin::sharpness_aware<float, flatmin::backend::eigen, flatmin::perturb::l2, flatmin::mask::dense,
                           flatmin::base::sgd, half_descent>
      opt(ps, {.base = flatmin::base::sgd{}});
  static_cast<void>(opt);
}
