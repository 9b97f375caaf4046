// The backend primitives every policy relies on, on each backend (small cases take the host
// systems' serial path, large ones the parallel one): a pass visits every element of
// 1 or 1000 tensors exactly once with the right indices and flags; reductions follow the fixed
// summation tree (exact where the arithmetic is exact, equal to backend::eigen bit for bit, and
// independent of the OpenMP thread count); histograms are exact; memory spaces are checked.
#include <doctest/doctest.h>
#include <flatmin/flatmin.hpp>

#include <cstdint>
#include <cstring>
#include <random>
#include <type_traits>
#include <vector>

#include "support/backends.hpp"
#include "support/buffers.hpp"

#if defined(_OPENMP)
#include <omp.h>
#endif

namespace {

using flatmin::backend::elem;

// Tensors of the given sizes in Backend memory, flags varying with the index.
template <class Backend>
struct tensors {
  std::vector<flatmin_test::buffer<Backend, float>> w, g;
  flatmin::param_set<float> ps;
  explicit tensors(const std::vector<std::size_t>& sizes) {
    w.reserve(sizes.size());
    g.reserve(sizes.size());
    std::mt19937 rng(7);
    std::uniform_real_distribution<float> u(-1.f, 1.f);
    for (std::size_t t = 0; t < sizes.size(); ++t) {
      std::vector<float> hw(sizes[t]), hg(sizes[t]);
      for (auto& x : hw) x = u(rng);
      for (auto& x : hg) x = u(rng);
      w.push_back(flatmin_test::buffer_of<Backend, float>::make(hw));
      g.push_back(flatmin_test::buffer_of<Backend, float>::make(hg));
      flatmin::tensor_options o{.weight_decay = t % 2 == 0, .perturb = t % 3 != 0};
      ps.add("t" + std::to_string(t), w.back(), g.back(), o);
    }
  }
  std::vector<float> host_w(std::size_t t) const { return flatmin_test::buffer_of<Backend, float>::host(w[t]); }
  std::vector<float> host_g(std::size_t t) const { return flatmin_test::buffer_of<Backend, float>::host(g[t]); }
};

struct visit_once {
  FLATMIN_HD void operator()(const elem<float>& e) const {
    e.g = e.g + 1.0f;                       // counts visits (g starts at 0)
    e.w = static_cast<float>(e.i) + 0.25f * static_cast<float>(e.flags) + 0.0f * static_cast<float>(e.k);
  }
};
struct tensor_id {
  FLATMIN_HD void operator()(const elem<float>& e) const { e.w = static_cast<float>(e.tensor); }
};
struct index_sum {
  FLATMIN_HD double operator()(const elem<float>& e) const { return static_cast<double>(e.i); }
};
struct wg_dot {
  FLATMIN_HD double operator()(const elem<float>& e) const { return double(e.w) * double(e.g) + double(e.g) / 3.0; }
};
struct index_cube {
  FLATMIN_HD double operator()(std::size_t i) const {
    const double x = static_cast<double>(i % 1009) / 7.0;
    return x * x * x;
  }
};
struct mod_key {
  std::size_t bins;
  FLATMIN_HD std::size_t operator()(std::size_t i) const { return (i * 2654435761u) % (bins + 3); }  // 3 of bins+3 left out
};
struct set_square {
  double* out;
  FLATMIN_HD void operator()(std::size_t i) const { out[i] = static_cast<double>(i) * static_cast<double>(i); }
};

std::vector<std::size_t> many_sizes() {
  std::vector<std::size_t> s;
  for (std::size_t t = 0; t < 1000; ++t) s.push_back(1 + (t * 37) % 300 + (t % 97 == 0 ? 9000 : 0));
  return s;
}

}  // namespace

TEST_CASE_TEMPLATE("backend: a pass visits every element of 1 and of 1000 tensors once", Backend, FLATMIN_TEST_BACKENDS) {
  for (const auto& sizes : {std::vector<std::size_t>{5, 3000}, std::vector<std::size_t>{100000}, many_sizes()}) {
    tensors<Backend> ts(sizes);
    for (std::size_t t = 0; t < sizes.size(); ++t)
      flatmin_test::buffer_of<Backend, float>::assign(ts.g[t], std::vector<float>(sizes[t], 0.f));
    flatmin::backend::layout<float, Backend> l(ts.ps);
    Backend::for_each(l.full(), visit_once{});
    std::size_t offset = 0, wrong = 0;
    for (std::size_t t = 0; t < sizes.size(); ++t) {
      const auto w = ts.host_w(t), g = ts.host_g(t);
      const auto flags = ts.ps[t].flags();
      for (std::size_t j = 0; j < sizes[t]; ++j) {
        wrong += g[j] != 1.f;
        wrong += w[j] != static_cast<float>(offset + j) + 0.25f * static_cast<float>(flags);
      }
      offset += sizes[t];
    }
    CHECK(wrong == 0);
    Backend::for_each(l.full(), tensor_id{});
    for (std::size_t t = 0; t < sizes.size(); ++t) {
      const auto w = ts.host_w(t);
      wrong += static_cast<std::size_t>(std::count_if(w.begin(), w.end(), [&](float x) { return x != static_cast<float>(t); }));
    }
    CHECK(wrong == 0);
  }
}

TEST_CASE_TEMPLATE("backend: reductions are exact where the arithmetic is, and follow eigen's tree", Backend,
                   FLATMIN_TEST_BACKENDS) {
  for (const auto& sizes : {std::vector<std::size_t>{5, 3001}, std::vector<std::size_t>{100003}, many_sizes()}) {
    tensors<Backend> ts(sizes);
    tensors<flatmin::backend::eigen> ref(sizes);  // same seed: same values
    flatmin::backend::layout<float, Backend> l(ts.ps);
    flatmin::backend::layout<float, flatmin::backend::eigen> lr(ref.ps);
    const double n = static_cast<double>(l.numel());
    // Σ i over [0, N): integers below 2^53, so every order gives the exact n(n−1)/2.
    CHECK(Backend::template reduce<double>(l.full(), index_sum{}) == n * (n - 1) / 2);
    const double mine = Backend::template reduce<double>(l.full(), wg_dot{});
    const double theirs = flatmin::backend::eigen::reduce<double>(lr.full(), wg_dot{});
    CHECK(std::memcmp(&mine, &theirs, sizeof(double)) == 0);
    // Plain float64 reference, any order: agrees to rounding.
    double plain = 0;
    for (std::size_t t = 0; t < sizes.size(); ++t) {
      const auto w = ref.host_w(t), g = ref.host_g(t);
      for (std::size_t j = 0; j < w.size(); ++j) plain += double(w[j]) * double(g[j]) + double(g[j]) / 3.0;
    }
    CHECK(mine == doctest::Approx(plain).epsilon(1e-9));
#if defined(_OPENMP)
    const int before = omp_get_max_threads();
    for (int threads : {1, 2, 8}) {
      omp_set_num_threads(threads);
      const double again = Backend::template reduce<double>(l.full(), wg_dot{});
      CHECK(std::memcmp(&mine, &again, sizeof(double)) == 0);
    }
    omp_set_num_threads(before);
#endif
  }
  // reduce_index / for_each_index
  for (std::size_t n : {std::size_t{0}, std::size_t{1}, std::size_t{4096}, std::size_t{123457}}) {
    const double a = Backend::template reduce_index<double>(n, index_cube{});
    const double b = flatmin::backend::eigen::reduce_index<double>(n, index_cube{});
    CHECK(std::memcmp(&a, &b, sizeof(double)) == 0);
    auto v = Backend::template make_vector<double>(n, -1.0);
    Backend::for_each_index(n, set_square{Backend::data(v)});
    const auto h = Backend::to_host(v);
    std::size_t wrong = 0;
    for (std::size_t i = 0; i < n; ++i) wrong += h[i] != double(i) * double(i);
    CHECK(wrong == 0);
  }
}

TEST_CASE_TEMPLATE("backend: histograms are exact", Backend, FLATMIN_TEST_BACKENDS) {
  // The last case has more bins × blocks than the Thrust backend's row budget (blocks grow).
  for (auto [n, bins] : {std::pair<std::size_t, std::size_t>{0, 4}, {1, 1}, {5000, 7}, {300001, 257}, {1u << 20, 1u << 17}}) {
    const auto counts = Backend::histogram(n, bins, mod_key{bins});
    std::vector<std::uint64_t> expect(bins, 0);
    for (std::size_t i = 0; i < n; ++i) {
      const std::size_t k = mod_key{bins}(i);
      if (k < bins) ++expect[k];
    }
    CHECK(counts == expect);
  }
}

namespace {
// 0, 1 (about 40 %) or 2 (about 2 %) from a hash of the index; `group` is the optional 32-wide
// form of backend::eigen::count_and_collect, here written out per index.
struct hashed_code {
  FLATMIN_HD std::uint32_t operator()(std::size_t i) const {
    const std::uint64_t h = (static_cast<std::uint64_t>(i) * 0x9E3779B97F4A7C15ull) >> 40;
    const std::uint64_t r = h % 50;
    return r < 20 ? 1u : (r == 49 ? 2u : 0u);
  }
};
struct hashed_code_grouped : hashed_code {
  flatmin::backend::code_group group(std::size_t i) const {
    flatmin::backend::code_group c;
    for (std::uint32_t j = 0; j < 32; ++j) {
      const std::uint32_t x = (*this)(i + j);
      c.ones += x == 1;
      c.twos |= static_cast<std::uint32_t>(x == 2) << j;
    }
    return c;
  }
};
}  // namespace

TEST_CASE_TEMPLATE("backend: count_and_collect counts exactly and lists the 2s in order", Backend, FLATMIN_TEST_BACKENDS) {
  for (std::size_t n : {std::size_t{0}, std::size_t{1}, std::size_t{31}, std::size_t{5003}, std::size_t{300001}, std::size_t{1} << 20}) {
    CAPTURE(n);
    std::uint64_t ones = 0;
    std::vector<std::uint64_t> twos;
    for (std::size_t i = 0; i < n; ++i) {
      const std::uint32_t c = hashed_code{}(i);
      ones += c == 1;
      if (c == 2) twos.push_back(i);
    }
    auto run = [&](auto code, std::size_t cap) {
      auto out = Backend::template make_vector<std::uint64_t>(cap + 1, 7u);
      const auto r = Backend::count_and_collect(n, code, Backend::data(out), cap);
      CHECK(r.counted == ones);
      CHECK(r.collected == twos.size());
      auto h = Backend::to_host(out);
      if (twos.size() <= cap) {
        h.resize(twos.size());
        CHECK(h == twos);
      }
    };
    run(hashed_code{}, twos.size());
    run(hashed_code_grouped{}, twos.size() + 100);
    if (!twos.empty()) {  // too small a capacity: the counts stay exact
      run(hashed_code{}, twos.size() - 1);
      run(hashed_code_grouped{}, twos.size() / 2);
    }
  }
}

TEST_CASE_TEMPLATE("backend: state vectors round-trip and fill/copy", Backend, FLATMIN_TEST_BACKENDS) {
  const std::vector<float> h{1.f, -2.f, 3.5f};
  auto v = Backend::from_host(h);
  CHECK(Backend::to_host(v) == h);
  auto u = Backend::template make_vector<float>(3, 9.f);
  CHECK(Backend::to_host(u) == std::vector<float>{9.f, 9.f, 9.f});
  Backend::copy(v, u);
  CHECK(Backend::to_host(u) == h);
  Backend::fill(u, 0.5f);
  CHECK(Backend::to_host(u) == std::vector<float>{0.5f, 0.5f, 0.5f});
  CHECK((Backend::segment_size & (Backend::segment_size - 1)) == 0);
  CHECK(Backend::segment_size >= 1024);
}

// default_backend follows the compiler: thrust under nvcc, eigen under a host compiler.
#if defined(__CUDACC__)
static_assert(std::is_same_v<flatmin::default_backend, flatmin::backend::thrust>);
#elif !defined(FLATMIN_DEFAULT_BACKEND)
static_assert(std::is_same_v<flatmin::default_backend, flatmin::backend::eigen>);
#endif

#if defined(FLATMIN_TEST_WITH_THRUST)
TEST_CASE("thrust: device_vector views are tagged device; memory spaces are checked") {
  thrust::device_vector<float> w(6, 1.f), g(6, 0.f), g5(5, 0.f), a5(5, 0.f), b5(5, 0.f);
  flatmin::param_set<float> ps;
  const auto& v = ps.add("w", w, g, std::vector<std::size_t>{2, 3});
  CHECK(v.space == flatmin::memory_space::device);
  CHECK(v.size == 6);
  CHECK(v.shape == std::vector<std::size_t>{2, 3});
  CHECK_THROWS_AS(ps.add("bad", w, g5), std::invalid_argument);
  CHECK_THROWS_AS(ps.add("badshape", a5, b5, std::vector<std::size_t>{2, 2}), std::invalid_argument);
  {  // device buffers take the same shape forms as host buffers: a braced list, int64 ranges
    thrust::device_vector<float> x(6), gx(6);
    flatmin::param_set<float> qs;
    CHECK(qs.add("x", x, gx, {3, 2}, {.perturb = false}).shape == std::vector<std::size_t>{3, 2});
    CHECK_FALSE(qs[0].options.perturb);
    CHECK(qs[0].space == flatmin::memory_space::device);
    flatmin::param_set<float> rs;
    CHECK(rs.add("x", x, gx, std::vector<std::int64_t>{6}).shape == std::vector<std::size_t>{6});
    CHECK_THROWS_WITH_AS(rs.add("y", a5, b5, {-1, 5}),
                         "flatmin::param_set: tensor 'y' has a negative extent -1 in its shape", std::invalid_argument);
  }
  // backend::eigen cannot use device-tagged views.
  CHECK_THROWS_AS(flatmin::sam<flatmin::backend::eigen>(ps, flatmin::base::sgd{}), flatmin::usage_error);
  CHECK_NOTHROW(flatmin::sam<flatmin::backend::thrust>(ps, flatmin::base::sgd{}));
  std::vector<float> hw(4, 1.f), hg(4, 0.f);
  flatmin::param_set<float> hs;
  hs.add("h", hw, hg);
#if THRUST_DEVICE_SYSTEM == THRUST_DEVICE_SYSTEM_CUDA
  CHECK_FALSE(flatmin::backend::thrust::accepts(flatmin::memory_space::host));
  CHECK_THROWS_AS(flatmin::sam<flatmin::backend::thrust>(hs, flatmin::base::sgd{}), flatmin::usage_error);
  // A host pointer mislabelled as device memory is caught by the CUDA runtime check.
  flatmin::param_set<float> lie;
  lie.add("lie", hw.data(), hg.data(), {4}, {}, flatmin::memory_space::device);
  CHECK_THROWS_AS(flatmin::sam<flatmin::backend::thrust>(lie, flatmin::base::sgd{}), flatmin::usage_error);
#else
  // On a host device system, device memory is host memory.
  CHECK(flatmin::backend::thrust::accepts(flatmin::memory_space::host));
  CHECK_NOTHROW(flatmin::sam<flatmin::backend::thrust>(hs, flatmin::base::sgd{}));
#endif
}
#endif

#if defined(FLATMIN_TEST_WITH_THRUST)
// A stream_scope moves the calling thread's passes onto its stream and restores the one it found.
// Under CUDA the stream is a real non-blocking one (not ordered with the default stream), so the
// passes, the reductions' read-back and the host copies must all wait on it to give the same bits
// as the default stream; on the host systems the stream is bookkeeping and the same code runs.
TEST_CASE("thrust: passes run on the stream a stream_scope names; scopes nest and restore") {
  using B = flatmin::backend::thrust;
  using stream_t = B::stream_type;
#if THRUST_DEVICE_SYSTEM == THRUST_DEVICE_SYSTEM_CUDA
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    static_cast<void>(cudaGetLastError());
    MESSAGE("no CUDA device: stream_scope not run");
    return;
  }
  stream_t s1{}, s2{};
  REQUIRE(cudaStreamCreateWithFlags(&s1, cudaStreamNonBlocking) == cudaSuccess);
  REQUIRE(cudaStreamCreateWithFlags(&s2, cudaStreamNonBlocking) == cudaSuccess);
#else
  int a = 0, b = 0;
  const stream_t s1 = &a, s2 = &b;
#endif
  const std::vector<std::size_t> sizes{100003, 17, 4096};
  tensors<B> outside(sizes);
  flatmin::backend::layout<float, B> lo(outside.ps);
  const double want = B::reduce<double>(lo.full(), wg_dot{});
  B::for_each(lo.full(), tensor_id{});
  CHECK(B::stream() == stream_t{});
  {
    const B::stream_scope on(s1);
    CHECK(B::stream() == s1);
    {
      const B::stream_scope inner(s2);
      CHECK(B::stream() == s2);
    }
    CHECK(B::stream() == s1);
    tensors<B> inside(sizes);  // same seed: same values
    flatmin::backend::layout<float, B> li(inside.ps);
    const double got = B::reduce<double>(li.full(), wg_dot{});
    CHECK(std::memcmp(&got, &want, sizeof(double)) == 0);
    B::for_each(li.full(), tensor_id{});
    for (std::size_t t = 0; t < sizes.size(); ++t) CHECK(inside.host_w(t) == outside.host_w(t));
    auto v = B::make_vector<double>(123457, -1.0);
    B::for_each_index(v.size(), set_square{B::data(v)});
    auto u = B::make_vector<double>(1, 0.0);
    B::copy(v, u);  // resizes u
    B::fill(v, 0.5);
    const auto hu = B::to_host(u), hv = B::to_host(v);
    std::size_t wrong = 0;
    for (std::size_t i = 0; i < hu.size(); ++i) wrong += hu[i] != double(i) * double(i) || hv[i] != 0.5;
    CHECK(hu.size() == 123457);
    CHECK(wrong == 0);
    std::vector<double> back(3, 0.0);
    B::upload(std::vector<double>{1.0, 2.0, 3.0}.data(), 3, B::data(v));
    B::copy_n(B::data(v), 3, B::data(u) + 10);
    B::download(B::data(u) + 10, 3, back.data());
    CHECK(back == std::vector<double>{1.0, 2.0, 3.0});
  }
  CHECK(B::stream() == stream_t{});
#if THRUST_DEVICE_SYSTEM == THRUST_DEVICE_SYSTEM_CUDA
  CHECK(cudaStreamDestroy(s1) == cudaSuccess);
  CHECK(cudaStreamDestroy(s2) == cudaSuccess);
#endif
}
#endif
