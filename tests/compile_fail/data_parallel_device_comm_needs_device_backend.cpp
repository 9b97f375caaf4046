// expect: needs a backend whose vectors are in device memory
// data_parallel with a communicator of device memory (comm::nccl declares it) over backend::eigen,
// whose buffers are host memory, must not compile, with that message (comm/communicator.hpp's
// `space_of`).
#include <flatmin/flatmin.hpp>
#include <flatmin/optimizer/data_parallel.hpp>

#include <vector>

struct device_comm : flatmin::comm::none {
  static constexpr flatmin::memory_space space = flatmin::memory_space::device;
};

int main() {
  std::vector<float> w(3), g(3);
  flatmin::param_set<float> ps;
  ps.add("w", w, g);
  using opt_t = flatmin::sam_t<float, flatmin::base::sgd, flatmin::backend::eigen>;
  flatmin::data_parallel<opt_t, device_comm> dp(ps, flatmin::sam_options{}.compose<flatmin::perturb::l2>(
                                                        flatmin::base::sgd{.lr = 0.1}));
  static_cast<void>(dp);
}
