// expect: composes with mask::dense
// Flat-LoRA's perturbation (on the frozen bases, outside the trained tensors) under a sparse mask
// must not compile, with that message.
#include <flatmin/flatmin.hpp>

#include <vector>

int main() {
  std::vector<float> w(3), g(3);
  flatmin::param_set<float> ps;
  ps.add("w", w, g);
  flatmin::sharpness_aware<float, flatmin::default_backend, flatmin::perturb::flat_lora, flatmin::mask::fisher,
                           flatmin::base::sgd>
      opt(ps, {.base = {.lr = 0.1}});
  static_cast<void>(opt);
}
