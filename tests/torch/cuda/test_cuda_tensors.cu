// The libtorch adapter on CUDA tensors (FLATMIN_TORCH_CUDA: nvcc and a CUDA libtorch), run on a GPU;
// without one every case but the first says so and returns. References:
// - the same run on CPU tensors with backend::eigen, in float64 (torch's CPU and CUDA kernels
//   differ only in rounding there, so the weights agree to 1e-9 after 20 steps);
// - the same run on the default stream: on a non-blocking stream of torch's pool the passes must
//   be ordered after the backward queued there, or they would read gradients being written;
// - an archive saved mid-run, loaded into a fresh optimizer: the rest of the run is bit for bit.
#include <flatmin/backend/eigen.hpp>  // nvcc's default backend is thrust: the CPU references name eigen
#include <flatmin/flatmin.hpp>
#include <flatmin/torch.hpp>
#include <torch/torch.h>

#include <doctest/doctest.h>

#include <sstream>
#include <string>
#include <vector>

#if !defined(FLATMIN_TORCH_CUDA)
#error "test_cuda_tensors needs nvcc, Thrust on CUDA and a CUDA libtorch (FLATMIN_TORCH_CUDA)"
#endif

namespace {

namespace fl = flatmin::libtorch;

bool no_gpu() {
  if (torch::cuda::is_available()) return false;
  MESSAGE("no CUDA device: this case did not run");
  return true;
}

torch::nn::Sequential make_net(torch::Dtype dtype, torch::Device device) {
  torch::manual_seed(3);
  torch::nn::Sequential net(torch::nn::Linear(6, 32), torch::nn::Tanh(), torch::nn::Linear(32, 2));
  net->to(device, dtype);
  return net;
}

struct data {
  torch::Tensor x, y;
  data(torch::Dtype dtype, torch::Device device) {
    torch::manual_seed(5);
    x = torch::randn({64, 6}, torch::kDouble).to(device, dtype);
    y = torch::randn({64, 2}, torch::kDouble).to(device, dtype);
  }
};

template <class Backend>
auto sam_adamw() {
  return [](const auto& ps) {
    return flatmin::sam<Backend>(ps, flatmin::base::adamw{.lr = 1e-2, .weight_decay = 0.01}, {.rho = 0.05});
  };
}

template <class Opt>
void train(Opt& opt, torch::nn::Sequential& net, const data& d, int steps) {
  for (int s = 0; s < steps; ++s)
    opt.step([&] {
      auto loss = torch::mse_loss(net->forward(d.x), d.y);
      loss.backward();
      return loss;
    });
}

/// The largest |a − b| / max(|b|, 1e-3) over the parameters (b's copied to a's device).
double max_rel(const torch::nn::Module& a, const torch::nn::Module& b) {
  double worst = 0;
  const auto pa = a.parameters(), pb = b.parameters();
  for (std::size_t i = 0; i < pa.size(); ++i) {
    const auto x = pa[i].detach().to(torch::kCPU, torch::kDouble);
    const auto y = pb[i].detach().to(torch::kCPU, torch::kDouble);
    worst = std::max(worst, ((x - y).abs() / y.abs().clamp_min(1e-3)).max().item<double>());
  }
  return worst;
}
/// Two copies of the float net on the GPU, and the data there.
struct twin_nets {
  torch::Device cuda{torch::kCUDA, 0};
  torch::nn::Sequential a = make_net(torch::kFloat, cuda);
  torch::nn::Sequential b = make_net(torch::kFloat, cuda);
  data d{torch::kFloat, cuda};
};

bool same_bits(const torch::nn::Module& a, const torch::nn::Module& b) {
  const auto pa = a.parameters(), pb = b.parameters();
  for (std::size_t i = 0; i < pa.size(); ++i)
    if (!torch::equal(pa[i].detach().cpu(), pb[i].detach().cpu())) return false;
  return true;
}

}  // namespace

// Runs without a GPU: what an nvcc file does with CPU tensors.
TEST_CASE("in an nvcc file CPU tensors bind as host memory: backend::eigen trains them, thrust refuses them") {
  auto net = make_net(torch::kDouble, torch::kCPU);
  const data d(torch::kDouble, torch::kCPU);
  fl::binding<double> b(*net);
  CHECK(b.space() == flatmin::memory_space::host);
  CHECK(b.params()[0].space == flatmin::memory_space::host);
  CHECK_THROWS_AS(fl::optimizer(fl::binding<double>(*net), sam_adamw<flatmin::backend::thrust>()),
                  flatmin::usage_error);
  auto opt = fl::optimizer(std::move(b), sam_adamw<flatmin::backend::eigen>());
  const auto before = net->parameters()[0].detach().clone();
  train(opt, net, d, 3);
  CHECK_FALSE(torch::equal(before, net->parameters()[0].detach()));
}

TEST_CASE("CUDA tensors bind as device memory and train like CPU tensors (float64, SAM over AdamW)") {
  if (no_gpu()) return;
  const torch::Device cuda(torch::kCUDA, 0);
  auto gnet = make_net(torch::kDouble, cuda);
  auto cnet = make_net(torch::kDouble, torch::kCPU);
  const data gd(torch::kDouble, cuda), cd(torch::kDouble, torch::kCPU);
  fl::binding<double> gb(*gnet);
  CHECK(gb.space() == flatmin::memory_space::device);
  CHECK(gb.params()[0].space == flatmin::memory_space::device);
  auto gopt = fl::optimizer(std::move(gb), sam_adamw<flatmin::backend::thrust>());
  auto copt = fl::optimizer(fl::binding<double>(*cnet), sam_adamw<flatmin::backend::eigen>());
  train(gopt, gnet, gd, 20);
  train(copt, cnet, cd, 20);
  const double rel = max_rel(*gnet, *cnet);
  MESSAGE("largest relative difference, CUDA against CPU: " << rel);
  CHECK(rel < 1e-9);
  CHECK(rel > 0);  // the nets really trained on two devices: torch's kernels round differently
  // A stale binding raises before flatmin touches device memory.
  for (auto& p : gnet->parameters()) p.mutable_grad() = torch::Tensor();
  CHECK_THROWS_AS(gopt.ascend(), flatmin::usage_error);
}

TEST_CASE("on a non-blocking stream of torch's pool the passes follow the backward queued there") {
  if (no_gpu()) return;
  twin_nets t;
  auto oa = fl::optimizer(fl::binding<float>(*t.a), sam_adamw<flatmin::backend::thrust>());
  auto ob = fl::optimizer(fl::binding<float>(*t.b), sam_adamw<flatmin::backend::thrust>());
  train(oa, t.a, t.d, 30);
  {
    const c10::cuda::CUDAStreamGuard on(c10::cuda::getStreamFromPool());
    train(ob, t.b, t.d, 30);
    torch::cuda::synchronize();
  }
  CHECK(same_bits(*t.a, *t.b));
}

TEST_CASE("save / load of a CUDA optimizer through an archive resumes bit for bit") {
  if (no_gpu()) return;
  twin_nets t;
  auto& a = t.a;
  auto& b = t.b;
  const data& d = t.d;
  auto oa = fl::optimizer(fl::binding<float>(*a), sam_adamw<flatmin::backend::thrust>());
  train(oa, a, d, 5);
  std::stringstream bytes;
  {
    torch::serialize::OutputArchive out;
    oa.save(out);
    out.save_to(bytes);
  }
  {
    const torch::NoGradGuard no_grad;
    for (std::size_t i = 0; i < a->parameters().size(); ++i) b->parameters()[i].copy_(a->parameters()[i]);
  }
  auto ob = fl::optimizer(fl::binding<float>(*b), sam_adamw<flatmin::backend::thrust>());
  torch::serialize::InputArchive in;
  in.load_from(bytes);
  ob.load(in);
  train(oa, a, d, 5);
  train(ob, b, d, 5);
  CHECK(same_bits(*a, *b));
}

TEST_CASE("bfloat16 CUDA tensors train with float state and master weights like bfloat16 CPU tensors") {
  if (no_gpu()) return;
  const torch::Device cuda(torch::kCUDA, 0);
  auto g = make_net(torch::kBFloat16, cuda);
  auto c = make_net(torch::kBFloat16, torch::kCPU);
  const data gd(torch::kBFloat16, cuda), cd(torch::kBFloat16, torch::kCPU);
  const auto make = [](auto backend) {
    return [](const auto& ps) {
      auto o = flatmin::sam<decltype(backend)>(ps, flatmin::base::adamw{.lr = 1e-2}, {.rho = 0.05});
      o.options().master_weights = true;
      return o;
    };
  };
  auto og = fl::optimizer(fl::binding<flatmin::bfloat16>(*g), make(flatmin::backend::thrust{}));
  auto oc = fl::optimizer(fl::binding<flatmin::bfloat16>(*c), make(flatmin::backend::eigen{}));
  train(og, g, gd, 10);
  train(oc, c, cd, 10);
  // bf16 forward and backward round differently on the two devices: a few bf16 ulps (2^-8) at most
  const double rel = max_rel(*g, *c);
  MESSAGE("largest relative difference, CUDA against CPU (bf16): " << rel);
  CHECK(rel < 0.05);
}
