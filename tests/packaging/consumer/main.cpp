// Three SAM(SGD) steps on L(w) = ½‖w‖² from w = (3, 4), ρ = 0.5, lr = 0.1. There g = w, so each
// step is w ← w − lr (w + ρ w/‖w‖) = w (1 − lr − lr ρ / ‖w‖): the first gives (2.67, 3.56).
// The Thrust consumer also selects the default backend with FLATMIN_DEFAULT_BACKEND=thrust; the
// torch consumer (flatmin::torch) holds w in a libtorch tensor and takes g from its backward.
#include <flatmin/flatmin.hpp>

#include <cmath>
#include <type_traits>
#include <cstdio>
#include <vector>

#if defined(CONSUMER_TORCH)
#include <flatmin/torch.hpp>
#include <torch/torch.h>
#elif defined(CONSUMER_THRUST)
#include <flatmin/backend/thrust.hpp>
#include <flatmin/params/thrust_views.hpp>
#include <thrust/device_vector.h>
using backend = flatmin::backend::thrust;
using buffer = thrust::device_vector<float>;
#else
using backend = flatmin::backend::eigen;
using buffer = std::vector<float>;
#endif

#if defined(CONSUMER_TORCH)
int main() {
  torch::Tensor w = torch::tensor({3.0f, 4.0f}).requires_grad_();
  flatmin::libtorch::optimizer opt(flatmin::libtorch::binding<float>({w}), [](const auto& params) {
    return flatmin::sam(params, flatmin::base::sgd{.lr = 0.1}, {.rho = 0.5});
  });
  double r0 = 3, r1 = 4;
  for (int s = 0; s < 3; ++s) {
    opt.step([&] {
      auto loss = 0.5 * (w * w).sum();
      loss.backward();
      return loss;
    });
    const double f = 1 - 0.1 - 0.1 * 0.5 / std::sqrt(r0 * r0 + r1 * r1);
    r0 *= f;
    r1 *= f;
  }
  const float w0 = w[0].item<float>(), w1 = w[1].item<float>();
  const double e = std::fabs(w0 - r0) + std::fabs(w1 - r1);
  std::printf("flatmin consumer (libtorch): w = (%.6f, %.6f), closed form (%.6f, %.6f)\n", w0, w1, r0, r1);
  return e < 1e-5 ? 0 : 1;
}
#else
int main() {
  buffer w(2), g(2);
  w[0] = 3.f;
  w[1] = 4.f;
  flatmin::param_set<float> params;
  params.add("w", w, g);
  static_assert(std::is_same_v<flatmin::default_backend, backend>);
  auto opt = flatmin::sam(params, flatmin::base::sgd{.lr = 0.1}, {.rho = 0.5});
  auto loss = [&] {
    const float a = w[0], b = w[1];
    g[0] = a;
    g[1] = b;
    return 0.5 * (double(a) * a + double(b) * b);
  };
  double r0 = 3, r1 = 4;
  for (int s = 0; s < 3; ++s) {
    opt.step(loss);
    const double f = 1 - 0.1 - 0.1 * 0.5 / std::sqrt(r0 * r0 + r1 * r1);
    r0 *= f;
    r1 *= f;
  }
  const double e = std::fabs(float(w[0]) - r0) + std::fabs(float(w[1]) - r1);
  std::printf("flatmin consumer (%s): w = (%.6f, %.6f), closed form (%.6f, %.6f)\n", backend::name, float(w[0]),
              float(w[1]), r0, r1);
  return e < 1e-5 ? 0 : 1;
}
#endif
