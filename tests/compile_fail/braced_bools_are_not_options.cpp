// expect: a braced list of integers is a tensor shape; write per-tensor options with designated
// A positional list of bools after the buffers used to mean tensor_options; it must not compile.
#include <flatmin/flatmin.hpp>

#include <vector>

int main() {
  std::vector<float> w(3), g(3);
  flatmin::param_set<float> ps;
  ps.add("w", w, g, {true, false});
}
