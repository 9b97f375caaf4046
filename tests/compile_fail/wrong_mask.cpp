// expect: the Mask's state lacks get_view\(\), range\(layout\), saved_size\(layout\) or radius_scale\(\)
// A mask whose state offers no pass range must not compile, naming the missing capability.
#include <flatmin/flatmin.hpp>

#include <vector>

struct rangeless_mask {
  void validate() const {}
  template <class T, class Backend>
  struct state {
    static constexpr bool norm_over_mask = false;
    static constexpr bool compact = false;
    state(const rangeless_mask&, const flatmin::backend::layout<T, Backend>&) {}
  };
};

int main() {
  std::vector<float> w(3), g(3);
  flatmin::param_set<float> ps;
  ps.add("w", w, g);
  flatmin::sharpness_aware<float, flatmin::backend::eigen, flatmin::perturb::l2, rangeless_mask,
                           flatmin::base::sgd>
      opt(ps, {.base = flatmin::base::sgd{}});
  static_cast<void>(opt);
}
