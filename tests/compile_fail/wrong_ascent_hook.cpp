// expect: the Descent rule.s on_ascent is not callable as on_ascent
// A descent rule whose on_ascent has the wrong signature would be silently ignored: it must not
// compile, naming the hook.
#include <flatmin/flatmin.hpp>

#include <vector>

struct clean_gradient_descent : flatmin::descent::standard {
  double seen = 0;
  void on_ascent(double grad_norm2) { seen = grad_norm2; }  // not (layout, ascent_stats, inv_scale)
};

int main() {
  std::vector<float> w(3), g(3);
  flatmin::param_set<float> ps;
  ps.add("w", w, g);
  flatmin::sharpness_aware<float, flatmin::backend::eigen, flatmin::perturb::l2, flatmin::mask::dense,
                           flatmin::base::sgd, clean_gradient_descent>
      opt(ps, {.base = flatmin::base::sgd{}});
  static_cast<void>(opt);
}
