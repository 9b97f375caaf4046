// comm::nccl (comm/nccl.hpp) with data_parallel over backend::thrust under CUDA, on a GPU machine:
// one rank per visible GPU (ncclCommInitAll), one thread each, in one process. Every rank can
// compute every rank's gradient (a separable quadratic whose coefficients hash rank, tensor and
// index, as tests/mpi/test_data_parallel.cpp's), so each rank also runs the one-process reference
// on its own GPU, fed the rank-ordered average of the ranks' gradients (Σ_r g_r in rank order in
// double, / P, rounded to float: written out here), and the two are compared bitwise: weights and
// norms, in global, per-worker-free (global) and sharded mode, for SAM and FSAM.
// The same protocol runs on the CPU in mpi.test_data_parallel_thrust.np* (a device-tagged MPI
// communicator over backend::thrust's host systems); this test adds NCCL and device memory.
#include <flatmin/comm/nccl.hpp>  // first: it compiles on its own

#include <doctest/doctest.h>

#include <cstdint>
#include <cstring>
#include <exception>
#include <flatmin/flatmin.hpp>
#include <flatmin/optimizer/data_parallel.hpp>
#include <flatmin/params/thrust_views.hpp>
#include <string>
#include <thread>
#include <vector>

#include "support/rank_quadratic.hpp"

namespace {

using namespace flatmin_test::rank_quadratic;

struct model {
  std::vector<thrust::device_vector<float>> w, g;
  flatmin::param_set<float> ps;
  model() : w(sizes.size()), g(sizes.size()) {
    for (std::size_t t = 0; t < sizes.size(); ++t) {
      std::vector<float> h(sizes[t]);
      for (std::size_t i = 0; i < h.size(); ++i) h[i] = static_cast<float>(unit(key(99, t, i, 3)) - 0.5);
      w[t] = h;
      g[t].assign(sizes[t], 0.f);
      flatmin::tensor_options o;
      if (t == 1) o.weight_decay = false;
      if (t == 3) o.perturb = false;
      ps.add(names[t], w[t], g[t], {sizes[t]}, o);
    }
  }
  std::vector<std::vector<float>> weights() const {
    std::vector<std::vector<float>> h(w.size());
    for (std::size_t t = 0; t < w.size(); ++t) {
      h[t].resize(w[t].size());
      thrust::copy(w[t].begin(), w[t].end(), h[t].begin());
    }
    return h;
  }
  void fill(int r) {  // rank r's gradient at the current weights
    const auto h = weights();
    for (std::size_t t = 0; t < w.size(); ++t) {
      std::vector<float> gt(h[t].size());
      for (std::size_t i = 0; i < gt.size(); ++i) gt[i] = grad_of(r, t, i, h[t][i]);
      g[t] = gt;
    }
  }
  void fill_average(int P) {  // the one-process gradient: rank-ordered mean in double, rounded once
    const auto h = weights();
    for (std::size_t t = 0; t < w.size(); ++t) {
      std::vector<float> gt(h[t].size());
      for (std::size_t i = 0; i < gt.size(); ++i) {
        double s = grad_of(0, t, i, h[t][i]);
        for (int r = 1; r < P; ++r) s += grad_of(r, t, i, h[t][i]);
        gt[i] = static_cast<float>(s / P);
      }
      g[t] = gt;
    }
  }
};

struct outcome {
  bool ok = false;
  std::string what;
};

template <class Opt, class Make>
outcome run_rank(ncclComm_t c, int device, int P, int me, const Make& make, flatmin::parallel_mode mode,
                 std::size_t bucket_bytes) {
  outcome out;
  try {
    if (cudaSetDevice(device) != cudaSuccess) throw std::runtime_error("cudaSetDevice failed");
    model dist, ref;
    flatmin::data_parallel<Opt, flatmin::comm::nccl> dp(dist.ps, make(), flatmin::comm::nccl(c),
                                                        {.mode = mode, .bucket_bytes = bucket_bytes});
    Opt one(ref.ps, make());
    bool same = true;
    for (int s = 0; s < 3; ++s) {
      dist.fill(me);
      const auto rd1 = dp.ascend();
      dist.fill(me);
      const auto rd = dp.descend();
      ref.fill_average(P);
      const auto rr1 = one.ascend();
      ref.fill_average(P);
      const auto rr = one.descend();
      same = same && std::memcmp(&rd1.grad_norm, &rr1.grad_norm, sizeof(double)) == 0 &&
             std::memcmp(&rd.perturbed_grad_norm, &rr.perturbed_grad_norm, sizeof(double)) == 0 &&
             std::memcmp(&rd1.perturbation_norm, &rr1.perturbation_norm, sizeof(double)) == 0 &&
             rd.mask_density == rr.mask_density && !rd.skipped;
    }
    same = same && dist.weights() == ref.weights() && dp.steps() == one.steps();
    out.ok = same;
    if (!same) out.what = "differs from the one-process run";
  } catch (const std::exception& e) {
    out.what = e.what();
  }
  return out;
}

// Every visible GPU a rank; the ranks' outcomes (checked on the main thread: doctest is not
// thread-safe).
template <class Opt, class Make>
void check_on_all_devices(const Make& make, flatmin::parallel_mode mode,
                          std::size_t bucket_bytes = std::size_t{16} << 20) {
  int n = 0;
  REQUIRE(cudaGetDeviceCount(&n) == cudaSuccess);
  REQUIRE(n >= 1);
  const int P = n < 4 ? n : 4;
  std::vector<ncclComm_t> comms(static_cast<std::size_t>(P));
  std::vector<int> devices(static_cast<std::size_t>(P));
  for (int r = 0; r < P; ++r) devices[static_cast<std::size_t>(r)] = r;
  REQUIRE(ncclCommInitAll(comms.data(), P, devices.data()) == ncclSuccess);
  std::vector<outcome> results(static_cast<std::size_t>(P));
  std::vector<std::thread> threads;
  for (int r = 0; r < P; ++r)
    threads.emplace_back([&, r] {
      results[static_cast<std::size_t>(r)] =
          run_rank<Opt>(comms[static_cast<std::size_t>(r)], r, P, r, make, mode, bucket_bytes);
    });
  for (auto& t : threads) t.join();
  for (auto c : comms) ncclCommDestroy(c);
  for (int r = 0; r < P; ++r) {
    INFO("rank " << r << " of " << P << ": " << results[static_cast<std::size_t>(r)].what);
    CHECK(results[static_cast<std::size_t>(r)].ok);
  }
}

using backend_t = flatmin::backend::thrust;
using sam_sgd = flatmin::sam_t<float, flatmin::base::sgd, backend_t>;
using sam_adamw = flatmin::sam_t<float, flatmin::base::adamw, backend_t>;
using fsam_sgd = flatmin::fsam_t<float, flatmin::base::sgd, backend_t>;

}  // namespace

TEST_CASE("comm::nccl: P GPUs are one process on the rank-ordered average, bitwise") {
  const auto sam = [] {
    return flatmin::sam_options{.rho = 0.05}.compose<flatmin::perturb::l2>(
        flatmin::base::adamw{.lr = 1e-2, .weight_decay = 1e-2});
  };
  const auto sam_m = [] {
    return flatmin::sam_options{.rho = 0.05}.compose<flatmin::perturb::l2>(
        flatmin::base::sgd{.lr = 0.05, .momentum = 0.9, .weight_decay = 1e-3});
  };
  const auto fsam = [] {
    return flatmin::fsam_options{.keep = 0.25, .refresh_every = 2}.compose(
        flatmin::base::sgd{.lr = 0.05, .momentum = 0.9});
  };
  SUBCASE("global, SAM-AdamW") { check_on_all_devices<sam_adamw>(sam, flatmin::parallel_mode::global_perturbation); }
  SUBCASE("global, SAM-AdamW, 4 KiB buckets") {
    check_on_all_devices<sam_adamw>(sam, flatmin::parallel_mode::global_perturbation, 4096);
  }
  SUBCASE("sharded, SAM-SGD") { check_on_all_devices<sam_sgd>(sam_m, flatmin::parallel_mode::sharded); }
  SUBCASE("sharded, FSAM") { check_on_all_devices<fsam_sgd>(fsam, flatmin::parallel_mode::sharded); }
}
