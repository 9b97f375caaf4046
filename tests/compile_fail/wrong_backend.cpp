// expect: the Backend has no .static bool accepts\(memory_space\).
// A backend that cannot say which memory it reaches must not compile, naming the capability.
#include <flatmin/flatmin.hpp>

#include <cstddef>
#include <vector>

struct blind_backend {
  static constexpr const char* name = "blind";
  static constexpr std::size_t segment_size = 4096;
  template <class T>
  using vector = std::vector<T>;
  template <class T>
  static vector<T> make_vector(std::size_t n) {
    return vector<T>(n);
  }
};

int main() {
  std::vector<float> w(3), g(3);
  flatmin::param_set<float> ps;
  ps.add("w", w, g);
  flatmin::sharpness_aware<float, blind_backend, flatmin::perturb::l2, flatmin::mask::dense,
                           flatmin::base::sgd>
      opt(ps, {.base = flatmin::base::sgd{}});
  static_cast<void>(opt);
}
