// expect: the Regularizer.s state has no .prepare\(options, layout, t, inv_scale\). returning
// A regularizer whose prepare() gives no elementwise adjustment must not compile, naming it.
#include <flatmin/flatmin.hpp>

#include <cstddef>
#include <vector>

struct scalar_regularizer {
  void validate() const {}
  template <class T, class Backend>
  struct state {
    state(const scalar_regularizer&, const flatmin::backend::layout<T, Backend>&) {}
    double prepare(const scalar_regularizer&, const flatmin::backend::layout<T, Backend>&, std::size_t, T) {
      return 0.0;
    }
  };
};

int main() {
  std::vector<float> w(3), g(3);
  flatmin::param_set<float> ps;
  ps.add("w", w, g);
  flatmin::sharpness_aware<float, flatmin::backend::eigen, flatmin::perturb::l2, flatmin::mask::dense,
                           flatmin::base::sgd, flatmin::descent::standard, scalar_regularizer>
      opt(ps, {.base = flatmin::base::sgd{}});
  static_cast<void>(opt);
}
