// expect: SAMPa\) are not distributed yet
// data_parallel around SAMPa (whose protocol has a middle call it does not average around) must
// not compile, with that message.
#include <flatmin/flatmin.hpp>
#include <flatmin/optimizer/data_parallel.hpp>

#include <vector>

int main() {
  std::vector<float> w(3), g(3);
  flatmin::param_set<float> ps;
  ps.add("w", w, g);
  using opt_t = flatmin::sampa_t<float, flatmin::base::sgd>;
  flatmin::data_parallel<opt_t> dp(ps, flatmin::sampa_options{}.compose(flatmin::base::sgd{.lr = 0.1}));
  static_cast<void>(dp);
}
