// expect: the Base optimizer's state has no .prepare\(options, t\). \(the update\) or .bytes\(\).
// A base optimizer whose state has no update must not compile, naming the missing capability.
#include <flatmin/flatmin.hpp>

#include <cstddef>
#include <vector>

struct stateless_update {
  static constexpr bool has_second_moment = false;
  void validate() const {}
  template <class T, class Backend>
  struct state {
    state(const stateless_update&, std::size_t) {}
    std::size_t bytes() const { return 0; }
  };
};

int main() {
  std::vector<float> w(3), g(3);
  flatmin::param_set<float> ps;
  ps.add("w", w, g);
  flatmin::sharpness_aware<float, flatmin::backend::eigen, flatmin::perturb::l2, flatmin::mask::dense,
                           stateless_update>
      opt(ps, {.base = stateless_update{}});
  static_cast<void>(opt);
}
